//! The daemon's metric families, rendered by the metrics threads from the
//! published counters and nodes (through the one exposition writer,
//! [`crate::render::exposition`]).

use std::collections::BTreeMap;

use crate::core::node::{CgroupId, Node};
use crate::render::exposition::{Exposition, Format, Kind};
use crate::render::metrics::{write_readings, ReadingRow};
use crate::sys::readings::{Network, Pressures};
use crate::sys::status_file::{Counters, LATENCY_BUCKETS};

/// Every node kind (`NodeRecord::kind`): the OOM kill series' labels.
const NODE_KINDS: [&str; 9] = ["user", "pid", "net", "mnt", "cgroup", "ipc", "uts", "time", "other"];

/// A node as the metrics show it.
#[derive(Clone, Debug)]
pub(super) struct NodeLabel {
    name: String,
    path: String,
    created_unix: u64,
    owner: u32,
    /// The inode of the node's own network namespace, if its set has one.
    pub(super) net_ns: Option<u64>,
}

impl NodeLabel {
    pub(super) fn of(node: &Node, path: &str) -> NodeLabel {
        let net_ns = node.record.own_net();
        NodeLabel { name: node.name.clone(), path: path.to_string(), created_unix: node.record.created_unix, owner: node.record.owner(), net_ns }
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }
}

/// What the metrics thread reads of a node at a scrape.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeReading {
    /// Tasks (threads) in the node.
    pub(super) tasks: u64,
    pub(super) pressure: Pressures,
    pub(super) network: Option<Network>,
}

/// The exposition's bounds and fixed figures.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// At most this many per-node and per-owner series.
    pub(super) max_node_series: usize,
    pub(super) started_unix: u64,
}

/// The exposition of `counters` and `nodes` (by id); `read` reads a node's
/// tasks, pressure and network (only the nodes with per-node series are
/// asked for more than their tasks: `full` is false for the others).
pub(super) fn render(
    c: &Counters,
    nodes: &[(CgroupId, NodeLabel)],
    bounds: &Bounds,
    format: Format,
    read: impl Fn(&NodeLabel, bool) -> NodeReading,
) -> String {
    let mut x = Exposition::with_capacity(format, 4096 + nodes.len().min(bounds.max_node_series) * 160);
    let counters: [(&str, &str, u64); 9] = [
        ("nsgroup_events", "Events taken from the source (entries into new sets, forks, execs, exits of tracked tasks).", c.events),
        ("nsgroup_placements", "Tasks moved into their set's node.", c.placements),
        ("nsgroup_nodes_created", "Nodes created.", c.nodes_created),
        ("nsgroup_nodes_removed", "Nodes removed after their last task exited.", c.nodes_removed),
        ("nsgroup_ring_dropped_events", "Events lost because the BPF ring buffer was full (each triggers a reconcile).", c.ring_dropped),
        ("nsgroup_reconciles", "Reconciles from /proc (start, overflow, rescans).", c.reconciles),
        ("nsgroup_refusals", "Entries refused by quota, rate or rules (their tasks stay where they are).", c.refusals),
        ("nsgroup_coalesced_entries", "Entries of tasks that exited within the batch window: no node made (high-rate mode).", c.coalesced_entries),
        ("nsgroup_history_dropped_records", "History records dropped because the writer's queue was full.", c.history_dropped),
    ];
    for (name, help, v) in counters {
        x.family(name, Kind::Counter, "", help).sample(&[], v);
    }
    let mut dropped = x.family(
        "nsgroup_dropped_moves",
        Kind::Counter,
        "",
        "Moves not made, by why: the task exited first, its tid was reused, another writer moved it.",
    );
    for (why, v) in [("gone", c.dropped_gone), ("reused", c.dropped_reused), ("other_writer", c.dropped_other_writer)] {
        dropped.sample(&[("reason", why)], v);
    }
    let mut latency =
        x.family("nsgroup_placement_latency_seconds", Kind::Histogram, "", "From the event (BPF timestamp) to the task moved.");
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += c.latency_buckets.get(i).copied().unwrap_or(0);
        latency.part("_bucket", &[("le", &le.to_string())], cumulative);
    }
    cumulative += c.latency_buckets.get(LATENCY_BUCKETS.len()).copied().unwrap_or(0);
    latency
        .part("_bucket", &[("le", "+Inf")], cumulative)
        .part("_sum", &[], c.latency_sum_us as f64 / 1e6)
        .part("_count", &[], cumulative);

    let mut oom = x.family("nsgroup_oom_kills", Kind::Counter, "", "Tasks the OOM killer killed in nodes, by node kind (its outermost namespace of its own).");
    for kind in NODE_KINDS {
        oom.sample(&[("kind", kind)], c.oom_kills.get(kind).copied().unwrap_or(0));
    }
    x.family("nsgroup_watches_skipped", Kind::Gauge, "", "Nodes not watched for OOM kills: beyond watch.max_watches.")
        .sample(&[], c.watches_skipped);
    let mut pressure = x.family("nsgroup_pressure_events", Kind::Counter, "", "[[pressure]] triggers that fired on nodes, by resource.");
    for resource in ["memory", "cpu", "io"] {
        pressure.sample(&[("resource", resource)], c.pressure_events.get(resource).copied().unwrap_or(0));
    }
    let mut actions = x.family("nsgroup_pressure_actions", Kind::Counter, "", "[[pressure]] actions done on the nodes whose trigger fired, by action.");
    for action in ["freeze", "kill"] {
        actions.sample(&[("action", action)], c.pressure_actions.get(action).copied().unwrap_or(0));
    }
    let mut scopes = x.family(
        "nsgroup_user_scopes",
        Kind::Counter,
        "",
        "Sandboxes in an undelegated scope of a user's manager for which it was asked a scope of their own, by result (started; stayed where it was; left it before its turn, for another's scope).",
    );
    for result in ["started", "stayed", "left"] {
        scopes.sample(&[("result", result)], c.user_scopes.get(result).copied().unwrap_or(0));
    }
    x.family("nsgroup_triggers_skipped", Kind::Gauge, "", "PSI triggers not written: beyond watch.max_pressure_triggers.")
        .sample(&[], c.triggers_skipped);
    x.family("nsgroup_nodes", Kind::Gauge, "", "Live nodes.").sample(&[], c.live_nodes);
    // Every node's task list is read here, in the metrics thread, never by the loop.
    let cap = bounds.max_node_series.min(nodes.len());
    let readings: Vec<NodeReading> = nodes.iter().enumerate().map(|(i, (_, l))| read(l, i < cap)).collect();
    let tasks: Vec<u64> = readings.iter().map(|r| r.tasks).collect();
    x.family("nsgroup_tasks", Kind::Gauge, "", "Tasks (threads) in nodes.").sample(&[], tasks.iter().sum::<u64>());
    let shown: Vec<(String, &NodeLabel)> = nodes[..cap].iter().map(|(id, l)| (id.to_string(), l)).collect();
    let mut per_node = x.family(
        "nsgroup_node_tasks",
        Kind::Gauge,
        "",
        "Tasks (threads) in a node, by node id and name (the first max_node_series nodes by id).",
    );
    for ((id, l), n) in shown.iter().zip(&tasks) {
        per_node.sample(&[("id", id), ("name", &l.name)], n);
    }
    let mut created =
        x.family("nsgroup_node_created_timestamp_seconds", Kind::Gauge, "", "When a node was created (unix time), by node id and name.");
    for (id, l) in &shown {
        created.sample(&[("id", id), ("name", &l.name)], l.created_unix);
    }
    let mut owner =
        x.family("nsgroup_node_owner", Kind::Gauge, "", "Who owns a node (docs/semantics.md §13 \"Owners\"), by node id and name: 1.");
    for (id, l) in &shown {
        owner.sample(&[("id", id), ("name", &l.name), ("owner", &l.owner.to_string())], 1);
    }
    let rows: Vec<ReadingRow> = shown
        .iter()
        .zip(&readings)
        .map(|((id, l), r)| ReadingRow { id: id.clone(), name: &l.name, pressure: &r.pressure, network: r.network.as_ref() })
        .collect();
    write_readings(&mut x, "nsgroup_node_", &rows);
    x.family("nsgroup_node_series_cut", Kind::Gauge, "", "Nodes left without per-node series by metrics.max_node_series.")
        .sample(&[], nodes.len() - cap);
    // Per owner: the owners with most nodes first, as many as per-node series.
    let mut per_owner: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, l) in nodes {
        *per_owner.entry(l.owner).or_default() += 1;
    }
    let mut owners: Vec<(u32, u64)> = per_owner.into_iter().collect();
    owners.sort_by_key(|&(owner, n)| (std::cmp::Reverse(n), owner));
    let shown = bounds.max_node_series.min(owners.len());
    let mut owner_nodes = x.family(
        "nsgroup_owner_nodes",
        Kind::Gauge,
        "",
        "Live nodes per owner (the owners with most nodes, as many as metrics.max_node_series).",
    );
    for (owner, n) in &owners[..shown] {
        owner_nodes.sample(&[("owner", &owner.to_string())], n);
    }
    x.family("nsgroup_owner_series_cut", Kind::Gauge, "", "Owners left without a series by metrics.max_node_series.")
        .sample(&[], owners.len() - shown);
    x.family("nsgroup_start_time_seconds", Kind::Gauge, "", "When the daemon started (unix time).").sample(&[], bounds.started_unix);
    x.family("nsgroup_build_info", Kind::Gauge, "", "The daemon's version.").sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(owners: &[(CgroupId, u32)]) -> Vec<(CgroupId, NodeLabel)> {
        owners
            .iter()
            .map(|&(id, owner)| (id, NodeLabel { name: format!("node_{id}"), path: format!("/x/node_{id}"), created_unix: 10, owner, net_ns: None }))
            .collect()
    }

    #[test]
    fn owners_are_counted_and_their_series_capped_most_nodes_first() {
        // Owner 7 has 3 nodes, 8 has 2, every other owner one.
        let nodes = nodes(&[(1, 7), (2, 8), (3, 7), (4, 9), (5, 8), (6, 7), (7, 10)]);
        let bounds = Bounds { max_node_series: 2, started_unix: 1 };
        let text = render(&Counters::default(), &nodes, &bounds, Format::Prometheus, |_, _| NodeReading::default());
        let owners: Vec<&str> = text.lines().filter(|l| l.starts_with("nsgroup_owner_nodes{")).collect();
        assert_eq!(owners, ["nsgroup_owner_nodes{owner=\"7\"} 3", "nsgroup_owner_nodes{owner=\"8\"} 2"]);
        assert!(text.contains("nsgroup_owner_series_cut 2\n"), "{text}");
        assert_eq!(text.matches("nsgroup_node_owner{").count(), 2);
    }

    #[test]
    fn exposition_is_well_formed_and_capped() {
        let mut c = Counters { events: 7, ..Counters::default() };
        c.latency_buckets[3] = 2;
        let nodes = nodes(&[(1, 1000), (2, 1000), (3, 1000), (4, 1000), (5, 1000)]);
        let bounds = Bounds { max_node_series: 3, started_unix: 1 };
        let om = render(&c, &nodes, &bounds, Format::OpenMetrics, |_, _| NodeReading::default());
        assert!(om.contains("# TYPE nsgroup_events counter\nnsgroup_events_total 7\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("nsgroup_placement_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert_eq!(om.matches("nsgroup_node_tasks{").count(), 3);
        assert!(om.contains("nsgroup_node_series_cut 2"));
        assert!(om.contains("nsgroup_node_owner{id=\"1\",name=\"node_1\",owner=\"1000\"} 1"), "{om}");
        assert!(om.contains("nsgroup_owner_nodes{owner=\"1000\"} 5\n"), "{om}");
        assert!(om.contains("nsgroup_owner_series_cut 0\n"), "{om}");
        let prom = render(&c, &nodes, &bounds, Format::Prometheus, |_, _| NodeReading::default());
        assert!(prom.contains("# TYPE nsgroup_events_total counter\n"));
        assert!(!prom.contains("# EOF"));
    }

    #[test]
    fn latency_buckets_are_cumulative_and_tasks_are_read_per_node() {
        let mut c = Counters::default();
        for us in [40, 40, 300, 20_000_000] {
            c.record_latency(us);
        }
        let nodes = nodes(&[(1, 0), (2, 0)]);
        let bounds = Bounds { max_node_series: 500, started_unix: 1 };
        let text = render(&c, &nodes, &bounds, Format::Prometheus, |l, _| NodeReading { tasks: if l.path == "/x/node_2" { 4 } else { 1 }, ..NodeReading::default() });
        for line in [
            "nsgroup_placement_latency_seconds_bucket{le=\"0.00005\"} 2\n",
            "nsgroup_placement_latency_seconds_bucket{le=\"0.0005\"} 3\n",
            "nsgroup_placement_latency_seconds_bucket{le=\"10\"} 3\n",
            "nsgroup_placement_latency_seconds_bucket{le=\"+Inf\"} 4\n",
            "nsgroup_placement_latency_seconds_sum 20.00038\n",
            "nsgroup_placement_latency_seconds_count 4\n",
            "nsgroup_tasks 5\n",
            "nsgroup_node_tasks{id=\"2\",name=\"node_2\"} 4\n",
            "nsgroup_dropped_moves_total{reason=\"other_writer\"} 0\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
