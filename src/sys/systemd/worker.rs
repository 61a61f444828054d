//! Asks user managers for sandboxes' scopes on a thread of its own, so a
//! slow, absent or hostile manager never holds up the event loop. Requests
//! queue up to [`QUEUE`] (at most [`PER_USER`] of one user), each is served
//! within its deadline, and a manager that did not answer is not asked
//! again for a while: one user's manager costs the others one deadline per
//! back-off at most. The loop learns of each answer through [`UnitWorker::fd`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::bus::{BusError, ManagerBus};
use crate::core::unit::{Limits, UnitPlan, Untransferable};
use crate::sys::error::IoError;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::procfs::ProcFs;

/// Requests waiting at most.
pub const QUEUE: usize = 64;
/// Requests of one user waiting at most.
pub const PER_USER: usize = 8;
/// Tasks forked before the move that follow the sandbox into its scope, at most.
const MAX_FOLLOWERS: usize = 256;
/// Managers backed off from, remembered at most (then the expired are forgotten).
const MAX_BACKED_OFF: usize = 1024;
/// How much of a limit file is read.
const MAX_LIMIT_FILE: u64 = 4096;

/// Where managers are found and how long each may take.
#[derive(Clone)]
pub struct Settings {
    /// The user runtime directories (`/run/user`).
    pub runtime: PathBuf,
    pub hierarchy: Hierarchy,
    pub proc: ProcFs,
    /// Each step's deadline (connect, handshake, call, the task's arrival).
    pub timeout: Duration,
    /// How long a manager that did not answer is left alone.
    pub backoff: Duration,
}

/// A scope made, with the sandbox's first task in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The scope's cgroup (relative to the hierarchy's mount).
    pub cgroup: String,
    /// Tasks forked before the move that were moved after it.
    pub followers: usize,
}

/// Why a sandbox stayed where it was.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error(transparent)]
    Limits(#[from] Untransferable),
    #[error("uid {uid}'s manager did not answer lately; not asked for another {left:?}")]
    BackingOff { uid: u32, left: Duration },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the manager made {scope}, but the task was not in it within {within:?}")]
    NotMoved { scope: String, within: Duration },
    #[error("the task ended first")]
    Gone,
    /// Moved before its turn came: as the follower of another sandbox
    /// forked before that one's move, or by another cgroup writer.
    #[error("the task left its unit first, for {}", crate::core::escape::Escaped(.cgroup))]
    Left { cgroup: String },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the request failed inside nsgroup (a bug: the log has it)")]
    Panicked,
}

/// One request's end.
#[derive(Debug)]
pub struct UnitDone {
    pub plan: UnitPlan,
    pub result: Result<Started, UnitError>,
}

/// Why a request was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("{QUEUE} requests wait already")]
    Queue,
    #[error("{PER_USER} requests of this user wait already")]
    User,
}

/// The loop's handle on the worker thread (which ends when this is dropped).
pub struct UnitWorker {
    requests: SyncSender<UnitPlan>,
    done: Receiver<UnitDone>,
    wake: UnixStream,
    waiting: HashMap<u32, usize>,
}

impl UnitWorker {
    /// Starts the thread.
    pub fn start(settings: Settings) -> std::io::Result<UnitWorker> {
        let (requests, incoming) = mpsc::sync_channel::<UnitPlan>(QUEUE);
        let (finished, done) = mpsc::channel();
        let (wake, waker) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        std::thread::Builder::new().name("nsgroup-units".into()).spawn(move || {
            let mut backoff = Backoff::default();
            for plan in incoming {
                // A bug here must not end every later request silently.
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&settings, &mut backoff, &plan)));
                let result = served.unwrap_or_else(|_| {
                    tracing::error!(scope = %plan.scope, "asking a user's manager failed with a panic; the next request is served");
                    Err(UnitError::Panicked)
                });
                if finished.send(UnitDone { plan, result }).is_err() {
                    return;
                }
                let _ = (&waker).write(&[1]);
            }
        })?;
        Ok(UnitWorker { requests, done, wake, waiting: HashMap::new() })
    }

    /// Queues `plan`, unless too many wait (in all, or of its user).
    pub fn ask(&mut self, plan: UnitPlan) -> Result<(), Busy> {
        let uid = plan.origin.uid;
        if self.waiting.get(&uid).copied().unwrap_or(0) >= PER_USER {
            return Err(Busy::User);
        }
        match self.requests.try_send(plan) {
            Ok(()) => {
                *self.waiting.entry(uid).or_default() += 1;
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy::Queue),
        }
    }

    /// Readable when answers wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The answers that came.
    pub fn finished(&mut self) -> Vec<UnitDone> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let done: Vec<UnitDone> = self.done.try_iter().collect();
        for d in &done {
            if let Some(n) = self.waiting.get_mut(&d.plan.origin.uid) {
                *n -= 1;
                if *n == 0 {
                    self.waiting.remove(&d.plan.origin.uid);
                }
            }
        }
        done
    }
}

/// Managers that did not answer, until when they are left alone.
#[derive(Default)]
struct Backoff(HashMap<u32, Instant>);

/// One request: the task still is the sandbox's and in its unit; the unit's
/// limits can be handed on; the manager makes the scope with the task in
/// it; the tasks forked before follow.
fn serve(s: &Settings, backoff: &mut Backoff, plan: &UnitPlan) -> Result<Started, UnitError> {
    let uid = plan.origin.uid;
    let now = Instant::now();
    if let Some(&until) = backoff.0.get(&uid) {
        if until > now {
            return Err(UnitError::BackingOff { uid, left: until - now });
        }
        backoff.0.remove(&uid);
    }
    if backoff.0.len() >= MAX_BACKED_OFF {
        backoff.0.retain(|_, until| *until > now);
    }
    match whereabouts(s, plan.pid, plan.start_ns)? {
        None => return Err(UnitError::Gone),
        Some(cgroup) if cgroup != plan.origin.cgroup => return Err(UnitError::Left { cgroup }),
        Some(_) => {}
    }
    let limits = Limits::read(|file| read_limit(&s.hierarchy, &plan.origin.cgroup, file))?;
    let asked = ManagerBus::connect(&s.runtime, uid, s.timeout).and_then(|mut bus| bus.start_scope(plan, &limits).map(|()| bus));
    let mut bus = match asked {
        Ok(bus) => bus,
        Err(e) => {
            if e.unreachable() {
                backoff.0.insert(uid, Instant::now() + s.backoff);
            }
            return Err(e.into());
        }
    };
    let scope = plan.scope_cgroup();
    let deadline = Instant::now() + s.timeout;
    while !still_in(s, plan.pid, &scope)? {
        if Instant::now() >= deadline {
            // An answer that did nothing costs a deadline: not again for a while.
            backoff.0.insert(uid, Instant::now() + s.backoff);
            return Err(UnitError::NotMoved { scope, within: s.timeout });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let followers = forked_before(s, plan.pid, &plan.origin.cgroup);
    let followed = if followers.is_empty() {
        0
    } else {
        match bus.attach(&plan.scope, &followers) {
            Ok(()) => followers.len(),
            Err(e) => {
                tracing::warn!(scope = %plan.scope, tasks = followers.len(), "the tasks forked before the move stay in their unit: {e}");
                0
            }
        }
    };
    Ok(Started { cgroup: scope, followers: followed })
}

/// Where `pid`, started at `start_ns`, is: `None` when it ended.
fn whereabouts(s: &Settings, pid: u32, start_ns: u64) -> Result<Option<String>, IoError> {
    match s.proc.stat(pid, pid)? {
        Some(stat) if stat.started_at(start_ns) && !stat.is_dead() => s.proc.cgroup_path(pid, pid, s.hierarchy.key()),
        _ => Ok(None),
    }
}

/// Whether `pid` is in `cgroup`.
fn still_in(s: &Settings, pid: u32, cgroup: &str) -> Result<bool, IoError> {
    Ok(s.proc.cgroup_path(pid, pid, s.hierarchy.key())?.as_deref() == Some(cgroup))
}

/// A limit file of the unit at `cgroup`; `None` when it has none.
fn read_limit(h: &Hierarchy, cgroup: &str, file: &str) -> Option<String> {
    let mut text = String::new();
    let f = std::fs::File::open(h.dir(cgroup).join(file)).ok()?;
    f.take(MAX_LIMIT_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The descendants of `pid` still in `cgroup` (forked before `pid` was
/// moved), breadth first, at most [`MAX_FOLLOWERS`].
fn forked_before(s: &Settings, pid: u32, cgroup: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    let mut looked = 0;
    while let Some(parent) = next.pop() {
        looked += 1;
        if looked > MAX_FOLLOWERS * 4 {
            break;
        }
        for child in s.proc.children(parent, parent).unwrap_or_default() {
            if found.len() >= MAX_FOLLOWERS {
                return found;
            }
            if matches!(still_in(s, child, cgroup), Ok(true)) {
                found.push(child);
            }
            next.push(child);
        }
    }
    found
}

#[cfg(test)]
mod tests;
