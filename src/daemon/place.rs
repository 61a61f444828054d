//! From an event to a placement: deferring setns callers until they settle,
//! deciding from where the task is, checking at the [`super::gate`], carrying
//! the decision out, and what follows a move (children, pins, cleanup).

use std::time::Duration;

use tracing::{debug, warn};

use super::adopt::ExecNode;
use super::gate::{Checked, Dropped};
use super::outcome::{Cause, Outcome};
use super::reports::Kind;
use super::{Daemon, Deferred};
use crate::bpf::{Event, EventKind};
use crate::config::{Config, Subject};
use crate::core::escape::Escaped;
use crate::core::node::CgroupId;
use crate::core::nsset::NsSet;
use crate::core::tracker::{Entry, Placement, Refusal};
use crate::placer::Outcome as CarriedOut;
use crate::source::monotonic_ns;
use crate::sys::cgroupfs::CgroupBackend;

/// How many generations of children forked before a move follow it (a
/// chain of forks that outruns the daemon is bounded work all the same;
/// reconcile finds the rest).
const FOLLOW_DEPTH: u32 = 16;

/// Whether the include/exclude filters track a task whose set `owner` owns
/// (a filter's `uid` matches the owner: a user's subordinate uids are hers).
pub(super) fn admits(config: &Config, comm: &str, owner: u32, cgroup: &str) -> bool {
    config.admits(Subject { comm, uid: Some(owner), cgroup })
}

impl Daemon {
    pub(super) fn handle(&mut self, ev: Event) {
        self.stats.events += 1;
        match ev.kind {
            EventKind::Setns => {
                let first_prev = self.deferred.get(&ev.tid).map_or(ev.prev, |d| d.first_prev);
                let fresh = !self.deferred.contains_key(&ev.tid);
                self.deferred.insert(ev.tid, Deferred { first_prev, last: ev.clone() });
                if fresh {
                    self.timers.schedule(Duration::from_micros(self.config.setns_settle_us), super::Timer::Settle(ev.tid));
                }
            }
            EventKind::Exec => {
                let awaited = self.awaiting_exec.remove(&ev.tid);
                let prev = self.deferred.remove(&ev.tid).map(|d| d.first_prev).or(awaited).unwrap_or(ev.prev);
                self.place_event(&ev, prev);
            }
            EventKind::Fork { ptid } => {
                if let Some(d) = self.deferred.remove(&ptid) {
                    self.place_event(&d.last, d.first_prev);
                }
                self.place_event(&ev, ev.prev);
            }
            // A later unshare() supersedes a setns() still settling (`ip netns
            // exec`: setns into the named netns, then unshare(CLONE_NEWNS)):
            // the set it came from is the one before the setns.
            EventKind::Unshare => {
                let prev = self.deferred.remove(&ev.tid).map_or(ev.prev, |d| d.first_prev);
                self.place_event(&ev, prev);
            }
            EventKind::Exit => {
                debug!(tid = ev.tid, cgroup = ev.cgroup, "exited");
                self.deferred.remove(&ev.tid);
                self.awaiting_exec.remove(&ev.tid);
                // Where it died, and where it was put last: a task moved while
                // already exiting stays where it was, leaving its new node empty.
                let put = self.last_placed.remove(&ev.tid).map(|(_, at)| at);
                let died_in = self.placer.backend().home(ev.cgroup);
                for cgroup in std::iter::once(died_in).chain(put.filter(|&p| p != died_in)) {
                    if let Some(&node) = self.placer.tracker().cleanup_candidates(cgroup).first() {
                        self.schedule_cleanup(node, 0);
                    }
                }
            }
        }
    }

    /// Where a task is taken to be: where the daemon put it last (a backlog's
    /// later events still carry the cgroup it was in before), else where its
    /// event saw it.
    fn presumed_cgroup(&mut self, ev: &Event) -> CgroupId {
        match self.last_placed.get(&ev.tid) {
            Some(&(start, at)) if start == ev.start_ns => at,
            _ => self.placer.backend().home(ev.cgroup),
        }
    }

    pub(super) fn place_event(&mut self, ev: &Event, prev: NsSet) {
        let cgroup = self.presumed_cgroup(ev);
        // Unknown (the proc connector's exec): what the task's cgroup expects.
        let prev = if prev.is_empty() { self.placer.tracker().home_set(cgroup) } else { prev };
        if !self.admitted(ev, cgroup) {
            self.source.settled(ev.tid);
            return;
        }
        let entry = Entry {
            tid: ev.tid,
            tgid: ev.tgid,
            uid: ev.uid,
            owner: ev.owner,
            cgroup,
            set: ev.set.masked(self.mask),
            prev: prev.masked(self.mask),
        };
        let decided = self.placer.tracker().place(&entry);
        // Only root runs `nsgroup exec` (its records are root's to write).
        if matches!(decided, Placement::Create(_)) && ev.uid == 0 {
            match self.adopt_exec_node(&entry) {
                ExecNode::No => {}
                // It runs (and execs) once `nsgroup exec` has set its node up.
                ExecNode::Pending => {
                    self.awaiting_exec.insert(ev.tid, entry.prev);
                    return;
                }
                ExecNode::Adopted(node) => {
                    self.source.track(ev.tid, node);
                    self.last_placed.insert(ev.tid, (ev.start_ns, node));
                    self.hold_namespace(node, &entry, true);
                    self.source.settled(ev.tid);
                    return;
                }
            }
        }
        let checked = {
            let (tracker, writer) = self.placer.parts();
            self.gate.check(tracker, writer, decided, &entry, ev.start_ns, cgroup)
        };
        let placement = match checked {
            Ok(Checked::Go(p)) => p,
            Ok(Checked::Dropped(why)) => {
                self.dropped(why, ev);
                self.source.settled(ev.tid);
                return;
            }
            Err(e) => {
                if self.reports.allow(Kind::Failed) {
                    warn!(tid = ev.tid, "checking a placement failed: {e}");
                }
                self.source.settled(ev.tid);
                return;
            }
        };
        let v2 = self.hierarchy.version() == crate::sys::hierarchy::Version::V2;
        let placement = super::control::with_policy_limits(&self.config, v2, self.placer.backend(), placement, &ev.comm);
        let policy = match &placement {
            Placement::Create(new) => new.files.clone(),
            _ => Vec::new(),
        };
        let outcome = self.placer.carry_out(placement, &entry, &ev.comm);
        let refused = self.report_refused_files();
        match outcome {
            Ok(CarriedOut::Moved { to, created }) => {
                let latency_us = monotonic_ns().saturating_sub(ev.ktime_ns) / 1000;
                self.stats.latency.record(latency_us);
                self.stats.moved += 1;
                self.stats.created += u64::from(created);
                self.hold_namespace(to, &entry, created);
                self.follow_in_mirrors(to, entry.tgid, entry.tid);
                let path = self.placer.backend().path_of(to).ok().flatten().unwrap_or_default();
                if let Some(node) = created.then(|| self.placer.tracker().node(to)).flatten() {
                    self.sinks.publish(Outcome::Created { node, path: &path, cause: Cause::Event });
                    for (file, value) in super::control::applied(&policy, &refused) {
                        self.sinks.publish(Outcome::LimitApplied { path: &path, file, value });
                    }
                }
                self.sinks.publish(Outcome::Placed { task: ev, to, path: &path, created, latency_us });
                // Tracked before it stops being pending: its exit is reported.
                self.source.track(ev.tid, to);
                // The node it left (setns back, or on to another set's node) may be empty now.
                let left = self.last_placed.insert(ev.tid, (ev.start_ns, to)).map_or(ev.cgroup, |(_, at)| at);
                if left != to && self.placer.tracker().node(left).is_some() {
                    self.schedule_cleanup(left, 0);
                }
                self.source.settled(ev.tid);
                self.follow_children(&entry);
                return;
            }
            Ok(CarriedOut::Stayed) if self.placer.tracker().node(cgroup).is_some() => {
                // Already in its node (forked there): its exit matters too.
                self.source.track(ev.tid, cgroup);
            }
            Ok(CarriedOut::Refused(why)) => self.refused(ev, why),
            Ok(CarriedOut::Stayed) | Ok(CarriedOut::Vanished) => {}
            Err(e) => {
                if self.reports.allow(Kind::Failed) {
                    warn!(tid = ev.tid, "placing failed: {e}");
                }
            }
        }
        self.source.settled(ev.tid);
    }

    /// Whether the filters track the task of `ev`, in `cgroup`. The cgroup's
    /// path is looked up only when a filter needs it.
    fn admitted(&mut self, ev: &Event, cgroup: CgroupId) -> bool {
        let path = if self.config.filters_cgroups() {
            match self.placer.backend().path_of(cgroup) {
                Ok(Some(p)) => p,
                _ => self.proc.cgroup_path(ev.tgid, ev.tid, self.hierarchy.key()).ok().flatten().unwrap_or_default(),
            }
        } else {
            String::new()
        };
        admits(&self.config, &ev.comm, ev.owner, &path)
    }

    /// Counts a dropped move; the unusual ones get a (rate-limited) line.
    fn dropped(&mut self, why: Dropped, ev: &Event) {
        self.stats.count_dropped(why);
        match why {
            Dropped::Gone => debug!(tid = ev.tid, kind = ?ev.kind, "not moved: the task or its destination is gone"),
            Dropped::Reused => {
                if self.reports.allow(Kind::Reused) {
                    warn!(tid = ev.tid, "not moved: the tid belongs to another task now");
                }
            }
            Dropped::OtherWriter => {
                if self.reports.allow(Kind::OtherWriter) {
                    warn!(tid = ev.tid, comm = %Escaped(&ev.comm), "not moved: another cgroup writer moved it meanwhile");
                }
            }
        }
    }

    /// Counts a refused entry for its user; quota refusals only show in the
    /// per-interval report, others also get a (rate-limited) line.
    pub(super) fn refused(&mut self, ev: &Event, why: Refusal) {
        self.stats.refused += 1;
        self.reports.refused(ev.owner, &why);
        // Counted only: a storm, or every sandboxed service of a systemd host.
        let quota = matches!(why, Refusal::UserQuota { .. } | Refusal::UserRate { .. } | Refusal::NotDelegated);
        if !quota && self.reports.allow(Kind::Refused) {
            warn!(tid = ev.tid, uid = ev.uid, owner_uid = ev.owner, comm = %Escaped(&ev.comm), "left in place: {why}");
        }
    }

    /// After a move into node `to`: the node holds one of its set's
    /// namespaces. A new node whose namespace could not be held (its task
    /// moved on already) is no longer found by its set.
    fn hold_namespace(&mut self, to: CgroupId, entry: &Entry, created: bool) {
        let Some(node) = self.placer.tracker().node(to) else { return };
        if !self.pins.pin(&self.proc, node, entry.tgid, entry.tid) && created {
            self.placer.tracker_mut().retire_set(to);
        }
    }

    /// Children forked before their parent was moved, still in its old
    /// cgroup with its new set, follow it (the fork-mid-move race): into the
    /// parent's node, below the cgroup they are in.
    fn follow_children(&mut self, parent: &Entry) {
        self.follow_children_below(parent, FOLLOW_DEPTH);
    }

    fn follow_children_below(&mut self, parent: &Entry, depth: u32) {
        if depth == 0 {
            return;
        }
        let Ok(children) = self.proc.children(parent.tgid, parent.tid) else { return };
        for child in children {
            let Ok(Some(path)) = self.proc.cgroup_path(child, child, self.hierarchy.key()) else { continue };
            let Ok(cgroup) = self.hierarchy.id(&path) else { continue };
            let Ok(Some(set)) = self.proc.ns_set(child, child) else { continue };
            if cgroup != parent.cgroup || set.masked(self.mask) != parent.set {
                continue;
            }
            let entry = Entry { tid: child, tgid: child, uid: parent.uid, owner: parent.owner, cgroup, set: parent.set, prev: parent.set };
            if let Ok(CarriedOut::Moved { to, .. }) = self.placer.enter(&entry, "") {
                self.source.track(child, to);
                self.follow_in_mirrors(to, child, child);
                self.follow_children_below(&entry, depth - 1);
            }
        }
    }
}
