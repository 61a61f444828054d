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
use crate::sys::readings::{self, Network, Pressures, ReadingError};
use crate::sys::hierarchy::Version;

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
#[derive(Clone, Debug, PartialEq)]
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
    /// Its pressure, network and the readings that failed.
    pub readings: Readings,
    pub children: Vec<CgroupSample>,
}

/// What a cgroup reads beyond its usage files (docs/semantics.md "Readings").
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Readings {
    /// PSI of the cgroup (cgroup2 hierarchies with PSI on; else empty).
    #[serde(skip_serializing_if = "Pressures::is_empty")]
    pub pressure: Pressures,
    /// A node whose set has a network namespace of its own: its interfaces,
    /// as a member sees them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Readings whose files were garbled or could not be read (left empty).
    #[serde(skip_serializing_if = "is_zero")]
    pub failed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Readings {
    pub fn is_empty(&self) -> bool {
        self.pressure.is_empty() && self.network.is_none() && self.failed == 0
    }

    /// A reading's value, or nothing and one failure more.
    fn keep<T: Default>(&mut self, r: Result<T, ReadingError>) -> T {
        r.unwrap_or_else(|_| {
            self.failed += 1;
            T::default()
        })
    }
}

/// Samples `root` and everything below it; cgroups and tasks that vanish
/// while being read are left out, tasks that cannot be read are counted.
/// `None` when `root` itself is gone.
pub fn sample(hierarchy: &Hierarchy, root: &str, proc: &ProcFs) -> Result<Option<CgroupSample>, IoError> {
    sample_at(hierarchy, root, proc, Detail::Full)
}

/// Like [`sample`], for figures only (`top`): the tasks of a cgroup with a
/// record get its set instead of their own (their namespaces are not read).
pub fn sample_usage(hierarchy: &Hierarchy, root: &str, proc: &ProcFs) -> Result<Option<CgroupSample>, IoError> {
    sample_at(hierarchy, root, proc, Detail::Usage)
}

/// How much of each task is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Detail {
    Full,
    Usage,
}

fn sample_at(hierarchy: &Hierarchy, root: &str, proc: &ProcFs, detail: Detail) -> Result<Option<CgroupSample>, IoError> {
    // Mirrors' figures are read where their hierarchies are mounted.
    let mounts = crate::sys::mounts::read_mountinfo(std::path::Path::new("/proc/self/mountinfo")).unwrap_or_default();
    sample_below(hierarchy, root, proc, &mounts, detail)
}

fn sample_below(hierarchy: &Hierarchy, root: &str, proc: &ProcFs, mounts: &[Mount], detail: Detail) -> Result<Option<CgroupSample>, IoError> {
    let Some(id) = or_vanished(hierarchy.id(root))? else { return Ok(None) };
    let mut tasks = Vec::new();
    let mut unreadable = 0;
    let record = hierarchy.record(root);
    let known_set = record.as_ref().map(|r| r.set).filter(|_| detail == Detail::Usage);
    let members = hierarchy.members(root)?;
    for &tid in &members {
        match task(proc, tid, known_set) {
            Ok(Some(t)) => tasks.push(t),
            Ok(None) => {}
            Err(e) if e.source.kind() == ErrorKind::PermissionDenied => unreadable += 1,
            Err(e) => return Err(e),
        }
    }
    tasks.sort_by_key(|t| (t.tgid, t.tid));
    let mut children = Vec::new();
    for name in hierarchy.children(root)? {
        if let Some(child) = sample_below(hierarchy, &join(root, &name), proc, mounts, detail)? {
            children.push(child);
        }
    }
    let mut usage = hierarchy.usage(root);
    for m in record.iter().flat_map(|r| &r.mirrors) {
        let wanted: Vec<&str> = m.controllers.split(',').collect();
        let mount = mounts.iter().find(|x| x.fstype == "cgroup" && wanted.iter().all(|c| x.super_opts.iter().any(|o| o == c)));
        if let Some(mount) = mount {
            usage.extend(v1_usage(&mount.mount_point.join(m.path.trim_start_matches('/'))));
        }
    }
    let mut readings = Readings::default();
    if hierarchy.version() == Version::V2 {
        readings.pressure = readings.keep(readings::pressures(&hierarchy.dir(root)));
    }
    if let Some(net) = record.as_ref().and_then(NodeRecord::own_net) {
        // The first member in the node's network namespace reads its counters.
        readings.network = readings.keep(readings::net_dev_of_members(proc.root(), &members, net));
    }
    Ok(Some(CgroupSample { path: root.to_string(), id, record, tasks, unreadable, usage, readings, children }))
}


/// One member task (of set `known`, else its own read); `None` when it is gone.
fn task(proc: &ProcFs, tid: u32, known: Option<NsSet>) -> Result<Option<TaskSample>, IoError> {
    let Some(tgid) = proc.tgid(tid)? else { return Ok(None) };
    let Some(stat) = proc.stat(tgid, tid)? else { return Ok(None) };
    let Some(set) = (match known {
        Some(set) => Some(set),
        None => proc.ns_set(tgid, tid)?,
    }) else {
        return Ok(None);
    };
    Ok(Some(TaskSample { tid, tgid, comm: stat.comm, set, cpu_ticks: stat.cpu_ticks, rss_pages: stat.rss_pages }))
}
