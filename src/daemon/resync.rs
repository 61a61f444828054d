//! Restoring the invariant from a snapshot when events may have been lost:
//! at start, after ring overflows (at most once per [`RECONCILE_EVERY`]), and
//! on a backing-off timer without BPF (a fixed one without syscall hooks). A reconcile is heavy work: it never
//! runs under SCHED_FIFO, and a stop signal cuts it short.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::gate::Checked;
use super::outcome::{Cause, Outcome};
use crate::core::node::{CgroupId, Node};
use super::control::with_policy_limits;
use super::place::admits;
use super::{Daemon, DaemonError, Timer};
use crate::core::tracker::Placement;
use crate::reconcile::{reconcile, Report};
use crate::source::Source;
use crate::sys::cgroupfs::CgroupBackend;
use crate::sys::scan::{scan, TaskSample};

/// Reconciles after overflows are at least this far apart: a storm that
/// keeps overflowing the ring gets one reconcile per interval, not one per turn.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Rescan intervals without BPF: from 1 s, doubling while rescans find nothing, up to 60 s.
pub(super) const RESCAN_MIN_MS: u64 = 1000;
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

    pub(super) fn reconcile(&mut self, why: &'static str) -> Result<Report, DaemonError> {
        self.heavy = true;
        self.apply_mode();
        let result = self.reconcile_snapshot(why);
        self.heavy = false;
        self.apply_mode();
        self.last_reconcile = Some(Instant::now());
        result
    }

    fn reconcile_snapshot(&mut self, why: &'static str) -> Result<Report, DaemonError> {
        let started = Instant::now();
        let tasks = self.snapshot()?;
        let before: Option<HashSet<CgroupId>> = self.sinks.follow_nodes().then(|| self.placer.tracker().nodes().map(|n| n.id).collect());
        let (config, gate, stop, stats) = (&self.config, &mut self.gate, &self.stop, &mut self.stats);
        let v2 = self.hierarchy.version() == crate::sys::hierarchy::Version::V2;
        let admitted = |t: &TaskSample| admits(config, &t.comm, t.owner, &t.cgroup_path);
        let check = |placer: &mut crate::placer::Placer<_>, entry: &_, t: &TaskSample, placement: Placement| {
            if stop.load(Ordering::Relaxed) {
                return Placement::Stay;
            }
            let (tracker, writer) = placer.parts();
            match gate.check(tracker, writer, placement, entry, t.start, t.cgroup) {
                Ok(Checked::Go(p)) => with_policy_limits(config, v2, writer, p, &t.comm),
                Ok(Checked::Dropped(why)) => {
                    stats.count_dropped(why);
                    Placement::Stay
                }
                Err(e) => {
                    warn!(tid = t.tid, "checking a placement failed: {e}");
                    Placement::Stay
                }
            }
        };
        let (report, placed) = reconcile(&mut self.placer, tasks, self.mask, !self.own_hierarchy, admitted, check)?;
        self.last_placed = placed.iter().map(|p| (p.tid, (p.start, p.cgroup))).collect();
        let mut occupied = HashSet::new();
        for p in placed {
            let Some(node) = self.placer.tracker().node(p.cgroup) else { continue };
            self.source.track(p.tid, p.cgroup);
            occupied.insert(p.cgroup);
            if p.set == node.record.set {
                self.pins.pin(&self.proc, node, p.tgid, p.tid);
            }
            self.follow_in_mirrors(p.cgroup, p.tgid, p.tid);
        }
        self.report_refused_files();
        // A node none of whose tasks is in its set any more (adopted, or
        // emptied while events were lost) cannot tell its set's recycled
        // inode numbers from its own: it is no longer found by its set.
        let unpinned: Vec<_> = self.placer.tracker().nodes().map(|n| n.id).filter(|id| !self.pins.holds(*id)).collect();
        for id in unpinned {
            self.placer.tracker_mut().retire_set(id);
        }
        self.sweep_empty_nodes(&occupied);
        self.stats.reconciles += 1;
        // A periodic rescan (no BPF) that found nothing says nothing.
        if why != "rescan" || report.moved > 0 {
            info!(
                why,
                elapsed_ms = started.elapsed().as_millis() as u64,
                examined = report.examined,
                moved = report.moved,
                created = report.created,
                foreign = report.foreign,
                refused = report.refused,
                vanished = report.vanished,
                "reconciled"
            );
        }
        if let Some(before) = before {
            let mut fresh: Vec<Node> = self.placer.tracker().nodes().filter(|n| !before.contains(&n.id)).cloned().collect();
            fresh.sort_by_key(|n| (n.record.created_unix, n.id));
            for node in &fresh {
                let path = self.placer.backend().path_of(node.id).ok().flatten().unwrap_or_default();
                self.sinks.publish(Outcome::Created { node, path: &path, cause: Cause::Reconcile });
            }
        }
        self.sinks.publish(Outcome::Reconciled { why, report: &report, elapsed: started.elapsed() });
        Ok(report)
    }

    /// Every task in scope: from the BPF task iterator, or from /proc. The
    /// hierarchy is walked again (once) only when the snapshot names a
    /// cgroup the daemon has not seen.
    fn snapshot(&mut self) -> Result<Vec<TaskSample>, DaemonError> {
        let Source::Bpf(probe) = &mut self.source else {
            let mut tasks = scan(&self.proc, &self.hierarchy, &self.root, self.user_ns)?.tasks;
            let writer = self.placer.backend();
            tasks.iter_mut().for_each(|t| t.cgroup = writer.home(t.cgroup));
            return Ok(tasks);
        };
        let records = probe.snapshot()?;
        let writer = self.placer.backend();
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
