//! Where events come from: the BPF programs, or (without BPF) the netlink
//! proc connector enriched from /proc.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::bpf::{BpfError, Event, EventKind, Probe};
use crate::core::cgpath::within;
use crate::core::node::CgroupId;
use crate::core::nsset::NsSet;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::connector::{Connector, ProcEvent, Received};
use crate::sys::error::IoError;
use crate::sys::procfs::ProcFs;

/// An event source.
pub enum Source {
    Bpf(Box<Probe>),
    Proc(Box<ProcSource>),
}

impl Source {
    /// Readable when events wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::Bpf(p) => p.fd(),
            Source::Proc(p) => p.connector.fd(),
        }
    }

    /// What the source hooks, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Source::Bpf(p) => p.hooks().join(" "),
            Source::Proc(_) => "netlink proc connector (fork, exec, exit) + /proc rescans".into(),
        }
    }

    /// Takes up to `max` events; returns how many records were undecodable.
    pub fn drain(&mut self, max: usize, out: &mut Vec<Event>) -> Result<usize, IoError> {
        match self {
            Source::Bpf(p) => Ok(p.drain(max, out)),
            Source::Proc(p) => p.drain(max, out).map(|()| 0),
        }
    }

    /// Whether a new event wakes the reader of [`Source::fd`]; off while the
    /// daemon looks on a timer. Only the BPF source can stop waking it.
    pub fn set_wakeups(&mut self, on: bool) -> Result<(), BpfError> {
        match self {
            Source::Bpf(p) => p.set_wakeups(on),
            Source::Proc(_) => Ok(()),
        }
    }

    /// Events lost so far (ring buffer or socket overflows).
    pub fn dropped(&self) -> u64 {
        match self {
            Source::Bpf(p) => p.dropped(),
            Source::Proc(p) => p.overflows,
        }
    }

    /// Events delivered so far.
    pub fn emitted(&self) -> u64 {
        match self {
            Source::Bpf(p) => p.emitted(),
            Source::Proc(p) => p.delivered,
        }
    }

    /// The daemon placed `tid`.
    pub fn settled(&mut self, tid: u32) {
        if let Source::Bpf(p) = self {
            p.settled(tid);
        }
    }

    /// `tid` lives in node `node`: report its exit.
    pub fn track(&mut self, tid: u32, node: CgroupId) {
        match self {
            Source::Bpf(p) => p.track(tid),
            Source::Proc(p) => {
                p.members.insert(tid, node);
            }
        }
    }

    /// Whether the source misses unshare() and setns() without a later fork
    /// or exec, so that /proc or the task iterator must be rescanned now and then.
    pub fn needs_rescans(&self) -> bool {
        match self {
            Source::Bpf(p) => p.snapshot_interval().is_some(),
            Source::Proc(_) => true,
        }
    }

    /// The fixed time between rescans, if configured (BPF without syscall
    /// hooks); else rescans back off while they find nothing.
    pub fn rescan_interval(&self) -> Option<Duration> {
        match self {
            Source::Bpf(p) => p.snapshot_interval(),
            Source::Proc(_) => None,
        }
    }
}

/// The proc connector, with what it needs to turn its events into [`Event`]s.
pub struct ProcSource {
    connector: Connector,
    proc: ProcFs,
    hierarchy: Hierarchy,
    root: String,
    ids: HashMap<String, Option<CgroupId>>,
    /// The daemon's user namespace (inode): owners are read against it.
    user_ns: u64,
    /// Tasks living in nodes, by node: their exits are reported.
    members: HashMap<u32, CgroupId>,
    overflows: u64,
    delivered: u64,
}

impl ProcSource {
    /// Subscribes to the proc connector.
    pub fn open(proc: ProcFs, hierarchy: Hierarchy, root: &str, user_ns: u64) -> Result<ProcSource, IoError> {
        Ok(ProcSource {
            connector: Connector::open()?,
            proc,
            hierarchy,
            root: root.to_string(),
            ids: HashMap::new(),
            user_ns,
            members: HashMap::new(),
            overflows: 0,
            delivered: 0,
        })
    }

    fn drain(&mut self, max: usize, out: &mut Vec<Event>) -> Result<(), IoError> {
        let start = out.len();
        while out.len() - start < max {
            match self.connector.receive()? {
                Received::Empty => break,
                Received::Overflow => self.overflows += 1,
                Received::Events(events) => {
                    for pe in events {
                        let before = out.len();
                        self.convert(pe, out);
                        self.delivered += (out.len() - before) as u64;
                    }
                }
            }
        }
        Ok(())
    }

    /// The task's cgroup id if it lies in the tracked subtree.
    fn scoped_cgroup(&mut self, tgid: u32, tid: u32) -> Option<CgroupId> {
        let path = self.proc.cgroup_path(tgid, tid, self.hierarchy.key()).ok()??;
        if !within(&path, &self.root) {
            return None;
        }
        if let Some(id) = self.ids.get(&path) {
            return *id;
        }
        let id = self.hierarchy.id(&path).ok();
        self.ids.insert(path, id);
        id
    }

    fn event(&self, kind: EventKind, tgid: u32, tid: u32, cgroup: CgroupId, set: NsSet, prev: NsSet) -> Event {
        let (comm, start_ns) = self.proc.stat(tgid, tid).ok().flatten().map(|s| (s.start_ns(), s.comm)).map_or_else(Default::default, |(start, comm)| (comm, start));
        let uid = self.proc.uid(tid).ok().flatten().unwrap_or(u32::MAX);
        let owner = crate::sys::owner::owner(&self.proc, tgid, tid, self.user_ns).ok().flatten().unwrap_or(uid);
        Event { kind, ktime_ns: monotonic_ns(), start_ns, cgroup, tid, tgid, set, prev, comm, uid, owner }
    }

    fn convert(&mut self, pe: ProcEvent, out: &mut Vec<Event>) {
        match pe {
            ProcEvent::Fork { parent_tid, parent_tgid, child_tid, child_tgid } => {
                if let Some(&node) = self.members.get(&parent_tid) {
                    self.members.insert(child_tid, node);
                }
                let Some(cgroup) = self.scoped_cgroup(child_tgid, child_tid) else { return };
                let Some(set) = self.proc.ns_set(child_tgid, child_tid).ok().flatten() else { return };
                let prev = self.proc.ns_set(parent_tgid, parent_tid).ok().flatten().unwrap_or_default();
                if set == prev {
                    return;
                }
                // The parent may have unshared just before: place it first,
                // so that the child nests below it.
                if let Some(parent_cgroup) = self.scoped_cgroup(parent_tgid, parent_tid) {
                    out.push(self.event(EventKind::Exec, parent_tgid, parent_tid, parent_cgroup, prev, NsSet::default()));
                }
                out.push(self.event(EventKind::Fork { ptid: parent_tid }, child_tgid, child_tid, cgroup, set, prev));
            }
            ProcEvent::Exec { tid, tgid } => {
                let Some(cgroup) = self.scoped_cgroup(tgid, tid) else { return };
                let Some(set) = self.proc.ns_set(tgid, tid).ok().flatten() else { return };
                // The set before is unknown: the daemon compares with the cgroup's.
                out.push(self.event(EventKind::Exec, tgid, tid, cgroup, set, NsSet::default()));
            }
            ProcEvent::Exit { tid, tgid } => {
                let Some(node) = self.members.remove(&tid) else { return };
                let none = NsSet::default();
                out.push(Event {
                    kind: EventKind::Exit,
                    ktime_ns: monotonic_ns(),
                    start_ns: 0,
                    cgroup: node,
                    tid,
                    tgid,
                    set: none,
                    prev: none,
                    comm: String::new(),
                    uid: 0,
                    owner: 0,
                });
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of BPF event timestamps).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
