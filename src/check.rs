//! The invariant, checked from cgroupfs and /proc: every task whose set
//! differs from the base set is in the node of its set, every task in the
//! base set is outside nodes, and every set has exactly one node.

use std::collections::BTreeMap;
use crate::sys::scan::{scan, Scan};

use serde::Serialize;

use crate::core::cgpath::within;
use crate::core::naming;
use crate::core::nsset::{NsMask, NsSet};
use crate::core::tracker::Granularity;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::error::IoError;
use crate::sys::procfs::ProcFs;

/// A task that is not where the invariant puts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Misplaced {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    /// The node of its set, if it has one.
    pub expected: Option<String>,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub tasks: usize,
    pub nodes: usize,
    pub misplaced: Vec<Misplaced>,
    /// Tasks outside the node of their set because it lies outside their
    /// cgroup's subtree and they lack CAP_SYS_ADMIN: the daemon leaves them
    /// there by the ns subsystem's rule (docs/semantics.md §13). Not a violation.
    pub outside_subtree: Vec<Misplaced>,
    /// Sets with more than one node: the node paths.
    pub duplicate_nodes: Vec<Vec<String>>,
    /// Tasks in the subtree whose /proc entries could not be read: not checked.
    pub unreadable_tasks: usize,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.misplaced.is_empty() && self.duplicate_nodes.is_empty()
    }
}

/// Checks the subtree `root`. `base` is the set of cgroups that are no node
/// (unmasked: its user namespace is the one CAP_SYS_ADMIN counts in).
pub fn check(hierarchy: &Hierarchy, root: &str, proc: &ProcFs, base: NsSet, mask: NsMask) -> Result<Verdict, IoError> {
    let own_user_ns = base.get(crate::core::nsset::NsKind::User);
    let mut by_set: BTreeMap<NsSet, Vec<String>> = BTreeMap::new();
    let mut node_paths = std::collections::BTreeSet::new();
    for (path, _) in hierarchy.walk(root)? {
        let name = path.rsplit('/').next().unwrap_or("");
        if let Some(record) = hierarchy.record(&path) {
            by_set.entry(record.set).or_default().push(path.clone());
            node_paths.insert(path);
        } else if naming::creator_pid(name).is_some() && path != root {
            node_paths.insert(path);
        }
    }
    let Scan { tasks, unreadable: unreadable_tasks } = scan(proc, hierarchy, root, own_user_ns)?;
    let per_process = hierarchy.granularity() == Granularity::Process;
    let base = base.masked(mask);
    let mut verdict = Verdict { tasks: tasks.len(), nodes: node_paths.len(), unreadable_tasks, ..Verdict::default() };
    for t in tasks {
        if per_process && t.tid != t.tgid {
            continue;
        }
        let set = t.set.masked(mask);
        let expected = by_set.get(&set).and_then(|v| v.first()).cloned();
        let ok = if set == base { !node_paths.contains(&t.cgroup_path) } else { expected.as_ref() == Some(&t.cgroup_path) };
        if ok {
            continue;
        }
        let held = expected.as_deref().is_some_and(|node| !within(node, &t.cgroup_path))
            && !proc.has_sys_admin_in(t.tgid, t.tid, own_user_ns)?;
        let m = Misplaced { tid: t.tid, pid: t.tgid, comm: t.comm, cgroup: t.cgroup_path, expected };
        if held { verdict.outside_subtree.push(m) } else { verdict.misplaced.push(m) }
    }
    verdict.duplicate_nodes = by_set.into_values().filter(|v| v.len() > 1).collect();
    Ok(verdict)
}
