//! Samples of a hierarchy's subtree: its cgroups, their records, tasks and usage.

use std::io::ErrorKind;

use crate::core::cgpath::join;
use crate::core::node::{CgroupId, NodeRecord};
use crate::core::nsset::NsSet;
use crate::sys::cgroupfs::Hierarchy;
use crate::sys::error::{or_vanished, IoError};
use crate::sys::procfs::ProcFs;

/// One task in a cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSample {
    pub tid: u32,
    pub tgid: u32,
    pub comm: String,
    pub set: NsSet,
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// One cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSample {
    pub path: String,
    pub id: CgroupId,
    pub record: Option<NodeRecord>,
    pub tasks: Vec<TaskSample>,
    /// Members whose /proc entries this process may not read (another
    /// user's namespaces without root, a task that hides them from root).
    pub unreadable: u64,
    /// Figures the hierarchy keeps itself (cgroup2 controllers).
    pub usage: Vec<(String, u64)>,
    pub children: Vec<CgroupSample>,
}

/// Samples `root` and everything below it; cgroups and tasks that vanish
/// while being read are left out, tasks that cannot be read are counted.
/// `None` when `root` itself is gone.
pub fn sample(hierarchy: &Hierarchy, root: &str, proc: &ProcFs) -> Result<Option<CgroupSample>, IoError> {
    let Some(id) = or_vanished(hierarchy.id(root))? else { return Ok(None) };
    let mut tasks = Vec::new();
    let mut unreadable = 0;
    for tid in hierarchy.members(root)? {
        match task(proc, tid) {
            Ok(Some(t)) => tasks.push(t),
            Ok(None) => {}
            Err(e) if e.source.kind() == ErrorKind::PermissionDenied => unreadable += 1,
            Err(e) => return Err(e),
        }
    }
    tasks.sort_by_key(|t| (t.tgid, t.tid));
    let mut children = Vec::new();
    for name in hierarchy.children(root)? {
        if let Some(child) = sample(hierarchy, &join(root, &name), proc)? {
            children.push(child);
        }
    }
    Ok(Some(CgroupSample {
        path: root.to_string(),
        id,
        record: hierarchy.record(root),
        tasks,
        unreadable,
        usage: hierarchy.usage(root),
        children,
    }))
}

/// One member task; `None` when it is gone.
fn task(proc: &ProcFs, tid: u32) -> Result<Option<TaskSample>, IoError> {
    let Some(tgid) = proc.tgid(tid)? else { return Ok(None) };
    let (Some(stat), Some(set)) = (proc.stat(tgid, tid)?, proc.ns_set(tgid, tid)?) else { return Ok(None) };
    Ok(Some(TaskSample { tid, tgid, comm: stat.comm, set, cpu_ticks: stat.cpu_ticks, rss_pages: stat.rss_pages }))
}
