//! When to look at a node whose last task may have left: one pending check
//! per node, backing off while the last task is still on its way out (an
//! exiting task stays in its cgroup for a moment after its exit event), per
//! the configured policy (remove, linger, keep).

use std::collections::HashSet;
use std::time::Duration;

use crate::config::Cleanup as Policy;
use crate::core::node::CgroupId;

/// Back-off of the emptiness checks after an exit (about 16 s in all: a
/// zombie its parent reaps late, on a loaded or emulated machine, holds its
/// node that long).
pub const BACKOFF_MS: [u64; 9] = [2, 20, 100, 300, 600, 1000, 2000, 4000, 8000];

/// What a sweep does with an empty node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Nothing: nodes are kept.
    Keep,
    /// Checks it at once, as attempt `n` (no retries left).
    AtOnce(u32),
    /// Schedules its check as after an exit (linger first).
    Schedule,
}

/// The nodes with a check pending, and the policy.
pub struct Cleanup {
    policy: Policy,
    linger: Duration,
    pending: HashSet<CgroupId>,
}

impl Cleanup {
    pub fn new(policy: Policy, linger: Duration) -> Cleanup {
        Cleanup { policy, linger, pending: HashSet::new() }
    }

    /// When to check `node` (attempt `attempt`, from 0), unless a check is
    /// pending already, the policy keeps nodes, or the attempts ran out.
    pub fn schedule(&mut self, node: CgroupId, attempt: u32) -> Option<Duration> {
        let backoff = || BACKOFF_MS.get(attempt as usize).map(|&ms| Duration::from_millis(ms));
        let delay = match self.policy {
            Policy::Keep => None,
            Policy::Remove => backoff(),
            Policy::Linger if attempt == 0 => Some(self.linger),
            Policy::Linger => backoff(),
        }?;
        self.pending.insert(node).then_some(delay)
    }

    /// A check of `node` is due: it is no longer pending.
    pub fn due(&mut self, node: CgroupId) {
        self.pending.remove(&node);
    }

    /// How a sweep treats the empty nodes it finds.
    pub fn sweep(&self) -> Sweep {
        match self.policy {
            Policy::Keep => Sweep::Keep,
            Policy::Remove => Sweep::AtOnce(BACKOFF_MS.len() as u32),
            Policy::Linger => Sweep::Schedule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pending_check_per_node_backing_off() {
        let mut c = Cleanup::new(Policy::Remove, Duration::from_secs(9));
        assert_eq!(c.schedule(5, 0), Some(Duration::from_millis(2)));
        assert_eq!(c.schedule(5, 0), None, "pending already");
        c.due(5);
        assert_eq!(c.schedule(5, 3), Some(Duration::from_millis(300)));
        c.due(5);
        assert_eq!(c.schedule(5, BACKOFF_MS.len() as u32), None, "attempts ran out");
        assert_eq!(c.schedule(6, 1), Some(Duration::from_millis(20)), "per node");
    }

    #[test]
    fn linger_waits_first_then_backs_off_and_keep_never_checks() {
        let mut l = Cleanup::new(Policy::Linger, Duration::from_secs(9));
        assert_eq!(l.schedule(1, 0), Some(Duration::from_secs(9)));
        l.due(1);
        assert_eq!(l.schedule(1, 1), Some(Duration::from_millis(20)));
        assert_eq!(l.sweep(), Sweep::Schedule);
        let mut k = Cleanup::new(Policy::Keep, Duration::ZERO);
        assert_eq!(k.schedule(1, 0), None);
        assert_eq!(k.sweep(), Sweep::Keep);
        assert_eq!(Cleanup::new(Policy::Remove, Duration::ZERO).sweep(), Sweep::AtOnce(BACKOFF_MS.len() as u32));
    }
}
