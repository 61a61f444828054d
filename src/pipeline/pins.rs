//! Namespace identity. A set is known by its namespaces' inode numbers, and
//! the kernel hands a freed inode number to the next new namespace. So every
//! node holds one of its set's namespaces open (one that differs from the set
//! it came from, the cheapest kind first): while the node exists, no other
//! namespace can have that number, and no other set can look like its own.
//! A node whose set could not be pinned is no longer found by its set.
//! A node whose set has a network namespace of its own holds that one too,
//! so that its final usage can count its traffic after its last task left.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use crate::core::node::{CgroupId, Node};
use crate::core::nsset::NsKind;
use crate::sys::procfs::ProcFs;
use crate::sys::readings::{net_dev_in, Network};

/// The kinds to pin, cheapest first: a pinned namespace outlives its tasks
/// as long as its node does, and a network namespace costs the most.
const PIN_ORDER: [NsKind; 10] = [
    NsKind::Uts,
    NsKind::Ipc,
    NsKind::Cgroup,
    NsKind::Time,
    NsKind::TimeForChildren,
    NsKind::Mnt,
    NsKind::PidForChildren,
    NsKind::Pid,
    NsKind::User,
    NsKind::Net,
];

/// One open namespace per node.
#[derive(Default)]
pub struct Pins {
    fds: HashMap<CgroupId, OwnedFd>,
    /// The network namespace of a node whose set has one of its own (when
    /// it is not the one pinned): read for the node's final usage.
    nets: HashMap<CgroupId, OwnedFd>,
}

impl Pins {
    /// Whether a node holds its namespace.
    pub fn holds(&self, node: CgroupId) -> bool {
        self.fds.contains_key(&node)
    }

    /// Pins one of `node`'s namespaces from a task in its set; false when
    /// the task no longer has it (gone, or moved on to another set).
    pub fn pin(&mut self, proc: &ProcFs, node: &Node, tgid: u32, tid: u32) -> bool {
        if self.holds(node.id) {
            return true;
        }
        let set = &node.record.set;
        let differing: Vec<NsKind> = set.differing(&node.record.parent_set).map(|(k, _)| k).collect();
        let Some(kind) = PIN_ORDER.into_iter().find(|k| differing.contains(k) && set.get(*k) != 0) else { return false };
        let Ok(Some(fd)) = proc.open_ns(tgid, tid, kind) else { return false };
        // The task may have moved on between the decision and the open.
        let opened = rustix::fs::fstat(&fd).map(|st| st.st_ino).ok();
        if opened != Some(set.get(kind)) {
            return false;
        }
        if node.record.own_net().is_some() {
            let net = if kind == NsKind::Net { fd.try_clone().ok() } else { proc.open_ns(tgid, tid, NsKind::Net).ok().flatten() };
            let same = net.as_ref().and_then(|fd| rustix::fs::fstat(fd).ok()).is_some_and(|st| st.st_ino == set.get(NsKind::Net));
            if let Some(net) = net.filter(|_| same) {
                self.nets.insert(node.id, net);
            }
        }
        self.fds.insert(node.id, fd);
        true
    }

    /// The network counters of a node's own network namespace, if it has one
    /// held (its final usage: the namespace outlives its last task while held).
    pub fn network(&self, node: CgroupId) -> Option<Network> {
        net_dev_in(self.nets.get(&node)?.as_fd()).ok().flatten()
    }

    /// Lets a removed node's namespace go.
    pub fn release(&mut self, node: CgroupId) {
        self.fds.remove(&node);
        self.nets.remove(&node);
    }

    /// How many namespaces are held.
    pub fn held(&self) -> usize {
        self.fds.len()
    }
}

/// Raises the soft limit on open files to the hard one: every node holds a
/// descriptor. Where that fails, nodes past the limit are not pinned (their
/// sets retire at once) and the daemon says so.
pub fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("could not raise the open files limit to {:?}: {e}", limit.maximum);
        }
    }
}
