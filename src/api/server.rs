//! The API server: one thread of its own (`nsgroup-api`) with a poll loop
//! over non-blocking sockets, and worker threads that carry requests out
//! ([`super::workers`]). The daemon's event loop never waits on it: it hands
//! events over through a bounded queue ([`Publisher::publish`] never blocks,
//! and costs an atomic load while nobody subscribes) and shares no lock with it.
//!
//! Robustness, by construction:
//! - a request line is at most [`MAX_LINE`] bytes; a longer one is answered
//!   `too_long` and skipped up to its newline;
//! - one request per connection is carried out at a time (pipelined lines
//!   wait in the connection's buffer, which is not read further while full);
//! - connections and requests under way are bounded in all, per owner, and
//!   with a share kept for callers with CAP_SYS_ADMIN ([`super::capacity`]):
//!   a connection beyond its bound gets a `busy` line and is closed, a
//!   request beyond its bound waits for a slot;
//! - a line left unfinished for [`PARTIAL_LINE_TIMEOUT`] closes the connection;
//! - events are serialized once into a log all subscribers share
//!   ([`super::fanout`]); a subscriber more than [`SUBSCRIBER_BUFFER`]
//!   behind is dropped and counted (`dropped_slow_subscribers`), never waited for;
//! - what the server holds for all connections together (unread answers,
//!   unfinished lines, the event log) stays within
//!   [`capacity::MEMORY_BUDGET`]: beyond it, stalled subscribers and then the
//!   connections holding the most are dropped ([`capacity::victims`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use serde_json::Value;
use tracing::{info, warn};

use super::capacity::{self, Class, Holding, Pool};
use super::conn::{Conn, TOO_LONG_MARK};
pub use super::fanout::SUBSCRIBER_BUFFER;
use super::fanout::Fanout;
use super::events::Shared;
use super::events::{Counters, Publisher};
use super::handler::Context;
use super::peer::{boot_ticks_now, Peer};
use super::proto::{self, answer_error, answer_ok, line_of, Code, ErrorBody, Request, MAX_LINE};
use super::workers::{self, Done, Job, Queue, API_NICE};
use crate::sys::procfs::ProcFs;

/// How long a request line may stay unfinished.
pub const PARTIAL_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines about dropped connections per [`DROP_LOG_INTERVAL`] (the rest are counted).
const DROP_LOG_LINES: u32 = 5;
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The running server: dropping it stops the thread.
pub struct Server {
    publisher: Publisher,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` (bound already) with `ctx` on threads of its own.
    pub fn start(listener: UnixListener, mut ctx: Context) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (publisher, events) = Publisher::new(wake_tx);
        let shared = publisher.shared.clone();
        ctx.events = Some(publisher.clone());
        let (results_tx, results) = mpsc::channel::<Done>();
        let queue = Arc::new(Queue::default());
        let user_ns = ctx.user_ns;
        workers::start(&queue, &results_tx, &Arc::new(ctx), &publisher.wake)?;
        let mut state = State {
            listener,
            wake: wake_rx,
            results,
            queue,
            shared: shared.clone(),
            conns: HashMap::new(),
            next_key: 0,
            connections: Pool::connections(),
            jobs: Pool::jobs(),
            in_flight: HashMap::new(),
            held: 0,
            fanout: Fanout::new(events),
            user_ns,
            proc: ProcFs::new("/proc"),
            drop_lines: (Instant::now(), 0),
        };
        let thread = std::thread::Builder::new().name("nsgroup-api".into()).spawn(move || state.run())?;
        Ok(Server { publisher, thread: Some(thread) })
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.publisher.shared.counters
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.publisher.shared.stop.store(true, Ordering::Relaxed);
        let _ = (&*self.publisher.wake).write(&[1]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    listener: UnixListener,
    wake: UnixStream,
    results: Receiver<Done>,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    conns: HashMap<u64, Conn>,
    next_key: u64,
    connections: Pool,
    jobs: Pool,
    /// The class of each connection's request under way (by connection
    /// key): its slot is given back when the answer comes, open or not.
    in_flight: HashMap<u64, Class>,
    /// What the connections and the log hold, as of this turn (see [`State::read`]).
    held: usize,
    fanout: Fanout,
    /// The daemon's user namespace (inode): callers' owners and
    /// CAP_SYS_ADMIN are read against it.
    user_ns: u64,
    proc: ProcFs,
    /// Since when, and how many, lines about dropped connections were written.
    drop_lines: (Instant, u32),
}

impl State {
    fn run(&mut self) {
        let _ = rustix::process::setpriority_process(None, API_NICE);
        let mut last_report = Instant::now();
        let mut reported = 0u64;
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.held = self.fanout.log.held() + self.conns.values().map(Conn::held).sum::<usize>();
            let over_budget = self.held >= capacity::MEMORY_BUDGET;
            let keys: Vec<u64> = self.conns.keys().copied().collect();
            let revents = {
                let mut fds = Vec::with_capacity(keys.len() + 2);
                fds.push(PollFd::new(&self.wake, PollFlags::IN));
                fds.push(PollFd::new(&self.listener, PollFlags::IN));
                for k in &keys {
                    let c = &self.conns[k];
                    let mut flags = PollFlags::empty();
                    if c.wants_input() && (c.class == Class::Admin || !over_budget) {
                        flags |= PollFlags::IN;
                    }
                    if c.has_output(&self.fanout.log) {
                        flags |= PollFlags::OUT;
                    }
                    fds.push(PollFd::new(&c.stream, flags));
                }
                // Events left in the queue: look again at once.
                let wait = if self.shared.queued.load(Ordering::Relaxed) > 0 { 0 } else { 1 };
                let timeout = rustix::time::Timespec { tv_sec: wait, tv_nsec: 0 };
                match poll(&mut fds, Some(&timeout)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        warn!("the API's poll failed: {e}; the API stops");
                        break;
                    }
                }
                fds.iter().map(|f| f.revents()).collect::<Vec<_>>()
            };
            let seen_ticks = boot_ticks_now();
            if revents[0].contains(PollFlags::IN) {
                let mut buf = [0u8; 256];
                while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
            }
            self.take_results();
            self.held += self.fanout.take(&self.shared, &mut self.conns);
            if revents[1].contains(PollFlags::IN) {
                self.accept(seen_ticks);
            }
            for (i, k) in keys.iter().enumerate() {
                let r = revents[i + 2];
                if r.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    self.read(*k);
                }
                self.process(*k);
                self.write(*k, r.intersects(PollFlags::OUT | PollFlags::HUP | PollFlags::ERR));
            }
            self.expire();
            self.shed();
            self.close_done();
            let counters = &self.shared.counters;
            let total = counters.requests.load(Ordering::Relaxed) + counters.dropped_slow_subscribers.load(Ordering::Relaxed);
            if last_report.elapsed() >= Duration::from_secs(60) && total != reported {
                reported = total;
                last_report = Instant::now();
                self.report("API activity");
            }
        }
        self.queue.close();
        self.report("API stopped");
    }

    fn report(&self, what: &str) {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        info!(
            connections = get(&c.connections),
            requests = get(&c.requests),
            refused_connections = get(&c.refused_connections),
            malformed = get(&c.malformed),
            too_long = get(&c.too_long),
            deferred_requests = get(&c.deferred),
            timeouts = get(&c.timeouts),
            dropped_slow_subscribers = get(&c.dropped_slow_subscribers),
            dropped_over_budget = get(&c.dropped_over_budget),
            events = get(&c.events),
            lost_events = self.shared.lost.load(Ordering::Relaxed),
            "{what}"
        );
    }

    /// Whom a connection counts as: CAP_SYS_ADMIN in the daemon's user
    /// namespace (read after its identity, and its identity checked again
    /// after), else its owner.
    fn class_of(&self, peer: &Result<Peer, String>) -> Class {
        let Ok(p) = peer else { return Class::User(None) };
        let admin = self.proc.has_sys_admin_in(p.pid, p.pid, self.user_ns).unwrap_or(false) && p.alive(&self.proc).unwrap_or(false);
        if admin {
            Class::Admin
        } else {
            Class::User(Some(p.owner))
        }
    }

    fn accept(&mut self, seen_ticks: u64) {
        for _ in 0..256 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) => {
                    warn!("the API cannot accept a connection: {e}");
                    return;
                }
                Err(_) => continue,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.shared.counters.connections.fetch_add(1, Ordering::Relaxed);
            let peer = Peer::of(&stream, &self.proc, Some(seen_ticks), self.user_ns).map_err(|e| e.to_string());
            let class = self.class_of(&peer);
            let mut conn = Conn::new(stream, peer, class);
            if let Err(full) = self.connections.take(class) {
                // One line, best effort, then closed: never kept.
                self.shared.counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                conn.answer(line_of(&answer_error(&Value::Null, None, &ErrorBody::new(Code::Busy, format!("too many connections {full}")))));
                let _ = conn.flush(&self.fanout.log);
                continue;
            }
            let key = self.next_key;
            self.conns.insert(key, conn);
            self.next_key += 1;
            // A client writes its request right after connecting: take it now, not a turn later.
            self.read(key);
            self.process(key);
        }
    }

    fn read(&mut self, key: u64) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        let mut buf = [0u8; 16384];
        // At most a few chunks per turn: one fast client does not starve the others.
        for _ in 0..8 {
            // Over the budget, only admins are read (the budget is restored at the end of the turn).
            if !c.wants_input() || (c.class != Class::Admin && self.held >= capacity::MEMORY_BUDGET) {
                return;
            }
            match (&c.stream).read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    return;
                }
                Ok(n) => {
                    self.held += n;
                    let too_long = c.take_input(&buf[..n]);
                    self.shared.counters.too_long.fetch_add(too_long, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.drop_now = true;
                    return;
                }
            }
        }
    }

    /// Takes complete lines of a connection while it has no request under
    /// way; a request that finds no free slot waits in `waiting`.
    fn process(&mut self, key: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&key) else { return };
            if c.busy || c.drop_now || c.closing {
                return;
            }
            let fresh = c.waiting.is_none();
            let job = match c.waiting.take() {
                Some(job) => job,
                None => {
                    let Some(line) = c.next_line() else { return };
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.shared.counters.requests.fetch_add(1, Ordering::Relaxed);
                    match parse_line(&line, &c.peer, &self.shared.counters) {
                        Ok((id, request, peer)) => Job { conn: key, peer, id, request },
                        Err(answer) => {
                            c.answer(line_of(&answer));
                            continue;
                        }
                    }
                }
            };
            if let Request::Subscribe {} = job.request {
                if c.cursor.is_none() {
                    c.cursor = Some(self.fanout.log.head());
                    self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
                }
                c.answer(line_of(&answer_ok(&job.id, "subscribe", serde_json::json!({ "seq": self.fanout.seq() }))));
                continue;
            }
            if self.jobs.take(c.class).is_err() {
                if fresh {
                    self.shared.counters.deferred.fetch_add(1, Ordering::Relaxed);
                }
                c.waiting = Some(job);
                return;
            }
            c.busy = true;
            self.in_flight.insert(key, c.class);
            self.queue.push(job, c.class == Class::Admin);
            return;
        }
    }

    /// Sends what a connection has; a stalled one only when poll says it
    /// can take more (`writable`).
    fn write(&mut self, key: u64, writable: bool) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if (writable || !c.stalled) && c.flush(&self.fanout.log).is_err() {
            c.drop_now = true;
        }
    }

    fn take_results(&mut self) {
        while let Ok(done) = self.results.try_recv() {
            if let Some(class) = self.in_flight.remove(&done.conn) {
                self.jobs.release(class);
            }
            if let Some(c) = self.conns.get_mut(&done.conn) {
                c.busy = false;
                self.held += done.line.capacity();
                c.answer(done.line);
                self.process(done.conn);
                self.write(done.conn, false);
            }
        }
    }

    /// Closes connections with a line left unfinished too long.
    fn expire(&mut self) {
        for c in self.conns.values_mut() {
            if c.partial_since.is_some_and(|t| t.elapsed() >= PARTIAL_LINE_TIMEOUT) && !c.closing {
                self.shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let e = ErrorBody::new(Code::Malformed, format!("a request line was left unfinished for {}s; closing", PARTIAL_LINE_TIMEOUT.as_secs()));
                c.answer(line_of(&answer_error(&Value::Null, None, &e)));
                c.clear_input();
                c.closing = true;
                let _ = c.flush(&self.fanout.log);
            }
        }
    }

    /// Drops the subscribers more than [`SUBSCRIBER_BUFFER`] behind, then,
    /// while the server holds more than its budget, the victims
    /// [`capacity::victims`] names.
    fn shed(&mut self) {
        let slow = self.fanout.too_slow(&mut self.conns);
        let holdings: Vec<Holding> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.drop_now)
            .map(|(k, c)| Holding { key: *k, class: c.class, own: c.held(), behind: c.behind(&self.fanout.log), stalled: c.stalled })
            .collect();
        let log_left = self.fanout.held_for(holdings.iter().filter_map(|h| h.behind).max());
        let over = capacity::victims(&holdings, log_left, capacity::MEMORY_BUDGET);
        let (mut subscribers, mut others) = (slow.len() as u64, 0u64);
        for k in &over {
            let c = self.conns.get_mut(k).expect("a victim is a connection");
            c.drop_now = true;
            if c.cursor.is_some() {
                subscribers += 1;
            } else {
                others += 1;
            }
        }
        let counters = &self.shared.counters;
        counters.dropped_slow_subscribers.fetch_add(subscribers, Ordering::Relaxed);
        counters.dropped_over_budget.fetch_add(over.len() as u64, Ordering::Relaxed);
        if subscribers + others == 0 || !self.may_log_a_drop() {
            return;
        }
        let first = slow.first().or(over.first()).and_then(|k| self.conns[k].peer.as_ref().ok());
        let (pid, owner) = (first.map(|p| p.pid), first.map(|p| p.owner));
        let (held, budget, over) = (self.held, capacity::MEMORY_BUDGET, over.len());
        if subscribers > 0 {
            warn!(subscribers, others, pid, owner, over_budget = over, held, budget, "dropped a subscriber that does not read its events (dropped_slow_subscribers)");
        } else {
            warn!(others, pid, owner, held, budget, "dropped a connection that does not read its answers: the API's memory budget is spent (dropped_over_budget)");
        }
    }

    /// Whether one more line about dropped connections may be written now.
    fn may_log_a_drop(&mut self) -> bool {
        let (since, lines) = &mut self.drop_lines;
        if since.elapsed() >= DROP_LOG_INTERVAL {
            *since = Instant::now();
            *lines = 0;
        }
        *lines += 1;
        *lines <= DROP_LOG_LINES
    }

    /// Forgets the connections that are done, gives back their slots, and
    /// the log's bytes every subscriber has been sent.
    fn close_done(&mut self) {
        let (connections, log) = (&mut self.connections, &self.fanout.log);
        self.conns.retain(|_, c| {
            let idle = !c.busy && c.waiting.is_none() && !c.has_output(log);
            let done = c.drop_now || (c.closing && !c.has_output(log)) || (c.eof && idle);
            if done {
                connections.release(c.class);
            }
            !done
        });
        let subscribers = self.fanout.trim(&self.conns);
        self.shared.subscribers.store(subscribers, Ordering::Relaxed);
    }
}

/// A request line parsed, for a peer identified; else the error answer.
fn parse_line(line: &[u8], peer: &Result<Peer, String>, counters: &Counters) -> Result<(Value, Request, Peer), Value> {
    if line == &TOO_LONG_MARK[..TOO_LONG_MARK.len() - 1] {
        let e = ErrorBody::new(Code::TooLong, format!("a request line is at most {MAX_LINE} bytes, newline included; this one was skipped"));
        return Err(answer_error(&Value::Null, None, &e));
    }
    let parsed = proto::parse_request(line);
    let request = match parsed.request {
        Ok(r) => r,
        Err(e) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            return Err(answer_error(&parsed.id, parsed.kind.as_deref().filter(|k| proto::REQUEST_TYPES.contains(k)), &e));
        }
    };
    match peer {
        Ok(p) => Ok((parsed.id, request, p.clone())),
        Err(why) => {
            let e = ErrorBody { code: Code::Denied, rule: Some("peer.identity"), message: format!("{why} (rule peer.identity)") };
            Err(answer_error(&parsed.id, Some(request.name()), &e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::ApiEvent;
    use crate::control::verbs::Timing;
    use crate::sys::hierarchy::{Hierarchy, Version};
    use crate::sys::procfs::{HierarchyKey, ProcFs};
    use std::io::{BufRead, BufReader};

    fn serve() -> (tempfile::TempDir, std::path::PathBuf, Server) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("h")).unwrap();
        std::fs::write(tmp.path().join("h/tasks"), "").unwrap();
        let socket = tmp.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let ctx = Context {
            hierarchy: Hierarchy::new(tmp.path().join("h"), Version::V1, HierarchyKey::V1(99)),
            root: "/".into(),
            proc: ProcFs::new("/proc"),
            user_ns: 0,
            base_set: Default::default(),
            timing: Timing::default(),
            events: None,
            limits: Default::default(),
            list_cache: Default::default(),
            history: None,
            criu: "criu".into(),
        };
        let server = Server::start(listener, ctx).unwrap();
        (tmp, socket, server)
    }

    fn line(r: &mut BufReader<UnixStream>) -> Value {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
    }

    #[test]
    fn bad_lines_get_errors_in_order_and_the_connection_goes_on() {
        let (_tmp, socket, _server) = serve();
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(b"garbage\n").unwrap();
        let mut big = vec![b'x'; MAX_LINE + 10];
        big.push(b'\n');
        s.write_all(&big).unwrap();
        s.write_all(b"{\"version\":1,\"id\":2,\"type\":\"list\"}\n{\"version\":1,\"id\":3,\"type\":\"nope\"}\n").unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(line(&mut r)["error"]["code"], "malformed");
        assert_eq!(line(&mut r)["error"]["code"], "too_long");
        let list = line(&mut r);
        assert_eq!((list["id"].as_u64(), list["type"].as_str()), (Some(2), Some("ok")), "{list}");
        assert_eq!(list["data"]["tree"]["path"], "/");
        let unknown = line(&mut r);
        assert_eq!((unknown["id"].as_u64(), unknown["error"]["code"].as_str()), (Some(3), Some("unknown_request")));
    }

    #[test]
    fn subscribers_get_numbered_events_and_one_that_does_not_read_is_dropped() {
        let (_tmp, socket, server) = serve();
        let p = server.publisher().clone();
        assert!(!p.wants_events());
        let mut reader = UnixStream::connect(&socket).unwrap();
        reader.write_all(b"{\"version\":1,\"type\":\"subscribe\"}\n").unwrap();
        let mut r = BufReader::new(reader.try_clone().unwrap());
        assert_eq!(line(&mut r)["data"]["seq"], 0);
        let mut lazy = UnixStream::connect(&socket).unwrap();
        lazy.write_all(b"{\"version\":1,\"type\":\"subscribe\"}\n").unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while server.publisher().shared.subscribers.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < end);
            std::thread::sleep(Duration::from_millis(5));
        }
        p.publish(ApiEvent::Overflow { lost: 1 });
        p.flush();
        let ev = line(&mut r);
        assert_eq!((ev["seq"].as_u64(), ev["event"].as_str()), (Some(1), Some("overflow")), "{ev}");
        // The reader keeps reading in a thread; the lazy one never reads.
        let drain = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut l = String::new();
            while r.read_line(&mut l).is_ok_and(|k| k > 0) {
                n += 1;
                l.clear();
                if n >= 20_000 {
                    break;
                }
            }
            n
        });
        let big = ApiEvent::Reconcile { why: "x".repeat(200), examined: 0, moved: 0, created: 0, elapsed_ms: 0 };
        for i in 0..20_000 {
            p.publish(big.clone());
            if i % 100 == 0 {
                p.flush();
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        p.flush();
        assert_eq!(drain.join().unwrap(), 20_000, "the reading subscriber got every event");
        let end = Instant::now() + Duration::from_secs(10);
        while server.counters().dropped_slow_subscribers.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < end, "the lazy subscriber was not dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(lazy);
        drop(reader);
    }
}
