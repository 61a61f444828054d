//! The tree as OpenMetrics text: one series per node.

use std::io::{self, Write};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::model::TreeNode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    path: String,
    node: String,
}

/// Writes per-cgroup gauges (subtree figures) in OpenMetrics text format.
pub fn write(out: &mut impl Write, tree: &TreeNode) -> io::Result<()> {
    let tasks = Family::<NodeLabels, Gauge>::default();
    let cpu = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
    let rss = Family::<NodeLabels, Gauge>::default();
    let mut stack = vec![tree];
    let mut nodes = 0i64;
    while let Some(n) = stack.pop() {
        let labels = NodeLabels { path: n.path.clone(), node: n.node.to_string() };
        nodes += i64::from(n.node);
        tasks.get_or_create(&labels).set(n.subtree_usage.tasks as i64);
        cpu.get_or_create(&labels).set(n.subtree_usage.cpu_seconds);
        rss.get_or_create(&labels).set(n.subtree_usage.rss_bytes as i64);
        stack.extend(n.children.iter());
    }
    let count = Gauge::<i64>::default();
    count.set(nodes);
    let mut registry = Registry::with_prefix("nsgroup");
    registry.register("nodes", "Number of nodes in the tree", count);
    registry.register("tasks", "Tasks in the cgroup and below", tasks);
    registry.register("cpu_seconds", "CPU time of the live tasks in the cgroup and below", cpu);
    registry.register("rss_bytes", "Resident memory of the live processes in the cgroup and below", rss);
    let mut text = String::new();
    encode(&mut text, &registry).map_err(io::Error::other)?;
    out.write_all(text.as_bytes())
}
