//! The daemon: events in, placements out, empty nodes removed, and a
//! reconcile whenever events may have been lost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use tracing::{debug, info, warn};

use crate::bpf::{Event, EventKind, Probe, Scope};
use crate::source::{monotonic_ns, ProcSource, Source};
use crate::config::{Cleanup, Config, Source as SourceChoice, Subject};
use crate::core::histogram::Histogram;
use crate::core::naming;
use crate::core::node::{CgroupId, Node, NodeRecord};
use crate::core::nsset::{NsMask, NsSet};
use crate::core::tracker::{Entry, Limits, Placement, Tracker};
use crate::placer::{unix_now, Outcome, Placer};
use crate::reconcile::{reconcile, Report};
use crate::sys::cgroupfs::{CgroupBackend, CgroupWriter, Hierarchy};
use crate::sys::error::IoError;
use crate::sys::procfs::ProcFs;
use crate::sys::scan::{scan, TaskSample};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the tracked root {root} does not exist in {mount} (create it, or pass another --root)")]
    NoRoot { root: String, mount: String },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Bpf(#[from] crate::bpf::BpfError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
}

/// Everything the daemon needs, resolved by the command line.
pub struct Setup {
    pub config: Config,
    pub hierarchy: Hierarchy,
    /// nsgroup's own named hierarchy: nobody else writes there, so reconcile
    /// always converges; elsewhere it leaves tasks other writers placed.
    pub own_hierarchy: bool,
    pub proc: ProcFs,
}

enum Timer {
    /// A setns caller's set has settled.
    Settle(u32),
    /// Look for empty nodes whose exit events may have been lost.
    Sweep,
    /// Without BPF: rescan /proc; the interval (ms) backs off while nothing is found.
    Rescan(u64),
    /// See whether a node emptied; the attempt number backs off.
    Cleanup(CgroupId, u32),
}

/// A setns caller waiting for its last setns.
struct Deferred {
    first_prev: NsSet,
    last: Event,
}

/// Counters and the event-to-moved latency, logged at exit.
#[derive(Default)]
struct Stats {
    events: u64,
    moved: u64,
    created: u64,
    removed: u64,
    reconciles: u64,
    latency: Histogram,
}

/// Back-off of the emptiness checks after an exit: an exiting task stays in
/// its cgroup for a moment after its exit event.
const CLEANUP_BACKOFF_MS: [u64; 6] = [2, 20, 100, 300, 600, 1000];

/// Rescan intervals without BPF: from 1 s, doubling while rescans find nothing, up to 60 s.
const RESCAN_MIN_MS: u64 = 1000;
const RESCAN_MAX_MS: u64 = 60_000;

/// When to look for emptied nodes again after an overflow (exit events lost).
const SWEEP_AFTER_OVERFLOW_MS: [u64; 3] = [100, 1000, 3000];

struct Daemon {
    placer: Placer<CgroupWriter>,
    hierarchy: Hierarchy,
    root: String,
    config: Config,
    mask: NsMask,
    own_hierarchy: bool,
    proc: ProcFs,
    source: Source,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_jobs: HashMap<u64, Timer>,
    next_timer: u64,
    deferred: HashMap<u32, Deferred>,
    /// Where each task was last put: a later event of the same entry (its
    /// exec, read before the move) does not move it again.
    last_placed: HashMap<u32, CgroupId>,
    /// When the latest entries (not exits) happened.
    arrivals: Arrivals,
    /// Whether the daemon runs in its high-rate mode.
    busy: bool,
    /// Events held back for the batch window (high-rate mode), in order.
    held: Vec<Event>,
    seen_drops: u64,
    stats: Stats,
}

/// How many of the latest entries the rate must be high over to start
/// coalescing: enough that a catch-up burst after a stall of the workload is
/// not taken for a storm.
const ENTER_OVER: usize = 64;
/// How many of the latest entries the rate must be low over to stop: few, so
/// that a burst that did start it costs few entries the window's delay.
const LEAVE_OVER: usize = 16;

/// When the latest entries happened (their BPF timestamps, so that the
/// daemon's batching of its reads does not matter).
#[derive(Default)]
struct Arrivals {
    recent: VecDeque<u64>,
}

impl Arrivals {
    fn note(&mut self, ktime_ns: u64) {
        if self.recent.len() == ENTER_OVER {
            self.recent.pop_front();
        }
        self.recent.push_back(ktime_ns);
    }

    /// The mean gap between the latest `n` entries, once `n` are seen.
    fn mean_gap(&self, n: usize) -> Option<Duration> {
        let len = self.recent.len();
        if n < 2 || len < n {
            return None;
        }
        let span = self.recent[len - 1].saturating_sub(self.recent[len - n]);
        Some(Duration::from_nanos(span / (n as u64 - 1)))
    }

    /// How long ago the latest entry happened.
    fn since_last(&self) -> Option<Duration> {
        self.recent.back().map(|&t| Duration::from_nanos(monotonic_ns().saturating_sub(t)))
    }
}

/// The tasks (tid, start) of a batch that exited within it and forked no
/// child in it: placing them would only make a node to remove at once.
fn short_lived(batch: &[Event]) -> HashSet<(u32, u64)> {
    let parents: HashSet<u32> =
        batch.iter().filter_map(|e| if let EventKind::Fork { ptid } = e.kind { Some(ptid) } else { None }).collect();
    batch.iter().filter(|e| e.kind == EventKind::Exit && !parents.contains(&e.tid)).map(|e| (e.tid, e.start_ns)).collect()
}

/// Whether the include/exclude filters track a task; its uid is read from
/// /proc only when a filter names uids.
fn admits(config: &Config, proc: &ProcFs, comm: &str, tid: u32, cgroup: &str) -> bool {
    let uid = if config.include.needs_uid() || config.exclude.needs_uid() { proc.uid(tid).ok().flatten() } else { None };
    config.admits(Subject { comm, uid, cgroup })
}

/// Runs until SIGTERM or SIGINT. Nodes stay when it stops.
pub fn run(setup: Setup) -> Result<(), DaemonError> {
    let Setup { config, hierarchy, own_hierarchy, proc } = setup;
    let mask = config.mask().map_err(DaemonError::Config)?;
    let root = config.root.clone();
    let root_id = match crate::sys::error::or_vanished(hierarchy.id(&root))? {
        Some(id) => id,
        None => return Err(DaemonError::NoRoot { root, mount: hierarchy.mount().display().to_string() }),
    };
    let own_pid = std::process::id();
    let base_set = proc.ns_set(own_pid, own_pid)?.unwrap_or_default().masked(mask);
    let limits = Limits { max_depth: config.max_depth, max_nodes: config.max_nodes };
    let tracker = Tracker::new(base_set, hierarchy.granularity(), limits);
    let writer = CgroupWriter::new(hierarchy.clone(), &root);
    let mut placer = Placer::new(tracker, writer, unix_now);
    let started = Instant::now();
    let adopted = adopt(&mut placer, &hierarchy, &root, &proc, mask)?;
    let adopt_ms = started.elapsed().as_millis() as u64;

    // Attach before the snapshot: what happens meanwhile queues up and is
    // applied after it (placements are idempotent).
    let root_level = root.split('/').filter(|c| !c.is_empty()).count() as u32;
    let scope = Scope {
        hierarchy_id: hierarchy.hierarchy_id(),
        root_cgroup_id: root_id,
        root_level,
        ring_buffer_bytes: config.ring_buffer_bytes,
    };
    let source = match config.source {
        SourceChoice::Bpf => Source::Bpf(Box::new(Probe::load(scope)?)),
        SourceChoice::Proc => Source::Proc(Box::new(ProcSource::open(proc.clone(), hierarchy.clone(), &root)?)),
        SourceChoice::Auto => match Probe::load(scope) {
            Ok(probe) => Source::Bpf(Box::new(probe)),
            Err(e) => {
                warn!("BPF unavailable, falling back to the proc connector: {e}");
                Source::Proc(Box::new(ProcSource::open(proc.clone(), hierarchy.clone(), &root)?))
            }
        },
    };
    // The BTF parse at load left megabytes of freed heap behind.
    crate::ffi::release_free_memory();
    if config.nice != 0 {
        if let Err(e) = rustix::process::setpriority_process(None, i32::from(config.nice)) {
            warn!("could not set the nice value: {e}");
        }
    }
    let (sig_read, sig_write) = UnixStream::pair().map_err(DaemonError::Signals)?;
    sig_read.set_nonblocking(true).map_err(DaemonError::Signals)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(sig, sig_write.try_clone().map_err(DaemonError::Signals)?)
            .map_err(DaemonError::Signals)?;
    }

    let mut d = Daemon {
        placer,
        hierarchy,
        root,
        config,
        mask,
        own_hierarchy,
        proc,
        source,
        timers: BinaryHeap::new(),
        timer_jobs: HashMap::new(),
        next_timer: 0,
        deferred: HashMap::new(),
        last_placed: HashMap::new(),
        arrivals: Arrivals::default(),
        busy: false,
        held: Vec::new(),
        seen_drops: 0,
        stats: Stats::default(),
    };
    let reconcile_started = Instant::now();
    let report = d.reconcile("start")?;
    d.apply_mode();
    if d.source.needs_rescans() {
        d.schedule(Duration::from_millis(RESCAN_MIN_MS), Timer::Rescan(RESCAN_MIN_MS));
    }
    info!(
        hierarchy = %d.hierarchy.mount().display(),
        version = ?d.hierarchy.version(),
        root = %d.root,
        adopted,
        moved = report.moved,
        created = report.created,
        source = %d.source.describe(),
        adopt_ms,
        reconcile_ms = reconcile_started.elapsed().as_millis() as u64,
        "nsgroup is tracking"
    );
    if let Err(e) = crate::sys::notify::sd_notify("READY=1") {
        warn!("could not notify the service manager: {e}");
    }
    d.event_loop(&sig_read)?;
    d.log_stats();
    Ok(())
}

/// Learns the nodes an earlier run left: from their records, or for a
/// `node_*` cgroup without one (no xattrs), from the set its tasks share.
fn adopt(
    placer: &mut Placer<CgroupWriter>,
    hierarchy: &Hierarchy,
    root: &str,
    proc: &ProcFs,
    mask: NsMask,
) -> Result<usize, IoError> {
    let mut ids: HashMap<String, CgroupId> = HashMap::new();
    let mut adopted = 0;
    for (rel, id) in hierarchy.walk(root)? {
        placer.backend().learn(id, rel.clone());
        ids.insert(rel.clone(), id);
        if rel == root {
            continue;
        }
        let (parent_rel, name) = rel.rsplit_once('/').expect("below the root");
        let parent_rel = if parent_rel.is_empty() { "/" } else { parent_rel };
        let Some(&parent) = ids.get(parent_rel) else { continue };
        let record = match hierarchy.record(&rel) {
            Some(r) => Some(r),
            None => naming::creator_pid(name).and_then(|creator_pid| {
                let members = hierarchy.members(&rel).ok()?;
                let sets: Vec<NsSet> =
                    members.iter().filter_map(|&t| proc.ns_set(t, t).ok().flatten()).map(|s| s.masked(mask)).collect();
                let set = *sets.first()?;
                sets.iter().all(|s| *s == set).then(|| NodeRecord {
                    set,
                    parent_set: placer.tracker().home_set(parent),
                    creator_pid,
                    creator_comm: String::new(),
                    created_unix: 0,
                })
            }),
        };
        let Some(record) = record else { continue };
        let node = Node { id, parent, name: name.to_string(), record };
        match placer.tracker_mut().add_node(node) {
            Ok(()) => adopted += 1,
            Err(first) => warn!(path = %rel, first = %first.name, "a second cgroup claims the set of an adopted node; left alone"),
        }
    }
    Ok(adopted)
}

impl Daemon {
    fn event_loop(&mut self, signals: &UnixStream) -> Result<(), DaemonError> {
        let mut batch = Vec::with_capacity(1024);
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
            // In the high-rate mode the daemon does not wake per event: it
            // looks at the ring once per batch window.
            let coalescing = self.coalescing();
            let tick = coalescing.then(|| Duration::from_micros(self.config.batch_window_us));
            let timeout = [next_timer, self.held_until(), tick].into_iter().flatten().min();
            let ts = timeout.map(|t| rustix::time::Timespec { tv_sec: t.as_secs() as i64, tv_nsec: t.subsec_nanos() as i64 });
            let signalled = {
                // In the high-rate mode the ring is not polled at all: a
                // poller sits on its wait queue, and every event would wake it.
                let ring = self.source.fd();
                let mut fds = [PollFd::new(signals, PollFlags::IN), PollFd::new(&ring, PollFlags::IN)];
                let watched = if coalescing { &mut fds[..1] } else { &mut fds[..] };
                match poll(watched, ts.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(IoError::new("poll", "the ring buffer", e).into()),
                }
                fds[0].revents().contains(PollFlags::IN)
            };
            if signalled {
                let mut buf = [0u8; 16];
                let _ = (&*signals).read(&mut buf);
                info!("stopping on signal; nodes stay");
                return Ok(());
            }
            loop {
                batch.clear();
                batch.append(&mut self.held);
                let fresh = batch.len();
                self.drain_into(&mut batch)?;
                if batch.len() == fresh {
                    // Nothing new: only held events, whose time may have come.
                    self.process(&mut batch);
                    self.quiet_tick();
                    break;
                }
                for ev in batch[fresh..].iter().filter(|e| e.kind != EventKind::Exit) {
                    self.arrivals.note(ev.ktime_ns);
                    self.update_mode();
                }
                self.process(&mut batch);
            }
            let dropped = self.source.dropped();
            if dropped > self.seen_drops {
                warn!(lost = dropped - self.seen_drops, "events were lost (the ring buffer overflowed); reconciling from /proc");
                self.seen_drops = dropped;
                if let Err(e) = self.reconcile("overflow") {
                    warn!("reconcile after overflow failed: {e}");
                }
                // Exits may have been lost too: the reconcile swept emptied
                // nodes; look again once the burst is over.
                for ms in SWEEP_AFTER_OVERFLOW_MS {
                    self.schedule(Duration::from_millis(ms), Timer::Sweep);
                }
            }
            self.run_timers();
        }
    }

    /// Handles a batch in order. Under a high rate, entries younger than the
    /// batch window are held back (with every later event of the same task,
    /// and the children it forks) until the window has passed, so that a task
    /// gone by then (its exit is in the batch) gets no node.
    fn process(&mut self, batch: &mut Vec<Event>) {
        let window_ns = self.config.batch_window_us * 1000;
        let hold = self.coalescing();
        let now = monotonic_ns();
        let short_lived = short_lived(batch);
        let mut held_tids = HashSet::new();
        for ev in batch.drain(..) {
            let entry = ev.kind != EventKind::Exit;
            if entry && short_lived.contains(&(ev.tid, ev.start_ns)) {
                self.deferred.remove(&ev.tid);
                continue;
            }
            let young = entry && now.saturating_sub(ev.ktime_ns) < window_ns;
            let follows_held = held_tids.contains(&ev.tid) || matches!(ev.kind, EventKind::Fork { ptid } if held_tids.contains(&ptid));
            if hold && (young || follows_held) {
                held_tids.insert(ev.tid);
                self.held.push(ev);
                continue;
            }
            self.handle(ev);
        }
    }

    /// The mean gap between entries below which the rate is high, and
    /// (with hysteresis: nine tenths of the rate) above which it is low again.
    fn gaps(&self) -> (Duration, Duration) {
        let enter = Duration::from_secs(1) / self.config.coalesce_above_per_second;
        (enter, enter * 10 / 9)
    }

    /// After an entry: into the high-rate mode when the rate over the latest
    /// [`ENTER_OVER`] entries is high, out of it when the rate over the latest
    /// [`LEAVE_OVER`] is low (counting afresh from then on).
    fn update_mode(&mut self) {
        let (enter, leave) = self.gaps();
        if !self.busy && self.arrivals.mean_gap(ENTER_OVER).is_some_and(|gap| gap < enter) {
            self.set_mode(true);
        } else if self.busy && self.arrivals.mean_gap(LEAVE_OVER).is_some_and(|gap| gap > leave) {
            self.arrivals = Arrivals::default();
            self.set_mode(false);
        }
    }

    /// A look at the ring found nothing new. In the high-rate mode, once no
    /// entry has come for as long as [`LEAVE_OVER`] entries at the low rate
    /// would take, the rate is low again: back to waking per event. (A single
    /// quiet window, a stall of the workload, does not end it.)
    fn quiet_tick(&mut self) {
        if !self.busy || !self.held.is_empty() {
            return;
        }
        let quiet_enough = self.gaps().1 * LEAVE_OVER as u32;
        if self.arrivals.since_last().is_none_or(|quiet| quiet > quiet_enough) {
            self.arrivals = Arrivals::default();
            self.set_mode(false);
        }
    }

    /// How long until the oldest held event's window has passed.
    fn held_until(&self) -> Option<Duration> {
        let oldest = self.held.iter().map(|e| e.ktime_ns).min()?;
        let due = oldest + self.config.batch_window_us * 1000;
        Some(Duration::from_nanos(due.saturating_sub(monotonic_ns())))
    }

    /// Whether entries are held for the batch window and the ring is looked
    /// at on a timer: in the high-rate mode, unless the window is 0.
    fn coalescing(&self) -> bool {
        self.busy && self.config.batch_window_us > 0
    }

    fn set_mode(&mut self, busy: bool) {
        if self.busy != busy {
            self.busy = busy;
            self.apply_mode();
        }
    }

    /// Idle or under a low rate: woken per event, under SCHED_FIFO (if
    /// configured), to place at once. Under a high rate: the normal scheduler,
    /// so that the daemon does not preempt the very tasks it places (a
    /// real-time wakeup stays on its CPU instead of taking an idle one), no
    /// wakeups from the ring (it looks once per window), and coalescing.
    fn apply_mode(&mut self) {
        debug!(busy = self.busy, "scheduling mode");
        if let Err(e) = self.source.set_wakeups(!self.coalescing()) {
            warn!("could not switch the ring buffer's wakeups: {e}");
        }
        let priority = self.config.realtime_priority;
        if priority == 0 {
            return;
        }
        let wanted = (!self.busy).then_some(i32::from(priority));
        if let Err(e) = crate::ffi::set_realtime(wanted) {
            warn!("could not change the scheduling policy (realtime_priority): {e}");
        }
    }

    fn drain_into(&mut self, batch: &mut Vec<Event>) -> Result<(), DaemonError> {
        let bad = self.source.drain(4096, batch)?;
        if bad > 0 {
            warn!(records = bad, "undecodable ring buffer records skipped");
        }
        Ok(())
    }

    fn schedule(&mut self, after: Duration, job: Timer) {
        self.next_timer += 1;
        self.timers.push(Reverse((Instant::now() + after, self.next_timer)));
        self.timer_jobs.insert(self.next_timer, job);
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match self.timer_jobs.remove(&key) {
                Some(Timer::Settle(tid)) => {
                    if let Some(d) = self.deferred.remove(&tid) {
                        self.place_event(&d.last, d.first_prev);
                    }
                }
                Some(Timer::Cleanup(node, attempt)) => self.cleanup(node, attempt),
                Some(Timer::Sweep) => self.sweep_empty_nodes(&HashSet::new()),
                Some(Timer::Rescan(interval)) => {
                    let found = match self.reconcile("rescan") {
                        Ok(r) => r.moved > 0,
                        Err(e) => {
                            warn!("rescan failed: {e}");
                            false
                        }
                    };
                    let next = if found { RESCAN_MIN_MS } else { (interval * 2).min(RESCAN_MAX_MS) };
                    self.schedule(Duration::from_millis(next), Timer::Rescan(next));
                }
                None => {}
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        self.stats.events += 1;
        match ev.kind {
            EventKind::Setns => {
                let first_prev = self.deferred.get(&ev.tid).map_or(ev.prev, |d| d.first_prev);
                let fresh = !self.deferred.contains_key(&ev.tid);
                self.deferred.insert(ev.tid, Deferred { first_prev, last: ev.clone() });
                if fresh {
                    self.schedule(Duration::from_micros(self.config.setns_settle_us), Timer::Settle(ev.tid));
                }
            }
            EventKind::Exec => {
                let prev = self.deferred.remove(&ev.tid).map_or(ev.prev, |d| d.first_prev);
                self.place_event(&ev, prev);
            }
            EventKind::Fork { ptid } => {
                if let Some(d) = self.deferred.remove(&ptid) {
                    self.place_event(&d.last, d.first_prev);
                }
                self.place_event(&ev, ev.prev);
            }
            EventKind::Unshare => self.place_event(&ev, ev.prev),
            EventKind::Exit => {
                debug!(tid = ev.tid, cgroup = ev.cgroup, "exited");
                self.deferred.remove(&ev.tid);
                // Where it died, and where it was put last: a task moved while
                // already exiting stays where it was, leaving its new node empty.
                let put = self.last_placed.remove(&ev.tid);
                for cgroup in std::iter::once(ev.cgroup).chain(put.filter(|&p| p != ev.cgroup)) {
                    if let Some(&node) = self.placer.tracker().cleanup_candidates(cgroup).first() {
                        self.schedule_cleanup(node, 0);
                    }
                }
            }
        }
    }

    fn place_event(&mut self, ev: &Event, prev: NsSet) {
        if !self.proc.task_exists(ev.tgid, ev.tid) {
            // Gone already (a backlog after a burst): nothing to place.
            self.source.settled(ev.tid);
            return;
        }
        // Unknown (the proc connector's exec): what the task's cgroup expects.
        let prev = if prev.is_empty() { self.placer.tracker().home_set(ev.cgroup) } else { prev };
        // The cgroup path is looked up only when a filter needs it.
        let path = if self.config.filters_cgroups() {
            self.placer.backend().path_of(ev.cgroup).ok().flatten().unwrap_or_default()
        } else {
            String::new()
        };
        if !admits(&self.config, &self.proc, &ev.comm, ev.tid, &path) {
            self.source.settled(ev.tid);
            return;
        }
        let entry = Entry { tid: ev.tid, tgid: ev.tgid, cgroup: ev.cgroup, set: ev.set.masked(self.mask), prev: prev.masked(self.mask) };
        let placement = self.placer.tracker().place(&entry);
        if matches!(placement, Placement::Move(to) if self.last_placed.get(&ev.tid) == Some(&to)) {
            self.source.settled(ev.tid);
            return;
        }
        let outcome = self.placer.carry_out(placement, &entry, &ev.comm);
        match outcome {
            Ok(Outcome::Moved { to, created }) => {
                let latency_us = monotonic_ns().saturating_sub(ev.ktime_ns) / 1000;
                self.stats.latency.record(latency_us);
                self.stats.moved += 1;
                self.stats.created += u64::from(created);
                if created {
                    let path = self.placer.backend().path_of(to).ok().flatten().unwrap_or_default();
                    info!(event = "node_created", path = %path, creator_pid = ev.tid, creator_comm = %ev.comm, "node created");
                }
                debug!(tid = ev.tid, kind = ?ev.kind, to, latency_us, "placed");
                // Tracked before it stops being pending: its exit is reported.
                self.source.track(ev.tid, to);
                // The node it left (setns back, or on to another set's node) may be empty now.
                let left = self.last_placed.insert(ev.tid, to).unwrap_or(ev.cgroup);
                if left != to && self.placer.tracker().node(left).is_some() {
                    self.schedule_cleanup(left, 0);
                }
                self.source.settled(ev.tid);
                self.follow_children(&entry);
                return;
            }
            Ok(Outcome::Stayed) if self.placer.tracker().node(ev.cgroup).is_some() => {
                // Already in its node (forked there): its exit matters too.
                self.source.track(ev.tid, ev.cgroup);
            }
            Ok(Outcome::Refused(why)) => warn!(tid = ev.tid, comm = %ev.comm, "left in place: {why}"),
            Ok(Outcome::Stayed) | Ok(Outcome::Vanished) => {}
            Err(e) => warn!(tid = ev.tid, "placing failed: {e}"),
        }
        self.source.settled(ev.tid);
    }

    /// Children forked before their parent was moved, still in its old
    /// cgroup with its new set, follow it (the fork-mid-move race).
    fn follow_children(&mut self, parent: &Entry) {
        let Ok(children) = self.proc.children(parent.tgid, parent.tid) else { return };
        for child in children {
            let Ok(Some(path)) = self.proc.cgroup_path(child, child, self.hierarchy.key()) else { continue };
            let Ok(cgroup) = self.hierarchy.id(&path) else { continue };
            let Ok(Some(set)) = self.proc.ns_set(child, child) else { continue };
            if cgroup != parent.cgroup || set.masked(self.mask) != parent.set {
                continue;
            }
            let entry = Entry { tid: child, tgid: child, cgroup, set: parent.set, prev: parent.set };
            if let Ok(Outcome::Moved { to, .. }) = self.placer.enter(&entry, "") {
                self.source.track(child, to);
                self.follow_children(&entry);
            }
        }
    }

    fn schedule_cleanup(&mut self, node: CgroupId, attempt: u32) {
        let delay = match self.config.cleanup {
            Cleanup::Keep => return,
            Cleanup::Remove => CLEANUP_BACKOFF_MS.get(attempt as usize).copied(),
            Cleanup::Linger if attempt == 0 => Some(self.config.linger_seconds * 1000),
            Cleanup::Linger => CLEANUP_BACKOFF_MS.get(attempt as usize).copied(),
        };
        if let Some(ms) = delay {
            self.schedule(Duration::from_millis(ms), Timer::Cleanup(node, attempt));
        }
    }

    /// Removes `node` if empty, then its emptied parents; retries while the
    /// last task is still on its way out.
    fn cleanup(&mut self, node: CgroupId, attempt: u32) {
        let mut current = Some(node);
        while let Some(id) = current {
            let parent = self.placer.tracker().node(id).map(|n| n.parent);
            match self.placer.try_remove(id) {
                Ok(Some(removal)) => {
                    self.stats.removed += 1;
                    let r = &removal.node.record;
                    let usage: Vec<String> = removal.usage.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    info!(
                        event = "node_removed",
                        path = %removal.path,
                        creator_pid = r.creator_pid,
                        creator_comm = %r.creator_comm,
                        lifetime_s = unix_now().saturating_sub(r.created_unix),
                        usage = %usage.join(" "),
                        "node removed"
                    );
                    current = parent.filter(|p| self.placer.tracker().node(*p).is_some());
                }
                Ok(None) => {
                    // Busy: retry while only exiting tasks hold it (the node
                    // asked about, or a parent reached by removing its last child).
                    if !self.placer.tracker().has_child_nodes(id) && !self.has_live_tasks(id) {
                        self.schedule_cleanup(id, if id == node { attempt + 1 } else { 1 });
                    }
                    return;
                }
                Err(e) => {
                    warn!("removing node {id}: {e}");
                    return;
                }
            }
        }
    }

    /// Whether a cgroup holds a task that is not on its way out.
    fn has_live_tasks(&mut self, id: CgroupId) -> bool {
        let Ok(Some(path)) = self.placer.backend().path_of(id) else { return false };
        let Ok(members) = self.hierarchy.members(&path) else { return true };
        members.into_iter().any(|tid| self.proc.stat(tid, tid).ok().flatten().is_some_and(|s| !s.is_dead()))
    }

    /// Removes (per policy) every node that is empty now; `occupied` are
    /// nodes known to hold tasks (not tried).
    fn sweep_empty_nodes(&mut self, occupied: &HashSet<CgroupId>) {
        if self.config.cleanup == Cleanup::Keep {
            return;
        }
        let tracker = self.placer.tracker();
        let leaves: Vec<CgroupId> =
            tracker.nodes().filter(|n| !tracker.has_child_nodes(n.id) && !occupied.contains(&n.id)).map(|n| n.id).collect();
        for id in leaves {
            if self.config.cleanup == Cleanup::Remove {
                self.cleanup(id, CLEANUP_BACKOFF_MS.len() as u32);
            } else {
                self.schedule_cleanup(id, 0);
            }
        }
    }

    fn reconcile(&mut self, why: &'static str) -> Result<Report, DaemonError> {
        let started = Instant::now();
        let tasks = self.snapshot()?;
        let config = &self.config;
        let proc = &self.proc;
        let admits = |t: &TaskSample| admits(config, proc, &t.comm, t.tid, &t.cgroup_path);
        let (report, placed) = reconcile(&mut self.placer, tasks, self.mask, !self.own_hierarchy, admits)?;
        self.last_placed = placed.iter().map(|p| (p.tid, p.cgroup)).collect();
        let mut occupied = HashSet::new();
        for p in placed {
            if self.placer.tracker().node(p.cgroup).is_some() {
                self.source.track(p.tid, p.cgroup);
                occupied.insert(p.cgroup);
            }
        }
        self.sweep_empty_nodes(&occupied);
        self.stats.reconciles += 1;
        info!(why, elapsed_ms = started.elapsed().as_millis() as u64, ?report, "reconciled");
        Ok(report)
    }

    /// Every task in scope: from the BPF task iterator, or from /proc.
    fn snapshot(&mut self) -> Result<Vec<TaskSample>, DaemonError> {
        let Source::Bpf(probe) = &mut self.source else {
            return Ok(scan(&self.proc, &self.hierarchy, &self.root)?);
        };
        let mut out = Vec::new();
        for r in probe.snapshot()? {
            let Some(cgroup_path) = self.placer.backend().path_of(r.cgroup)? else { continue };
            out.push(TaskSample {
                tid: r.tid,
                tgid: r.tgid,
                parent: r.parent,
                start: r.start_ns,
                comm: r.comm,
                cgroup: r.cgroup,
                cgroup_path,
                set: r.set,
            });
        }
        Ok(out)
    }

    fn log_stats(&self) {
        let s = &self.stats;
        info!(
            events = s.events,
            moved = s.moved,
            created = s.created,
            removed = s.removed,
            reconciles = s.reconciles,
            ring_dropped = self.source.dropped(),
            ring_emitted = self.source.emitted(),
            latency_p50_us = s.latency.quantile(0.5),
            latency_p99_us = s.latency.quantile(0.99),
            latency_max_us = s.latency.max(),
            "stats"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_mean_gap_over_the_latest_entries() {
        let mut a = Arrivals::default();
        assert_eq!(a.mean_gap(LEAVE_OVER), None);
        for i in 0..ENTER_OVER as u64 - 1 {
            a.note(i * 100_000);
        }
        assert_eq!(a.mean_gap(ENTER_OVER), None, "too few entries to tell");
        assert_eq!(a.mean_gap(LEAVE_OVER), Some(Duration::from_micros(100)));
        a.note((ENTER_OVER as u64 - 1) * 100_000);
        assert_eq!(a.mean_gap(ENTER_OVER), Some(Duration::from_micros(100)));
        // A slow stretch shows in the short window at once, in the long one
        // only in part.
        let last = (ENTER_OVER as u64 - 1) * 100_000;
        for i in 1..LEAVE_OVER as u64 {
            a.note(last + i * 1_000_000);
        }
        assert_eq!(a.mean_gap(LEAVE_OVER), Some(Duration::from_millis(1)));
        assert!(a.mean_gap(ENTER_OVER).unwrap() < Duration::from_micros(500));
        assert!(a.since_last().is_some());
    }
}
