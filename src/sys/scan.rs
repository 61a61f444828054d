//! A snapshot of every task in a tracked subtree, from /proc.

use std::collections::HashMap;

use super::hierarchy::Hierarchy;
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
    /// Who owns its set ([`super::owner`]).
    pub owner: u32,
    pub comm: String,
    pub cgroup: CgroupId,
    pub cgroup_path: String,
    pub set: NsSet,
}

/// A snapshot: the tasks, and how many this process may not read (pid 1's
/// namespaces on some hosts, other users' tasks without root).
#[derive(Debug, Default)]
pub struct Scan {
    pub tasks: Vec<TaskSample>,
    pub unreadable: usize,
}

/// Every user task whose cgroup lies at or below `root`; kernel threads and
/// tasks that vanish while being read are left out, and so are (counted)
/// tasks this process may not read.
/// `user_ns` is the inode of the daemon's user namespace (owners are read against it).
pub fn scan(proc: &ProcFs, hierarchy: &Hierarchy, root: &str, user_ns: u64) -> Result<Scan, IoError> {
    let mut ids: HashMap<String, Option<CgroupId>> = HashMap::new();
    let mut out = Scan::default();
    for pid in proc.pids()? {
        for tid in proc.tids(pid)? {
            match sample(proc, hierarchy, root, user_ns, pid, tid, &mut ids) {
                Ok(Some(t)) => out.tasks.push(t),
                Ok(None) => {}
                Err(e) if e.source.kind() == std::io::ErrorKind::PermissionDenied => out.unreadable += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// One task, if it is a user task within `root` and still there.
fn sample(
    proc: &ProcFs,
    hierarchy: &Hierarchy,
    root: &str,
    user_ns: u64,
    pid: u32,
    tid: u32,
    ids: &mut HashMap<String, Option<CgroupId>>,
) -> Result<Option<TaskSample>, IoError> {
    let Some(path) = proc.cgroup_path(pid, tid, hierarchy.key())? else { return Ok(None) };
    if !within(&path, root) {
        return Ok(None);
    }
    let Some(stat) = proc.stat(pid, tid)? else { return Ok(None) };
    if stat.is_kernel_thread() {
        return Ok(None);
    }
    let Some(set) = proc.ns_set(pid, tid)? else { return Ok(None) };
    let Some(uid) = proc.uid(tid)? else { return Ok(None) };
    let Some(owner) = super::owner::owner(proc, pid, tid, user_ns)? else { return Ok(None) };
    let id = match ids.get(&path) {
        Some(id) => *id,
        None => {
            let id = super::error::or_vanished(hierarchy.id(&path))?;
            ids.insert(path.clone(), id);
            id
        }
    };
    let Some(cgroup) = id else { return Ok(None) };
    Ok(Some(TaskSample {
        tid,
        tgid: pid,
        parent: if tid == pid { stat.ppid } else { pid },
        start: stat.start_ns(),
        uid,
        owner,
        comm: stat.comm,
        cgroup,
        cgroup_path: path,
        set,
    }))
}
