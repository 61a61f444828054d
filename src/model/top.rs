//! `nsgroup top`'s rows: the tree flattened, nested, with rates from two
//! samples. Counters are remembered by cgroup id (the directory's inode):
//! a node replaced under the same name has another id, so no rate until its
//! second sample; a counter that went back gives no rate either.

use std::collections::HashMap;

use serde::Serialize;

use super::{Creator, TreeNode, Units};
use crate::core::node::CgroupId;
use crate::core::nsset::NsSet;
use crate::sys::error::IoError;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::procfs::ProcFs;

/// A row's figures, for sorting and showing; see [`SortKey::help`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Cpu,
    Memory,
    Swap,
    Pids,
    Io,
    Rx,
    Tx,
    Psi,
    Age,
    Owner,
    Command,
}

impl SortKey {
    /// Every key, in the order the columns are shown.
    pub const ALL: [SortKey; 12] = [
        SortKey::Name,
        SortKey::Cpu,
        SortKey::Memory,
        SortKey::Swap,
        SortKey::Pids,
        SortKey::Io,
        SortKey::Rx,
        SortKey::Tx,
        SortKey::Psi,
        SortKey::Age,
        SortKey::Owner,
        SortKey::Command,
    ];

    /// Its name (`--sort`, the column's heading in lower case).
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Cpu => "cpu",
            SortKey::Memory => "mem",
            SortKey::Swap => "swap",
            SortKey::Pids => "pids",
            SortKey::Io => "io",
            SortKey::Rx => "rx",
            SortKey::Tx => "tx",
            SortKey::Psi => "psi",
            SortKey::Age => "age",
            SortKey::Owner => "owner",
            SortKey::Command => "command",
        }
    }

    /// What its column shows.
    pub fn help(self) -> &'static str {
        match self {
            SortKey::Name => "The cgroup's name, nested",
            SortKey::Cpu => "CPU use since the last sample, percent of one CPU",
            SortKey::Memory => "Memory charged to the cgroup (its peak beside), else the resident memory of its tasks",
            SortKey::Swap => "Swap charged to the cgroup",
            SortKey::Pids => "Tasks in the cgroup (pids.current, else those listed)",
            SortKey::Io => "Bytes read and written per second (cgroup2 io.stat)",
            SortKey::Rx => "Bytes received per second in the node's own network namespace",
            SortKey::Tx => "Bytes sent per second in the node's own network namespace",
            SortKey::Psi => "The highest PSI some avg10 of cpu, memory and io, percent",
            SortKey::Age => "Time since the node was created",
            SortKey::Owner => "Who owns the node",
            SortKey::Command => "The creator's command",
        }
    }

    /// Numbers sort largest first, words in order.
    fn descending(self) -> bool {
        !matches!(self, SortKey::Name | SortKey::Owner | SortKey::Command)
    }
}

/// A cgroup's counters at one sample.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    cpu_seconds: f64,
    io_bytes: Option<u64>,
    net: Option<[u64; 4]>,
}

/// The counters of the previous sample, by cgroup id, and when it was taken.
#[derive(Clone, Debug, Default)]
pub struct Previous {
    at_s: f64,
    by_id: HashMap<CgroupId, Counters>,
}

/// One row of `top` (its JSON is documented in docs/operations.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub depth: usize,
    pub path: String,
    pub name: String,
    pub cgroup_id: CgroupId,
    pub node: bool,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub pids: u64,
    pub io_bytes_per_s: Option<f64>,
    pub rx_bytes_per_s: Option<f64>,
    pub tx_bytes_per_s: Option<f64>,
    /// PSI some avg10 per resource (cgroup2 only).
    pub psi_cpu: Option<f64>,
    pub psi_memory: Option<f64>,
    pub psi_io: Option<f64>,
    pub age_s: Option<u64>,
    pub owner: Option<u32>,
    pub creator_pid: Option<u32>,
    pub command: Option<String>,
    /// Row indices of its children, in order (not serialized).
    #[serde(skip)]
    children: Vec<usize>,
}

impl Row {
    fn psi_max(&self) -> Option<f64> {
        [self.psi_cpu, self.psi_memory, self.psi_io].into_iter().flatten().reduce(f64::max)
    }

    fn number(&self, key: SortKey) -> Option<f64> {
        match key {
            SortKey::Cpu => self.cpu_percent,
            SortKey::Memory => self.memory_bytes.map(|v| v as f64),
            SortKey::Swap => self.swap_bytes.map(|v| v as f64),
            SortKey::Pids => Some(self.pids as f64),
            SortKey::Io => self.io_bytes_per_s,
            SortKey::Rx => self.rx_bytes_per_s,
            SortKey::Tx => self.tx_bytes_per_s,
            SortKey::Psi => self.psi_max(),
            SortKey::Age => self.age_s.map(|v| v as f64),
            SortKey::Owner => self.owner.map(f64::from),
            SortKey::Name | SortKey::Command => None,
        }
    }

    fn order(&self, other: &Row, key: SortKey) -> std::cmp::Ordering {
        let by = match key {
            SortKey::Name => self.name.cmp(&other.name),
            SortKey::Command => self.command.cmp(&other.command),
            _ => {
                let (a, b) = (self.number(key).unwrap_or(f64::NEG_INFINITY), other.number(key).unwrap_or(f64::NEG_INFINITY));
                a.total_cmp(&b)
            }
        };
        let by = if key.descending() { by.reverse() } else { by };
        by.then_with(|| self.cgroup_id.cmp(&other.cgroup_id))
    }
}

/// Which rows are shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub owner: Option<u32>,
    /// A substring of the creator's command.
    pub command: Option<String>,
}

impl Filter {
    fn matches(&self, r: &Row) -> bool {
        self.owner.is_none_or(|o| r.owner == Some(o))
            && self.command.as_deref().is_none_or(|c| r.command.as_deref().is_some_and(|m| m.contains(c)))
    }

    fn is_empty(&self) -> bool {
        self.owner.is_none() && self.command.is_none()
    }
}

/// One sample's rows, in tree order (index 0 is the top).
#[derive(Clone, Debug, Default)]
pub struct Rows {
    rows: Vec<Row>,
}

fn figure(n: &TreeNode, key: &str) -> Option<u64> {
    n.usage.cgroup.get(key).copied()
}

/// A cgroup's CPU seconds: the kernel's where it keeps them (cgroup2
/// `cpu_usec`, a v1 mirror's `cpu_nsec`), else its listed tasks'.
fn cpu_seconds(n: &TreeNode) -> f64 {
    figure(n, "cpu_usec")
        .map(|u| u as f64 / 1e6)
        .or_else(|| figure(n, "cpu_nsec").map(|ns| ns as f64 / 1e9))
        .unwrap_or(n.subtree_usage.cpu_seconds)
}

fn rate(now: Option<f64>, before: Option<f64>, dt: f64) -> Option<f64> {
    let (now, before) = (now?, before?);
    (dt > 0.0 && now >= before).then(|| (now - before) / dt)
}

impl Rows {
    /// The rows of `tree` sampled at `at_s` (a monotonic clock, seconds)
    /// and `now_unix`, with rates against `previous`; returns the counters
    /// to pass with the next sample.
    pub fn of(tree: &TreeNode, previous: &Previous, at_s: f64, now_unix: u64) -> (Rows, Previous) {
        let mut rows = Rows::default();
        let mut next = Previous { at_s, by_id: HashMap::with_capacity(previous.by_id.len()) };
        let dt = at_s - previous.at_s;
        let mut stack = vec![(tree, 0usize, None::<usize>)];
        while let Some((n, depth, parent)) = stack.pop() {
            let io = figure(n, "io_read_bytes").zip(figure(n, "io_write_bytes")).map(|(r, w)| r + w);
            let net = n.readings.network.as_ref().map(|net| net.totals());
            let counters = Counters { cpu_seconds: cpu_seconds(n), io_bytes: io, net };
            let before = previous.by_id.get(&n.cgroup_id);
            let p = &n.readings.pressure;
            let some10 = |one: Option<crate::sys::readings::Pressure>| one.map(|o| o.some.avg10);
            let row = Row {
                depth,
                path: n.path.clone(),
                name: n.name.clone(),
                cgroup_id: n.cgroup_id,
                node: n.node,
                cpu_percent: rate(Some(counters.cpu_seconds), before.map(|b| b.cpu_seconds), dt).map(|r| r * 100.0),
                memory_bytes: figure(n, "memory_bytes").or(Some(n.subtree_usage.rss_bytes)),
                memory_peak_bytes: figure(n, "memory_peak_bytes"),
                swap_bytes: figure(n, "swap_bytes"),
                pids: figure(n, "pids").unwrap_or(n.subtree_usage.tasks),
                io_bytes_per_s: rate(io.map(|v| v as f64), before.and_then(|b| b.io_bytes).map(|v| v as f64), dt),
                rx_bytes_per_s: rate(net.map(|t| t[0] as f64), before.and_then(|b| b.net).map(|t| t[0] as f64), dt),
                tx_bytes_per_s: rate(net.map(|t| t[2] as f64), before.and_then(|b| b.net).map(|t| t[2] as f64), dt),
                psi_cpu: some10(p.cpu),
                psi_memory: some10(p.memory),
                psi_io: some10(p.io),
                age_s: n.creator.as_ref().map(|c| now_unix.saturating_sub(c.created_unix)),
                owner: n.creator.as_ref().map(|c| c.owner),
                creator_pid: n.creator.as_ref().map(|c| c.pid),
                command: n.creator.as_ref().map(|c| c.comm.clone()),
                children: Vec::new(),
            };
            next.by_id.insert(n.cgroup_id, counters);
            let index = rows.rows.len();
            rows.rows.push(row);
            if let Some(parent) = parent {
                rows.rows[parent].children.push(index);
            }
            stack.extend(n.children.iter().rev().map(|c| (c, depth + 1, Some(index))));
        }
        (rows, next)
    }

    /// How many rows were sampled.
    /// Whether some node's creator is unknown (a node whose record this
    /// reader may not read: another user's, without root).
    pub fn lack_creators(&self) -> bool {
        self.rows.iter().any(|r| r.node && r.owner.is_none())
    }

    /// Fills in the creators this reader could not read from `creators`
    /// (cgroup id → creator: the daemon's `list`); known ones stay.
    pub fn fill_creators(&mut self, creators: &HashMap<CgroupId, Creator>) {
        for r in self.rows.iter_mut().filter(|r| r.node && r.owner.is_none()) {
            if let Some(c) = creators.get(&r.cgroup_id) {
                (r.owner, r.creator_pid, r.command) = (Some(c.owner), Some(c.pid), Some(c.comm.clone()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows to show, nested: siblings sorted by `key` (`reverse` flips
    /// it), rows kept when they or a row below them match `filter` (the top
    /// always).
    pub fn view(&self, key: SortKey, reverse: bool, filter: &Filter) -> Vec<&Row> {
        let mut out = Vec::with_capacity(self.rows.len());
        if self.rows.is_empty() {
            return out;
        }
        let mut kept = vec![filter.is_empty(); self.rows.len()];
        if !filter.is_empty() {
            // Children come after their parents: a reverse pass carries a match up.
            for i in (0..self.rows.len()).rev() {
                kept[i] = kept[i] || filter.matches(&self.rows[i]) || self.rows[i].children.iter().any(|&c| kept[c]);
            }
        }
        let mut stack = vec![0];
        while let Some(i) = stack.pop() {
            let row = &self.rows[i];
            out.push(row);
            let mut children: Vec<&usize> = row.children.iter().filter(|&&c| kept[c]).collect();
            children.sort_by(|&&a, &&b| {
                let o = self.rows[a].order(&self.rows[b], key);
                if reverse { o.reverse() } else { o }
            });
            stack.extend(children.into_iter().rev());
        }
        out
    }
}

/// Samples a subtree for `top`, once per interval, remembering the
/// counters the next sample's rates need.
pub struct Sampler {
    hierarchy: Hierarchy,
    root: String,
    proc: ProcFs,
    base: NsSet,
    units: Units,
    previous: Previous,
}

impl Sampler {
    /// A sampler of `root` in `hierarchy`; `base` is the reader's own set (as for `tree`).
    pub fn new(hierarchy: Hierarchy, root: String, proc: ProcFs, base: NsSet, units: Units) -> Sampler {
        Sampler { hierarchy, root, proc, base, units, previous: Previous::default() }
    }

    /// Samples now (`at_s` on a monotonic clock); `None` when the root is gone.
    /// The unreadable tasks are counted in the second value.
    pub fn sample(&mut self, at_s: f64, now_unix: u64) -> Result<Option<(Rows, u64)>, IoError> {
        let Some(sample) = super::sample::sample_usage(&self.hierarchy, &self.root, &self.proc)? else { return Ok(None) };
        let Some(tree) = super::build(&sample, &self.base, self.units, false) else { return Ok(None) };
        let (rows, next) = Rows::of(&tree, &self.previous, at_s, now_unix);
        self.previous = next;
        Ok(Some((rows, tree.unreadable_tasks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Creator, Readings, Usage};
    use crate::sys::readings::{Interface, Network};

    fn node(id: u64, name: &str, owner: u32, comm: &str, cpu_usec: u64, children: Vec<TreeNode>) -> TreeNode {
        TreeNode {
            path: format!("/t/{name}"),
            name: name.into(),
            cgroup_id: id,
            node: true,
            namespaces: vec![],
            creator: Some(Creator { pid: id as u32, comm: comm.into(), uid: owner, owner, created_unix: 100 }),
            tasks: vec![],
            usage: Usage { cgroup: [("cpu_usec".to_string(), cpu_usec)].into(), ..Usage::default() },
            subtree_usage: Usage { tasks: 1, ..Usage::default() },
            unreadable_tasks: 0,
            readings: Readings::default(),
            children,
        }
    }

    fn names(rows: &[&Row]) -> Vec<String> {
        rows.iter().map(|r| format!("{}{}", " ".repeat(r.depth), r.name)).collect()
    }

    #[test]
    fn creators_unknown_to_the_reader_are_filled_in_and_known_ones_stay() {
        let mut hidden = node(3, "node_30", 0, "", 0, vec![]);
        hidden.creator = None;
        let tree = node(1, "t", 0, "sh", 0, vec![node(2, "node_20", 1000, "bwrap", 0, vec![]), hidden]);
        let (mut rows, _) = Rows::of(&tree, &Previous::default(), 1.0, 100);
        assert!(rows.lack_creators());
        let other = |comm: &str| Creator { pid: 7, comm: comm.into(), uid: 0, owner: 0, created_unix: 1 };
        rows.fill_creators(&HashMap::from([(2, other("forged")), (3, other("unshare"))]));
        assert!(!rows.lack_creators());
        let commands: Vec<_> = rows.rows.iter().map(|r| r.command.as_deref()).collect();
        assert_eq!(commands, [Some("sh"), Some("bwrap"), Some("unshare")], "a known creator is not replaced");
    }

    #[test]
    fn rates_come_from_two_samples_of_the_same_cgroup() {
        let mut a = node(2, "node_2", 0, "unshare", 1_000_000, vec![]);
        a.readings.network = Some(Network { interfaces: vec![Interface { name: "lo".into(), rx_bytes: 100, tx_bytes: 100, ..Interface::default() }], cut: 0 });
        let top = node(1, "t", 0, "x", 0, vec![a.clone()]);
        let (first, prev) = Rows::of(&top, &Previous::default(), 10.0, 200);
        assert_eq!(first.rows[1].cpu_percent, None, "no rate from one sample");
        assert_eq!(first.rows[1].age_s, Some(100));
        a.usage.cgroup.insert("cpu_usec".into(), 1_500_000);
        a.readings.network.as_mut().unwrap().interfaces[0].rx_bytes = 300;
        let (second, prev) = Rows::of(&node(1, "t", 0, "x", 0, vec![a.clone()]), &prev, 12.0, 202);
        assert_eq!(second.rows[1].cpu_percent, Some(25.0));
        assert_eq!(second.rows[1].rx_bytes_per_s, Some(100.0));
        assert_eq!(second.rows[1].tx_bytes_per_s, Some(0.0));
        // Replaced under the same name: another inode, a counter from zero.
        let mut b = node(3, "node_2", 0, "unshare", 10, vec![]);
        b.readings.network = Some(Network::default());
        let (third, prev) = Rows::of(&node(1, "t", 0, "x", 0, vec![b]), &prev, 14.0, 204);
        assert_eq!((third.rows[1].cpu_percent, third.rows[1].rx_bytes_per_s), (None, None));
        // A counter that went back (tasks gone from the /proc sum) gives none either.
        let (fourth, _) = Rows::of(&node(1, "t", 0, "x", 0, vec![node(3, "node_2", 0, "unshare", 5, vec![])]), &prev, 16.0, 206);
        assert_eq!(fourth.rows[1].cpu_percent, None);
    }

    #[test]
    fn siblings_sort_nested_and_filters_keep_the_way_to_a_match() {
        let inner = node(5, "node_5", 1000, "bwrap", 50, vec![]);
        let a = node(2, "node_2", 0, "unshare", 10, vec![inner]);
        let b = node(3, "node_3", 1000, "firejail", 30, vec![]);
        let c = node(4, "node_4", 0, "unshare", 20, vec![]);
        let (rows, prev) = Rows::of(&node(1, "t", 0, "x", 0, vec![a.clone(), b.clone(), c.clone()]), &Previous::default(), 0.0, 0);
        assert_eq!(names(&rows.view(SortKey::Name, false, &Filter::default())), ["t", " node_2", "  node_5", " node_3", " node_4"]);
        let grown = |n: &TreeNode, by: u64| {
            let mut n = n.clone();
            *n.usage.cgroup.get_mut("cpu_usec").unwrap() += by;
            n
        };
        let top = node(1, "t", 0, "x", 0, vec![grown(&a, 1), grown(&b, 3), grown(&c, 2)]);
        let (rows, _) = Rows::of(&top, &prev, 1.0, 0);
        assert_eq!(names(&rows.view(SortKey::Cpu, false, &Filter::default())), ["t", " node_3", " node_4", " node_2", "  node_5"]);
        assert_eq!(names(&rows.view(SortKey::Cpu, true, &Filter::default()))[1], " node_2");
        let mine = Filter { owner: Some(1000), command: None };
        assert_eq!(names(&rows.view(SortKey::Name, false, &mine)), ["t", " node_2", "  node_5", " node_3"]);
        let bwrap = Filter { owner: None, command: Some("wra".into()) };
        assert_eq!(names(&rows.view(SortKey::Name, false, &bwrap)), ["t", " node_2", "  node_5"]);
    }
}
