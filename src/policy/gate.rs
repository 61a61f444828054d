//! What the daemon checks before it acts on a task's behalf: the user's
//! quotas, that the tid still is the task that entered and is still where the
//! decision assumed, and the ns subsystem's rule on where a task may go.
//! Checks that cost I/O run only for decisions that move or create.

use std::time::Instant;

use crate::core::cgpath::within;
use crate::core::node::CgroupId;
use super::quota::UserQuotas;
use crate::core::tracker::{Entry, NewNode, Placement, Refusal, Tracker};
use crate::sys::cgroupfs::CgroupBackend;
use crate::sys::error::IoError;
use crate::config::Config;
use crate::sys::delegation::Delegation;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::procfs::{HierarchyKey, ProcFs};

/// Why a decided move was dropped without a word to the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The task exited (or is exiting).
    Gone,
    /// The tid belongs to another task now: it started at another time.
    Reused,
    /// The task is no longer in the cgroup the decision assumed: another
    /// cgroup writer moved it, and other writers win.
    OtherWriter,
}

/// The outcome of the checks (one at a time, on the stack: not boxed).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Checked {
    Go(Placement),
    Dropped(Dropped),
}

/// Bounds on node creation: the "out of control" creation the kernel's
/// subsystem had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Nodes nested deeper than this are not created.
    pub max_depth: u32,
    /// At most this many nodes exist at once.
    pub max_nodes: usize,
}

/// The checks, with what they need to know.
pub struct Gate {
    bounds: Bounds,
    proc: ProcFs,
    key: HierarchyKey,
    quotas: UserQuotas,
    /// The daemon's user namespace: CAP_SYS_ADMIN counts only there.
    own_user_ns: u64,
    /// On a systemd host (unless configured otherwise): nodes only inside
    /// delegated subtrees.
    delegation: Option<Delegation>,
}

impl Gate {
    /// The checks `config` asks for (its bounds and the owners' quotas), for
    /// a daemon in user namespace `own_user_ns` under `delegation`'s rule.
    pub fn new(config: &Config, proc: ProcFs, key: HierarchyKey, own_user_ns: u64, delegation: Option<Delegation>) -> Gate {
        let quotas = UserQuotas::new(super::quota::QuotaLimits {
            max_nodes_per_user: config.max_nodes_per_user,
            creations_per_second: config.max_creations_per_second_per_user,
            exempt_uids: config.quota_exempt_uids.clone(),
        });
        Gate { bounds: Bounds::of(config), proc, key, quotas, own_user_ns, delegation }
    }

    /// Why a node `new` may not be made: too deep, or too many nodes.
    pub fn beyond_bounds(&self, tracker: &Tracker, new: &NewNode) -> Option<Refusal> {
        if let Some(refusal) = self.bounds.too_deep(new.depth) {
            return Some(refusal);
        }
        let count = tracker.node_count();
        (count >= self.bounds.max_nodes).then_some(Refusal::TooMany { count })
    }

    /// Checks `placement`, decided for `entry` (a task that started at
    /// `start_ns`, believed to be in cgroup `expected`). Stays and refusals pass
    /// as they are; a creation beyond the bounds or over the owner's quota
    /// becomes a refusal; a move or creation is dropped unless the tid is
    /// still that task, in that cgroup; one that would take the task out of
    /// its cgroup's subtree is refused unless the task has CAP_SYS_ADMIN in
    /// the daemon's user namespace.
    pub fn check(
        &mut self,
        tracker: &Tracker,
        writer: &mut impl CgroupBackend,
        placement: Placement,
        entry: &Entry,
        start_ns: u64,
        expected: CgroupId,
    ) -> Result<Checked, IoError> {
        let destination = match &placement {
            Placement::Stay | Placement::Refused(_) => return Ok(Checked::Go(placement)),
            Placement::Move(to) => *to,
            Placement::Create(new) => {
                if let Some(refusal) = self.beyond_bounds(tracker, new) {
                    return Ok(Checked::Go(Placement::Refused(refusal)));
                }
                if let Err(refusal) = self.quotas.admit(entry.owner, tracker.nodes_of_owner(entry.owner), Instant::now()) {
                    return Ok(Checked::Go(Placement::Refused(refusal)));
                }
                new.parent
            }
        };
        let Some(stat) = self.proc.stat(entry.tgid, entry.tid)? else { return Ok(Checked::Dropped(Dropped::Gone)) };
        if !stat.started_at(start_ns) {
            return Ok(Checked::Dropped(Dropped::Reused));
        }
        if stat.is_dead() {
            return Ok(Checked::Dropped(Dropped::Gone));
        }
        let Some(here) = self.proc.cgroup_path(entry.tgid, entry.tid, &self.key)? else {
            return Ok(Checked::Dropped(Dropped::Gone));
        };
        let home = writer.id_at(&here)?.map(|id| writer.home(id));
        if home != Some(expected) {
            return Ok(Checked::Dropped(Dropped::OtherWriter));
        }
        // A node's leaf counts as the node.
        let here = writer.path_of(expected)?.unwrap_or(here);
        let Some(there) = writer.path_of(destination)? else { return Ok(Checked::Dropped(Dropped::Gone)) };
        if let Some(refusal) = undelegated(self.delegation.as_mut(), &there) {
            return Ok(Checked::Go(Placement::Refused(refusal)));
        }
        if let Some(refusal) = outside_subtree(&self.proc, entry.tgid, entry.tid, self.own_user_ns, &here, &there)? {
            return Ok(Checked::Go(Placement::Refused(refusal)));
        }
        Ok(Checked::Go(placement))
    }
}

impl Bounds {
    /// The bounds `config` sets.
    pub fn of(config: &Config) -> Bounds {
        Bounds { max_depth: config.max_depth, max_nodes: config.max_nodes }
    }

    /// Why a node `depth` levels deep (1: directly below the tracked root) may not be made.
    pub fn too_deep(&self, depth: u32) -> Option<Refusal> {
        (depth > self.max_depth).then_some(Refusal::TooDeep { depth })
    }
}

/// systemd's single-writer rule (docs/semantics.md §16), where it applies:
/// on when `delegated_only` says so, else when systemd manages `hierarchy`.
pub fn delegation_rule(config: &Config, hierarchy: &Hierarchy) -> Option<Delegation> {
    config
        .delegated_only
        .unwrap_or_else(|| crate::sys::delegation::systemd_manages(hierarchy))
        .then(|| Delegation::new(hierarchy.clone()))
}

/// Why a task may not be placed in the cgroup at `there`: it lies outside
/// every subtree delegated to nsgroup (when the rule applies at all).
pub fn undelegated(delegation: Option<&mut Delegation>, there: &str) -> Option<Refusal> {
    delegation.is_some_and(|d| !d.delegated(there)).then_some(Refusal::NotDelegated)
}

/// The ns subsystem's rule (§13): why task `tid` of `tgid`, in the cgroup at
/// `here`, may not be moved to `there`: it would leave its cgroup's subtree
/// (up, or sideways to another subtree's set) without CAP_SYS_ADMIN in the
/// user namespace `own_user_ns`.
pub fn outside_subtree(proc: &ProcFs, tgid: u32, tid: u32, own_user_ns: u64, here: &str, there: &str) -> Result<Option<Refusal>, IoError> {
    if within(there, here) || proc.has_sys_admin_in(tgid, tid, own_user_ns)? {
        return Ok(None);
    }
    Ok(Some(Refusal::OutsideSubtree))
}
