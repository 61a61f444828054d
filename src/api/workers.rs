//! The API's worker threads and their queue. The queue has two lanes:
//! requests of callers with CAP_SYS_ADMIN are taken before any other, and
//! one worker takes only those, so that an administrator's request never
//! waits behind users' requests, however many and however slow; users'
//! requests are carried out at the lowest priority, below the server thread
//! and the administrator's.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};

use serde_json::Value;

use super::handler::Context;
use super::peer::Peer;
use super::proto::{answer_error, answer_ok, line_of, Request};

/// Workers that take any request.
const WORKERS: usize = 4;
/// Workers that take only requests of callers with CAP_SYS_ADMIN.
const ADMIN_WORKERS: usize = 1;
/// The nice value of the API's server thread and of the worker for
/// callers with CAP_SYS_ADMIN: below the daemon's loop, whatever it runs at.
pub const API_NICE: i32 = 10;
/// The nice value of the workers that carry out users' requests: below
/// the server thread and the administrator's worker, so that users'
/// requests, however many, leave them the CPU.
const USERS_NICE: i32 = 19;

/// A request handed to a worker.
pub struct Job {
    pub conn: u64,
    pub peer: Peer,
    pub id: Value,
    pub request: Request,
}

/// A worker's answer line.
pub struct Done {
    pub conn: u64,
    pub line: Vec<u8>,
}

#[derive(Default)]
struct Lanes {
    admin: VecDeque<Job>,
    users: VecDeque<Job>,
    closed: bool,
}

/// The jobs waiting for a worker.
#[derive(Default)]
pub struct Queue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
}

impl Queue {
    /// Queues a job; `admin`: in the lane taken first.
    pub fn push(&self, job: Job, admin: bool) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if admin {
            lanes.admin.push_back(job);
        } else {
            lanes.users.push_back(job);
        }
        drop(lanes);
        self.ready.notify_all();
    }

    /// The next job (admins' first; only theirs when `admin_only`), and
    /// whether it is an admin's; `None` once the queue is closed.
    fn pop(&self, admin_only: bool) -> Option<(Job, bool)> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if lanes.closed {
                return None;
            }
            if let Some(job) = lanes.admin.pop_front() {
                return Some((job, true));
            }
            if !admin_only {
                if let Some(job) = lanes.users.pop_front() {
                    return Some((job, false));
                }
            }
            lanes = self.ready.wait(lanes).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Ends every worker (after the job each is carrying out).
    pub fn close(&self) {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

/// Starts the workers; each sends its answers to `results` and wakes the server through `wake`.
pub fn start(queue: &Arc<Queue>, results: &Sender<Done>, ctx: &Arc<Context>, wake: &Arc<UnixStream>) -> io::Result<()> {
    for i in 0..WORKERS + ADMIN_WORKERS {
        let admin_only = i >= WORKERS;
        let (queue, results, ctx, wake) = (queue.clone(), results.clone(), ctx.clone(), wake.clone());
        let name = if admin_only { format!("nsgroup-api-a{}", i - WORKERS) } else { format!("nsgroup-api-{i}") };
        std::thread::Builder::new().name(name).spawn(move || work(&queue, admin_only, &results, &ctx, &wake))?;
    }
    Ok(())
}

fn work(queue: &Queue, admin_only: bool, results: &Sender<Done>, ctx: &Context, wake: &UnixStream) {
    // On Linux the nice value is per thread: this one yields to placement,
    // and to the administrator's requests while it carries out a user's.
    let mut nice = None;
    while let Some((job, admin)) = queue.pop(admin_only) {
        let wanted = if admin { API_NICE } else { USERS_NICE };
        if nice != Some(wanted) {
            let _ = rustix::process::setpriority_process(None, wanted);
            nice = Some(wanted);
        }
        let name = job.request.name();
        let answer = match ctx.handle(&job.peer, &job.request) {
            Ok(data) => answer_ok(&job.id, name, data),
            Err(e) => answer_error(&job.id, Some(name), &e),
        };
        let mut line = line_of(&answer);
        // Held until sent: only what it needs.
        line.shrink_to_fit();
        if results.send(Done { conn: job.conn, line }).is_err() {
            return;
        }
        let _ = (&*wake).write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(conn: u64) -> Job {
        Job { conn, peer: Peer { pid: 1, uid: 0, owner: 0, gid: 0, start_ticks: 0 }, id: Value::Null, request: Request::List { all: false } }
    }

    #[test]
    fn admins_jobs_go_first_and_the_admin_worker_takes_only_theirs() {
        let q = Arc::new(Queue::default());
        q.push(job(1), false);
        q.push(job(2), false);
        q.push(job(3), true);
        assert_eq!(q.pop(false).map(|(j, admin)| (j.conn, admin)), Some((3, true)));
        assert_eq!(q.pop(false).map(|(j, admin)| (j.conn, admin)), Some((1, false)));
        // An admin-only worker waits for an admin's job, not a user's.
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.pop(true).map(|(j, _)| j.conn))
        };
        q.push(job(4), true);
        assert_eq!(waiter.join().unwrap(), Some(4));
        assert_eq!(q.pop(false).map(|(j, _)| j.conn), Some(2));
        q.close();
        assert!(q.pop(false).is_none());
    }
}
