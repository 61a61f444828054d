//! The API server: one thread of its own (`nsgroup-api`) with a poll loop
//! over non-blocking sockets, and a few worker threads that carry requests
//! out. The daemon's event loop never waits on it: it hands events over
//! through a bounded queue ([`Publisher::publish`] never blocks, and costs an
//! atomic load while nobody subscribes) and shares no lock with it.
//!
//! Robustness, by construction:
//! - a request line is at most [`MAX_LINE`] bytes; a longer one is answered
//!   `too_long` and skipped up to its newline;
//! - one request per connection is carried out at a time (pipelined lines
//!   wait in the connection's buffer, which is not read further while full);
//!   at most [`MAX_JOBS`] at once overall, beyond that `busy`;
//! - a line left unfinished for [`PARTIAL_LINE_TIMEOUT`] closes the connection;
//! - a subscriber whose unsent events exceed [`SUBSCRIBER_BUFFER`] is dropped
//!   and counted (`dropped_slow_subscribers`), never waited for;
//! - at most [`MAX_CONNECTIONS`] connections, [`MAX_CONNECTIONS_PER_UID`] per
//!   uid other than root; the rest get a `busy` line and are closed.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use serde_json::Value;
use tracing::{info, warn};

use super::handler::Context;
use super::peer::{boot_ticks_now, Peer};
use super::proto::{self, answer_error, answer_ok, event_line, ApiEvent, Code, ErrorBody, Request, MAX_LINE};

/// Unsent events a subscriber may have before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1 << 20;
/// Requests carried out at once, over all connections.
pub const MAX_JOBS: usize = 256;
/// Connections at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections at once per uid (root excepted).
pub const MAX_CONNECTIONS_PER_UID: usize = 128;
/// How long a request line may stay unfinished.
pub const PARTIAL_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Unsent answers beyond which a connection's further requests are not read.
const ANSWER_BACKLOG: usize = 4 << 20;
/// Events queued from the daemon to the API thread.
const EVENT_QUEUE: usize = 65536;
/// Worker threads.
const WORKERS: usize = 4;
/// Stands in the input for a line that was too long (answered in its turn).
const TOO_LONG_MARK: &[u8] = b"\0too long\n";

/// Counters, logged when the server stops and every minute something changed.
#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub refused_connections: AtomicU64,
    pub malformed: AtomicU64,
    pub too_long: AtomicU64,
    pub busy: AtomicU64,
    pub timeouts: AtomicU64,
    pub dropped_slow_subscribers: AtomicU64,
    pub events: AtomicU64,
}

/// State shared by the daemon's side and the server thread.
struct Shared {
    subscribers: AtomicUsize,
    /// Events in the queue: at most [`EVENT_QUEUE`] (the queue itself grows
    /// on demand, so an idle server holds no room for them).
    queued: AtomicUsize,
    /// Events the daemon could not queue (queue full).
    lost: AtomicU64,
    wake_pending: AtomicBool,
    stop: AtomicBool,
    counters: Counters,
}

/// The daemon's (and the workers') handle for publishing events and waking the server.
#[derive(Clone)]
pub struct Publisher {
    tx: Sender<ApiEvent>,
    shared: Arc<Shared>,
    wake: Arc<UnixStream>,
}

impl Publisher {
    /// Whether anybody subscribes: events are only built when so.
    pub fn wants_events(&self) -> bool {
        self.shared.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Queues an event for the subscribers; never blocks. A full queue
    /// counts the event as lost (subscribers are told how many).
    pub fn publish(&self, event: ApiEvent) {
        if !self.wants_events() {
            return;
        }
        if self.shared.queued.fetch_add(1, Ordering::Relaxed) >= EVENT_QUEUE {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
        } else if self.tx.send(event).is_err() {
            // The server has stopped.
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.shared.wake_pending.store(true, Ordering::Relaxed);
    }

    /// Wakes the server if events were queued since the last flush (one
    /// non-blocking write; the daemon calls it once per turn of its loop).
    pub fn flush(&self) {
        if self.shared.wake_pending.swap(false, Ordering::Relaxed) {
            let _ = (&*self.wake).write(&[1]);
        }
    }
}

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
        let shared = Arc::new(Shared {
            subscribers: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            wake_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let (tx, events) = mpsc::channel();
        let publisher = Publisher { tx, shared: shared.clone(), wake: Arc::new(wake_tx) };
        ctx.events = Some(publisher.clone());
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (results_tx, results) = mpsc::channel::<Done>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let user_ns = ctx.user_ns;
        let ctx = Arc::new(ctx);
        for i in 0..WORKERS {
            let (jobs, results, ctx, wake) = (jobs_rx.clone(), results_tx.clone(), ctx.clone(), publisher.wake.clone());
            std::thread::Builder::new().name(format!("nsgroup-api-{i}")).spawn(move || worker(&jobs, &results, &ctx, &wake))?;
        }
        let mut state = State {
            listener,
            wake: wake_rx,
            events,
            results,
            jobs: jobs_tx,
            shared: shared.clone(),
            conns: HashMap::new(),
            next_key: 0,
            in_flight: 0,
            seq: 0,
            seen_lost: 0,
            user_ns,
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

/// A request handed to a worker.
struct Job {
    conn: u64,
    peer: Peer,
    id: Value,
    request: Request,
}

/// A worker's answer line.
struct Done {
    conn: u64,
    line: Vec<u8>,
}

/// The nice value of the API's threads: below the daemon's loop, whatever it runs at.
const API_NICE: i32 = 10;

fn worker(jobs: &Mutex<Receiver<Job>>, results: &Sender<Done>, ctx: &Context, wake: &UnixStream) {
    // On Linux the nice value is per thread: this one yields to placement.
    let _ = rustix::process::setpriority_process(None, API_NICE);
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let name = job.request.name();
        let answer = match ctx.handle(&job.peer, &job.request) {
            Ok(data) => answer_ok(&job.id, name, data),
            Err(e) => answer_error(&job.id, Some(name), &e),
        };
        if results.send(Done { conn: job.conn, line: line_of(&answer) }).is_err() {
            return;
        }
        let _ = (&*wake).write(&[1]);
    }
}

fn line_of(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("a value serializes");
    out.push(b'\n');
    out
}

/// One client.
struct Conn {
    stream: UnixStream,
    peer: Result<Peer, String>,
    /// Received bytes not yet taken as lines.
    input: Vec<u8>,
    /// Bytes to send, and how many of them went already.
    output: VecDeque<u8>,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
    /// A request of it is being carried out.
    busy: bool,
    subscriber: bool,
    /// Since when the input holds an unfinished line.
    partial_since: Option<Instant>,
    /// The peer closed its end (answers still go out while it reads).
    eof: bool,
    /// To be closed once the output is sent (or at once when `drop_now`).
    closing: bool,
    drop_now: bool,
}

struct State {
    listener: UnixListener,
    wake: UnixStream,
    events: Receiver<ApiEvent>,
    results: Receiver<Done>,
    jobs: Sender<Job>,
    shared: Arc<Shared>,
    conns: HashMap<u64, Conn>,
    next_key: u64,
    in_flight: usize,
    /// The sequence number of the latest event sent.
    seq: u64,
    seen_lost: u64,
    /// The daemon's user namespace (inode): callers' owners are read against it.
    user_ns: u64,
}

impl State {
    fn run(&mut self) {
        let _ = rustix::process::setpriority_process(None, API_NICE);
        let mut last_report = Instant::now();
        let mut reported = 0u64;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let keys: Vec<u64> = self.conns.keys().copied().collect();
            let revents = {
                let mut fds = Vec::with_capacity(keys.len() + 2);
                fds.push(PollFd::new(&self.wake, PollFlags::IN));
                fds.push(PollFd::new(&self.listener, PollFlags::IN));
                for k in &keys {
                    let c = &self.conns[k];
                    let mut flags = PollFlags::empty();
                    if c.wants_input() {
                        flags |= PollFlags::IN;
                    }
                    if !c.output.is_empty() {
                        flags |= PollFlags::OUT;
                    }
                    fds.push(PollFd::new(&c.stream, flags));
                }
                let timeout = rustix::time::Timespec { tv_sec: 1, tv_nsec: 0 };
                match poll(&mut fds, Some(&timeout)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        warn!("the API's poll failed: {e}; the API stops");
                        return;
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
            self.take_events();
            if revents[1].contains(PollFlags::IN) {
                self.accept(seen_ticks);
            }
            for (i, k) in keys.iter().enumerate() {
                let r = revents[i + 2];
                if r.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    self.read(*k);
                }
                self.process(*k);
                self.write(*k);
            }
            self.expire();
            self.conns.retain(|_, c| !(c.drop_now || (c.closing && c.output.is_empty()) || (c.eof && !c.busy && c.output.is_empty())));
            self.subscribers_changed();
            let counters = &self.shared.counters;
            let total = counters.requests.load(Ordering::Relaxed) + counters.dropped_slow_subscribers.load(Ordering::Relaxed);
            if last_report.elapsed() >= Duration::from_secs(60) && total != reported {
                reported = total;
                last_report = Instant::now();
                self.report("API activity");
            }
        }
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
            busy = get(&c.busy),
            timeouts = get(&c.timeouts),
            dropped_slow_subscribers = get(&c.dropped_slow_subscribers),
            events = get(&c.events),
            lost_events = self.shared.lost.load(Ordering::Relaxed),
            "{what}"
        );
    }

    fn subscribers_changed(&self) {
        let n = self.conns.values().filter(|c| c.subscriber).count();
        self.shared.subscribers.store(n, Ordering::Relaxed);
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
            let peer = Peer::of(&stream, &ctx_proc(), Some(seen_ticks), self.user_ns).map_err(|e| e.to_string());
            let uid = peer.as_ref().map(|p| p.owner).ok();
            let same_uid = uid.map_or(0, |u| self.conns.values().filter(|c| c.peer.as_ref().ok().map(|p| p.owner) == Some(u)).count());
            let mut conn = Conn::new(stream, peer);
            let why = if self.conns.len() >= MAX_CONNECTIONS {
                Some(format!("too many connections ({MAX_CONNECTIONS}); retry later"))
            } else if uid != Some(0) && same_uid >= MAX_CONNECTIONS_PER_UID {
                Some(format!("too many connections of uid {} (at most {MAX_CONNECTIONS_PER_UID}); close some", uid.unwrap_or(0)))
            } else {
                None
            };
            if let Some(why) = why {
                // One line, best effort, then closed: never kept.
                self.shared.counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                conn.output.extend(line_of(&answer_error(&Value::Null, None, &ErrorBody::new(Code::Busy, why))));
                let _ = conn.flush();
                continue;
            }
            self.conns.insert(self.next_key, conn);
            self.next_key += 1;
        }
    }

    fn read(&mut self, key: u64) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        let mut buf = [0u8; 16384];
        // At most a few chunks per turn: one fast client does not starve the others.
        for _ in 0..8 {
            if !c.wants_input() {
                return;
            }
            match (&c.stream).read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    return;
                }
                Ok(n) => c.take_input(&buf[..n], &self.shared.counters),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.drop_now = true;
                    return;
                }
            }
        }
    }

    /// Takes complete lines of a connection while it has no request under way.
    fn process(&mut self, key: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&key) else { return };
            if c.busy || c.drop_now || c.closing {
                return;
            }
            let Some(nl) = c.input.iter().position(|&b| b == b'\n') else {
                c.partial_since = if c.input.is_empty() { None } else { c.partial_since.or(Some(Instant::now())) };
                return;
            };
            let line: Vec<u8> = c.input.drain(..=nl).collect();
            c.partial_since = None;
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.shared.counters.requests.fetch_add(1, Ordering::Relaxed);
            if line == &TOO_LONG_MARK[..TOO_LONG_MARK.len() - 1] {
                let e = ErrorBody::new(Code::TooLong, format!("a request line is at most {MAX_LINE} bytes, newline included; this one was skipped"));
                c.output.extend(line_of(&answer_error(&Value::Null, None, &e)));
                continue;
            }
            let parsed = proto::parse_request(line);
            let request = match parsed.request {
                Ok(r) => r,
                Err(e) => {
                    self.shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    c.output.extend(line_of(&answer_error(&parsed.id, parsed.kind.as_deref().filter(|k| proto::REQUEST_TYPES.contains(k)), &e)));
                    continue;
                }
            };
            let peer = match &c.peer {
                Ok(p) => p.clone(),
                Err(why) => {
                    let e = ErrorBody { code: Code::Denied, rule: Some("peer.identity"), message: format!("{why} (rule peer.identity)") };
                    c.output.extend(line_of(&answer_error(&parsed.id, Some(request.name()), &e)));
                    continue;
                }
            };
            if let Request::Subscribe {} = request {
                c.subscriber = true;
                self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
                let data = serde_json::json!({ "seq": self.seq });
                c.output.extend(line_of(&answer_ok(&parsed.id, "subscribe", data)));
                continue;
            }
            if self.in_flight >= MAX_JOBS {
                self.shared.counters.busy.fetch_add(1, Ordering::Relaxed);
                let e = ErrorBody::new(Code::Busy, format!("{MAX_JOBS} requests are under way; retry later"));
                c.output.extend(line_of(&answer_error(&parsed.id, Some(request.name()), &e)));
                continue;
            }
            c.busy = true;
            self.in_flight += 1;
            if self.jobs.send(Job { conn: key, peer, id: parsed.id, request }).is_err() {
                c.busy = false;
                self.in_flight -= 1;
                return;
            }
        }
    }

    fn write(&mut self, key: u64) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.flush().is_err() {
            c.drop_now = true;
        }
    }

    fn take_results(&mut self) {
        while let Ok(done) = self.results.try_recv() {
            self.in_flight = self.in_flight.saturating_sub(1);
            if let Some(c) = self.conns.get_mut(&done.conn) {
                c.busy = false;
                c.output.extend(done.line);
                self.process(done.conn);
                self.write(done.conn);
            }
        }
    }

    fn take_events(&mut self) {
        loop {
            let mut batch: Vec<ApiEvent> = Vec::new();
            while let Ok(ev) = self.events.try_recv() {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                batch.push(ev);
                if batch.len() >= 4096 {
                    break;
                }
            }
            let lost = self.shared.lost.load(Ordering::Relaxed);
            if lost > self.seen_lost {
                batch.push(ApiEvent::Lost { events: lost - self.seen_lost });
                self.seen_lost = lost;
            }
            if batch.is_empty() {
                return;
            }
            let mut bytes = Vec::new();
            for ev in &batch {
                self.seq += 1;
                bytes.extend(line_of(&event_line(self.seq, ev)));
            }
            self.shared.counters.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let mut dropped = 0;
            for c in self.conns.values_mut().filter(|c| c.subscriber && !c.drop_now) {
                c.output.extend(&bytes);
                let _ = c.flush();
                if c.output.len() > SUBSCRIBER_BUFFER {
                    c.drop_now = true;
                    dropped += 1;
                    if let Ok(p) = &c.peer {
                        warn!(pid = p.pid, uid = p.uid, unsent = c.output.len(), "dropped a subscriber that does not read its events (dropped_slow_subscribers)");
                    }
                }
            }
            self.shared.counters.dropped_slow_subscribers.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Closes connections with a line left unfinished too long.
    fn expire(&mut self) {
        for c in self.conns.values_mut() {
            if c.partial_since.is_some_and(|t| t.elapsed() >= PARTIAL_LINE_TIMEOUT) && !c.closing {
                self.shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let e = ErrorBody::new(Code::Malformed, format!("a request line was left unfinished for {}s; closing", PARTIAL_LINE_TIMEOUT.as_secs()));
                c.output.extend(line_of(&answer_error(&Value::Null, None, &e)));
                c.input.clear();
                c.closing = true;
                let _ = c.flush();
            }
        }
    }
}

fn ctx_proc() -> crate::sys::procfs::ProcFs {
    crate::sys::procfs::ProcFs::new("/proc")
}

impl Conn {
    fn new(stream: UnixStream, peer: Result<Peer, String>) -> Conn {
        Conn {
            stream,
            peer,
            input: Vec::new(),
            output: VecDeque::new(),
            skipping: false,
            busy: false,
            subscriber: false,
            partial_since: None,
            eof: false,
            closing: false,
            drop_now: false,
        }
    }

    /// Whether to read more: not while a full line waits, a request is under
    /// way, or answers pile up unread.
    fn wants_input(&self) -> bool {
        !self.eof && !self.closing && !self.drop_now && self.output.len() < ANSWER_BACKLOG && self.input.len() < MAX_LINE
    }

    /// Appends received bytes; a line beyond [`MAX_LINE`] is answered
    /// `too_long` and skipped up to its newline.
    fn take_input(&mut self, mut bytes: &[u8], counters: &Counters) {
        while !bytes.is_empty() {
            if self.skipping {
                match bytes.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        self.skipping = false;
                        bytes = &bytes[nl + 1..];
                    }
                    None => return,
                }
                continue;
            }
            let line_start = self.input.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            let room = MAX_LINE.saturating_sub(self.input.len() - line_start);
            let take = match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) if nl < room => nl + 1,
                _ => bytes.len().min(room),
            };
            self.input.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let unfinished = self.input.len() - self.input.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            if unfinished >= MAX_LINE {
                let keep = self.input.len() - unfinished;
                self.input.truncate(keep);
                self.skipping = true;
                counters.too_long.fetch_add(1, Ordering::Relaxed);
                // Answered in order, when its turn comes.
                self.input.extend_from_slice(TOO_LONG_MARK);
            }
        }
    }

    /// Sends what it can without blocking.
    fn flush(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            let (a, _) = self.output.as_slices();
            match rustix::net::send(self.stream.as_fd(), a, rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
