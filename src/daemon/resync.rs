//! Restoring the invariant from a snapshot when events may have been lost:
//! at start, after ring overflows (at most once per [`RECONCILE_EVERY`]), and
//! on a backing-off timer without BPF (a fixed one without syscall hooks). A reconcile is heavy work: it never
//! runs under SCHED_FIFO, and a stop signal cuts it short.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Daemon, DaemonError, Timer};
use crate::pipeline::reconcile::Report;
use crate::source::Source;
use crate::sys::cgroupfs::CgroupBackend;
use crate::sys::scan::{scan, TaskSample};

/// Reconciles after overflows are at least this far apart: a storm that
/// keeps overflowing the ring gets one reconcile per interval, not one per turn.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Rescan intervals without BPF: from 1 s, doubling while rescans find nothing, up to 60 s.
const RESCAN_MIN_MS: u64 = 1000;
const RESCAN_MAX_MS: u64 = 60_000;

/// When to look for emptied nodes again after a reconcile for lost events
/// (exits may have been lost too).
const SWEEP_AFTER_OVERFLOW_MS: [u64; 3] = [100, 1000, 3000];

impl Daemon {
    /// Reconciles now, or once the last reconcile is [`RECONCILE_EVERY`] old.
    pub(super) fn request_reconcile(&mut self, why: &'static str) {
        let wait = self.last_reconcile.map_or(Duration::ZERO, |at| RECONCILE_EVERY.saturating_sub(at.elapsed()));
        if !wait.is_zero() {
            if !self.reconcile_pending {
                self.reconcile_pending = true;
                self.timers.schedule(wait, Timer::Reconcile);
            }
            return;
        }
        if let Err(e) = self.reconcile(why) {
            warn!("reconcile ({why}) failed: {e}");
        }
        for ms in SWEEP_AFTER_OVERFLOW_MS {
            self.timers.schedule(Duration::from_millis(ms), Timer::Sweep);
        }
    }

    /// Starts the rescans where the source needs them (no BPF, or no syscall hook).
    pub(super) fn start_rescans(&mut self) {
        if self.source.needs_rescans() {
            let first = self.source.rescan_interval().map_or(RESCAN_MIN_MS, |i| i.as_millis() as u64);
            self.timers.schedule(Duration::from_millis(first), Timer::Rescan(first));
        }
    }

    /// Without BPF: a reconcile, then the next one sooner if it found work.
    /// With BPF but no syscall hook: one every configured interval.
    pub(super) fn rescan(&mut self, interval: u64) {
        let found = match self.reconcile("rescan") {
            Ok(r) => r.moved > 0,
            Err(e) => {
                warn!("rescan failed: {e}");
                false
            }
        };
        let backoff = if found { RESCAN_MIN_MS } else { (interval * 2).min(RESCAN_MAX_MS) };
        let next = self.source.rescan_interval().map_or(backoff, |i| i.as_millis() as u64);
        self.timers.schedule(Duration::from_millis(next), Timer::Rescan(next));
    }

    /// A snapshot of every task, placed by the pipeline; heavy work, so never
    /// under SCHED_FIFO.
    pub(super) fn reconcile(&mut self, why: &'static str) -> Result<Report, DaemonError> {
        self.pace.set_heavy(true);
        self.apply_pace();
        let result = self.snapshot().and_then(|tasks| {
            let stop = Arc::clone(&self.stop);
            let (pipeline, mut ports) = self.step();
            Ok(pipeline.reconcile(tasks, why, &stop, &mut ports)?)
        });
        self.pace.set_heavy(false);
        self.apply_pace();
        self.last_reconcile = Some(Instant::now());
        result
    }

    /// Every task in scope: from the BPF task iterator, or from /proc. The
    /// hierarchy is walked again (once) only when the snapshot names a
    /// cgroup the daemon has not seen.
    fn snapshot(&mut self) -> Result<Vec<TaskSample>, DaemonError> {
        let writer = self.pipeline.placer().backend();
        let Source::Bpf(probe) = &mut self.source else {
            let mut tasks = scan(&self.proc, &self.hierarchy, &self.root, self.user_ns)?.tasks;
            tasks.iter_mut().for_each(|t| t.cgroup = writer.home(t.cgroup));
            return Ok(tasks);
        };
        let records = probe.snapshot()?;
        if records.iter().any(|r| writer.path_of(r.cgroup).ok().flatten().is_none()) {
            writer.rescan()?;
        }
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let Some(cgroup_path) = writer.path_of(r.cgroup)? else { continue };
            out.push(TaskSample {
                tid: r.tid,
                tgid: r.tgid,
                parent: r.parent,
                start: r.start_ns,
                uid: r.uid,
                owner: r.owner,
                comm: r.comm,
                cgroup: writer.home(r.cgroup),
                cgroup_path,
                set: r.set,
            });
        }
        Ok(out)
    }
}
