//! Samples of a hierarchy's subtree: its cgroups, their records, tasks and usage.

use std::io::ErrorKind;

use crate::core::cgpath::join;
use crate::core::node::{CgroupId, NodeRecord};
use crate::core::nsset::NsSet;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::error::{or_vanished, IoError};
use crate::control::mirror::v1_usage;
use crate::sys::mounts::Mount;
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
    // Mirrors' figures are read where their hierarchies are mounted.
    let mounts = crate::sys::mounts::read_mountinfo(std::path::Path::new("/proc/self/mountinfo")).unwrap_or_default();
    sample_below(hierarchy, root, proc, &mounts)
}

fn sample_below(hierarchy: &Hierarchy, root: &str, proc: &ProcFs, mounts: &[Mount]) -> Result<Option<CgroupSample>, IoError> {
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
        if let Some(child) = sample_below(hierarchy, &join(root, &name), proc, mounts)? {
            children.push(child);
        }
    }
    let record = hierarchy.record(root);
    let mut usage = hierarchy.usage(root);
    for m in record.iter().flat_map(|r| &r.mirrors) {
        let wanted: Vec<&str> = m.controllers.split(',').collect();
        let mount = mounts.iter().find(|x| x.fstype == "cgroup" && wanted.iter().all(|c| x.super_opts.iter().any(|o| o == c)));
        if let Some(mount) = mount {
            usage.extend(v1_usage(&mount.mount_point.join(m.path.trim_start_matches('/'))));
        }
    }
    Ok(Some(CgroupSample { path: root.to_string(), id, record, tasks, unreadable, usage, children }))
}

/// One member task; `None` when it is gone.
fn task(proc: &ProcFs, tid: u32) -> Result<Option<TaskSample>, IoError> {
    let Some(tgid) = proc.tgid(tid)? else { return Ok(None) };
    let (Some(stat), Some(set)) = (proc.stat(tgid, tid)?, proc.ns_set(tgid, tid)?) else { return Ok(None) };
    Ok(Some(TaskSample { tid, tgid, comm: stat.comm, set, cpu_ticks: stat.cpu_ticks, rss_pages: stat.rss_pages }))
}
