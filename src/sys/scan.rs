//! A snapshot of every task in a tracked subtree, from /proc.

use std::collections::HashMap;

use super::cgroupfs::Hierarchy;
use super::error::IoError;
use super::procfs::ProcFs;
use crate::core::cgpath::within;
use crate::core::node::CgroupId;
use crate::core::nsset::NsSet;

/// One task as reconcile sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSample {
    pub tid: u32,
    pub tgid: u32,
    /// The task it was forked from: the leader for a thread, else the parent process.
    pub parent: u32,
    /// When it started (`start_boottime` in ns, to a tick from /proc): its
    /// identity with the tid, and reconcile's order.
    pub start: u64,
    /// Its real uid.
    pub uid: u32,
    pub comm: String,
    pub cgroup: CgroupId,
    pub cgroup_path: String,
    pub set: NsSet,
}

/// Every user task whose cgroup lies at or below `root`; kernel threads and
/// tasks that vanish while being read are left out.
pub fn scan(proc: &ProcFs, hierarchy: &Hierarchy, root: &str) -> Result<Vec<TaskSample>, IoError> {
    let mut ids: HashMap<String, Option<CgroupId>> = HashMap::new();
    let mut out = Vec::new();
    for pid in proc.pids()? {
        for tid in proc.tids(pid)? {
            let Some(path) = proc.cgroup_path(pid, tid, hierarchy.key())? else { continue };
            if !within(&path, root) {
                continue;
            }
            let Some(stat) = proc.stat(pid, tid)? else { continue };
            if stat.is_kernel_thread() {
                continue;
            }
            let Some(set) = proc.ns_set(pid, tid)? else { continue };
            let Some(uid) = proc.uid(tid)? else { continue };
            let id = match ids.get(&path) {
                Some(id) => *id,
                None => {
                    let id = super::error::or_vanished(hierarchy.id(&path))?;
                    ids.insert(path.clone(), id);
                    id
                }
            };
            let Some(cgroup) = id else { continue };
            out.push(TaskSample {
                tid,
                tgid: pid,
                parent: if tid == pid { stat.ppid } else { pid },
                start: stat.start_ns(),
                uid,
                comm: stat.comm,
                cgroup,
                cgroup_path: path,
                set,
            });
        }
    }
    Ok(out)
}
