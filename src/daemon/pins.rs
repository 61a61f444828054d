//! Namespace identity. A set is known by its namespaces' inode numbers, and
//! the kernel hands a freed inode number to the next new namespace. So every
//! node holds one of its set's namespaces open (one that differs from the set
//! it came from, the cheapest kind first): while the node exists, no other
//! namespace can have that number, and no other set can look like its own.
//! A node whose set could not be pinned is no longer found by its set.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use crate::core::node::{CgroupId, Node};
use crate::core::nsset::NsKind;
use crate::sys::procfs::ProcFs;

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

/// From this many nodes to pin at once, the opens run on several threads.
const PARALLEL_FROM: usize = 256;
/// At most this many threads open namespaces.
const MAX_THREADS: usize = 4;

/// A node to pin: the namespace (kind, inode number) and the tasks to take it from.
struct Request {
    node: CgroupId,
    kind: NsKind,
    ino: u64,
    tasks: Vec<(u32, u32)>,
}

/// Which of a node's namespaces to hold: the cheapest kind in which its
/// set differs from the set it came from.
fn pin_kind(node: &Node) -> Option<(NsKind, u64)> {
    let set = &node.record.set;
    let differing: Vec<NsKind> = set.differing(&node.record.parent_set).map(|(k, _)| k).collect();
    PIN_ORDER.into_iter().find(|k| differing.contains(k) && set.get(*k) != 0).map(|k| (k, set.get(k)))
}

/// A task's namespace of `kind`, if it is still the one numbered `ino`
/// (the task may have moved on between the decision and the open).
fn open_checked(proc: &ProcFs, tgid: u32, tid: u32, kind: NsKind, ino: u64) -> Option<OwnedFd> {
    let Ok(Some(fd)) = proc.open_ns(tgid, tid, kind) else { return None };
    let opened = rustix::fs::fstat(&fd).map(|st| st.st_ino as u64).ok();
    (opened == Some(ino)).then_some(fd)
}

/// One open namespace per node.
#[derive(Default)]
pub(super) struct Pins {
    fds: HashMap<CgroupId, OwnedFd>,
}

impl Pins {
    /// Whether a node holds its namespace.
    pub(super) fn holds(&self, node: CgroupId) -> bool {
        self.fds.contains_key(&node)
    }

    /// Pins one of `node`'s namespaces from a task in its set; false when
    /// the task no longer has it (gone, or moved on to another set).
    pub(super) fn pin(&mut self, proc: &ProcFs, node: &Node, tgid: u32, tid: u32) -> bool {
        if self.holds(node.id) {
            return true;
        }
        let Some((kind, ino)) = pin_kind(node) else { return false };
        let Some(fd) = open_checked(proc, tgid, tid, kind, ino) else { return false };
        self.fds.insert(node.id, fd);
        true
    }

    /// [`Pins::pin`] for many nodes at once (a reconcile's): each node not
    /// yet pinned is pinned from the first of its tasks (`(tgid, tid)`, all
    /// in its set) that still has the namespace. The opens, each a walk of
    /// /proc, run on several threads when there are many.
    pub(super) fn pin_all<'a>(&mut self, proc: &ProcFs, wanted: impl IntoIterator<Item = (&'a Node, Vec<(u32, u32)>)>) {
        let requests: Vec<Request> = wanted
            .into_iter()
            .filter(|(node, _)| !self.holds(node.id))
            .filter_map(|(node, tasks)| pin_kind(node).map(|(kind, ino)| Request { node: node.id, kind, ino, tasks }))
            .collect();
        let threads = if requests.len() < PARALLEL_FROM {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
        };
        let open = |chunk: &[Request]| -> Vec<(CgroupId, OwnedFd)> {
            chunk
                .iter()
                .filter_map(|r| r.tasks.iter().find_map(|&(tgid, tid)| open_checked(proc, tgid, tid, r.kind, r.ino)).map(|fd| (r.node, fd)))
                .collect()
        };
        if threads <= 1 {
            self.fds.extend(open(&requests));
            return;
        }
        let per_thread = requests.len().div_ceil(threads);
        let opened: Vec<Vec<(CgroupId, OwnedFd)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = requests.chunks(per_thread).map(|chunk| scope.spawn(move || open(chunk))).collect();
            // A worker cannot panic short of a bug; its nodes then stay unpinned.
            workers.into_iter().map(|w| w.join().unwrap_or_default()).collect()
        });
        self.fds.extend(opened.into_iter().flatten());
    }

    /// Lets a removed node's namespace go.
    pub(super) fn release(&mut self, node: CgroupId) {
        self.fds.remove(&node);
    }

    /// How many namespaces are held.
    pub(super) fn len(&self) -> usize {
        self.fds.len()
    }
}

/// Raises the soft limit on open files to the hard one: every node holds a
/// descriptor. Where that fails, nodes past the limit are not pinned (their
/// sets retire at once) and the daemon says so.
pub(super) fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("could not raise the open files limit to {:?}: {e}", limit.maximum);
        }
    }
}
