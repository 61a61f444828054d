//! The daemon's calls into the operability sink (moving into the sink).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::{Daemon, Timer};
use crate::core::node::Node;
use crate::history::{Msg, Writer};
use crate::pipeline::placer::unix_now;
use crate::sinks::ops::{label_of, mount_options, node_row, Change, OpsJob, NO_FAVORDYNMODS_COST, RETRY_PUBLISH, STATUS_EVERY, TRACEPOINT_COST};
use crate::sys::cgroupfs::CgroupBackend;
use crate::sys::status_file::{write_atomically, Counters, StatusFile};

impl Daemon {
    fn ops_counters(&self) -> Counters {
        let s = self.sinks.ops.counted();
        Counters {
            events: s.events,
            placements: s.moved,
            nodes_created: s.created,
            nodes_removed: s.removed,
            reconciles: s.reconciles,
            refusals: s.refused,
            dropped_gone: s.dropped_gone,
            dropped_reused: s.dropped_reused,
            dropped_other_writer: s.dropped_other_writer,
            ring_dropped: self.source.dropped(),
            coalesced_entries: self.sinks.ops.coalesced,
            history_dropped: self.sinks.ops.history.as_ref().map_or(0, Writer::dropped),
            live_nodes: self.pipeline.tracker().node_count() as u64,
            latency_buckets: self.sinks.ops.latency.clone(),
            latency_sum_us: self.sinks.ops.latency_sum_us,
            latency_count: s.latency.count(),
        }
    }

    /// After the start's reconcile: the nodes that exist to the history (which
    /// closes those gone meanwhile) and the metrics; the status file; what
    /// the hooks cost.
    pub(super) fn ops_started(&mut self) {
        let source = self.source.describe();
        let tracepoints = source.contains("tracepoint/syscalls");
        let options = mount_options(self.hierarchy.mount()).unwrap_or_default();
        let favordynmods = options.split([',', ' ']).any(|o| o == "favordynmods");
        let mut costs = Vec::new();
        if tracepoints {
            costs.push(TRACEPOINT_COST.to_string());
        }
        if !favordynmods {
            costs.push(NO_FAVORDYNMODS_COST.to_string());
        }
        for cost in &costs {
            warn!(cost = %cost, "what tracking costs this machine");
        }
        let why = if source.contains("no syscall hook") {
            "hooks = \"no-syscall\": no syscall is hooked; unshare/setns callers are seen at their next fork or exec, or by the next snapshot"
        } else if source.contains("refused") {
            "fentry/fexit on unshare/setns were refused by the kernel; the syscall tracepoints are the fallback"
        } else if tracepoints {
            "fentry/fexit are unavailable here; the syscall tracepoints are the fallback"
        } else if source.contains("proc connector") {
            "BPF is unavailable or source = \"proc\": the netlink proc connector and /proc rescans"
        } else {
            "the preferred hooks loaded"
        };
        self.sinks.ops.status = StatusFile {
            mount_options: options,
            favordynmods,
            source,
            syscall_tracepoints: tracepoints,
            hooks_why: why.into(),
            costs,
            own_hierarchy: self.own_hierarchy,
            ..std::mem::take(&mut self.sinks.ops.status)
        };
        if self.sinks.ops.follow {
            let nodes: Vec<Node> = self.pipeline.tracker().nodes().cloned().collect();
            let mut live = Vec::with_capacity(nodes.len());
            for node in nodes {
                let path = self.pipeline.placer().backend().path_of(node.id).ok().flatten().unwrap_or_default();
                if self.sinks.ops.metrics_on {
                    self.sinks.ops.pending.push(Change::Add(node.id, label_of(&node, path.clone())));
                }
                live.push(node_row(&node, path));
            }
            if let Some(h) = &self.sinks.ops.history {
                h.send(Msg::Start { live, now_unix: unix_now() });
            }
        }
        self.ops_turn();
        self.ops_write_status();
    }

    /// Once per turn of the loop: SIGHUP, the counters and node changes to
    /// the metrics, coalesced counts to the history, the status and counter
    /// timers armed after a change.
    pub(super) fn ops_turn(&mut self) {
        if self.sinks.ops.hup.swap(false, Ordering::Relaxed) {
            info!(
                signal = "SIGHUP",
                "ignored: the configuration is read at start only (restart nsgroup to apply a change; nodes stay)"
            );
        }
        let unsent = self.sinks.ops.coalesced - self.sinks.ops.coalesced_sent;
        if unsent > 0 {
            if let Some(h) = &self.sinks.ops.history {
                h.send(Msg::Coalesced { minute_unix: unix_now() / 60 * 60, entries: unsent });
            }
            self.sinks.ops.coalesced_sent = self.sinks.ops.coalesced;
        }
        let counters = self.ops_counters();
        let changed = self.sinks.ops.published.as_ref() != Some(&counters) || !self.sinks.ops.pending.is_empty();
        if !changed {
            return;
        }
        if let Ok(mut state) = self.sinks.ops.state.try_lock() {
            for change in self.sinks.ops.pending.drain(..) {
                match change {
                    Change::Add(id, label) => {
                        state.nodes.insert(id, label);
                    }
                    Change::Remove(id) => {
                        state.nodes.remove(&id);
                    }
                }
            }
            state.counters = counters.clone();
            drop(state);
            self.sinks.ops.published = Some(counters.clone());
        } else if !self.sinks.ops.publish_armed {
            self.sinks.ops.publish_armed = true;
            self.timers.schedule(RETRY_PUBLISH, Timer::Ops(OpsJob::Publish));
        }
        if self.sinks.ops.status_path.is_some() && self.sinks.ops.status_written.is_none() {
            // The first one at once: an idle daemon then never wakes for it.
            self.ops_write_status();
        } else if self.sinks.ops.status_path.is_some() && !self.sinks.ops.status_armed && self.sinks.ops.status_written.as_ref() != Some(&counters) {
            self.sinks.ops.status_armed = true;
            self.timers.schedule(STATUS_EVERY, Timer::Ops(OpsJob::Status));
        }
        let every = self.config.status.log_counters_seconds;
        if every > 0 && !self.sinks.ops.log_armed && self.sinks.ops.logged.as_ref() != Some(&counters) {
            self.sinks.ops.log_armed = true;
            self.timers.schedule(Duration::from_secs(every), Timer::Ops(OpsJob::LogCounters));
        }
    }

    pub(super) fn ops_timer(&mut self, job: OpsJob) {
        match job {
            OpsJob::Publish => {
                self.sinks.ops.publish_armed = false;
                self.sinks.ops.published = None;
                self.ops_turn();
            }
            OpsJob::Status => {
                self.sinks.ops.status_armed = false;
                self.ops_write_status();
            }
            OpsJob::LogCounters => {
                self.sinks.ops.log_armed = false;
                self.sinks.ops.logged = Some(self.ops_counters());
                self.log_stats();
            }
        }
    }

    /// Writes the status file atomically (a temporary file renamed over it).
    fn ops_write_status(&mut self) {
        let Some(path) = self.sinks.ops.status_path.clone() else { return };
        let counters = self.ops_counters();
        self.sinks.ops.status.counters = counters.clone();
        self.sinks.ops.status.written_unix = unix_now();
        self.sinks.ops.status_written = Some(counters);
        let text = serde_json::to_vec_pretty(&self.sinks.ops.status).unwrap_or_default();
        if let Err(e) = write_atomically(&path, &text, 0o644) {
            warn!(file = %path.display(), error = %e, "writing the status file failed");
        }
    }

    /// At exit: the status file goes (no daemon runs); the history writer
    /// finishes what is queued.
    pub(super) fn ops_stopped(&mut self) {
        self.ops_turn();
        if let Some(path) = &self.sinks.ops.status_path {
            let _ = std::fs::remove_file(path);
        }
        self.sinks.ops.history.take();
    }
}

