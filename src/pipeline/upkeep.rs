//! The pipeline's upkeep, beside the event path: removing nodes whose last
//! task left (bottom-up through emptied parents, retrying while the last
//! task is still on its way out), sweeping for nodes emptied while events
//! were lost, and reconciling from a snapshot of every task.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::cleanup::Sweep;
use super::outcome::{Cause, Failure, Outcome};
use super::reconcile::{reconcile, Report};
use super::{Around, Pipeline};
use crate::core::node::{CgroupId, Node};
use crate::bpf::{Event, EventKind};
use crate::core::tracker::{Entry, Placement, Refusal};
use crate::policy::gate::Checked;
use crate::policy::rules;
use crate::sys::cgroupfs::CgroupBackend;
use crate::sys::error::IoError;
use crate::sys::scan::TaskSample;

/// Sandboxes in users' scopes a reconcile asks their managers for, at most
/// (the worker's queue is shorter still; the rest are asked at their next entry).
const MAX_UNDELEGATED: usize = 1024;

impl<B: CgroupBackend> Pipeline<B> {
    /// Removes `node` if empty, then its emptied parents; retries while the
    /// last task is still on its way out.
    pub fn cleanup(&mut self, node: CgroupId, attempt: u32, around: &mut dyn Around) {
        self.cleanup.due(node);
        let mut current = Some(node);
        while let Some(id) = current {
            let Some(parent) = self.placer.tracker().node(id).map(|n| n.parent) else { return };
            match self.placer.try_remove(id) {
                Ok(Some(mut removal)) => {
                    removal.usage.extend(self.pins.network(id).map(|n| n.figures()).unwrap_or_default());
                    self.pins.release(id);
                    let mirrored = self.mirrors.remove(&removal.node, around);
                    around.publish(Outcome::Removed { removal: &removal, mirrored: &mirrored });
                    current = Some(parent).filter(|p| self.placer.tracker().node(*p).is_some());
                    if current.is_none() {
                        self.tidy_scope(parent);
                    }
                }
                Ok(None) => {
                    // Busy: retry while only exiting tasks hold it (the node
                    // asked about, or a parent reached by removing its last child).
                    if !self.placer.tracker().has_child_nodes(id) && !self.has_live_tasks(id) {
                        self.schedule_cleanup(id, if id == node { attempt + 1 } else { 1 }, around);
                    }
                    return;
                }
                Err(e) => {
                    around.publish(Outcome::Failed { what: Failure::Remove { node: id }, error: &e });
                    return;
                }
            }
        }
    }

    /// The scope a user's manager made for a sandbox (§16), emptied by the
    /// removal of its last node, is removed too: its manager cannot remove
    /// it when nested nodes were still there at its stop (they are root's,
    /// and its user may not remove what lies in them), and would leave it
    /// behind, empty. Busy (it holds tasks or cgroups of its user's) or gone
    /// already (its manager removed it): left as it is.
    fn tidy_scope(&mut self, cgroup: CgroupId) {
        if !self.units.enabled() {
            return;
        }
        let Ok(Some(path)) = self.placer.backend().path_of(cgroup) else { return };
        if crate::core::unit::is_own_scope(&path) {
            let _ = self.placer.backend().remove(cgroup);
        }
    }

    /// Whether a node holds a task that is not on its way out. Stops at the
    /// first live one.
    fn has_live_tasks(&mut self, id: CgroupId) -> bool {
        let Ok(members) = self.placer.backend().members_of(id) else { return true };
        members.into_iter().any(|tid| self.proc.stat(tid, tid).ok().flatten().is_some_and(|s| !s.is_dead()))
    }

    /// Removes (per policy) every node that is empty now; `occupied` are
    /// nodes known to hold tasks (not tried).
    pub fn sweep(&mut self, occupied: &HashSet<CgroupId>, around: &mut dyn Around) {
        let how = self.cleanup.sweep();
        if how == Sweep::Keep {
            return;
        }
        let tracker = self.placer.tracker();
        let leaves: Vec<CgroupId> =
            tracker.nodes().filter(|n| !tracker.has_child_nodes(n.id) && !occupied.contains(&n.id)).map(|n| n.id).collect();
        for id in leaves {
            match how {
                Sweep::AtOnce(attempt) => self.cleanup(id, attempt, around),
                Sweep::Schedule | Sweep::Keep => self.schedule_cleanup(id, 0, around),
            }
        }
    }

    /// Places every task of a snapshot as if it had just entered its set
    /// (the same checks and limits as an event's), then: nodes none of whose
    /// tasks is in its set any more retire their set, empty nodes go, and
    /// the nodes made and the reconcile are published. `stop` cuts it short.
    pub fn reconcile(&mut self, tasks: Vec<TaskSample>, why: &str, stop: &AtomicBool, around: &mut dyn Around) -> Result<Report, IoError> {
        let started = Instant::now();
        let before: Option<HashSet<CgroupId>> = around.follows_nodes().then(|| self.placer.tracker().nodes().map(|n| n.id).collect());
        let (config, gate, v2) = (&self.config, &mut self.gate, self.v2);
        let admitted = |t: &TaskSample| rules::admits(config, &t.comm, t.owner, &t.cgroup_path);
        // Sandboxes refused where nsgroup may not write: their managers are asked after.
        let mut undelegated = Vec::new();
        let check = |placer: &mut super::placer::Placer<B>, entry: &Entry, t: &TaskSample, placement: Placement| {
            if stop.load(Ordering::Relaxed) {
                return Placement::Stay;
            }
            let (tracker, backend) = placer.parts();
            match gate.check(tracker, backend, placement, entry, t.start, t.cgroup) {
                Ok(Checked::Go(p @ Placement::Refused(Refusal::NotDelegated))) => {
                    let in_users_scope = t.tid == t.tgid && crate::core::unit::Origin::of(&t.cgroup_path).is_some();
                    if in_users_scope && undelegated.len() < MAX_UNDELEGATED {
                        undelegated.push((sampled_event(entry, t), entry.clone()));
                    }
                    p
                }
                Ok(Checked::Go(p)) => rules::with_policy_limits(config, v2, backend, p, &t.comm),
                Ok(Checked::Dropped(why)) => {
                    around.publish(Outcome::Dropped { tid: t.tid, comm: &t.comm, why });
                    Placement::Stay
                }
                Err(e) => {
                    around.publish(Outcome::Failed { what: Failure::Check { tid: t.tid }, error: &e });
                    Placement::Stay
                }
            }
        };
        let (report, placed) = reconcile(&mut self.placer, tasks, self.mask, !self.own_hierarchy, admitted, check)?;
        for (ev, entry) in &undelegated {
            self.ask_unit(ev, entry, around);
        }
        self.pending.replace_placed(placed.iter().map(|p| (p.tid, p.start, p.cgroup)));
        let mut occupied = HashSet::new();
        for p in placed {
            let Some(node) = self.placer.tracker().node(p.cgroup) else { continue };
            around.track(p.tid, p.cgroup);
            occupied.insert(p.cgroup);
            if p.set == node.record.set {
                self.pins.pin(&self.proc, node, p.tgid, p.tid);
            }
            self.follow_in_mirrors(p.cgroup, p.tgid, p.tid, around);
        }
        self.publish_refused_files(around);
        // A node none of whose tasks is in its set any more (adopted, or
        // emptied while events were lost) cannot tell its set's recycled
        // inode numbers from its own: it is no longer found by its set.
        let unpinned: Vec<_> = self.placer.tracker().nodes().map(|n| n.id).filter(|id| !self.pins.holds(*id)).collect();
        for id in unpinned {
            self.placer.tracker_mut().retire_set(id);
        }
        self.sweep(&occupied, around);
        if let Some(before) = before {
            let mut fresh: Vec<Node> = self.placer.tracker().nodes().filter(|n| !before.contains(&n.id)).cloned().collect();
            fresh.sort_by_key(|n| (n.record.created_unix, n.id));
            for node in &fresh {
                let path = self.placer.backend().path_of(node.id).ok().flatten().unwrap_or_default();
                around.publish(Outcome::Created { node, path: &path, cause: Cause::Reconcile });
            }
        }
        around.publish(Outcome::Reconciled { why, report: &report, elapsed: started.elapsed() });
        Ok(report)
    }
}

/// A sampled task's entry as the event of one that just entered its set
/// (what a user's manager's answer places again).
fn sampled_event(entry: &Entry, t: &TaskSample) -> Event {
    Event {
        kind: EventKind::Unshare,
        ktime_ns: crate::source::monotonic_ns(),
        start_ns: t.start,
        cgroup: t.cgroup,
        tid: t.tid,
        tgid: t.tgid,
        set: entry.set,
        prev: entry.prev,
        comm: t.comm.clone(),
        uid: t.uid,
        owner: t.owner,
    }
}
