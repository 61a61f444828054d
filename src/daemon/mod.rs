//! The daemon: the loop around the [`crate::pipeline`]. It keeps the event
//! source, the timers and the pace ([`pace`]: per-event wakeups or batch
//! windows), asks for reconciles when events may have been lost
//! ([`resync`]), and hands the pipeline's outcomes to the [`crate::sinks`].
//!
//! Every turn of the loop is bounded: at most [`TURN_BUDGET`] of events, then
//! timers, then signals again; nothing per event or per timer costs in
//! proportion to the hierarchy's size.

mod pace;
mod resync;
mod timers;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use tracing::{info, warn};

use crate::bpf::{Event, EventKind, Probe, Scope, Subtree};
use crate::config::{Config, Source as SourceChoice};
use crate::core::node::CgroupId;
use crate::core::nsset::NsKind;
use crate::core::tracker::Tracker;
use crate::ffi::Scheduling;
use crate::pipeline::mirrors::Mirrors;
use crate::pipeline::outcome::Outcome;
use crate::pipeline::placer::Placer;
use crate::sys::clock::unix_now;
use crate::pipeline::{Around, Job, Parts, Pipeline};
use crate::policy::gate::Gate;
use crate::sinks::ops::{Gauges, OpsJob, Started};
use crate::sinks::watch::Told;
use crate::sinks::Sinks;
use crate::source::{ProcSource, Source};
use crate::sys::cgroupfs::{CgroupBackend, CgroupWriter};
use crate::sys::error::IoError;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::procfs::ProcFs;
use crate::core::unit::UnitPlan;
use crate::sys::systemd::worker::{Settings as UnitSettings, UnitWorker};

use pace::Pace;
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
    #[error(transparent)]
    Sink(#[from] crate::sinks::SinkError),
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

/// Each step of a request to a user's manager (connect, handshake, call, the task's arrival) within this.
const UNIT_TIMEOUT: Duration = Duration::from_secs(2);
/// A user's manager that did not answer is not asked again for this long.
const UNIT_BACKOFF: Duration = Duration::from_secs(30);

/// Where users' managers are found, and how long they may take.
fn units_settings(hierarchy: &Hierarchy, proc: &ProcFs) -> UnitSettings {
    UnitSettings {
        runtime: std::path::PathBuf::from("/run/user"),
        hierarchy: hierarchy.clone(),
        proc: proc.clone(),
        timeout: UNIT_TIMEOUT,
        backoff: UNIT_BACKOFF,
    }
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
    /// The pipeline's: a setns caller settled, a node to look at for emptiness.
    Pipeline(Job),
    /// Look for empty nodes whose exit events may have been lost.
    Sweep,
    /// Without BPF: rescan /proc; the interval (ms) backs off while nothing is found.
    Rescan(u64),
    /// A reconcile asked for while the last one was too recent.
    Reconcile,
    /// Write the summaries of refusals and suppressed log lines.
    Report,
    /// Metrics, status file and counter log work.
    Ops(OpsJob),
    /// Tell the service manager the daemon is alive (`WATCHDOG=1`), and what it does.
    Watchdog(Duration),
}

/// The loop: the source, the timers and the pace around the pipeline, and
/// the sinks its outcomes go to.
struct Daemon {
    pipeline: Pipeline<CgroupWriter>,
    source: Source,
    timers: Timers<Timer>,
    pace: Pace,
    sinks: Sinks,
    /// Asks users' managers for sandboxes' scopes (where `user_units` applies).
    units: Option<UnitWorker>,
    config: Config,
    hierarchy: Hierarchy,
    root: String,
    proc: ProcFs,
    own_hierarchy: bool,
    /// The daemon's user namespace (inode): owners are read against it.
    user_ns: u64,
    /// Ring buffer losses already reconciled for.
    seen_drops: u64,
    /// When the latest reconcile ended, and whether another waits on a timer.
    last_reconcile: Option<Instant>,
    reconcile_pending: bool,
    /// Set by SIGTERM and SIGINT; long work looks at it.
    stop: Arc<AtomicBool>,
}

/// What the pipeline sees of the loop: the timers, the source's per-task
/// bookkeeping and the sinks.
struct Ports<'a> {
    timers: &'a mut Timers<Timer>,
    source: &'a mut Source,
    sinks: &'a mut Sinks,
    units: Option<&'a mut UnitWorker>,
}

impl Around for Ports<'_> {
    fn schedule(&mut self, after: Duration, job: Job) {
        self.timers.schedule(after, Timer::Pipeline(job));
    }
    fn track(&mut self, tid: u32, node: CgroupId) {
        self.source.track(tid, node);
    }
    fn settled(&mut self, tid: u32) {
        self.source.settled(tid);
    }
    fn publish(&mut self, outcome: Outcome<'_>) {
        self.sinks.publish(outcome);
    }
    fn follows_nodes(&mut self) -> bool {
        self.sinks.follow_nodes()
    }
    fn ask_unit(&mut self, plan: &UnitPlan) -> bool {
        self.units.as_mut().is_some_and(|u| u.ask(plan.clone()).is_ok())
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
    crate::pipeline::pins::raise_open_files_limit();

    let own_pid = std::process::id();
    let own_set = proc.ns_set(own_pid, own_pid)?.unwrap_or_default();
    let tracker = Tracker::new(own_set.masked(mask), hierarchy.granularity());
    let writer = CgroupWriter::new(hierarchy.clone(), &root).with_controllers(config.controllers.clone(), config.leaf);
    let mut placer = Placer::new(tracker, writer, unix_now);
    let started = Instant::now();
    let adopted = crate::pipeline::adopt::adopt(&mut placer, &hierarchy, &root, mask)?;
    let v2 = hierarchy.version() == crate::sys::hierarchy::Version::V2;
    let mirrors = Mirrors::new(crate::control::mirror::open_all(&config, v2)?);
    let adopt_ms = started.elapsed().as_millis() as u64;
    let delegation = crate::policy::gate::delegation_rule(&config, &hierarchy);
    // User managers exist on cgroup2 only, and matter only where the rule keeps nsgroup out of their units.
    let user_units = config.user_units && v2 && delegation.is_some();
    let units = match user_units {
        true => Some(UnitWorker::start(units_settings(&hierarchy, &proc)).map_err(|e| IoError::new("start", "the user units' thread", e))?),
        false => None,
    };
    let key = hierarchy.key().clone();
    let user_ns = own_set.get(NsKind::User);
    let gate = Gate::new(&config, proc.clone(), key.clone(), user_ns, delegation);
    let parts = Parts { placer, gate, mirrors, proc: proc.clone(), key, v2, own_hierarchy, user_units };
    let pipeline = Pipeline::new(parts, config.clone()).map_err(DaemonError::Config)?;

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

    let ops = crate::sinks::ops::Ops::start(&config, &hierarchy, &root, &sig_write)?;
    let api = crate::sinks::api::ApiHost::start(&config, &hierarchy, &root, &proc, &own_set, ops.recorder())?;
    let watch = crate::sinks::watch::Watch::start(&config, &hierarchy, &proc, pipeline.mirrors().memory());
    let pace = Pace::new(config.batch_window_us, config.coalesce_above_per_second, config.realtime_priority);
    let mut d = Daemon {
        pipeline,
        source,
        timers: Timers::default(),
        pace,
        sinks: Sinks::new(api, ops, watch),
        units,
        config,
        hierarchy,
        root,
        proc,
        own_hierarchy,
        user_ns,
        seen_drops: 0,
        last_reconcile: None,
        reconcile_pending: false,
        stop,
    };
    let reconcile_started = Instant::now();
    let report = d.reconcile("start")?;
    d.apply_pace();
    d.start_rescans();
    info!(
        hierarchy = %d.hierarchy.mount().display(),
        version = if v2 { "v2" } else { "v1" },
        root = %crate::core::escape::Escaped(&d.root),
        adopted,
        moved = report.moved,
        created = report.created,
        source = %d.source.describe(),
        mirrors = %d.pipeline.mirrors().controllers().collect::<Vec<_>>().join(" "),
        adopt_ms,
        reconcile_ms = reconcile_started.elapsed().as_millis() as u64,
        "nsgroup is tracking"
    );
    let started = Started {
        source: d.source.describe(),
        own_hierarchy: d.own_hierarchy,
        mirrors: d.pipeline.mirrors().controllers().map(str::to_string).collect(),
    };
    let (tracker, backend) = d.pipeline.placer().parts();
    for node in tracker.nodes() {
        d.sinks.watch.arm(node, &backend.path_of(node.id).ok().flatten().unwrap_or_default());
    }
    let gauges = d.gauges();
    let (tracker, backend) = d.pipeline.placer().parts();
    let nodes = tracker.nodes().map(|n| (n, backend.path_of(n.id).ok().flatten().unwrap_or_default()));
    d.sinks.ops.started(started, &gauges, nodes, &mut ops_timers(&mut d.timers));
    // The BTF parse at load, and the threads' start, left freed heap behind.
    crate::ffi::release_free_memory();
    d.notify("READY=1");
    if let Some(every) = crate::sys::notify::watchdog_interval() {
        d.timers.schedule(every, Timer::Watchdog(every));
    }
    d.event_loop(&sig_read)?;
    d.notify("STOPPING=1");
    info!("stopping on signal; nodes stay");
    d.sinks.ops.stopped(&d.gauges());
    Ok(())
}

impl Daemon {
    /// Whether SIGTERM or SIGINT came.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The pipeline, with the loop around it.
    fn step(&mut self) -> (&mut Pipeline<CgroupWriter>, Ports<'_>) {
        let units = self.units.as_mut();
        (&mut self.pipeline, Ports { timers: &mut self.timers, source: &mut self.source, sinks: &mut self.sinks, units })
    }

    fn event_loop(&mut self, signals: &UnixStream) -> Result<(), DaemonError> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut now = Vec::with_capacity(BATCH);
        while !self.stopping() {
            // In the high-rate mode the daemon does not wake per event: it
            // looks at the ring once per batch window.
            let coalescing = self.pace.coalescing();
            let tick = coalescing.then(|| Duration::from_micros(self.config.batch_window_us));
            // More fired watches than a turn takes: look again at once.
            let more = self.sinks.watch.pending().then_some(Duration::ZERO);
            let timeout = [self.timers.next_due(), self.pace.held_until(), tick, more].into_iter().flatten().min();
            let ts = timeout.map(|t| rustix::time::Timespec { tv_sec: t.as_secs() as i64, tv_nsec: t.subsec_nanos() as i64 });
            let mut triggered = Vec::new();
            let units_answered;
            let watches_fired = {
                // In the high-rate mode the ring is not polled at all: a
                // poller sits on its wait queue, and every event would wake it.
                let ring = self.source.fd();
                let watches = self.sinks.watch.fd();
                let tokens: Vec<u64> = self.sinks.watch.triggers().map(|(t, _)| t).collect();
                let mut fds = Vec::with_capacity(3 + tokens.len());
                fds.push(PollFd::new(signals, PollFlags::IN));
                fds.extend(watches.as_ref().map(|w| PollFd::new(w, PollFlags::IN)));
                if !coalescing {
                    fds.push(PollFd::new(&ring, PollFlags::IN));
                }
                // PSI triggers, polled here (an epoll set's poll would take their events).
                let first_trigger = fds.len();
                fds.extend(self.sinks.watch.triggers().map(|(_, fd)| PollFd::from_borrowed_fd(fd, PollFlags::PRI)));
                let units_at = fds.len();
                fds.extend(self.units.as_ref().map(|u| PollFd::from_borrowed_fd(u.fd(), PollFlags::IN)));
                match poll(&mut fds, ts.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(IoError::new("poll", "the ring buffer", e).into()),
                }
                if fds[0].revents().contains(PollFlags::IN) {
                    let mut buf = [0u8; 16];
                    let _ = (&*signals).read(&mut buf);
                }
                for (token, fd) in tokens.iter().zip(&fds[first_trigger..]) {
                    if !fd.revents().is_empty() {
                        triggered.push((*token, fd.revents()));
                    }
                }
                units_answered = fds.get(units_at).is_some_and(|fd| fd.revents().contains(PollFlags::IN));
                watches.is_some() && fds[1].revents().contains(PollFlags::IN)
            };
            if units_answered {
                self.handle_units();
            }
            for (token, revents) in triggered.drain(..) {
                self.sinks.watch.trigger_polled(token, revents);
            }
            if watches_fired || self.sinks.watch.pending() {
                self.handle_watches();
            }
            self.handle_events(&mut batch, &mut now)?;
            let dropped = self.source.dropped();
            if dropped > self.seen_drops {
                warn!(lost = dropped - self.seen_drops, "events were lost (the ring buffer overflowed); reconciling from /proc");
                self.sinks.publish(Outcome::Overflow { lost: dropped - self.seen_drops });
                self.seen_drops = dropped;
                self.request_reconcile("overflow");
            }
            self.run_timers();
            self.sinks.api.flush();
            let gauges = self.gauges();
            self.sinks.ops.turn(&gauges, &mut ops_timers(&mut self.timers));
        }
        Ok(())
    }

    /// What users' managers answered, to the pipeline.
    fn handle_units(&mut self) {
        let Some(worker) = self.units.as_mut() else { return };
        let done = worker.finished();
        let (pipeline, mut ports) = self.step();
        for d in &done {
            pipeline.unit_done(&d.plan, d.result.as_ref(), &mut ports);
        }
    }

    /// What the kernel told about nodes (OOM kills, pressure), to every sink.
    fn handle_watches(&mut self) {
        for told in self.sinks.watch.fired() {
            match &told {
                Told::Oom(kill) => self.sinks.publish(Outcome::OomKill(kill)),
                Told::Pressure(crossed) => self.sinks.publish(Outcome::Pressure(crossed)),
            }
        }
    }

    /// Takes and handles events until the source is empty, for at most [`TURN_BUDGET`].
    fn handle_events(&mut self, batch: &mut Vec<Event>, now: &mut Vec<Event>) -> Result<(), DaemonError> {
        let turn_ends = Instant::now() + TURN_BUDGET;
        while !self.stopping() {
            batch.clear();
            self.pace.release_held(batch);
            let fresh = batch.len();
            let undecodable = self.source.drain(BATCH, batch)? as u64;
            if undecodable > 0 {
                self.sinks.publish(Outcome::Events { count: 0, undecodable });
            }
            let quiet = batch.len() == fresh;
            let mut changed = false;
            for ev in batch[fresh..].iter().filter(|e| e.kind != EventKind::Exit) {
                changed |= self.pace.note_entry(ev.ktime_ns);
            }
            if changed {
                self.apply_pace();
            }
            self.process(batch, now);
            if quiet {
                // Nothing new: only held events, whose time may have come.
                if self.pace.quiet_tick() {
                    self.apply_pace();
                }
                break;
            }
            if Instant::now() >= turn_ends {
                break;
            }
        }
        self.arm_reports();
        Ok(())
    }

    /// Hands a batch to the pipeline, in order, but for what the pace holds
    /// back or coalesces away.
    fn process(&mut self, batch: &mut Vec<Event>, now: &mut Vec<Event>) {
        let coalesced = self.pace.split(batch, now);
        let (pipeline, mut ports) = self.step();
        for tid in &coalesced {
            pipeline.forget_entry(*tid);
        }
        if !coalesced.is_empty() {
            ports.publish(Outcome::Coalesced { entries: coalesced.len() as u64 });
        }
        if !now.is_empty() {
            ports.publish(Outcome::Events { count: now.len() as u64, undecodable: 0 });
        }
        for ev in now.drain(..) {
            pipeline.on_event(&ev, &mut ports);
        }
    }

    /// Runs the timers that are due, for at most [`TIMER_BUDGET`].
    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some(job) = self.timers.pop_due(now) {
            match job {
                Timer::Pipeline(Job::Settle(tid)) => {
                    let (pipeline, mut ports) = self.step();
                    pipeline.settle(tid, &mut ports);
                }
                Timer::Pipeline(Job::Cleanup(node, attempt)) => {
                    let (pipeline, mut ports) = self.step();
                    pipeline.cleanup(node, attempt, &mut ports);
                }
                Timer::Sweep => {
                    let (pipeline, mut ports) = self.step();
                    pipeline.sweep(&Default::default(), &mut ports);
                }
                Timer::Rescan(interval) => self.rescan(interval),
                Timer::Reconcile => {
                    self.reconcile_pending = false;
                    self.request_reconcile("overflow");
                }
                Timer::Report => {
                    let tracker = self.pipeline.tracker();
                    self.sinks.log.write_reports(|owner| tracker.nodes_of_owner(owner), self.config.max_nodes_per_user);
                }
                Timer::Ops(job) => {
                    let gauges = self.gauges();
                    self.sinks.ops.timer(job, &gauges, &mut ops_timers(&mut self.timers));
                }
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

    /// The pace's wishes: the ring's wakeups, and the scheduling policy.
    fn apply_pace(&mut self) {
        if let Err(e) = self.source.set_wakeups(!self.pace.coalescing()) {
            warn!("could not switch the ring buffer's wakeups: {e}");
        }
        if let Some(priority) = self.pace.realtime() {
            match crate::ffi::set_scheduling(Scheduling::Fifo(priority)) {
                Ok(()) => return,
                Err(e) => {
                    warn!("could not run under SCHED_FIFO (realtime_priority): {e}; the normal scheduler from now on");
                    self.pace.realtime_refused();
                }
            }
        }
        // The nice value set at start, or the one there was if that failed.
        let nice = rustix::process::getpriority_process(None).unwrap_or(0);
        let slice_ns = u64::from(self.config.slice_us) * 1000;
        if let Err(e) = crate::ffi::set_scheduling(Scheduling::Fair { nice, slice_ns }) {
            warn!("could not set the time slice (slice_us): {e}");
        }
    }

    /// Sends `state` and a `STATUS=` line of what the daemon tracks to the
    /// service manager, if there is one.
    fn notify(&self, state: &str) {
        let c = self.sinks.ops.counters();
        let status = format!(
            "STATUS=tracking {} in {}: {} nodes, {} placed, {} refused, {} events lost",
            self.root,
            self.hierarchy.mount().display(),
            self.pipeline.tracker().node_count(),
            c.placements,
            c.refusals,
            self.source.dropped()
        );
        if let Err(e) = crate::sys::notify::sd_notify(&format!("{state}\n{status}")) {
            warn!("could not notify the service manager: {e}");
        }
    }

    /// Starts the report timer when something was counted.
    fn arm_reports(&mut self) {
        if let Some(after) = self.sinks.log.report_due() {
            self.timers.schedule(after, Timer::Report);
        }
    }

    /// What operability hears from the loop alone.
    fn gauges(&self) -> Gauges {
        Gauges {
            ring_dropped: self.source.dropped(),
            ring_emitted: self.source.emitted(),
            live_nodes: self.pipeline.tracker().node_count() as u64,
            pinned: self.pipeline.pinned() as u64,
            watches_skipped: self.sinks.watch.skipped().0,
            triggers_skipped: self.sinks.watch.skipped().1,
        }
    }
}

/// Operability's timers, among the loop's.
fn ops_timers(timers: &mut Timers<Timer>) -> impl FnMut(Duration, OpsJob) + '_ {
    move |after, job| timers.schedule(after, Timer::Ops(job))
}
