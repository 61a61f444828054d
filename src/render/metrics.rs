//! The tree as OpenMetrics text: one series per cgroup of the tree, labelled
//! by its id and name only (paths would make the label set unbounded), sorted
//! by id.

use std::fmt::Write as _;
use std::io::{self, Write};

use crate::core::escape::Escaped;
use crate::model::TreeNode;

/// A label value: escaped like every user-controlled string, then quoted
/// for OpenMetrics.
fn label(value: &str) -> String {
    Escaped(value).to_string().replace('\\', "\\\\").replace('"', "\\\"")
}

/// Writes one metric family: its metadata, then `sample` for each cgroup.
fn family(
    text: &mut String,
    cgroups: &[&TreeNode],
    (name, kind, unit, help): (&str, &str, &str, &str),
    sample: impl Fn(&TreeNode) -> String,
) {
    let _ = writeln!(text, "# TYPE {name} {kind}");
    if !unit.is_empty() {
        let _ = writeln!(text, "# UNIT {name} {unit}");
    }
    let _ = writeln!(text, "# HELP {name} {help}");
    let series = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
    for n in cgroups {
        let _ = writeln!(text, "{series}{{id=\"{}\",name=\"{}\"}} {}", n.cgroup_id, label(&n.name), sample(n));
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
    let mut text = String::new();
    let _ = writeln!(text, "# TYPE nsgroup_nodes gauge\n# HELP nsgroup_nodes Nodes in the tree.\nnsgroup_nodes {nodes}");
    let _ = writeln!(
        text,
        "# TYPE nsgroup_unreadable_tasks gauge\n# HELP nsgroup_unreadable_tasks Tasks left out: their /proc entries could not be read.\nnsgroup_unreadable_tasks {}",
        tree.unreadable_tasks
    );
    family(&mut text, &cgroups, ("nsgroup_tasks", "gauge", "", "Tasks in the cgroup and below."), |n| {
        n.subtree_usage.tasks.to_string()
    });
    family(
        &mut text,
        &cgroups,
        ("nsgroup_cpu_seconds", "counter", "seconds", "CPU time (user + system) of the live tasks in the cgroup and below."),
        |n| n.subtree_usage.cpu_seconds.to_string(),
    );
    family(
        &mut text,
        &cgroups,
        ("nsgroup_rss_bytes", "gauge", "bytes", "Resident memory of the live processes in the cgroup and below."),
        |n| n.subtree_usage.rss_bytes.to_string(),
    );
    text.push_str("# EOF\n");
    out.write_all(text.as_bytes())
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
