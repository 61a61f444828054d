//! Operability: the counters, the metrics endpoint and textfile
//! ([`serve`], [`metrics`]), the history writer, the status file `nsgroup
//! status` reads ([`status`]), the periodic counter log and SIGHUP.
//!
//! Nothing here blocks the loop. As a sink it only counts outcomes into the
//! one [`Counters`], queues history records (a bounded channel to the
//! writer thread; full: dropped and counted) and notes node changes. The
//! loop calls it at start ([`Ops::started`]), once per turn ([`Ops::turn`]:
//! the counters and noted changes published, the status and counter log
//! timers asked for after a change), for its timers ([`Ops::timer`]) and at
//! exit ([`Ops::stopped`]); each call brings the [`Gauges`] only the loop
//! knows, and a way to ask for a timer.

mod metrics;
mod on_change;
mod serve;
mod status;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::error::SinkError;
use crate::config::Config;
use crate::core::histogram::Histogram;
use crate::core::node::Node;
use crate::core::nsset::NsKind;
use crate::core::node::CgroupId;
use crate::history::{Happening, Msg, NodeRow, Retention, Writer};
use crate::pipeline::outcome::{Dropped, Outcome, Sink};
use crate::sys::clock::unix_now;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::status_file::{mount_options, status_path, Counters, StatusFile};

use on_change::OnChange;
use serve::Metrics;
use status::{Hooks, Status};

/// Timer jobs of operability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpsJob {
    /// Rewrite the status file.
    Status,
    /// Log the counters.
    LogCounters,
    /// Publish to the metrics again (a scrape held the lock).
    Publish,
}

/// What only the loop knows, as of the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Events lost because the ring buffer was full, and events it carried.
    pub ring_dropped: u64,
    pub ring_emitted: u64,
    pub live_nodes: u64,
    /// Namespaces held open for nodes.
    pub pinned: u64,
    /// Nodes left unwatched, and PSI triggers left unwritten, by the bounds.
    pub watches_skipped: u64,
    pub triggers_skipped: u64,
}

/// What the daemon runs with, known once its source runs.
pub struct Started {
    /// The event source and its hooks, described.
    pub source: String,
    /// Whether the hierarchy is nsgroup's own.
    pub own_hierarchy: bool,
    /// The mirrors' controllers, in the order the counter log lists them.
    pub mirrors: Vec<String>,
}

/// The operability sink.
pub struct Ops {
    counters: Counters,
    /// The latency quantiles of the counter log (too large to copy with
    /// each publication).
    latency: Histogram,
    metrics: Option<Metrics>,
    history: Option<Writer>,
    /// Coalesced entries already sent to the history.
    coalesced_sent: u64,
    status: Option<Status>,
    /// Read at start, for what the hooks cost.
    mount_options: String,
    /// How often at most the counters are logged (zero: at exit only).
    log_every: Duration,
    logged: OnChange,
    mirrors: Vec<String>,
    hup: Arc<AtomicBool>,
    /// Happenings of nodes whose `Created` comes later in the turn.
    early: Vec<(CgroupId, Happening)>,
}

/// Happenings held for a node not yet recorded, at most (per turn).
const MAX_EARLY: usize = 256;

/// `what`, done by `by` now, for a timeline.
fn happening(what: &str, by: &str, uid: Option<u32>, detail: BTreeMap<String, serde_json::Value>) -> Happening {
    Happening { at_unix: unix_now(), what: what.into(), by: by.into(), uid, detail }
}

fn node_row(node: &Node, path: String) -> NodeRow {
    let r = &node.record;
    NodeRow {
        cgroup_id: node.id,
        path,
        set: NsKind::ALL.into_iter().filter(|k| r.set.get(*k) != 0).map(|k| (k.proc_name().to_string(), r.set.get(k))).collect(),
        creator_pid: r.creator_pid,
        creator_comm: r.creator_comm.clone(),
        creator_uid: r.creator_uid,
        owner_uid: r.owner(),
        created_unix: r.created_unix,
        restored_from: r.restored.clone(),
    }
}

impl Ops {
    /// Installs the SIGHUP handler (its signal wakes the loop through
    /// `wake`), binds the metrics address and starts the metrics threads,
    /// opens the history.
    pub fn start(config: &Config, hierarchy: &Hierarchy, root: &str, wake: &std::os::unix::net::UnixStream) -> Result<Ops, SinkError> {
        let hup = Arc::new(AtomicBool::new(false));
        let sig = signal_hook::consts::SIGHUP;
        signal_hook::flag::register(sig, Arc::clone(&hup)).map_err(SinkError::Signals)?;
        signal_hook::low_level::pipe::register(sig, wake.try_clone().map_err(SinkError::Signals)?).map_err(SinkError::Signals)?;

        let started_unix = unix_now();
        let m = &config.metrics;
        let (metrics, listen) = Metrics::start(m, hierarchy, started_unix)?;
        let h = &config.history;
        let history = if h.database.as_os_str().is_empty() {
            None
        } else {
            let retention = Retention { days: h.retention_days, rows: h.retention_rows };
            match Writer::start(&h.database, hierarchy.mount().display().to_string(), root.to_string(), retention) {
                Ok(w) => {
                    info!(database = %h.database.display(), "recording history");
                    Some(w)
                }
                Err(e) => {
                    warn!(database = %h.database.display(), error = %e, "cannot open the history database; running without history");
                    None
                }
            }
        };
        let mount_options = mount_options(hierarchy.mount()).unwrap_or_default();
        let dir = &config.status.dir;
        let status = match (!dir.as_os_str().is_empty()).then(|| status_path(dir, hierarchy, root)) {
            None => None,
            Some(Ok(path)) => Some(Status::new(
                path,
                StatusFile {
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    started_unix,
                    hierarchy: hierarchy.mount().display().to_string(),
                    cgroup_version: format!("{:?}", hierarchy.version()).to_lowercase(),
                    root: root.to_string(),
                    mount_options: mount_options.clone(),
                    metrics_listen: listen,
                    metrics_file: (!m.file.as_os_str().is_empty()).then(|| m.file.display().to_string()),
                    history_database: history.as_ref().map(|_| h.database.display().to_string()),
                    ..StatusFile::default()
                },
            )),
            Some(Err(e)) => {
                warn!(dir = %dir.display(), error = %e, "no status file");
                None
            }
        };
        Ok(Ops {
            counters: Counters::default(),
            latency: Histogram::default(),
            metrics,
            history,
            coalesced_sent: 0,
            status,
            mount_options,
            log_every: Duration::from_secs(config.status.log_counters_seconds),
            logged: OnChange::default(),
            mirrors: Vec::new(),
            hup,
            early: Vec::new(),
        })
    }

    /// A handle on the history for other threads (the API's workers).
    pub fn recorder(&self) -> Option<crate::history::Recorder> {
        self.history.as_ref().and_then(Writer::recorder)
    }

    /// What was counted so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// After the start's reconcile: what the hooks cost (logged, and in the
    /// status file), the `nodes` that exist (with their paths) to the
    /// history (which closes those gone meanwhile) and the metrics, then a
    /// first turn (the first status file is written at once).
    pub fn started<'a>(
        &mut self,
        info: Started,
        gauges: &Gauges,
        nodes: impl Iterator<Item = (&'a Node, String)>,
        schedule: &mut dyn FnMut(Duration, OpsJob),
    ) {
        let hooks = Hooks::of(&info.source, &self.mount_options);
        for cost in &hooks.costs {
            warn!(cost = %cost, "what tracking costs this machine");
        }
        if let Some(status) = &mut self.status {
            status.started(info.source, info.own_hierarchy, hooks);
        }
        self.mirrors = info.mirrors;
        if self.follows_nodes() {
            let mut live = Vec::new();
            for (node, path) in nodes {
                if let Some(m) = &mut self.metrics {
                    m.added(node, &path);
                }
                live.push(node_row(node, path));
            }
            if let Some(h) = &self.history {
                h.send(Msg::Start { live, now_unix: unix_now() });
            }
        }
        self.turn(gauges, schedule);
    }

    /// Once per turn of the loop: SIGHUP, coalesced counts to the history,
    /// the counters and node changes to the metrics, the status and counter
    /// log timers asked for after a change.
    pub fn turn(&mut self, gauges: &Gauges, schedule: &mut dyn FnMut(Duration, OpsJob)) {
        if self.hup.swap(false, Ordering::Relaxed) {
            info!(
                signal = "SIGHUP",
                "ignored: the configuration is read at start only (restart nsgroup to apply a change; nodes stay)"
            );
        }
        self.send_early(None);
        let unsent = self.counters.coalesced_entries - self.coalesced_sent;
        if unsent > 0 {
            if let Some(h) = &self.history {
                h.send(Msg::Coalesced { minute_unix: unix_now() / 60 * 60, entries: unsent });
            }
            self.coalesced_sent = self.counters.coalesced_entries;
        }
        self.refresh(gauges);
        if let Some(after) = self.metrics.as_mut().and_then(|m| m.publish(&self.counters)) {
            schedule(after, OpsJob::Publish);
        }
        if let Some(after) = self.status.as_mut().and_then(|s| s.turn(&self.counters)) {
            schedule(after, OpsJob::Status);
        }
        if !self.log_every.is_zero() && self.logged.arm(&self.counters) {
            schedule(self.log_every, OpsJob::LogCounters);
        }
    }

    /// One of the timers it asked for came.
    pub fn timer(&mut self, job: OpsJob, gauges: &Gauges, schedule: &mut dyn FnMut(Duration, OpsJob)) {
        match job {
            OpsJob::Publish => {
                if let Some(m) = &mut self.metrics {
                    m.retry();
                }
                self.turn(gauges, schedule);
            }
            OpsJob::Status => {
                self.refresh(gauges);
                if let Some(status) = &mut self.status {
                    status.write(&self.counters);
                }
            }
            OpsJob::LogCounters => {
                self.refresh(gauges);
                self.logged.ran(&self.counters);
                self.log_counters(gauges);
            }
        }
    }

    /// At exit: the counters logged and published; the status file goes (no
    /// daemon runs); the history writer finishes what is queued.
    pub fn stopped(&mut self, gauges: &Gauges) {
        self.log_counters(gauges);
        self.turn(gauges, &mut |_, _| {});
        if let Some(status) = &self.status {
            status.remove();
        }
        self.history.take();
    }

    /// The held happenings of node `of` (all, when `None`) to the history.
    fn send_early(&mut self, of: Option<CgroupId>) {
        let Some(h) = &self.history else { return };
        let (now, later) = std::mem::take(&mut self.early).into_iter().partition(|(id, _)| of.is_none_or(|of| of == *id));
        self.early = later;
        for (cgroup_id, happening) in now {
            h.send(Msg::Happened { cgroup_id, happening });
        }
    }

    /// The gauges into the counters.
    fn refresh(&mut self, gauges: &Gauges) {
        self.counters.ring_dropped = gauges.ring_dropped;
        self.counters.live_nodes = gauges.live_nodes;
        self.counters.watches_skipped = gauges.watches_skipped;
        self.counters.triggers_skipped = gauges.triggers_skipped;
        self.counters.history_dropped = self.history.as_ref().map_or(0, Writer::dropped);
    }

    /// The counter log line ("stats").
    fn log_counters(&self, gauges: &Gauges) {
        let c = &self.counters;
        info!(
            events = c.events,
            moved = c.placements,
            created = c.nodes_created,
            removed = c.nodes_removed,
            reconciles = c.reconciles,
            refused = c.refusals,
            dropped_gone = c.dropped_gone,
            dropped_reused = c.dropped_reused,
            dropped_other_writer = c.dropped_other_writer,
            not_mirrored = %self.mirrors.iter().map(|m| c.not_mirrored.get(m).copied().unwrap_or(0).to_string()).collect::<Vec<_>>().join(","),
            pinned = gauges.pinned,
            ring_dropped = gauges.ring_dropped,
            ring_emitted = gauges.ring_emitted,
            latency_p50_us = self.latency.quantile(0.5),
            latency_p99_us = self.latency.quantile(0.99),
            latency_max_us = self.latency.max(),
            "stats"
        );
    }
}

impl Sink for Ops {
    /// Whether node changes are followed (metrics or history on).
    fn follows_nodes(&self) -> bool {
        self.metrics.is_some() || self.history.is_some()
    }

    /// Counted; nodes made and removed to the metrics' node series and the history.
    fn take(&mut self, outcome: &Outcome<'_>) {
        let c = &mut self.counters;
        match *outcome {
            Outcome::Events { count, .. } => c.events += count,
            Outcome::Refused { .. } => c.refusals += 1,
            Outcome::Dropped { why, .. } => match why {
                Dropped::Gone => c.dropped_gone += 1,
                Dropped::Reused => c.dropped_reused += 1,
                Dropped::OtherWriter => c.dropped_other_writer += 1,
            },
            Outcome::NotMirrored { controllers, .. } => *c.not_mirrored.entry(controllers.to_string()).or_default() += 1,
            Outcome::Reconciled { .. } => c.reconciles += 1,
            Outcome::Placed { latency_us, created, .. } => {
                c.placements += 1;
                c.nodes_created += u64::from(created);
                c.record_latency(latency_us);
                self.latency.record(latency_us);
            }
            Outcome::Created { node, path, .. } => {
                if let Some(m) = &mut self.metrics {
                    m.added(node, path);
                }
                if let Some(h) = &self.history {
                    h.send(Msg::Created(node_row(node, path.to_string())));
                }
                self.send_early(Some(node.id));
            }
            Outcome::Removed { removal, .. } => {
                c.nodes_removed += 1;
                if let Some(m) = &mut self.metrics {
                    m.removed(removal.node.id);
                }
                if let Some(h) = &self.history {
                    let usage = removal.usage.iter().cloned().collect();
                    h.send(Msg::Removed { node: node_row(&removal.node, removal.path.clone()), removed_unix: unix_now(), usage });
                }
            }
            Outcome::Coalesced { entries } => c.coalesced_entries += entries,
            Outcome::LimitApplied { node, path, file, value } => {
                let detail = [("file".into(), file.into()), ("value".into(), value.into()), ("path".into(), path.into())].into();
                // A new node's limits come before it: held until it is recorded.
                if self.history.is_some() && self.early.len() < MAX_EARLY {
                    self.early.push((node, happening("limit", "policy", None, detail)));
                }
            }
            Outcome::OomKill(k) => {
                *c.oom_kills.entry(k.node.record.kind().to_string()).or_default() += k.kills;
                if let Some(h) = &self.history {
                    let mut detail = BTreeMap::from([
                        ("kills".to_string(), k.kills.into()),
                        ("oom_kill".to_string(), k.counts.oom_kill.into()),
                        ("oom_group_kill".to_string(), k.counts.oom_group_kill.into()),
                    ]);
                    if let Some(v) = &k.victim {
                        detail.insert("victim_pid".into(), v.pid.into());
                        detail.insert("victim_comm".into(), v.comm.clone().into());
                    }
                    if let Some(m) = &k.memory_max {
                        detail.insert("memory_max".into(), m.clone().into());
                    }
                    h.send(Msg::Happened { cgroup_id: k.node.id, happening: happening("oom_kill", "kernel", None, detail) });
                }
            }
            Outcome::Pressure(p) => {
                *c.pressure_events.entry(p.resource.to_string()).or_default() += 1;
                if let Some((action, done)) = &p.action {
                    *c.pressure_actions.entry(action.to_string()).or_default() += u64::from(done.is_ok());
                }
                if let Some(h) = &self.history {
                    let mut detail = BTreeMap::from([
                        ("resource".to_string(), p.resource.into()),
                        ("trigger".to_string(), p.trigger.clone().into()),
                    ]);
                    if let Some((action, done)) = &p.action {
                        detail.insert("action".into(), (*action).into());
                        detail.insert("done".into(), done.as_ref().map_or_else(|e| format!("failed: {e}"), |m| m.to_string()).into());
                    }
                    h.send(Msg::Happened { cgroup_id: p.node.id, happening: happening("pressure", "kernel", None, detail) });
                }
            }
            Outcome::Unit { result, .. } => {
                let how = match result {
                    Ok(_) => "started",
                    Err(crate::sys::systemd::worker::UnitError::Left { .. }) => "left",
                    Err(_) => "stayed",
                };
                *c.user_scopes.entry(how.into()).or_default() += 1;
            }
            Outcome::Overflow { .. } | Outcome::Failed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;
