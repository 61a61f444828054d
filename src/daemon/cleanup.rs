//! Removing nodes whose last task left: one pending check per node, backing
//! off while the last task is still on its way out, bottom-up through
//! emptied parents. A check of a node that is gone already costs nothing.

use std::collections::HashSet;
use std::time::Duration;

use tracing::warn;

use super::outcome::Outcome;
use super::reports::Kind;
use super::{Daemon, Timer};
use crate::config::Cleanup;
use crate::core::node::CgroupId;

/// Back-off of the emptiness checks after an exit: an exiting task stays in
/// its cgroup for a moment after its exit event.
pub(super) const CLEANUP_BACKOFF_MS: [u64; 6] = [2, 20, 100, 300, 600, 1000];

impl Daemon {
    /// Checks `node` for emptiness later (per policy), unless a check is pending.
    pub(super) fn schedule_cleanup(&mut self, node: CgroupId, attempt: u32) {
        let delay = match self.config.cleanup {
            Cleanup::Keep => return,
            Cleanup::Remove => CLEANUP_BACKOFF_MS.get(attempt as usize).copied(),
            Cleanup::Linger if attempt == 0 => Some(self.config.linger_seconds * 1000),
            Cleanup::Linger => CLEANUP_BACKOFF_MS.get(attempt as usize).copied(),
        };
        if let Some(ms) = delay {
            if self.cleanups.insert(node) {
                self.timers.schedule(Duration::from_millis(ms), Timer::Cleanup(node, attempt));
            }
        }
    }

    /// Removes `node` if empty, then its emptied parents; retries while the
    /// last task is still on its way out.
    pub(super) fn cleanup(&mut self, node: CgroupId, attempt: u32) {
        self.cleanups.remove(&node);
        let mut current = Some(node);
        while let Some(id) = current {
            let Some(parent) = self.placer.tracker().node(id).map(|n| n.parent) else { return };
            match self.placer.try_remove(id) {
                Ok(Some(removal)) => {
                    self.stats.removed += 1;
                    self.pins.release(id);
                    let mirrored = self.remove_mirrors(&removal.node);
                    self.sinks.publish(Outcome::Removed { removal: &removal, mirrored: &mirrored });
                    current = Some(parent).filter(|p| self.placer.tracker().node(*p).is_some());
                }
                Ok(None) => {
                    // Busy: retry while only exiting tasks hold it (the node
                    // asked about, or a parent reached by removing its last child).
                    if !self.placer.tracker().has_child_nodes(id) && !self.has_live_tasks(id) {
                        self.schedule_cleanup(id, if id == node { attempt + 1 } else { 1 });
                    }
                    return;
                }
                Err(e) => {
                    if self.reports.allow(Kind::Failed) {
                        warn!("removing node {id}: {e}");
                    }
                    return;
                }
            }
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
    pub(super) fn sweep_empty_nodes(&mut self, occupied: &HashSet<CgroupId>) {
        if self.config.cleanup == Cleanup::Keep {
            return;
        }
        let tracker = self.placer.tracker();
        let leaves: Vec<CgroupId> =
            tracker.nodes().filter(|n| !tracker.has_child_nodes(n.id) && !occupied.contains(&n.id)).map(|n| n.id).collect();
        for id in leaves {
            if self.config.cleanup == Cleanup::Remove {
                self.cleanup(id, CLEANUP_BACKOFF_MS.len() as u32);
            } else {
                self.schedule_cleanup(id, 0);
            }
        }
    }
}
