//! The log sink: a line for what users and operators want to know of
//! (nodes made and removed), and for what went wrong, at a pace no user can
//! set ([`Reports`]: a few lines per kind per interval, refusals summed per
//! user in one report per interval).

use crate::sys::systemd::worker::UnitError;
use tracing::{debug, info, warn};

use super::rate::Rate;
use super::reports::{Kind, Reports, REPORT_INTERVAL};
use crate::core::escape::Escaped;
use crate::core::tracker::Refusal;
use crate::pipeline::outcome::{Cause, Dropped, Failure, Outcome, Sink};
use crate::sys::clock::unix_now;

/// The log's lines for outcomes.
pub struct Log {
    reports: Reports,
    /// The kernel's kills and pressure, per owner.
    per_owner: Rate<u32>,
}

/// Lines about one owner's nodes (OOM kills) per interval.
const OWNER_LINES: u32 = 5;
/// Owners followed at once for it.
const OWNERS: usize = 1024;

impl Default for Log {
    fn default() -> Log {
        Log { reports: Reports::default(), per_owner: Rate::new(REPORT_INTERVAL, OWNER_LINES, OWNERS) }
    }
}

impl Log {
    /// Whether the report timer must be started now (something was counted
    /// and none is pending): the loop then calls [`Log::write_reports`]
    /// after [`REPORT_INTERVAL`].
    pub fn report_due(&mut self) -> Option<std::time::Duration> {
        self.reports.arm().then_some(REPORT_INTERVAL)
    }

    /// One line per kind of suppressed log lines, one per user with
    /// refusals; `live_nodes` tells how many nodes an owner has now.
    pub fn write_reports(&mut self, live_nodes: impl Fn(u32) -> usize, max_nodes_per_user: usize) {
        let summary = self.reports.take();
        for (kind, suppressed) in summary.suppressed {
            warn!(kind, suppressed, interval_s = REPORT_INTERVAL.as_secs(), "log lines suppressed");
        }
        for (owner_uid, r) in summary.users {
            warn!(
                owner_uid,
                refused_quota = r.quota,
                refused_rate = r.rate,
                refused_other = r.other,
                live_nodes = live_nodes(owner_uid),
                max_nodes_per_user,
                interval_s = REPORT_INTERVAL.as_secs(),
                "entries refused (quota, rate or rules); their tasks stay where they are"
            );
        }
        let (users, refused) = summary.other_users;
        if users > 0 {
            warn!(users, refused, "entries of further users refused");
        }
    }
}

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
            Outcome::Events { undecodable, .. } if undecodable > 0 => {
                if self.reports.allow(Kind::Undecodable) {
                    warn!(records = undecodable, "undecodable ring buffer records skipped");
                }
            }
            Outcome::Refused { ref task, why } => {
                self.reports.refused(task.owner, why);
                // Counted only: a storm, or every sandboxed service of a systemd host.
                let quota = matches!(why, Refusal::UserQuota { .. } | Refusal::UserRate { .. } | Refusal::NotDelegated);
                if !quota && self.reports.allow(Kind::Refused) {
                    warn!(tid = task.tid, uid = task.uid, owner_uid = task.owner, comm = %Escaped(task.comm), "left in place: {why}");
                }
            }
            Outcome::Dropped { tid, comm, why } => match why {
                Dropped::Gone => debug!(tid, "not moved: the task or its destination is gone"),
                Dropped::Reused => {
                    if self.reports.allow(Kind::Reused) {
                        warn!(tid, "not moved: the tid belongs to another task now");
                    }
                }
                Dropped::OtherWriter => {
                    if self.reports.allow(Kind::OtherWriter) {
                        warn!(tid, comm = %Escaped(comm), "not moved: another cgroup writer moved it meanwhile");
                    }
                }
            },
            Outcome::Failed { what, error } => {
                if self.reports.allow(Kind::Failed) {
                    match what {
                        Failure::Check { tid } => warn!(tid, "checking a placement failed: {error}"),
                        Failure::Place { tid } => warn!(tid, "placing failed: {error}"),
                        Failure::Limit { node } => warn!(node = %Escaped(node), "limit not applied (the task is placed anyway): {error}"),
                        Failure::MirrorLimit { mirror, controllers } => {
                            warn!(mirror = %Escaped(mirror), controllers, "limit not applied (the task is placed anyway): {error}")
                        }
                        Failure::Mirror { controllers } => warn!(controllers, "mirroring failed: {error}"),
                        Failure::Remove { node } => warn!("removing node {node}: {error}"),
                        Failure::RemoveMirror { node } => warn!("removing a mirror of {}: {error}", Escaped(node)),
                        Failure::Record { node } => warn!("storing the mirrors of node {node}: {error}"),
                    }
                }
            }
            // A periodic rescan (no BPF) that found nothing says nothing.
            Outcome::Reconciled { why, report, elapsed } if why != "rescan" || report.moved > 0 => info!(
                why,
                elapsed_ms = elapsed.as_millis() as u64,
                examined = report.examined,
                moved = report.moved,
                created = report.created,
                foreign = report.foreign,
                refused = report.refused,
                vanished = report.vanished,
                "reconciled"
            ),
            Outcome::Unit { plan, result: Ok(started) } => info!(
                event = "user_scope",
                uid = plan.origin.uid,
                origin = %plan.origin.unit,
                scope = %plan.scope,
                pid = plan.pid,
                followers = started.followers,
                "a sandbox left its unit for a scope of its own"
            ),
            Outcome::Unit { plan, result: Err(e @ UnitError::Left { .. }) } => {
                debug!(uid = plan.origin.uid, scope = %plan.scope, pid = plan.pid, "no scope asked: {e}")
            }
            Outcome::Unit { plan, result: Err(e) } => {
                if self.per_owner.allow(plan.origin.uid, std::time::Instant::now()) {
                    warn!(
                        event = "user_scope",
                        uid = plan.origin.uid,
                        origin = %plan.origin.unit,
                        scope = %plan.scope,
                        pid = plan.pid,
                        "a sandbox stays in its unit, where nsgroup may not write: {e}"
                    );
                }
            }
            Outcome::OomKill(k) => {
                let r = &k.node.record;
                if self.per_owner.allow(r.owner(), std::time::Instant::now()) {
                    warn!(
                        event = "oom_kill",
                        path = %Escaped(&k.path),
                        owner_uid = r.owner(),
                        creator_comm = %Escaped(&r.creator_comm),
                        victim_pid = k.victim.as_ref().map(|v| v.pid),
                        victim_comm = k.victim.as_ref().map(|v| Escaped(&v.comm).to_string()),
                        memory_max = k.memory_max.as_deref(),
                        kills = k.kills,
                        oom_kill = k.counts.oom_kill,
                        oom_group_kill = k.counts.oom_group_kill,
                        "the OOM killer killed in a node"
                    );
                }
            }
            Outcome::Pressure(p) => {
                let r = &p.node.record;
                if self.per_owner.allow(r.owner(), std::time::Instant::now()) {
                    let (action, done) = match &p.action {
                        Some((a, Ok(method))) => (Some(*a), Some(method.to_string())),
                        Some((a, Err(e))) => (Some(*a), Some(format!("failed: {e}"))),
                        None => (None, None),
                    };
                    warn!(
                        event = "pressure",
                        path = %Escaped(&p.path),
                        owner_uid = r.owner(),
                        creator_comm = %Escaped(&r.creator_comm),
                        resource = p.resource,
                        trigger = %p.trigger,
                        action,
                        done,
                        "a node's pressure crossed its rule's threshold"
                    );
                }
            }
            Outcome::Created { cause: Cause::Reconcile, .. }
            | Outcome::Events { .. }
            | Outcome::Reconciled { .. }
            | Outcome::LimitApplied { .. }
            | Outcome::Coalesced { .. }
            | Outcome::Overflow { .. }
            | Outcome::NotMirrored { .. } => {}
        }
    }
}
