//! The placement pipeline: from an event (or a snapshot's task, or a child
//! forked mid-move) to a cgroup, in one path of five steps —
//!
//! 1. **decide**: the pure [`crate::core::tracker`] says where the task
//!    belongs, from where it is taken to be ([`pending`]);
//! 2. **check**: the [`crate::policy`] (filters, quotas, the seed's rules,
//!    identity) may drop or refuse it;
//! 3. **prepare**: a new node gets its policy limits;
//! 4. **carry out**: the [`placer`] writes through a
//!    [`CgroupBackend`] (the real one, or [`crate::testing::FakeBackend`]);
//! 5. **publish**: one [`Outcome`] to the loop's sinks ([`Around`]).
//!
//! What follows a move (the node's namespace pinned, mirrors, children
//! forked before the move, cleanup of the node it left) happens here too.
//! Nothing here reads /proc or writes a hierarchy but through [`ProcFs`] and
//! the backend, so every step runs in unit tests without root.

pub mod adopt;
mod around;
pub mod cleanup;
pub mod mirrors;
pub mod outcome;
pub mod pending;
pub mod pins;
pub mod placer;
pub mod reconcile;
pub mod units;
mod upkeep;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::bpf::{Event, EventKind};
use crate::config::Config;
use crate::core::node::CgroupId;
use crate::core::nsset::{NsMask, NsSet};
use crate::core::tracker::{Entry, Placement, Refusal};
use crate::core::unit::UnitPlan;
use crate::sys::systemd::worker::{Started, UnitError};
use crate::policy::gate::{Checked, Gate};
use crate::policy::rules;
use crate::source::monotonic_ns;
use crate::sys::cgroupfs::CgroupBackend;
use crate::sys::procfs::{HierarchyKey, ProcFs};

pub use around::{Around, Job};

use adopt::ExecNode;
use cleanup::Cleanup;
use mirrors::Mirrors;
use outcome::{Cause, Failure, Outcome, Task};
use pending::Pending;
use pins::Pins;
use placer::{Outcome as CarriedOut, Placer};
use units::Units;

/// How many generations of children forked before a move follow it (a
/// chain of forks that outruns the daemon is bounded work all the same;
/// reconcile finds the rest).
const FOLLOW_DEPTH: u32 = 16;
/// How many children of one task follow it (a task that forks thousands
/// between its entry and its move costs bounded work; reconcile finds the rest).
const MAX_CHILDREN: usize = 256;

/// How often a task born in a node `nsgroup restore` is filling looks again.
const RESTORE_RETRY: Duration = Duration::from_millis(50);

/// Whether the event source may forget a task's entry now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    Now,
    /// Not yet: its exec is awaited.
    Later,
}

/// What the pipeline is set up with.
pub struct Parts<B> {
    pub placer: Placer<B>,
    pub gate: Gate,
    pub mirrors: Mirrors,
    pub proc: ProcFs,
    /// Where the tasks' cgroup lines name the tracked hierarchy.
    pub key: HierarchyKey,
    /// Whether the tracked hierarchy is cgroup2 (limits go on the node itself).
    pub v2: bool,
    /// nsgroup's own named hierarchy: nobody else writes there, so reconcile
    /// converges; elsewhere it leaves tasks other writers placed.
    pub own_hierarchy: bool,
    /// Whether a sandbox in an undelegated scope of a user's manager is
    /// asked a scope of its own (`user_units`, where the delegation rule applies).
    pub user_units: bool,
}

/// The pipeline and the state it keeps between events.
pub struct Pipeline<B> {
    placer: Placer<B>,
    gate: Gate,
    mirrors: Mirrors,
    proc: ProcFs,
    key: HierarchyKey,
    v2: bool,
    own_hierarchy: bool,
    config: Config,
    mask: NsMask,
    pending: Pending,
    pins: Pins,
    cleanup: Cleanup,
    units: Units,
}

impl<B: CgroupBackend> Pipeline<B> {
    /// A pipeline over `parts`, with the configuration's filters, limit
    /// rules, namespace kinds, settle time and cleanup policy.
    pub fn new(parts: Parts<B>, config: Config) -> Result<Pipeline<B>, String> {
        let mask = config.mask()?;
        let cleanup = Cleanup::new(config.cleanup, Duration::from_secs(config.linger_seconds));
        let Parts { placer, gate, mirrors, proc, key, v2, own_hierarchy, user_units } = parts;
        let (pending, pins, units) = (Pending::default(), Pins::default(), Units::new(user_units));
        let mut pipeline = Pipeline { placer, gate, mirrors, proc, key, v2, own_hierarchy, config, mask, pending, pins, cleanup, units };
        let nodes: Vec<_> = pipeline.placer.tracker().nodes().cloned().collect();
        for node in &nodes {
            pipeline.mirrors.adopt(node);
        }
        Ok(pipeline)
    }

    /// The tracker and the backend (read-only users: the loop's status,
    /// snapshots, tests).
    pub fn placer(&mut self) -> &mut Placer<B> {
        &mut self.placer
    }

    /// The nodes tracked now.
    pub fn tracker(&self) -> &crate::core::tracker::Tracker {
        self.placer.tracker()
    }

    /// The mirrored hierarchies.
    pub fn mirrors(&self) -> &Mirrors {
        &self.mirrors
    }

    /// How many nodes hold their namespace.
    pub fn pinned(&self) -> usize {
        self.pins.held()
    }

    /// Takes one event.
    pub fn on_event(&mut self, ev: &Event, around: &mut dyn Around) {
        match ev.kind {
            EventKind::Setns => {
                if self.pending.setns(ev) {
                    around.schedule(Duration::from_micros(self.config.setns_settle_us), Job::Settle(ev.tid));
                }
            }
            // A later unshare() supersedes a setns() still settling (`ip netns
            // exec`: setns into the named netns, then unshare(CLONE_NEWNS)).
            EventKind::Exec | EventKind::Unshare => {
                let prev = self.pending.came_from(ev);
                self.place(ev, prev, around);
            }
            EventKind::Fork { ptid } => {
                self.settle(ptid, around);
                self.place(ev, ev.prev, around);
            }
            EventKind::Exit => {
                // Where it died, and where it was put last: a task moved while
                // already exiting stays where it was, leaving its new node empty.
                let put = self.pending.exited(ev.tid);
                let died_in = self.placer.backend().home(ev.cgroup);
                for cgroup in std::iter::once(died_in).chain(put.filter(|&p| p != died_in)) {
                    if let Some(&node) = self.placer.tracker().cleanup_candidates(cgroup).first() {
                        self.schedule_cleanup(node, 0, around);
                    }
                }
            }
        }
    }

    /// Forgets an entry coalesced away (its task exited within the batch).
    pub fn forget_entry(&mut self, tid: u32) {
        self.pending.take_deferred(tid);
    }

    /// Places a deferred setns caller, if it still waits.
    pub fn settle(&mut self, tid: u32, around: &mut dyn Around) {
        if let Some(d) = self.pending.take_deferred(tid) {
            self.place(&d.last, d.first_prev, around);
        }
    }

    /// The five steps for one event's task, which came from set `prev`.
    fn place(&mut self, ev: &Event, prev: NsSet, around: &mut dyn Around) {
        let cgroup = self.pending.placed_in(ev.tid, ev.start_ns).unwrap_or_else(|| self.placer.backend().home(ev.cgroup));
        // Unknown (the proc connector's exec): what the task's cgroup expects.
        let prev = if prev.is_empty() { self.placer.tracker().home_set(cgroup) } else { prev };
        let entry =
            Entry { tid: ev.tid, tgid: ev.tgid, uid: ev.uid, owner: ev.owner, cgroup, set: ev.set.masked(self.mask), prev: prev.masked(self.mask) };
        // A task whose node `nsgroup exec` still sets up stays pending: its
        // exec is then reported, and placed.
        if self.admitted(ev, cgroup) && self.place_entry(ev, &entry, around) == Settle::Later {
            return;
        }
        around.settled(ev.tid);
    }

    /// Decide, check, prepare, carry out, publish; then what follows a move.
    fn place_entry(&mut self, ev: &Event, entry: &Entry, around: &mut dyn Around) -> Settle {
        let decided = self.placer.tracker().place(entry);
        // Only root runs `nsgroup exec` (its records are root's to write).
        if let Placement::Create(new) = &decided {
            if ev.uid == 0 && self.gate.beyond_bounds(self.placer.tracker(), new).is_none() {
                if let Some(settle) = self.took_exec_node(ev, entry, around) {
                    return settle;
                }
            }
        }
        // A task in a node `nsgroup restore` fills waits for its record
        // whatever its unshare or setns: CRIU's calls each leave it in a set
        // its last call came from, which decides nothing. (Only those: a
        // fork or exec that stays costs no record read.)
        if decided == Placement::Stay
            && matches!(ev.kind, EventKind::Unshare | EventKind::Setns)
            && ev.uid == 0
            && self.placer.tracker().node(entry.cgroup).is_none()
            && adopt::restoring_here(&mut self.placer, entry.cgroup)
        {
            if let Some(settle) = self.took_exec_node(ev, entry, around) {
                return settle;
            }
        }
        let Some(placement) = self.check(ev, entry, decided, around) else { return Settle::Now };
        let files = match &placement {
            Placement::Create(new) => new.files.clone(),
            _ => Vec::new(),
        };
        let carried = self.placer.carry_out(placement, entry, &ev.comm);
        let refused = self.publish_refused_files(around);
        match carried {
            Ok(CarriedOut::Moved { to, created }) => {
                let latency_us = monotonic_ns().saturating_sub(ev.ktime_ns) / 1000;
                self.hold_namespace(to, entry, created);
                // Mirrors first: a new node's record lists them when it is published.
                self.follow_in_mirrors(to, entry.tgid, entry.tid, around);
                let path = self.placer.backend().path_of(to).ok().flatten().unwrap_or_default();
                if let Some(node) = created.then(|| self.placer.tracker().node(to)).flatten() {
                    around.publish(Outcome::Created { node, path: &path, cause: Cause::Event });
                    for (file, value) in rules::applied(&files, &refused) {
                        around.publish(Outcome::LimitApplied { node: to, path: &path, file, value });
                    }
                }
                around.publish(Outcome::Placed { task: ev, to, path: &path, created, latency_us });
                // Tracked before it stops being pending: its exit is reported.
                around.track(ev.tid, to);
                // The node it left (setns back, or on to another set's node) may be empty now.
                let left = self.pending.placed(ev.tid, ev.start_ns, to).unwrap_or(ev.cgroup);
                if left != to && self.placer.tracker().node(left).is_some() {
                    self.schedule_cleanup(left, 0, around);
                }
                self.follow_children(entry, FOLLOW_DEPTH, around);
            }
            // Already in its node (forked there): its exit matters too.
            Ok(CarriedOut::Stayed) if self.placer.tracker().node(entry.cgroup).is_some() => around.track(ev.tid, entry.cgroup),
            Ok(CarriedOut::Refused(Refusal::NotDelegated)) if self.ask_unit(ev, entry, around) => {}
            Ok(CarriedOut::Refused(why)) => around.publish(Outcome::Refused { task: Task::of(ev), why: &why }),
            Ok(CarriedOut::Stayed) | Ok(CarriedOut::Vanished) => {}
            Err(e) => around.publish(Outcome::Failed { what: Failure::Place { tid: ev.tid }, error: &e }),
        }
        Settle::Now
    }

    /// A sandbox refused where nsgroup may not write: its user's manager is
    /// asked for a scope of its own, when it may be (`units`). Whether it was.
    fn ask_unit(&mut self, ev: &Event, entry: &Entry, around: &mut dyn Around) -> bool {
        let Ok(Some(origin)) = self.placer.backend().path_of(entry.cgroup) else { return false };
        let Some(plan) = self.units.plan(ev, entry.set, &origin) else { return false };
        if !around.ask_unit(&plan) {
            return false;
        }
        self.units.asked(&plan, ev, entry.prev, entry.set);
        true
    }

    /// A user's manager answered `plan`: published; a sandbox whose first
    /// task is no longer in its origin — in the scope made for it, or in
    /// another's it followed there — is placed again from where it is (its
    /// node made inside the scope, the tasks that followed it moved in after).
    pub fn unit_done(&mut self, plan: &UnitPlan, result: Result<&Started, &UnitError>, around: &mut dyn Around) {
        around.publish(Outcome::Unit { plan, result });
        let Some((mut ev, prev)) = self.units.ended(plan, result.is_ok()) else { return };
        let Ok(Some(now)) = self.proc.cgroup_path(ev.tgid, ev.tid, &self.key) else { return };
        if now == plan.origin.cgroup {
            return;
        }
        let Ok(Some(id)) = self.placer.backend().id_at(&now) else { return };
        ev.cgroup = id;
        self.place(&ev, prev, around);
    }

    /// Step 2 and 3: the policy's checks, then the new node's limits. `None`
    /// when the move is dropped (published) or the checks failed.
    fn check(&mut self, ev: &Event, entry: &Entry, decided: Placement, around: &mut dyn Around) -> Option<Placement> {
        let (tracker, backend) = self.placer.parts();
        match self.gate.check(tracker, backend, decided, entry, ev.start_ns, entry.cgroup) {
            Ok(Checked::Go(p)) => Some(rules::with_policy_limits(&self.config, self.v2, backend, p, &ev.comm)),
            Ok(Checked::Dropped(why)) => {
                around.publish(Outcome::Dropped { tid: ev.tid, comm: &ev.comm, why });
                None
            }
            Err(e) => {
                around.publish(Outcome::Failed { what: Failure::Check { tid: ev.tid }, error: &e });
                None
            }
        }
    }

    /// Whether the filters track `ev`'s task, in `cgroup`. The cgroup's path
    /// is looked up only when a filter needs it.
    fn admitted(&mut self, ev: &Event, cgroup: CgroupId) -> bool {
        let path = if self.config.filters_cgroups() {
            match self.placer.backend().path_of(cgroup) {
                Ok(Some(p)) => p,
                _ => self.proc.cgroup_path(ev.tgid, ev.tid, &self.key).ok().flatten().unwrap_or_default(),
            }
        } else {
            String::new()
        };
        rules::admits(&self.config, &ev.comm, ev.owner, &path)
    }

    /// A node `nsgroup exec` made for the task: adopted (settled now), or
    /// still being set up (settled at its exec, when it is placed); `None`
    /// when there is none.
    fn took_exec_node(&mut self, ev: &Event, entry: &Entry, around: &mut dyn Around) -> Option<Settle> {
        match adopt::exec_node(&mut self.placer, &self.proc, &self.key, self.mask, entry) {
            ExecNode::No => None,
            ExecNode::Pending => {
                self.pending.await_exec(ev.tid, entry.prev);
                Some(Settle::Later)
            }
            ExecNode::Restoring => {
                // Placed again once the retry comes, as a settling setns is.
                if self.pending.setns(ev) {
                    around.schedule(RESTORE_RETRY, Job::Settle(ev.tid));
                }
                Some(Settle::Later)
            }
            ExecNode::Adopted(node) => {
                if let Some(n) = self.placer.tracker().node(node) {
                    self.mirrors.adopt(n);
                }
                around.track(ev.tid, node);
                self.pending.placed(ev.tid, ev.start_ns, node);
                self.hold_namespace(node, entry, true);
                Some(Settle::Now)
            }
        }
    }

    /// Publishes the limit files the kernel refused for new nodes; returns them.
    fn publish_refused_files(&mut self, around: &mut dyn Around) -> Vec<String> {
        let refused = self.placer.take_refused_files();
        for (node, r) in &refused {
            let path = self.placer.backend().path_of(*node).ok().flatten().unwrap_or_default();
            around.publish(Outcome::Failed { what: Failure::Limit { node: &path }, error: r });
        }
        refused.into_iter().map(|(_, r)| r).collect()
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

    /// A task is in node `id` now: into the node's mirrors, the ones made
    /// recorded on the node.
    fn follow_in_mirrors(&mut self, id: CgroupId, tgid: u32, tid: u32, around: &mut dyn Around) {
        if self.mirrors.is_empty() {
            return;
        }
        let Some(node) = self.placer.tracker().node(id).cloned() else { return };
        let parent_path = self.placer.backend().path_of(node.parent).ok().flatten().unwrap_or_default();
        let limits = rules::limits_for(&self.config, &node.record, &parent_path);
        let made = self.mirrors.follow(&self.proc, &node, tgid, tid, |c| limits.iter().flat_map(|l| l.v1(c)).collect(), around);
        if made.is_empty() {
            return;
        }
        let mut recorded = node.record.mirrors.clone();
        recorded.retain(|m| !made.iter().any(|c| c.controllers == m.controllers));
        recorded.extend(made);
        if let Some(record) = self.placer.tracker_mut().set_mirrors(id, recorded).map(|n| n.record.clone()) {
            if let Err(e) = self.placer.backend().store_record(id, &record) {
                around.publish(Outcome::Failed { what: Failure::Record { node: id }, error: &e });
            }
        }
    }

    /// Children forked before their parent was moved, still in its old
    /// cgroup with its new set, follow it (the fork-mid-move race): through
    /// the same checks, into the parent's node.
    fn follow_children(&mut self, parent: &Entry, depth: u32, around: &mut dyn Around) {
        if depth == 0 {
            return;
        }
        let Ok(children) = self.proc.children(parent.tgid, parent.tid) else { return };
        for child in children.into_iter().take(MAX_CHILDREN) {
            let Ok(Some(path)) = self.proc.cgroup_path(child, child, &self.key) else { continue };
            let Ok(Some(cgroup)) = self.placer.backend().id_at(&path) else { continue };
            let Ok(Some(set)) = self.proc.ns_set(child, child) else { continue };
            let Ok(Some(stat)) = self.proc.stat(child, child) else { continue };
            if self.placer.backend().home(cgroup) != parent.cgroup || set.masked(self.mask) != parent.set {
                continue;
            }
            let entry = Entry { tid: child, tgid: child, cgroup: parent.cgroup, prev: parent.set, ..*parent };
            let task = Task { tid: child, uid: parent.uid, owner: parent.owner, comm: &stat.comm };
            let Some(placement) = self.check_child(&entry, task, stat.start_ns(), around) else { continue };
            match self.placer.carry_out(placement, &entry, "") {
                Ok(CarriedOut::Moved { to, .. }) => {
                    around.track(child, to);
                    self.follow_in_mirrors(to, child, child, around);
                    self.follow_children(&entry, depth - 1, around);
                }
                Ok(CarriedOut::Refused(why)) => around.publish(Outcome::Refused { task, why: &why }),
                Ok(CarriedOut::Stayed | CarriedOut::Vanished) => {}
                Err(e) => around.publish(Outcome::Failed { what: Failure::Place { tid: child }, error: &e }),
            }
        }
    }

    /// A child's placement, decided and checked as any other (no node is
    /// made for a child: it follows its parent into an existing one).
    fn check_child(&mut self, entry: &Entry, task: Task<'_>, start_ns: u64, around: &mut dyn Around) -> Option<Placement> {
        let decided = self.placer.tracker().place(entry);
        if !matches!(decided, Placement::Move(_)) {
            return None;
        }
        let (tracker, backend) = self.placer.parts();
        match self.gate.check(tracker, backend, decided, entry, start_ns, entry.cgroup) {
            Ok(Checked::Go(p)) => Some(p),
            Ok(Checked::Dropped(why)) => {
                around.publish(Outcome::Dropped { tid: task.tid, comm: task.comm, why });
                None
            }
            Err(e) => {
                around.publish(Outcome::Failed { what: Failure::Check { tid: entry.tid }, error: &e });
                None
            }
        }
    }

    /// Checks `node` for emptiness later (per policy), unless a check is pending.
    fn schedule_cleanup(&mut self, node: CgroupId, attempt: u32, around: &mut dyn Around) {
        if let Some(after) = self.cleanup.schedule(node, attempt) {
            around.schedule(after, Job::Cleanup(node, attempt));
        }
    }
}
