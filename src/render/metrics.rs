//! The tree as OpenMetrics text: one series per cgroup of the tree, labelled
//! by its id and name only (paths would make the label set unbounded), sorted
//! by id.

use std::fmt::Display;
use std::io::{self, Write};

use super::exposition::{Exposition, Format, Kind};
use crate::model::TreeNode;

/// Writes one metric family: its metadata, then the figure `value` gives
/// for each cgroup, labelled by id and name.
fn per_cgroup<D: Display>(x: &mut Exposition, cgroups: &[&TreeNode], (name, kind, unit, help): (&str, Kind, &str, &str), value: impl Fn(&TreeNode) -> D) {
    let mut family = x.family(name, kind, unit, help);
    for n in cgroups {
        family.sample(&[("id", &n.cgroup_id.to_string()), ("name", &n.name)], value(n));
    }
}

/// Writes the figures of every cgroup of the tree (each with everything
/// below it), the number of nodes and of tasks that could not be read.
pub fn write(out: &mut impl Write, tree: &TreeNode) -> io::Result<()> {
    let mut cgroups = Vec::new();
    let mut stack = vec![tree];
    while let Some(n) = stack.pop() {
        cgroups.push(n);
        stack.extend(n.children.iter());
    }
    cgroups.sort_by_key(|n| n.cgroup_id);
    let nodes = cgroups.iter().filter(|n| n.node).count();
    let mut x = Exposition::with_capacity(Format::OpenMetrics, 512 + cgroups.len() * 160);
    x.family("nsgroup_nodes", Kind::Gauge, "", "Nodes in the tree.").sample(&[], nodes);
    x.family("nsgroup_unreadable_tasks", Kind::Gauge, "", "Tasks left out: their /proc entries could not be read.")
        .sample(&[], tree.unreadable_tasks);
    per_cgroup(&mut x, &cgroups, ("nsgroup_tasks", Kind::Gauge, "", "Tasks in the cgroup and below."), |n| n.subtree_usage.tasks);
    per_cgroup(
        &mut x,
        &cgroups,
        ("nsgroup_cpu_seconds", Kind::Counter, "seconds", "CPU time (user + system) of the live tasks in the cgroup and below."),
        |n| n.subtree_usage.cpu_seconds,
    );
    per_cgroup(
        &mut x,
        &cgroups,
        ("nsgroup_rss_bytes", Kind::Gauge, "bytes", "Resident memory of the live processes in the cgroup and below."),
        |n| n.subtree_usage.rss_bytes,
    );
    out.write_all(x.finish().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Usage;

    fn cgroup(id: u64, name: &str, children: Vec<TreeNode>) -> TreeNode {
        TreeNode {
            path: format!("/very/long/path/{name}"),
            name: name.into(),
            cgroup_id: id,
            node: name.starts_with("node_"),
            namespaces: vec![],
            creator: None,
            tasks: vec![],
            usage: Usage::default(),
            subtree_usage: Usage { tasks: id, cpu_seconds: 1.5, rss_bytes: 4096, ..Usage::default() },
            unreadable_tasks: 0,
            children,
        }
    }

    #[test]
    fn cpu_is_a_counter_labels_are_bounded_and_series_sorted() {
        let tree = cgroup(5, "t", vec![cgroup(9, "node_2", vec![]), cgroup(7, "node_\"1\"\n", vec![])]);
        let mut out = Vec::new();
        write(&mut out, &tree).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("# TYPE nsgroup_cpu_seconds counter\n# UNIT nsgroup_cpu_seconds seconds\n"), "{text}");
        assert!(text.contains("nsgroup_cpu_seconds_total{id=\"5\",name=\"t\"} 1.5\n"), "{text}");
        assert!(text.contains("nsgroup_nodes 2\n") && text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("/very/long/path"), "no paths in labels: {text}");
        assert!(text.contains("nsgroup_tasks{id=\"7\",name=\"node_\\\"1\\\"\\\\n\"} 7\n"), "{text}");
        let ids: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("nsgroup_tasks{"))
            .map(|l| l.split('"').nth(1).unwrap())
            .collect();
        assert_eq!(ids, ["5", "7", "9"]);
    }
}
