//! The tree as OpenMetrics text: one series per cgroup of the tree, labelled
//! by its id and name only (paths would make the label set unbounded), sorted
//! by id.

use std::fmt::Display;
use std::io::{self, Write};

use super::exposition::{Exposition, Format, Kind};
use crate::model::TreeNode;
use crate::sys::readings::{Network, Pressures};

/// One cgroup's readings as series: its id and name (the labels), pressure and network.
pub struct ReadingRow<'a> {
    pub id: String,
    pub name: &'a str,
    pub pressure: &'a Pressures,
    pub network: Option<&'a Network>,
}

/// Writes the pressure and network families of `rows` (`prefix` is
/// `nsgroup_` for the tree's cgroups, `nsgroup_node_` for the daemon's nodes):
/// PSI stall totals and avg10 by resource and kind, network totals by
/// direction. Rows without a reading have no series.
pub fn write_readings(x: &mut Exposition, prefix: &str, rows: &[ReadingRow]) {
    let stalls = |r: &ReadingRow| -> Vec<(&'static str, &'static str, crate::sys::readings::Stall)> {
        let p = r.pressure;
        let mut out = Vec::new();
        for (resource, one) in [("cpu", p.cpu), ("memory", p.memory), ("io", p.io)] {
            let Some(one) = one else { continue };
            out.push((resource, "some", one.some));
            out.extend(one.full.map(|f| (resource, "full", f)));
        }
        out
    };
    let name = format!("{prefix}pressure_stall_seconds");
    let mut family = x.family(&name, Kind::Counter, "seconds", "Time some or all non-idle tasks were stalled on a resource (PSI total), by cgroup, resource and kind.");
    for r in rows {
        for (resource, kind, s) in stalls(r) {
            family.sample(&[("id", &r.id), ("name", r.name), ("resource", resource), ("kind", kind)], s.total_us as f64 / 1e6);
        }
    }
    let name = format!("{prefix}pressure_avg10_percent");
    let mut family = x.family(&name, Kind::Gauge, "", "Share of the last 10 s stalled on a resource (PSI avg10, percent), by cgroup, resource and kind.");
    for r in rows {
        for (resource, kind, s) in stalls(r) {
            family.sample(&[("id", &r.id), ("name", r.name), ("resource", resource), ("kind", kind)], s.avg10);
        }
    }
    for (what, unit, index) in [("bytes", "bytes", [0, 2]), ("packets", "", [1, 3])] {
        let name = format!("{prefix}network_{what}");
        let help = format!("Network {what} received and sent in a node's own network namespace (all its interfaces), by direction.");
        let mut family = x.family(&name, Kind::Counter, unit, &help);
        for r in rows {
            let Some(net) = r.network else { continue };
            let t = net.totals();
            family.sample(&[("id", &r.id), ("name", r.name), ("direction", "rx")], t[index[0]]);
            family.sample(&[("id", &r.id), ("name", r.name), ("direction", "tx")], t[index[1]]);
        }
    }
}

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
    let rows: Vec<ReadingRow> = cgroups
        .iter()
        .map(|n| ReadingRow { id: n.cgroup_id.to_string(), name: &n.name, pressure: &n.readings.pressure, network: n.readings.network.as_ref() })
        .collect();
    write_readings(&mut x, "nsgroup_", &rows);
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
            readings: Default::default(),
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

    #[test]
    fn readings_are_series_where_they_were_read() {
        use crate::sys::readings::{Interface, Pressure, Stall};
        let mut node = cgroup(9, "node_2", vec![]);
        let stall = Stall { avg10: 2.5, avg60: 1.0, total_us: 1_500_000 };
        node.readings.pressure.memory = Some(Pressure { some: stall, full: None });
        let lo = Interface { name: "lo".into(), rx_bytes: 84, rx_packets: 1, tx_bytes: 84, tx_packets: 1 };
        node.readings.network = Some(Network { interfaces: vec![lo.clone(), lo], cut: 0 });
        let tree = cgroup(5, "t", vec![node]);
        let mut out = Vec::new();
        write(&mut out, &tree).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "nsgroup_pressure_stall_seconds_total{id=\"9\",name=\"node_2\",resource=\"memory\",kind=\"some\"} 1.5\n",
            "nsgroup_pressure_avg10_percent{id=\"9\",name=\"node_2\",resource=\"memory\",kind=\"some\"} 2.5\n",
            "nsgroup_network_bytes_total{id=\"9\",name=\"node_2\",direction=\"rx\"} 168\n",
            "nsgroup_network_packets_total{id=\"9\",name=\"node_2\",direction=\"tx\"} 2\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert!(!text.contains("id=\"5\",name=\"t\",resource"), "no reading, no series: {text}");
    }
}
