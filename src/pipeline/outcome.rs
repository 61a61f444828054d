//! What the pipeline did, as one typed outcome handed to every sink: the
//! API's subscribers, the metrics and history, the log. Whoever does the
//! work says once what happened; each sink takes what it needs from it (the
//! observer shape: one event out to a list of listeners). Refusals, drops
//! and failures are outcomes too: counted once, by the sinks, and logged
//! (rate-limited) by the log sink alone.

use std::fmt::Display;
use std::time::Duration;

use crate::bpf::Event;
use crate::core::node::{CgroupId, Node};
use crate::core::tracker::Refusal;
pub use crate::policy::gate::Dropped;
use super::placer::Removal;
use super::reconcile::Report;

/// Who made a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A placement of an event's task.
    Event,
    /// A reconcile (at start, after lost events, a rescan).
    Reconcile,
}

/// What a failure was doing (the log sink rate-limits them per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Checking a placement (reading the task's state).
    Check,
    /// Carrying a placement out.
    Place,
    /// Writing a policy limit on a new node or its mirror (the task is placed anyway).
    Limit,
    /// Placing a task in a mirrored hierarchy.
    Mirror,
    /// Removing a node or one of its mirrors.
    Remove,
    /// Storing a node's record.
    Record,
}

/// One thing that happened.
pub enum Outcome<'a> {
    /// `count` events were taken from the source, `undecodable` records skipped.
    Events { count: u64, undecodable: u64 },
    /// A node was made at `path`.
    Created { node: &'a Node, path: &'a str, cause: Cause },
    /// `task`'s task was moved into `to` at `path` (`created`: the node was
    /// made for it, published just before).
    Placed { task: &'a Event, to: CgroupId, path: &'a str, created: bool, latency_us: u64 },
    /// A node was removed; `mirrored` is its mirrors' final usage.
    Removed { removal: &'a Removal, mirrored: &'a [(String, u64)] },
    /// A reconcile ended (the nodes it made were published before).
    Reconciled { why: &'a str, report: &'a Report, elapsed: Duration },
    /// The policy wrote `file` = `value` on the new node at `path`.
    LimitApplied { path: &'a str, file: &'a str, value: &'a str },
    /// Entries coalesced away in the high-rate mode (no node made).
    Coalesced { entries: u64 },
    /// `lost` events were lost (the ring overflowed).
    Overflow { lost: u64 },
    /// `task`'s entry was left in place for `why` (a quota, the rules).
    Refused { task: &'a Event, why: &'a Refusal },
    /// A move decided for task `tid` (named `comm`) was dropped: it is
    /// gone, or someone else's.
    Dropped { tid: u32, comm: &'a str, why: Dropped },
    /// A task of node `node` was placed outside the root of the mirror of
    /// `controllers`, so not mirrored.
    NotMirrored { node: CgroupId, controllers: &'a str },
    /// A step failed on `subject` (a path or a tid); the daemon goes on.
    Failed { step: Step, subject: &'a str, error: &'a dyn Display },
}

/// A listener of outcomes.
pub trait Sink {
    /// Whether it follows nodes now: only then are the nodes a reconcile
    /// made looked for.
    fn follows_nodes(&self) -> bool;
    /// Takes one outcome; never blocks.
    fn take(&mut self, outcome: &Outcome<'_>);
}

