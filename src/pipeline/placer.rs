//! Carries out the tracker's decisions through a cgroup backend: creates
//! nodes (never failing on a name), moves tasks, removes empty nodes.

use crate::core::node::{CgroupId, Node};
use crate::core::tracker::{Entry, NewNode, Placement, Refusal, Tracker};
use crate::sys::cgroupfs::{Attached, CgroupBackend, Created, Removed};
use crate::sys::error::IoError;

/// How many names a node may try before creation gives up (never reached in
/// practice: each taken name is a live node of an earlier task).
const MAX_NAME_ATTEMPTS: u32 = 10_000;

/// What happened to a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It is where it belongs already.
    Stayed,
    /// Moved into `to`; `created` when the node was made for it.
    Moved { to: CgroupId, created: bool },
    /// Left where it is, for a reason worth a warning.
    Refused(Refusal),
    /// The task or its destination went away meanwhile.
    Vanished,
}

/// A node removed by cleanup, with what was known of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub node: Node,
    pub path: String,
    pub usage: Vec<(String, u64)>,
}

/// The tracker and the backend, together.
pub struct Placer<B> {
    tracker: Tracker,
    backend: B,
    /// Controller files the kernel refused for new nodes since last taken
    /// (node, `file=value: error`).
    refused_files: Vec<(CgroupId, String)>,
    /// Seconds since the epoch, for node records.
    clock: fn() -> u64,
}

impl<B: CgroupBackend> Placer<B> {
    pub fn new(tracker: Tracker, backend: B, clock: fn() -> u64) -> Placer<B> {
        Placer { tracker, backend, refused_files: Vec::new(), clock }
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
    pub fn tracker_mut(&mut self) -> &mut Tracker {
        &mut self.tracker
    }
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }
    /// The tracker to decide with and the backend to look with, at once.
    pub fn parts(&mut self) -> (&Tracker, &mut B) {
        (&self.tracker, &mut self.backend)
    }

    /// The controller files refused since the last call, by node.
    pub fn take_refused_files(&mut self) -> Vec<(CgroupId, String)> {
        std::mem::take(&mut self.refused_files)
    }

    /// Places a task that reports `entry` without any check (tests of the
    /// placer alone); `comm` names it in node records.
    #[cfg(test)]
    pub fn enter(&mut self, entry: &Entry, comm: &str) -> Result<Outcome, IoError> {
        let placement = self.tracker.place(entry);
        self.carry_out(placement, entry, comm)
    }

    /// Carries out a placement decided elsewhere (reconcile adjusts some).
    pub fn carry_out(&mut self, placement: Placement, entry: &Entry, comm: &str) -> Result<Outcome, IoError> {
        match placement {
            Placement::Stay => Ok(Outcome::Stayed),
            Placement::Refused(r) => Ok(Outcome::Refused(r)),
            Placement::Move(to) => self.attach(to, entry, false),
            Placement::Create(new) => {
                let Some(id) = self.create(&new, comm)? else { return Ok(Outcome::Vanished) };
                let outcome = self.attach(id, entry, true)?;
                if outcome == Outcome::Vanished {
                    // Its creator is gone: the node would only wait for cleanup.
                    self.try_remove(id)?;
                }
                Ok(outcome)
            }
        }
    }

    fn attach(&mut self, to: CgroupId, entry: &Entry, created: bool) -> Result<Outcome, IoError> {
        Ok(match self.backend.attach(to, entry.tid, entry.tgid)? {
            Attached::Moved => Outcome::Moved { to, created },
            Attached::Vanished => Outcome::Vanished,
        })
    }

    /// Creates the node, trying names until one is free (or an empty
    /// leftover that is no live node). `None` when the parent vanished.
    fn create(&mut self, new: &NewNode, comm: &str) -> Result<Option<CgroupId>, IoError> {
        let parent_is_node = self.tracker.node(new.parent).is_some();
        if let Some(lacking) = self.backend.prepare(new.parent, parent_is_node)? {
            self.refused_files.push((new.parent, format!("a node made here {lacking}")));
        }
        for attempt in 0..MAX_NAME_ATTEMPTS {
            let name = new.name(attempt);
            let id = match self.backend.create(new.parent, &name) {
                Ok(Created::New(id)) => id,
                Ok(Created::EmptyLeftover(id)) if self.tracker.node(id).is_none() => id,
                Ok(_) => continue,
                Err(e) if e.is_vanished() => return Ok(None),
                Err(e) => return Err(e),
            };
            let record = new.record(comm, (self.clock)());
            self.backend.store_record(id, &record)?;
            for refused in self.backend.configure(id, &new.files) {
                self.refused_files.push((id, refused));
            }
            let node = Node { id, parent: new.parent, name, record };
            self.tracker.add_node(node).map_err(|other| {
                IoError::new("record node", &other.name, std::io::Error::other("a node for this set exists already"))
            })?;
            return Ok(Some(id));
        }
        Err(IoError::new("mkdir", format!("node_{}*", new.creator_pid), std::io::Error::other("no free name")))
    }

    /// Tries to remove `id` if it is a node with no child nodes. Returns the
    /// removal, or `None` when it is busy, not a node, or gone already.
    pub fn try_remove(&mut self, id: CgroupId) -> Result<Option<Removal>, IoError> {
        if self.tracker.node(id).is_none() || self.tracker.has_child_nodes(id) {
            return Ok(None);
        }
        let path = self.backend.path_of(id)?.unwrap_or_default();
        let usage = self.backend.usage(id);
        match self.backend.remove(id)? {
            Removed::Busy => Ok(None),
            Removed::Removed | Removed::Vanished => {
                let node = self.tracker.remove_node(id).expect("checked above");
                Ok(Some(Removal { node, path, usage }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::FakeBackend;
    use super::*;
    use crate::core::nsset::NsSet;
    use crate::core::tracker::Granularity;

    const ROOT: CgroupId = 1;

    fn set(n: u64) -> NsSet {
        NsSet::new([n; 10])
    }

    fn placer() -> Placer<FakeBackend> {
        let tracker = Tracker::new(set(1), Granularity::Thread);
        Placer::new(tracker, FakeBackend::with_root(ROOT, "/t"), || 42)
    }

    fn entry(tid: u32, cgroup: CgroupId, s: u64, prev: u64) -> Entry {
        Entry { tid, tgid: tid, uid: 0, owner: 0, cgroup, set: set(s), prev: set(prev) }
    }

    #[test]
    fn unshare_with_fork_nests_child_under_parent_node() {
        let mut p = placer();
        // unshare --fork --pid: P's set changes (pid_for_children), then its child's.
        let Outcome::Moved { to: node_p, created: true } = p.enter(&entry(100, ROOT, 2, 1), "unshare").unwrap() else {
            panic!()
        };
        let Outcome::Moved { to: _, created: true } = p.enter(&entry(101, node_p, 3, 2), "unshare").unwrap() else {
            panic!()
        };
        assert_eq!(p.backend().path_of_task(100), Some("/t/node_100"));
        assert_eq!(p.backend().path_of_task(101), Some("/t/node_100/node_101"));
        assert_eq!(p.backend().records[&node_p].creator_comm, "unshare");
        assert_eq!(p.backend().records[&node_p].created_unix, 42);
        // nsenter joins both (the nsenter process sits in /t, its child too).
        assert_eq!(p.enter(&entry(200, ROOT, 2, 1), "nsenter").unwrap(), Outcome::Moved { to: node_p, created: false });
        assert!(matches!(p.enter(&entry(201, ROOT, 3, 1), "sleep").unwrap(), Outcome::Moved { created: false, .. }));
        assert_eq!(p.backend().path_of_task(201), Some("/t/node_100/node_101"));
    }

    #[test]
    fn names_never_fail_on_pid_reuse() {
        let mut p = placer();
        p.enter(&entry(100, ROOT, 2, 1), "a").unwrap();
        // pid 100 reused by a task entering another set: the name is taken by a live node.
        p.enter(&entry(100, ROOT, 3, 1), "b").unwrap();
        assert_eq!(p.backend().path_of_task(100), Some("/t/node_100~2"));
        // An empty leftover that is no live node is reused.
        let mut q = placer();
        q.backend().paths.insert(5, "/t/node_300".into());
        q.enter(&entry(300, ROOT, 4, 1), "c").unwrap();
        assert_eq!(q.backend().path_of_task(300), Some("/t/node_300"));
        assert!(!q.backend().log.iter().any(|l| l.contains('~')));
    }

    #[test]
    fn vanished_tasks_are_a_normal_outcome_and_leave_no_node() {
        let mut p = placer();
        p.backend().vanished_tids.insert(100);
        assert_eq!(p.enter(&entry(100, ROOT, 2, 1), "x").unwrap(), Outcome::Vanished);
        assert!(p.tracker().node_of_set(&set(2)).is_none());
        assert_eq!(p.backend().log.last().map(String::as_str), Some("rmdir /t/node_100"));
    }

    #[test]
    fn removal_is_bottom_up_and_only_when_empty() {
        let mut p = placer();
        let Outcome::Moved { to: outer, .. } = p.enter(&entry(100, ROOT, 2, 1), "a").unwrap() else { panic!() };
        let Outcome::Moved { to: inner, .. } = p.enter(&entry(101, outer, 3, 2), "a").unwrap() else { panic!() };
        assert_eq!(p.try_remove(outer).unwrap(), None, "has a child node");
        assert_eq!(p.try_remove(inner).unwrap(), None, "populated");
        p.backend().members.clear();
        let removed = p.try_remove(inner).unwrap().unwrap();
        assert_eq!((removed.path.as_str(), removed.node.record.creator_pid), ("/t/node_100/node_101", 101));
        assert!(p.try_remove(outer).unwrap().is_some());
        assert!(p.tracker().node_of_set(&set(2)).is_none());
        assert_eq!(p.try_remove(ROOT).unwrap(), None, "never removes a non-node");
    }
}
