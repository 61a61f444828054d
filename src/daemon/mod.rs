//! The daemon: events in, placements out, empty nodes removed, and a
//! reconcile whenever events may have been lost. This module holds the loop;
//! what it calls lives beside it: the pace ([`mode`]), the checks made on a
//! task's behalf ([`gate`]), placement ([`place`]), cleanup, reconcile
//! ([`resync`]), adoption at start, namespace pins, timers and reports.
//!
//! Every turn of the loop is bounded: at most [`TURN_BUDGET`] of events, then
//! timers, then signals again; nothing per event or per timer costs in
//! proportion to the hierarchy's size.

mod adopt;
mod api;
pub mod metrics;
mod cleanup;
mod control;
mod gate;
mod mode;
mod outcome;
mod pins;
mod place;
mod reports;
mod resync;
mod timers;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use tracing::{info, warn};

use crate::bpf::{Event, EventKind, Probe, Scope, Subtree};
use crate::config::{Config, Source as SourceChoice};
use crate::core::histogram::Histogram;
use crate::core::node::CgroupId;
use crate::core::nsset::{NsKind, NsMask, NsSet};
use crate::core::quota::{QuotaLimits, UserQuotas};
use crate::core::tracker::{Limits, Tracker};
use crate::placer::{unix_now, Placer};
use crate::source::{ProcSource, Source};
use crate::sys::cgroupfs::CgroupWriter;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::error::IoError;
use crate::sys::procfs::ProcFs;

use gate::Gate;
use outcome::{Log, Outcome, Sink};
use mode::Arrivals;
use pins::Pins;
use reports::{Kind, Reports, REPORT_INTERVAL};
use timers::Timers;

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
    #[error(transparent)]
    Mirror(#[from] crate::control::mirror::MirrorError),
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

/// The longest stretch of event handling before timers and signals get a turn.
const TURN_BUDGET: Duration = Duration::from_millis(20);
/// The longest stretch of due timers run in one turn.
const TIMER_BUDGET: Duration = Duration::from_millis(20);
/// Events taken from the source at a time.
const BATCH: usize = 4096;

/// Work the daemon does later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// A setns caller's set has settled.
    Settle(u32),
    /// Look for empty nodes whose exit events may have been lost.
    Sweep,
    /// Without BPF: rescan /proc; the interval (ms) backs off while nothing is found.
    Rescan(u64),
    /// See whether a node emptied; the attempt number backs off.
    Cleanup(CgroupId, u32),
    /// A reconcile asked for while the last one was too recent.
    Reconcile,
    /// Write the summaries of refusals and suppressed log lines.
    Report,
    /// Metrics, status file and counter log work (`metrics`).
    Ops(metrics::OpsJob),
    /// Tell the service manager the daemon is alive (`WATCHDOG=1`), and what it does.
    Watchdog(Duration),
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
    refused: u64,
    /// Moves dropped because the task exited first.
    dropped_gone: u64,
    /// Moves dropped because the tid had become another task's.
    dropped_reused: u64,
    /// Moves dropped because another writer had moved the task.
    dropped_other_writer: u64,
    /// Per mirror: tasks placed outside its root, so not mirrored.
    not_mirrored: Vec<u64>,
    latency: Histogram,
}

impl Stats {
    fn count_dropped(&mut self, why: gate::Dropped) {
        match why {
            gate::Dropped::Gone => self.dropped_gone += 1,
            gate::Dropped::Reused => self.dropped_reused += 1,
            gate::Dropped::OtherWriter => self.dropped_other_writer += 1,
        }
    }
}

struct Daemon {
    placer: Placer<CgroupWriter>,
    hierarchy: Hierarchy,
    root: String,
    config: Config,
    mask: NsMask,
    own_hierarchy: bool,
    proc: ProcFs,
    /// The daemon's user namespace (inode): owners are read against it.
    user_ns: u64,
    source: Source,
    timers: Timers<Timer>,
    deferred: HashMap<u32, Deferred>,
    /// Tasks whose node `nsgroup exec` is still setting up, with the set
    /// they came from: placed at their exec.
    awaiting_exec: HashMap<u32, NsSet>,
    /// Where each task (tid → its start time, its cgroup) was last put: the
    /// cgroup later events of it are decided from, whatever their own says.
    last_placed: HashMap<u32, (u64, CgroupId)>,
    /// When the latest entries (not exits) happened.
    arrivals: Arrivals,
    /// Whether the daemon runs in its high-rate mode.
    busy: bool,
    /// Whether heavy work (a reconcile) is under way: never under SCHED_FIFO.
    heavy: bool,
    /// Events held back for the batch window (high-rate mode), in order.
    held: Vec<Event>,
    seen_drops: u64,
    stats: Stats,
    gate: Gate,
    pins: Pins,
    reports: Reports,
    /// Nodes with a cleanup timer pending (one each at most).
    cleanups: HashSet<CgroupId>,
    /// When the latest reconcile ended, and whether another waits on a timer.
    last_reconcile: Option<Instant>,
    reconcile_pending: bool,
    /// Set by SIGTERM and SIGINT; long work looks at it.
    stop: Arc<AtomicBool>,
    /// Who hears of outcomes: the log, the local API's subscribers (and
    /// strict mode, held there), metrics and history (`metrics`: also the
    /// status file and SIGHUP).
    sinks: Sinks,
    /// The v1 controller hierarchies every node is mirrored in.
    mirrors: Vec<crate::control::mirror::Mirror>,
}

/// Every sink, in the order they hear of an outcome.
struct Sinks {
    log: Log,
    api: api::ApiHost,
    ops: metrics::Ops,
}

impl Sinks {
    fn new(api: api::ApiHost, ops: metrics::Ops) -> Sinks {
        Sinks { log: Log, api, ops }
    }

    fn all(&mut self) -> [&mut dyn Sink; 3] {
        [&mut self.log, &mut self.api, &mut self.ops]
    }

    /// Hands `outcome` to every sink.
    fn publish(&mut self, outcome: Outcome<'_>) {
        for sink in self.all() {
            sink.take(&outcome);
        }
    }

    /// Whether any sink follows nodes (a reconcile then reports the nodes it made).
    fn follow_nodes(&mut self) -> bool {
        self.all().iter().any(|s| s.follows_nodes())
    }
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
    let stop = Arc::new(AtomicBool::new(false));
    let (sig_read, sig_write) = UnixStream::pair().map_err(DaemonError::Signals)?;
    sig_read.set_nonblocking(true).map_err(DaemonError::Signals)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(DaemonError::Signals)?;
        signal_hook::low_level::pipe::register(sig, sig_write.try_clone().map_err(DaemonError::Signals)?)
            .map_err(DaemonError::Signals)?;
    }
    // Each node holds one namespace open (see `pins`).
    pins::raise_open_files_limit();

    let own_pid = std::process::id();
    let own_set = proc.ns_set(own_pid, own_pid)?.unwrap_or_default();
    let base_set = own_set.masked(mask);
    let limits = Limits { max_depth: config.max_depth, max_nodes: config.max_nodes };
    let tracker = Tracker::new(base_set, hierarchy.granularity(), limits);
    let writer = CgroupWriter::new(hierarchy.clone(), &root).with_controllers(config.controllers.clone(), config.leaf);
    let mut placer = Placer::new(tracker, writer, unix_now);
    let started = Instant::now();
    let adopted = adopt::adopt(&mut placer, &hierarchy, &root, mask)?;
    let mirrors = crate::control::mirror::open_all(&config, hierarchy.version() == crate::sys::hierarchy::Version::V2)?;
    let adopt_ms = started.elapsed().as_millis() as u64;
    let quotas = UserQuotas::new(QuotaLimits {
        max_nodes_per_user: config.max_nodes_per_user,
        creations_per_second: config.max_creations_per_second_per_user,
        exempt_uids: config.quota_exempt_uids.clone(),
    });
    let delegation = config
        .delegated_only
        .unwrap_or_else(|| crate::sys::delegation::systemd_manages(&hierarchy))
        .then(|| crate::sys::delegation::Delegation::new(hierarchy.clone()));
    let user_ns = own_set.get(NsKind::User);
    let gate = Gate::new(proc.clone(), hierarchy.key().clone(), quotas, user_ns, delegation);

    // Attach before the snapshot: what happens meanwhile queues up and is
    // applied after it (placements are idempotent).
    let scope = Scope {
        subtree: Subtree::at(&hierarchy, &root, root_id),
        ring_buffer_bytes: config.ring_buffer_bytes,
        base_user_ns: user_ns,
        hooks: config.hooks,
        snapshot_interval: Duration::from_millis(config.snapshot_interval_ms),
    };
    let source = match config.source {
        SourceChoice::Bpf => Source::Bpf(Box::new(Probe::load(scope)?)),
        SourceChoice::Proc => Source::Proc(Box::new(ProcSource::open(proc.clone(), hierarchy.clone(), &root, user_ns)?)),
        SourceChoice::Auto => match Probe::load(scope) {
            Ok(probe) => Source::Bpf(Box::new(probe)),
            Err(e) => {
                warn!("BPF unavailable, falling back to the proc connector: {e}");
                Source::Proc(Box::new(ProcSource::open(proc.clone(), hierarchy.clone(), &root, user_ns)?))
            }
        },
    };
    if config.nice != 0 {
        if let Err(e) = rustix::process::setpriority_process(None, i32::from(config.nice)) {
            warn!("could not set the nice value: {e}");
        }
    }

    let api = api::ApiHost::start(&config, &hierarchy, &root, &proc, &own_set)?;
    let ops = metrics::Ops::start(&config, &hierarchy, &root, &sig_write)?;
    let mut d = Daemon {
        placer,
        hierarchy,
        root,
        config,
        mask,
        own_hierarchy,
        proc,
        user_ns,
        source,
        timers: Timers::default(),
        deferred: HashMap::new(),
        awaiting_exec: HashMap::new(),
        last_placed: HashMap::new(),
        arrivals: Arrivals::default(),
        busy: false,
        heavy: false,
        held: Vec::new(),
        seen_drops: 0,
        stats: Stats { not_mirrored: vec![0; mirrors.len()], ..Stats::default() },
        gate,
        pins: Pins::default(),
        reports: Reports::default(),
        cleanups: HashSet::new(),
        last_reconcile: None,
        reconcile_pending: false,
        stop,
        mirrors,
        sinks: Sinks::new(api, ops),
    };
    d.adopt_mirrors();
    let reconcile_started = Instant::now();
    let report = d.reconcile("start")?;
    d.apply_mode();
    if d.source.needs_rescans() {
        let first = d.source.rescan_interval().map_or(resync::RESCAN_MIN_MS, |i| i.as_millis() as u64);
        d.timers.schedule(Duration::from_millis(first), Timer::Rescan(first));
    }
    info!(
        hierarchy = %d.hierarchy.mount().display(),
        version = if d.hierarchy.version() == crate::sys::hierarchy::Version::V2 { "v2" } else { "v1" },
        root = %crate::core::escape::Escaped(&d.root),
        adopted,
        moved = report.moved,
        created = report.created,
        source = %d.source.describe(),
        mirrors = %d.mirrors.iter().map(|m| m.controllers()).collect::<Vec<_>>().join(" "),
        adopt_ms,
        reconcile_ms = reconcile_started.elapsed().as_millis() as u64,
        "nsgroup is tracking"
    );
    d.ops_started();
    // The BTF parse at load, and the threads' start, left freed heap behind.
    crate::ffi::release_free_memory();
    d.notify("READY=1");
    if let Some(every) = crate::sys::notify::watchdog_interval() {
        d.timers.schedule(every, Timer::Watchdog(every));
    }
    d.event_loop(&sig_read)?;
    d.notify("STOPPING=1");
    info!("stopping on signal; nodes stay");
    d.log_stats();
    d.ops_stopped();
    Ok(())
}

impl Daemon {
    /// Whether SIGTERM or SIGINT came.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn event_loop(&mut self, signals: &UnixStream) -> Result<(), DaemonError> {
        let mut batch = Vec::with_capacity(BATCH);
        while !self.stopping() {
            // In the high-rate mode the daemon does not wake per event: it
            // looks at the ring once per batch window.
            let coalescing = self.coalescing();
            let tick = coalescing.then(|| Duration::from_micros(self.config.batch_window_us));
            let timeout = [self.timers.next_due(), self.held_until(), tick].into_iter().flatten().min();
            let ts = timeout.map(|t| rustix::time::Timespec { tv_sec: t.as_secs() as i64, tv_nsec: t.subsec_nanos() as i64 });
            {
                // In the high-rate mode the ring is not polled at all: a
                // poller sits on its wait queue, and every event would wake it.
                let ring = self.source.fd();
                let mut fds = [PollFd::new(signals, PollFlags::IN), PollFd::new(&ring, PollFlags::IN)];
                let watched = if coalescing { &mut fds[..1] } else { &mut fds[..] };
                match poll(watched, ts.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(IoError::new("poll", "the ring buffer", e).into()),
                }
                if fds[0].revents().contains(PollFlags::IN) {
                    let mut buf = [0u8; 16];
                    let _ = (&*signals).read(&mut buf);
                }
            }
            self.handle_events(&mut batch)?;
            let dropped = self.source.dropped();
            if dropped > self.seen_drops {
                warn!(lost = dropped - self.seen_drops, "events were lost (the ring buffer overflowed); reconciling from /proc");
                self.sinks.publish(Outcome::Overflow { lost: dropped - self.seen_drops });
                self.seen_drops = dropped;
                self.request_reconcile("overflow");
            }
            self.run_timers();
            self.sinks.api.flush();
            self.ops_turn();
        }
        Ok(())
    }

    /// Takes and handles events until the source is empty, for at most [`TURN_BUDGET`].
    fn handle_events(&mut self, batch: &mut Vec<Event>) -> Result<(), DaemonError> {
        let turn_ends = Instant::now() + TURN_BUDGET;
        while !self.stopping() {
            batch.clear();
            batch.append(&mut self.held);
            let fresh = batch.len();
            let bad = self.source.drain(BATCH, batch)?;
            if bad > 0 && self.reports.allow(Kind::Undecodable) {
                warn!(records = bad, "undecodable ring buffer records skipped");
            }
            if batch.len() == fresh {
                // Nothing new: only held events, whose time may have come.
                self.process(batch);
                self.quiet_tick();
                break;
            }
            for ev in batch[fresh..].iter().filter(|e| e.kind != EventKind::Exit) {
                self.arrivals.note(ev.ktime_ns);
                self.update_mode();
            }
            self.process(batch);
            if Instant::now() >= turn_ends {
                break;
            }
        }
        self.arm_reports();
        Ok(())
    }

    /// Runs the timers that are due, for at most [`TIMER_BUDGET`].
    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(job) = self.timers.pop_due(now) {
            match job {
                Timer::Settle(tid) => {
                    if let Some(d) = self.deferred.remove(&tid) {
                        self.place_event(&d.last, d.first_prev);
                    }
                }
                Timer::Cleanup(node, attempt) => self.cleanup(node, attempt),
                Timer::Sweep => self.sweep_empty_nodes(&HashSet::new()),
                Timer::Rescan(interval) => self.rescan(interval),
                Timer::Reconcile => {
                    self.reconcile_pending = false;
                    self.request_reconcile("overflow");
                }
                Timer::Report => self.write_reports(),
                Timer::Ops(job) => self.ops_timer(job),
                Timer::Watchdog(every) => {
                    self.notify("WATCHDOG=1");
                    self.timers.schedule(every, Timer::Watchdog(every));
                }
            }
            if self.stopping() || now.elapsed() >= TIMER_BUDGET {
                break;
            }
        }
        self.arm_reports();
    }

    /// Sends `state` and a `STATUS=` line of what the daemon tracks to the
    /// service manager, if there is one.
    fn notify(&self, state: &str) {
        let s = &self.stats;
        let status = format!(
            "STATUS=tracking {} in {}: {} nodes, {} placed, {} refused, {} events lost",
            self.root,
            self.hierarchy.mount().display(),
            self.placer.tracker().node_count(),
            s.moved,
            s.refused,
            self.source.dropped()
        );
        if let Err(e) = crate::sys::notify::sd_notify(&format!("{state}\n{status}")) {
            warn!("could not notify the service manager: {e}");
        }
    }

    /// Starts the report timer when something was counted.
    fn arm_reports(&mut self) {
        if self.reports.arm() {
            self.timers.schedule(REPORT_INTERVAL, Timer::Report);
        }
    }

    /// One line per kind of suppressed log lines, one per user with refusals.
    fn write_reports(&mut self) {
        let summary = self.reports.take();
        for (kind, suppressed) in summary.suppressed {
            warn!(kind, suppressed, interval_s = REPORT_INTERVAL.as_secs(), "log lines suppressed");
        }
        for (owner_uid, r) in summary.users {
            warn!(
                owner_uid,
                refused_quota = r.quota,
                refused_rate = r.rate,
                refused_other = r.other,
                live_nodes = self.placer.tracker().nodes_of_owner(owner_uid),
                max_nodes_per_user = self.config.max_nodes_per_user,
                interval_s = REPORT_INTERVAL.as_secs(),
                "entries refused (quota, rate or rules); their tasks stay where they are"
            );
        }
        let (users, refused) = summary.other_users;
        if users > 0 {
            warn!(users, refused, "entries of further users refused");
        }
    }

    fn log_stats(&self) {
        let s = &self.stats;
        info!(
            events = s.events,
            moved = s.moved,
            created = s.created,
            removed = s.removed,
            reconciles = s.reconciles,
            refused = s.refused,
            dropped_gone = s.dropped_gone,
            dropped_reused = s.dropped_reused,
            dropped_other_writer = s.dropped_other_writer,
            not_mirrored = %s.not_mirrored.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            pinned = self.pins.len(),
            ring_dropped = self.source.dropped(),
            ring_emitted = self.source.emitted(),
            latency_p50_us = s.latency.quantile(0.5),
            latency_p99_us = s.latency.quantile(0.99),
            latency_max_us = s.latency.max(),
            "stats"
        );
    }
}
