//! The tree as text, nested like systemd-cgls.

use std::io::{self, Write};

use crate::core::escape::Escaped;
use crate::model::TreeNode;
use crate::sys::readings::Pressures;

/// A figure a cgroup line can show (`tree -o`, like `ps -o`); see [`Column::help`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Tasks,
    Procs,
    Cpu,
    Rss,
    Mem,
    Swap,
    Psi,
    Net,
    Age,
    Creator,
    Uid,
    Owner,
    Id,
    Kernel,
}

impl Column {
    /// Every column, in the order `--help` lists them.
    pub const ALL: [Column; 14] = [
        Column::Tasks,
        Column::Procs,
        Column::Cpu,
        Column::Rss,
        Column::Mem,
        Column::Swap,
        Column::Psi,
        Column::Net,
        Column::Age,
        Column::Creator,
        Column::Uid,
        Column::Owner,
        Column::Id,
        Column::Kernel,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Column::Tasks => "tasks",
            Column::Procs => "procs",
            Column::Cpu => "cpu",
            Column::Rss => "rss",
            Column::Mem => "mem",
            Column::Swap => "swap",
            Column::Psi => "psi",
            Column::Net => "net",
            Column::Age => "age",
            Column::Creator => "creator",
            Column::Uid => "uid",
            Column::Owner => "owner",
            Column::Id => "id",
            Column::Kernel => "kernel",
        }
    }

    /// What it shows.
    pub fn help(self) -> &'static str {
        match self {
            Column::Tasks => "Tasks listed in the cgroup and below",
            Column::Procs => "Processes listed in the cgroup and below",
            Column::Cpu => "Their CPU time (user + system)",
            Column::Rss => "Their resident memory, each process once",
            Column::Mem => "The memory the kernel charges the cgroup, and its peak (cgroup2, or a node's memory mirror)",
            Column::Swap => "The swap the kernel charges the cgroup (cgroup2 memory.swap.current, or a memory mirror's memsw - usage)",
            Column::Psi => "Pressure (PSI) on cpu, memory and io: the share of the last 10 and 60 s some task was stalled, in percent (cgroup2 only)",
            Column::Net => "A node with a network namespace of its own: bytes and packets received and sent on all its interfaces",
            Column::Age => "Time since the node was created",
            Column::Creator => "The node's creator: pid and command",
            Column::Uid => "The creator's uid",
            Column::Owner => "Who owns the node (docs/semantics.md §13 \"Owners\")",
            Column::Id => "The cgroup id (its directory's inode)",
            Column::Kernel => "What the kernel's controllers account for the cgroup itself (cgroup2 files, and a node's mirrors in v1 controller hierarchies), where it has them; the other figures are sums over /proc",
        }
    }
}

/// The default columns.
pub const DEFAULT_COLUMNS: [Column; 4] = [Column::Tasks, Column::Cpu, Column::Rss, Column::Kernel];

/// How the tree is shown.
#[derive(Clone, Debug)]
pub struct View {
    pub columns: Vec<Column>,
    /// Lines longer than this many characters are cut, ending in `…`.
    pub width: Option<usize>,
    /// The time ages are counted to (Unix seconds).
    pub now_unix: u64,
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n}B") } else { format!("{v:.1}{}", UNITS[u]) }
}

/// A duration in its two largest units: `42s`, `5m07s`, `3h05m`, `2d04h`.
pub(crate) fn age(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match () {
        _ if d > 0 => format!("{d}d{h:02}h"),
        _ if h > 0 => format!("{h}h{m:02}m"),
        _ if m > 0 => format!("{m}m{s:02}s"),
        _ => format!("{s}s"),
    }
}

/// `psi cpu 1.50/0.25 memory … io …`: each resource's some avg10/avg60.
fn psi(p: &Pressures) -> Option<String> {
    let parts: Vec<String> = [("cpu", p.cpu), ("memory", p.memory), ("io", p.io)]
        .iter()
        .filter_map(|(name, one)| one.map(|o| format!("{name} {:.2}/{:.2}", o.some.avg10, o.some.avg60)))
        .collect();
    (!parts.is_empty()).then(|| format!("psi {}", parts.join(" ")))
}

/// The `(…)` part of a cgroup line: the columns it has a value for.
fn figures(n: &TreeNode, view: &View) -> String {
    let u = &n.subtree_usage;
    let shown: Vec<String> = view
        .columns
        .iter()
        .filter_map(|c| match c {
            Column::Tasks => Some(format!("tasks {}", u.tasks)),
            Column::Procs => Some(format!("procs {}", u.processes)),
            Column::Cpu => Some(format!("cpu {:.2}s", u.cpu_seconds)),
            Column::Rss => Some(format!("rss {}", bytes(u.rss_bytes))),
            Column::Mem => n.usage.cgroup.get("memory_bytes").map(|m| match n.usage.cgroup.get("memory_peak_bytes") {
                Some(p) => format!("mem {} peak {}", bytes(*m), bytes(*p)),
                None => format!("mem {}", bytes(*m)),
            }),
            Column::Swap => n.usage.cgroup.get("swap_bytes").map(|s| format!("swap {}", bytes(*s))),
            Column::Psi => psi(&n.readings.pressure),
            Column::Net => n.readings.network.as_ref().map(|net| {
                let [rb, rp, tb, tp] = net.totals();
                format!("net rx {}/{rp} tx {}/{tp}", bytes(rb), bytes(tb))
            }),
            Column::Age => n.creator.as_ref().map(|c| format!("age {}", age(view.now_unix.saturating_sub(c.created_unix)))),
            Column::Creator => n.creator.as_ref().map(|c| format!("creator {} {}", c.pid, Escaped(&c.comm))),
            Column::Uid => n.creator.as_ref().map(|c| format!("uid {}", c.uid)),
            Column::Owner => n.creator.as_ref().map(|c| format!("owner {}", c.owner)),
            Column::Id => Some(format!("id {}", n.cgroup_id)),
            Column::Kernel => (!n.usage.cgroup.is_empty()).then(|| {
                let figures: Vec<String> = n.usage.cgroup.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("kernel {}", figures.join(" "))
            }),
        })
        .collect();
    if shown.is_empty() { String::new() } else { format!("  ({})", shown.join(" ")) }
}

/// Writes one line, cut to the view's width.
fn line(out: &mut impl Write, text: &str, view: &View) -> io::Result<()> {
    match view.width {
        Some(w) if text.chars().count() > w => {
            let cut: String = text.chars().take(w.saturating_sub(1)).collect();
            writeln!(out, "{cut}…")
        }
        _ => writeln!(out, "{text}"),
    }
}

/// Writes the tree.
pub fn write(out: &mut impl Write, tree: &TreeNode, view: &View) -> io::Result<()> {
    line(out, &format!("{}{}", Escaped(&tree.path), figures(tree, view)), view)?;
    write_body(out, tree, "", view)
}

fn write_body(out: &mut impl Write, node: &TreeNode, indent: &str, view: &View) -> io::Result<()> {
    let total = node.tasks.len() + node.children.len();
    let mut i = 0;
    for t in &node.tasks {
        i += 1;
        let branch = if i == total { "└─" } else { "├─" };
        let thread = if t.tid != t.pid { format!(" (thread of {})", t.pid) } else { String::new() };
        let differs: Vec<String> = t.differs.iter().map(|e| format!("{}:[{}]", e.kind, e.inode)).collect();
        let differs = if differs.is_empty() { String::new() } else { format!("  in another set: {}", differs.join(" ")) };
        line(out, &format!("{indent}{branch}{} {}{thread}{differs}", t.tid, Escaped(&t.comm)), view)?;
    }
    for c in &node.children {
        i += 1;
        let (branch, cont) = if i == total { ("└─", "  ") } else { ("├─", "│ ") };
        let ns: Vec<String> = c.namespaces.iter().map(|e| format!("{}:[{}]", e.kind, e.inode)).collect();
        let label = if ns.is_empty() { String::new() } else { format!("  {}", ns.join(" ")) };
        line(out, &format!("{indent}{branch}{}{label}{}", Escaped(&c.name), figures(c, view)), view)?;
        write_body(out, c, &format!("{indent}{cont}"), view)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Creator, TaskView, Usage};

    fn view() -> View {
        View { columns: DEFAULT_COLUMNS.to_vec(), width: None, now_unix: 10_000 }
    }

    fn render(tree: &TreeNode, view: &View) -> String {
        let mut out = Vec::new();
        write(&mut out, tree, view).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn cgroup(path: &str, tasks: Vec<TaskView>, children: Vec<TreeNode>) -> TreeNode {
        TreeNode {
            path: path.into(),
            name: path.rsplit('/').next().unwrap().into(),
            cgroup_id: 1,
            node: false,
            namespaces: vec![],
            creator: None,
            tasks,
            usage: Usage::default(),
            subtree_usage: Usage::default(),
            unreadable_tasks: 0,
            readings: Default::default(),
            children,
        }
    }

    #[test]
    fn names_and_commands_are_escaped() {
        let task = TaskView { pid: 7, tid: 7, comm: "a\u{1b}[2Jb\nc".into(), differs: vec![] };
        let child = cgroup("/t/x\u{1b}[31my\nz", vec![task], vec![]);
        let tree = cgroup("/t\r", vec![], vec![child]);
        let text = render(&tree, &view());
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("└─x\\x1b[31my\\nz  (") && text.contains("7 a\\x1b[2Jb\\nc") && text.starts_with("/t\\r "), "{text}");
    }

    #[test]
    fn columns_are_chosen_like_ps() {
        let mut node = cgroup("/t/node_5", vec![], vec![]);
        node.node = true;
        node.creator = Some(Creator { pid: 5, comm: "unshare".into(), uid: 200_001, owner: 1000, created_unix: 10_000 - 3725 });
        node.subtree_usage = Usage { tasks: 2, processes: 1, cpu_seconds: 0.5, rss_bytes: 3 << 20, ..Usage::default() };
        let tree = cgroup("/t", vec![], vec![node]);
        let text = render(&tree, &view());
        assert!(text.contains("node_5  (tasks 2 cpu 0.50s rss 3.0M)\n"), "{text}");
        let picked = View { columns: vec![Column::Age, Column::Creator, Column::Uid, Column::Owner, Column::Procs], ..view() };
        let text = render(&tree, &picked);
        assert!(text.contains("node_5  (age 1h02m creator 5 unshare uid 200001 owner 1000 procs 1)\n"), "{text}");
        assert!(text.starts_with("/t  (procs 0)\n"), "a cgroup without a record shows what it has: {text}");
    }

    #[test]
    fn readings_columns_are_empty_where_nothing_was_read() {
        use crate::sys::readings::{Interface, Network, Pressure, Stall};
        let mut node = cgroup("/t/node_5", vec![], vec![]);
        node.usage.cgroup = [("memory_bytes".to_string(), 2 << 20), ("memory_peak_bytes".into(), 3 << 20), ("swap_bytes".into(), 4096)].into();
        node.readings.pressure.cpu = Some(Pressure { some: Stall { avg10: 1.5, avg60: 0.25, total_us: 9 }, full: None });
        let lo = Interface { name: "lo".into(), rx_bytes: 2048, rx_packets: 2, tx_bytes: 2048, tx_packets: 2 };
        node.readings.network = Some(Network { interfaces: vec![lo], cut: 0 });
        let tree = cgroup("/t", vec![], vec![node]);
        let picked = View { columns: vec![Column::Mem, Column::Swap, Column::Psi, Column::Net], ..view() };
        let text = render(&tree, &picked);
        assert!(text.starts_with("/t\n"), "no figures, no columns: {text}");
        assert!(text.contains("node_5  (mem 2.0M peak 3.0M swap 4.0K psi cpu 1.50/0.25 net rx 2.0K/2 tx 2.0K/2)\n"), "{text}");
    }

    #[test]
    fn ages_show_two_units() {
        assert_eq!([age(42), age(307), age(11100), age(187200)], ["42s", "5m07s", "3h05m", "2d04h"]);
    }

    #[test]
    fn long_lines_are_cut_to_the_width() {
        let child = cgroup("/t/a-rather-long-cgroup-name-that-goes-on", vec![], vec![]);
        let tree = cgroup("/t", vec![], vec![child]);
        let text = render(&tree, &View { width: Some(30), ..view() });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "/t  (tasks 0 cpu 0.00s rss 0B)");
        assert_eq!(lines[1].chars().count(), 30, "{text}");
        assert!(lines[1].starts_with("└─a-rather-long") && lines[1].ends_with('…'), "{text}");
        let full = render(&tree, &view());
        assert!(full.contains("goes-on  (tasks 0 cpu 0.00s rss 0B)\n"), "no width, no cut: {full}");
    }
}
