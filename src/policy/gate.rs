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
use crate::sys::delegation::Delegation;
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
    pub fn new(
        bounds: Bounds,
        proc: ProcFs,
        key: HierarchyKey,
        quotas: UserQuotas,
        own_user_ns: u64,
        delegation: Option<Delegation>,
    ) -> Gate {
        Gate { bounds, proc, key, quotas, own_user_ns, delegation }
    }

    /// Why a node `new` may not be made: too deep, or too many nodes.
    pub fn beyond_bounds(&self, tracker: &Tracker, new: &NewNode) -> Option<Refusal> {
        if new.depth > self.bounds.max_depth {
            return Some(Refusal::TooDeep { depth: new.depth });
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
        if self.delegation.as_mut().is_some_and(|d| !d.delegated(&there)) {
            return Ok(Checked::Go(Placement::Refused(Refusal::NotDelegated)));
        }
        if !within(&there, &here) && !self.proc.has_sys_admin_in(entry.tgid, entry.tid, self.own_user_ns)? {
            return Ok(Checked::Go(Placement::Refused(Refusal::OutsideSubtree)));
        }
        Ok(Checked::Go(placement))
    }
}
