//! What the daemon did, as one typed outcome handed to every sink: the API's
//! subscribers, the metrics and history, the log. Whoever does the work
//! says once what happened ([`Sinks::publish`]); each sink takes what it
//! needs from it (the observer shape: one event out to a list of listeners).

use std::time::Duration;

use tracing::{debug, info};

use crate::bpf::Event;
use crate::core::escape::Escaped;
use crate::core::node::{CgroupId, Node};
use crate::placer::{unix_now, Removal};
use crate::reconcile::Report;

/// Who made a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// A placement of an event's task.
    Event,
    /// A reconcile (at start, after lost events, a rescan).
    Reconcile,
}

/// One thing that happened.
pub(super) enum Outcome<'a> {
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
}

/// A listener of outcomes.
pub(super) trait Sink {
    /// Whether it follows nodes now: only then are the nodes a reconcile
    /// made looked for.
    fn follows_nodes(&self) -> bool;
    /// Takes one outcome; never blocks.
    fn take(&mut self, outcome: &Outcome<'_>);
}

/// The log's lines for outcomes (the rest of the daemon logs its own).
pub(super) struct Log;

impl Sink for Log {
    fn follows_nodes(&self) -> bool {
        false
    }

    fn take(&mut self, outcome: &Outcome<'_>) {
        match *outcome {
            // A reconcile's nodes are counted in its own line.
            Outcome::Created { node, path, cause: Cause::Event } => {
                let r = &node.record;
                info!(
                    event = "node_created",
                    path = %Escaped(path),
                    creator_pid = r.creator_pid,
                    creator_uid = r.creator_uid,
                    owner_uid = r.owner(),
                    creator_comm = %Escaped(&r.creator_comm),
                    "node created"
                );
            }
            Outcome::Placed { task, to, latency_us, .. } => debug!(tid = task.tid, kind = ?task.kind, to, latency_us, "placed"),
            Outcome::Removed { removal, mirrored } => {
                let r = &removal.node.record;
                // Typed fields, each where the node's controllers keep it.
                let figure = |name: &str| removal.usage.iter().chain(mirrored).find(|(k, _)| k == name).map(|(_, v)| *v);
                info!(
                    event = "node_removed",
                    path = %Escaped(&removal.path),
                    creator_pid = r.creator_pid,
                    creator_uid = r.creator_uid,
                    owner_uid = r.owner(),
                    creator_comm = %Escaped(&r.creator_comm),
                    lifetime_s = unix_now().saturating_sub(r.created_unix),
                    cpu_usec = figure("cpu_usec"),
                    cpu_nsec = figure("cpu_nsec"),
                    memory_bytes = figure("memory_bytes"),
                    memory_peak_bytes = figure("memory_peak_bytes"),
                    pids = figure("pids"),
                    io_read_bytes = figure("io_read_bytes"),
                    io_write_bytes = figure("io_write_bytes"),
                    "node removed"
                );
            }
            Outcome::Created { cause: Cause::Reconcile, .. }
            | Outcome::Reconciled { .. }
            | Outcome::LimitApplied { .. }
            | Outcome::Coalesced { .. }
            | Outcome::Overflow { .. } => {}
        }
    }
}
