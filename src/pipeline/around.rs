//! What the pipeline asks of the loop that runs it: timers for its later
//! work, the event source's per-task bookkeeping, and the sinks.

use std::time::Duration;

use super::outcome::Outcome;
use crate::core::node::CgroupId;

/// Work the pipeline asks the loop to do later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// A setns caller's set has settled: `Pipeline::settle`.
    Settle(u32),
    /// See whether a node emptied (`Pipeline::cleanup`); the attempt number backs off.
    Cleanup(CgroupId, u32),
}

/// What the pipeline needs of the loop that runs it: timers, the event
/// source's per-task bookkeeping, and the sinks.
pub trait Around {
    /// Runs `job` after `after`.
    fn schedule(&mut self, after: Duration, job: Job);
    /// `tid` is in node `node` now: its exit must be reported.
    fn track(&mut self, tid: u32, node: CgroupId);
    /// The daemon is done with `tid`'s latest entry.
    fn settled(&mut self, tid: u32);
    /// Hands an outcome to every sink.
    fn publish(&mut self, outcome: Outcome<'_>);
    /// Asks a user's manager for the scope `plan` names (off the loop: the
    /// answer comes back through [`super::Pipeline::unit_done`]); `false`
    /// when it cannot be asked now (too many requests wait).
    fn ask_unit(&mut self, plan: &crate::core::unit::UnitPlan) -> bool;
    /// Whether a sink follows nodes (a reconcile then publishes the nodes it made).
    fn follows_nodes(&mut self) -> bool;
}

