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
use crate::core::unit::UnitPlan;
use crate::sys::systemd::worker::{Started, UnitError};
pub use crate::policy::gate::Dropped;
use crate::sys::watch::{MemCounts, Victim};
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

/// What failed, and on what (the log sink rate-limits failures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure<'a> {
    /// Checking a placement of `tid` (reading its state).
    Check { tid: u32 },
    /// Carrying a placement of `tid` out.
    Place { tid: u32 },
    /// Writing a policy limit on the new node at `node` (the task is placed anyway).
    Limit { node: &'a str },
    /// Writing a policy limit on the mirror at `mirror` of `controllers`.
    MirrorLimit { mirror: &'a str, controllers: &'a str },
    /// Placing a task in the mirror of `controllers`.
    Mirror { controllers: &'a str },
    /// Removing node `node`.
    Remove { node: CgroupId },
    /// Removing a mirror of the node named `node`.
    RemoveMirror { node: &'a str },
    /// Storing the mirrors in the record of node `node`.
    Record { node: CgroupId },
}

/// The task an entry was of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task<'a> {
    pub tid: u32,
    pub uid: u32,
    pub owner: u32,
    pub comm: &'a str,
}

impl<'a> Task<'a> {
    pub fn of(ev: &'a Event) -> Task<'a> {
        Task { tid: ev.tid, uid: ev.uid, owner: ev.owner, comm: &ev.comm }
    }
}


/// Tasks of a node killed by the OOM killer, as the kernel counted them.
#[derive(Clone, Debug)]
pub struct OomKill {
    pub node: Node,
    pub path: String,
    /// The counts now (`memory.events.local`, `memory.events` or v1 `memory.oom_control`).
    pub counts: MemCounts,
    /// Kills (task and group) since the last look.
    pub kills: u64,
    /// The victim, from the kernel's log (when it could be read and matched).
    pub victim: Option<Victim>,
    /// The node's memory limit in force (`memory.max`, v1 `memory.limit_in_bytes`).
    pub memory_max: Option<String>,
}

/// A node's PSI trigger fired (a `[[pressure]]` rule), and what was done.
#[derive(Clone, Debug)]
pub struct PressureCrossed {
    pub node: Node,
    pub path: String,
    pub resource: &'static str,
    /// The trigger as written (`some 150000 1000000`).
    pub trigger: String,
    /// The rule's action, and how it went: the method (`cgroup.kill`, …) or why it failed.
    pub action: Option<(&'static str, Result<&'static str, String>)>,
}

/// One thing that happened.
pub enum Outcome<'a> {
    /// `count` events were handed to the pipeline (not those held back or
    /// coalesced away); `undecodable` records from the source were skipped.
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
    /// The policy wrote `file` = `value` on node `node`, at `path` (the
    /// node itself, or its mirror: published before the node's `Created`).
    LimitApplied { node: CgroupId, path: &'a str, file: &'a str, value: &'a str },
    /// Entries coalesced away in the high-rate mode (no node made).
    Coalesced { entries: u64 },
    /// `lost` events were lost (the ring overflowed).
    Overflow { lost: u64 },
    /// `task`'s entry was left in place for `why` (a quota, the rules).
    Refused { task: Task<'a>, why: &'a Refusal },
    /// A move decided for task `tid` (named `comm`) was dropped: it is
    /// gone, or someone else's.
    Dropped { tid: u32, comm: &'a str, why: Dropped },
    /// A task of node `node` was placed outside the root of the mirror of
    /// `controllers`, so not mirrored.
    NotMirrored { node: CgroupId, controllers: &'a str },
    /// The OOM killer killed in a node.
    OomKill(&'a OomKill),
    /// A node's pressure crossed a rule's threshold.
    Pressure(&'a PressureCrossed),
    /// A user's manager was asked for a scope of its own for a sandbox
    /// (`plan`): it made it, with the sandbox's first task in it, or the
    /// sandbox stays where it was, for the reason given.
    Unit { plan: &'a UnitPlan, result: Result<&'a Started, &'a UnitError> },
    /// A step failed; the daemon goes on.
    Failed { what: Failure<'a>, error: &'a dyn Display },
}

/// A listener of outcomes.
pub trait Sink {
    /// Whether it follows nodes now: only then are the nodes a reconcile
    /// made looked for.
    fn follows_nodes(&self) -> bool;
    /// Takes one outcome; never blocks.
    fn take(&mut self, outcome: &Outcome<'_>);
}

