//! The tree model: samples turned into nodes with the namespaces that
//! differ from their parent's, their tasks and their usage.

pub mod sample;
pub mod top;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::core::naming;
use crate::core::node::CgroupId;
use crate::core::nsset::NsSet;
use sample::{CgroupSample, TaskSample};
pub use sample::Readings;

/// One cgroup in the tree (the JSON schema is in docs/semantics.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TreeNode {
    pub path: String,
    pub name: String,
    pub cgroup_id: CgroupId,
    /// Whether this cgroup is a node (the cgroup of a namespace set).
    pub node: bool,
    /// The namespaces in which this node's set differs from its parent's.
    pub namespaces: Vec<NsEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator: Option<Creator>,
    pub tasks: Vec<TaskView>,
    /// This cgroup's listed tasks.
    pub usage: Usage,
    /// The listed tasks of this cgroup and everything below it.
    pub subtree_usage: Usage,
    /// Tasks here and below whose /proc entries could not be read: left out
    /// of the tree, shown or not.
    pub unreadable_tasks: u64,
    /// Pressure and network (docs/semantics.md "Readings"); this cgroup's own.
    #[serde(skip_serializing_if = "Readings::is_empty")]
    pub readings: Readings,
    pub children: Vec<TreeNode>,
}

/// A namespace and its inode number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NsEntry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub inode: u64,
}

/// Who created a node, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Creator {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    /// Who owns the node (docs/semantics.md §13 "Owners").
    pub owner: u32,
    pub created_unix: u64,
}

/// A task of a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskView {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Set when the task's set is not its cgroup's (a split thread, or one that moved on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differs: Vec<NsEntry>,
}

/// Usage figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub tasks: u64,
    pub processes: u64,
    /// User + system CPU time of the live tasks, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the live processes, in bytes (each process once,
    /// however many of the cgroups summed its threads are in).
    pub rss_bytes: u64,
    /// What the hierarchy itself keeps (cgroup2 `cpu.stat` usage_usec, `memory.current`, `pids.current`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cgroup: BTreeMap<String, u64>,
}

/// Units of /proc figures.
#[derive(Clone, Copy, Debug)]
pub struct Units {
    pub clock_ticks: u64,
    pub page_size: u64,
}

/// Tasks, CPU ticks and the resident pages of each process, summed over
/// some listed tasks: processes are keyed so that one counts once.
#[derive(Default)]
struct Tally {
    tasks: u64,
    cpu_ticks: u64,
    rss_pages: BTreeMap<u32, u64>,
}

impl Tally {
    fn of(tasks: &[TaskSample]) -> Tally {
        let mut t = Tally::default();
        for task in tasks {
            t.tasks += 1;
            t.cpu_ticks += task.cpu_ticks;
            t.rss_pages.insert(task.tgid, task.rss_pages);
        }
        t
    }

    fn add(&mut self, other: Tally) {
        self.tasks += other.tasks;
        self.cpu_ticks += other.cpu_ticks;
        self.rss_pages.extend(other.rss_pages);
    }

    fn usage(&self, units: Units, cgroup: BTreeMap<String, u64>) -> Usage {
        Usage {
            tasks: self.tasks,
            processes: self.rss_pages.len() as u64,
            cpu_seconds: self.cpu_ticks as f64 / units.clock_ticks as f64,
            rss_bytes: self.rss_pages.values().sum::<u64>() * units.page_size,
            cgroup,
        }
    }
}

fn entries(set: &NsSet, parent: &NsSet) -> Vec<NsEntry> {
    set.differing(parent).filter(|(_, ino)| *ino != 0).map(|(k, inode)| NsEntry { kind: k.proc_name(), inode }).collect()
}

/// Builds the tree. `base` is the set of a cgroup that is no node (the
/// reader's own, masked as the records are); `all` keeps every cgroup and
/// lists every task, else only nodes, their tasks and the cgroups leading to
/// them. Usage figures cover the tasks listed.
pub fn build(s: &CgroupSample, base: &NsSet, units: Units, all: bool) -> Option<TreeNode> {
    build_at(s, base, units, all, true).node
}

/// A cgroup built: the node if kept, what its listed tasks add up to, and
/// the unreadable tasks of its subtree.
struct Built {
    node: Option<TreeNode>,
    tally: Tally,
    unreadable: u64,
}

fn build_at(s: &CgroupSample, parent_set: &NsSet, units: Units, all: bool, top: bool) -> Built {
    let name = s.path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("/").to_string();
    let member_set = s.tasks.first().map(|t| t.set);
    let node_set = s.record.as_ref().map(|r| r.set).or_else(|| member_set.filter(|_| naming::creator_pid(&name).is_some()));
    // A node by its name whose record and tasks this reader may not read
    // (another user's, without root) is still one, of unknown set.
    let hidden_node = s.record.is_none() && s.tasks.is_empty() && s.unreadable > 0 && naming::creator_pid(&name).is_some();
    let is_node = node_set.is_some() && (s.record.is_some() || naming::creator_pid(&name).is_some()) || hidden_node;
    let own_set = if is_node { node_set.unwrap_or(*parent_set) } else { *parent_set };
    let diff_from = s.record.as_ref().map_or(*parent_set, |r| if top { r.parent_set } else { *parent_set });
    let mut children = Vec::new();
    let mut subtree = Tally::default();
    let mut unreadable = s.unreadable;
    for c in &s.children {
        let built = build_at(c, &own_set, units, all, false);
        unreadable += built.unreadable;
        subtree.add(built.tally);
        children.extend(built.node);
    }
    if !(all || top || is_node || !children.is_empty()) {
        return Built { node: None, tally: Tally::default(), unreadable };
    }
    let listed: &[TaskSample] = if all || is_node { &s.tasks } else { &[] };
    let mask_like = |t: &NsSet| {
        // Records keep masked sets: compare only the slots the record counts.
        NsSet::new(std::array::from_fn(|i| {
            let k = crate::core::nsset::NsKind::ALL[i];
            if own_set.get(k) == 0 { 0 } else { t.get(k) }
        }))
    };
    let tasks: Vec<TaskView> = listed
        .iter()
        .map(|t| TaskView {
            pid: t.tgid,
            tid: t.tid,
            comm: t.comm.clone(),
            differs: if is_node { entries(&mask_like(&t.set), &own_set) } else { Vec::new() },
        })
        .collect();
    let own = Tally::of(listed);
    let usage = own.usage(units, s.usage.iter().cloned().collect());
    subtree.add(own);
    let subtree_usage = subtree.usage(units, BTreeMap::new());
    let node = TreeNode {
        path: s.path.clone(),
        name,
        cgroup_id: s.id,
        node: is_node,
        namespaces: if is_node { entries(&own_set, &diff_from) } else { Vec::new() },
        creator: s.record.as_ref().map(|r| Creator {
            pid: r.creator_pid,
            comm: r.creator_comm.clone(),
            uid: r.creator_uid,
            owner: r.owner(),
            created_unix: r.created_unix,
        }),
        tasks,
        usage,
        subtree_usage,
        unreadable_tasks: unreadable,
        readings: s.readings.clone(),
        children,
    };
    Built { node: Some(node), tally: subtree, unreadable }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::node::NodeRecord;

    fn set(n: u64) -> NsSet {
        NsSet::new([n; 10])
    }

    fn cg(path: &str, record: Option<NodeRecord>, tasks: Vec<TaskSample>, children: Vec<CgroupSample>) -> CgroupSample {
        CgroupSample { path: path.into(), id: path.len() as u64, record, tasks, unreadable: 0, usage: vec![], readings: Readings::default(), children }
    }

    fn task(tid: u32, s: NsSet) -> TaskSample {
        TaskSample { tid, tgid: tid, comm: format!("c{tid}"), set: s, cpu_ticks: 100, rss_pages: 2 }
    }

    fn rec(s: u64, parent: u64) -> Option<NodeRecord> {
        Some(NodeRecord { set: set(s), parent_set: set(parent), creator_pid: 5, creator_comm: "unshare".into(), creator_uid: 0, owner: None, created_unix: 9, mirrors: vec![], restored: None })
    }

    #[test]
    fn nodes_nest_with_differing_namespaces_tasks_and_usage() {
        let mut inner_set = set(2);
        inner_set = NsSet::new(std::array::from_fn(|i| if i == 4 { 3 } else { inner_set.get(crate::core::nsset::NsKind::ALL[i]) }));
        let inner = cg("/t/node_5/node_6", Some(NodeRecord { set: inner_set, ..rec(0, 2).unwrap() }), vec![task(6, inner_set)], vec![]);
        let outer = cg("/t/node_5", rec(2, 1), vec![task(5, set(2))], vec![inner]);
        let plain = cg("/t/other", None, vec![task(9, set(1))], vec![]);
        let root = cg("/t", None, vec![task(1, set(1))], vec![outer, plain]);
        let units = Units { clock_ticks: 100, page_size: 4096 };
        let tree = build(&root, &set(1), units, false).unwrap();
        assert!(tree.tasks.is_empty(), "only nodes list tasks by default");
        assert_eq!(tree.children.len(), 1, "a plain cgroup without nodes is left out");
        let outer = &tree.children[0];
        assert!(outer.node);
        assert_eq!(outer.namespaces.len(), 10);
        assert_eq!(outer.creator.as_ref().unwrap().comm, "unshare");
        let inner = &outer.children[0];
        assert_eq!(inner.namespaces, vec![NsEntry { kind: "pid", inode: 3 }]);
        assert_eq!(inner.tasks[0].pid, 6);
        assert_eq!(outer.subtree_usage.tasks, 2);
        assert_eq!(tree.subtree_usage.cpu_seconds, 2.0);
        assert_eq!(tree.subtree_usage.rss_bytes, 2 * 8192);
        let all = build(&root, &set(1), units, true).unwrap();
        assert_eq!((all.children.len(), all.tasks.len()), (2, 1));
    }

    fn listed(n: &TreeNode) -> u64 {
        n.tasks.len() as u64 + n.children.iter().map(listed).sum::<u64>()
    }

    #[test]
    fn figures_cover_the_tasks_listed() {
        let node = cg("/t/node_5", rec(2, 1), vec![task(5, set(2)), task(7, set(2))], vec![]);
        let root = cg("/t", None, vec![task(1, set(1)), task(2, set(1)), task(3, set(1))], vec![node]);
        let units = Units { clock_ticks: 100, page_size: 4096 };
        for all in [false, true] {
            let tree = build(&root, &set(1), units, all).unwrap();
            assert_eq!(tree.subtree_usage.tasks, listed(&tree), "all: {all}");
            assert_eq!(tree.subtree_usage.processes, listed(&tree), "all: {all}");
        }
    }

    #[test]
    fn a_process_split_across_cgroups_counts_its_memory_once() {
        // Threads 5 and 8 of process 5: one in the node, one left in its parent.
        let thread = |tid: u32, s: NsSet| TaskSample { tgid: 5, rss_pages: 10, ..task(tid, s) };
        let node = cg("/t/node_5", rec(2, 1), vec![thread(5, set(2))], vec![]);
        let root = cg("/t", None, vec![thread(8, set(1))], vec![node]);
        let units = Units { clock_ticks: 100, page_size: 4096 };
        let tree = build(&root, &set(1), units, true).unwrap();
        assert_eq!((tree.usage.rss_bytes, tree.children[0].usage.rss_bytes), (10 * 4096, 10 * 4096));
        assert_eq!(tree.subtree_usage.rss_bytes, 10 * 4096);
        assert_eq!((tree.subtree_usage.tasks, tree.subtree_usage.processes), (2, 1));
    }

    #[test]
    fn a_node_of_unreadable_tasks_and_record_is_shown_by_its_name() {
        let mut hidden = cg("/t/node_5", None, vec![], vec![]);
        hidden.unreadable = 1;
        let mut plain = cg("/t/other", None, vec![], vec![]);
        plain.unreadable = 1;
        let root = cg("/t", None, vec![], vec![hidden, plain]);
        let tree = build(&root, &set(1), Units { clock_ticks: 100, page_size: 4096 }, false).unwrap();
        assert_eq!(tree.children.len(), 1);
        assert!(tree.children[0].node && tree.children[0].namespaces.is_empty() && tree.children[0].name == "node_5");
    }

    #[test]
    fn unreadable_tasks_count_in_cgroups_left_out() {
        let mut plain = cg("/t/other", None, vec![], vec![]);
        plain.unreadable = 2;
        let mut node = cg("/t/node_5", rec(2, 1), vec![task(5, set(2))], vec![]);
        node.unreadable = 1;
        let root = cg("/t", None, vec![], vec![node, plain]);
        let units = Units { clock_ticks: 100, page_size: 4096 };
        let tree = build(&root, &set(1), units, false).unwrap();
        assert_eq!(tree.children.len(), 1);
        assert_eq!((tree.unreadable_tasks, tree.children[0].unreadable_tasks), (3, 1));
    }
}
