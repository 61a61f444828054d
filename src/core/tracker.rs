//! The tracker: turns "task T is now in set S, in cgroup C" into a decision.
//! Pure: it owns the map of nodes and never touches the system.

use std::collections::HashMap;

use super::naming;
use super::node::{CgroupId, Node};
use super::nsset::NsSet;

/// A task that entered (or may have entered) a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tid: u32,
    pub tgid: u32,
    /// Its real uid: the creator's, should it get a node.
    pub uid: u32,
    /// Who owns its set (see [`crate::sys::owner`]): whose quota a node counts against.
    pub owner: u32,
    /// The cgroup the task is in now.
    pub cgroup: CgroupId,
    /// Its set now, masked.
    pub set: NsSet,
    /// The set it was in before (for a new child, its parent's), masked.
    pub prev: NsSet,
}

/// What to do with a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Leave it where it is.
    Stay,
    /// Move it into an existing cgroup (its set's node, or the cgroup its lineage came from).
    Move(CgroupId),
    /// Create a node for a new set under `parent`, then move the task there.
    Create(NewNode),
    /// Leave it where it is, and say why.
    Refused(Refusal),
}

/// A node to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub parent: CgroupId,
    /// How deep it would be: 1 directly below the tracked root.
    pub depth: u32,
    /// The first candidate name; see [`naming`] for the rest.
    pub creator_pid: u32,
    pub creator_uid: u32,
    pub owner: u32,
    pub set: NsSet,
    pub parent_set: NsSet,
    /// Controller files to write after mkdir, before the first task moves
    /// in (limits by policy; empty as the tracker decides).
    pub files: Vec<(&'static str, String)>,
}

impl NewNode {
    /// The record of the node, for a creator named `comm`, made at `created_unix`.
    pub fn record(&self, comm: &str, created_unix: u64) -> super::node::NodeRecord {
        super::node::NodeRecord {
            set: self.set,
            parent_set: self.parent_set,
            creator_pid: self.creator_pid,
            creator_comm: comm.to_string(),
            creator_uid: self.creator_uid,
            owner: Some(self.owner),
            created_unix,
            mirrors: Vec::new(),
            restored: None,
        }
    }

    /// The `attempt`-th name to try.
    pub fn name(&self, attempt: u32) -> String {
        naming::candidate(self.creator_pid, attempt)
    }
}

/// Why a task that entered a new set was left where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the node would be {depth} levels deep, beyond max_depth")]
    TooDeep { depth: u32 },
    #[error("{count} nodes exist already, the max_nodes limit")]
    TooMany { count: usize },
    #[error("a thread other than the leader changed set; cgroup2 places whole processes, so it stays with its leader")]
    SplitThread,
    #[error("owner uid {owner} has {live} live nodes, the max_nodes_per_user limit")]
    UserQuota { owner: u32, live: usize },
    #[error("owner uid {owner} creates nodes faster than max_creations_per_second_per_user")]
    UserRate { owner: u32 },
    #[error("its set's node lies outside the subtree of its cgroup; only a task with CAP_SYS_ADMIN is moved up or sideways (the ns subsystem's rule)")]
    OutsideSubtree,
    #[error("its cgroup is not in a subtree delegated to nsgroup (systemd's single-writer rule: Delegate=yes units only)")]
    NotDelegated,
}

/// Whether the hierarchy places threads (cgroup v1 `tasks`) or whole processes (cgroup2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Thread,
    Process,
}

/// The set of known nodes and the rules that place tasks among them.
#[derive(Debug)]
pub struct Tracker {
    nodes: HashMap<CgroupId, Node>,
    /// How many child nodes each node has.
    child_nodes: HashMap<CgroupId, usize>,
    by_set: HashMap<NsSet, CgroupId>,
    /// How many nodes each owner has.
    by_owner: HashMap<u32, usize>,
    /// The set of cgroups that are not nodes (the daemon's own, masked).
    base_set: NsSet,
    granularity: Granularity,
}

impl Tracker {
    /// A tracker with no nodes yet.
    pub fn new(base_set: NsSet, granularity: Granularity) -> Tracker {
        Tracker {
            nodes: HashMap::new(),
            child_nodes: HashMap::new(),
            by_set: HashMap::new(),
            by_owner: HashMap::new(),
            base_set,
            granularity,
        }
    }

    /// Decides where a task that reports `entry` belongs.
    pub fn place(&self, entry: &Entry) -> Placement {
        if self.granularity == Granularity::Process && entry.tid != entry.tgid {
            return if entry.set == entry.prev { Placement::Stay } else { Placement::Refused(Refusal::SplitThread) };
        }
        if let Some(&node) = self.by_set.get(&entry.set) {
            return if node == entry.cgroup { Placement::Stay } else { Placement::Move(node) };
        }
        if entry.set == entry.prev || entry.set.is_empty() {
            return Placement::Stay;
        }
        // A task not yet moved into the node of the set it came from (a child
        // forked before its parent was moved) counts as being there already.
        let cgroup = match self.by_set.get(&entry.prev) {
            Some(&node) if self.below(node, entry.cgroup) => node,
            _ => entry.cgroup,
        };
        // Back to a set of its own lineage: back to the cgroup that set lives in.
        let mut depth = 0;
        for node in self.lineage(cgroup) {
            if node.record.parent_set == entry.set {
                return Placement::Move(node.parent);
            }
            depth += 1;
        }
        Placement::Create(NewNode {
            parent: cgroup,
            depth: depth + 1,
            creator_pid: entry.tid,
            creator_uid: entry.uid,
            owner: entry.owner,
            set: entry.set,
            parent_set: entry.prev,
            files: Vec::new(),
        })
    }

    /// Threads or processes.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The set of tasks outside nodes.
    pub fn base_set(&self) -> NsSet {
        self.base_set
    }

    /// The set a task in `cgroup` is expected to have: the node's set, or the base set.
    pub fn home_set(&self, cgroup: CgroupId) -> NsSet {
        self.nodes.get(&cgroup).map_or(self.base_set, |n| n.record.set)
    }

    /// Whether a move from `from` to `to` follows a node lineage (down into a
    /// node below, or back up to where a node came from). Reconcile moves
    /// only such tasks in hierarchies shared with other writers.
    pub fn on_lineage(&self, from: CgroupId, to: CgroupId) -> bool {
        self.below(to, from) || self.below(from, to)
    }

    /// Whether `a` is `b` or lies below it through nodes.
    fn below(&self, a: CgroupId, b: CgroupId) -> bool {
        a == b || self.lineage(a).any(|n| n.parent == b)
    }

    /// Records a node (created, or adopted at start). A second node for a
    /// set already known is rejected: the first one wins.
    pub fn add_node(&mut self, node: Node) -> Result<(), &Node> {
        if let Some(existing) = self.by_set.get(&node.record.set) {
            if *existing != node.id {
                return Err(&self.nodes[existing]);
            }
        }
        self.by_set.insert(node.record.set, node.id);
        if let Some(old) = self.nodes.insert(node.id, node.clone()) {
            uncount(&mut self.child_nodes, old.parent);
            uncount(&mut self.by_owner, old.record.owner());
        }
        *self.child_nodes.entry(node.parent).or_default() += 1;
        *self.by_owner.entry(node.record.owner()).or_default() += 1;
        Ok(())
    }

    /// Forgets a removed node.
    pub fn remove_node(&mut self, id: CgroupId) -> Option<Node> {
        self.retire_set(id);
        let node = self.nodes.remove(&id)?;
        uncount(&mut self.child_nodes, node.parent);
        uncount(&mut self.by_owner, node.record.owner());
        Some(node)
    }

    /// Stops finding a node by its set (the node stays): for a node whose
    /// namespaces may be gone, so that their recycled inode numbers make a
    /// new set, not this one.
    pub fn retire_set(&mut self, id: CgroupId) {
        if let Some(node) = self.nodes.get(&id) {
            if self.by_set.get(&node.record.set) == Some(&id) {
                self.by_set.remove(&node.record.set);
            }
        }
    }

    /// How many nodes `owner` owns.
    pub fn nodes_of_owner(&self, owner: u32) -> usize {
        self.by_owner.get(&owner).copied().unwrap_or(0)
    }

    /// Sets a node's mirrors in its record (the caller stores the record).
    pub fn set_mirrors(&mut self, id: CgroupId, mirrors: Vec<super::node::MirrorPath>) -> Option<&Node> {
        let node = self.nodes.get_mut(&id)?;
        node.record.mirrors = mirrors;
        Some(node)
    }

    /// How many nodes exist.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A known node.
    pub fn node(&self, id: CgroupId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// The node of a set.
    pub fn node_of_set(&self, set: &NsSet) -> Option<&Node> {
        self.by_set.get(set).map(|id| &self.nodes[id])
    }

    /// Every known node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The node `cgroup` and the nodes above it, innermost first.
    pub fn lineage(&self, cgroup: CgroupId) -> impl Iterator<Item = &Node> {
        std::iter::successors(self.nodes.get(&cgroup), |n| self.nodes.get(&n.parent))
    }

    /// The nodes without child nodes among `cgroup`'s lineage that a task's
    /// exit may have emptied, innermost first.
    pub fn cleanup_candidates(&self, cgroup: CgroupId) -> Vec<CgroupId> {
        self.lineage(cgroup).map(|n| n.id).collect()
    }

    /// Whether a node has child nodes.
    pub fn has_child_nodes(&self, id: CgroupId) -> bool {
        self.child_nodes.contains_key(&id)
    }
}

/// Takes one off a count, forgetting it at zero.
fn uncount<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::node::NodeRecord;

    const CG: CgroupId = 1000;

    fn set(n: u64) -> NsSet {
        NsSet::new([n; 10])
    }

    fn tracker() -> Tracker {
        Tracker::new(set(1), Granularity::Thread)
    }

    fn entry(tid: u32, cgroup: CgroupId, set: NsSet, prev: NsSet) -> Entry {
        Entry { tid, tgid: tid, uid: 0, owner: 0, cgroup, set, prev }
    }

    fn node(id: CgroupId, parent: CgroupId, s: NsSet, parent_set: NsSet) -> Node {
        Node {
            id,
            parent,
            name: format!("node_{id}"),
            record: NodeRecord {
                set: s,
                parent_set,
                creator_pid: id as u32,
                creator_comm: "x".into(),
                creator_uid: (id % 2) as u32,
                owner: None,
                created_unix: 0,
                mirrors: vec![],
                restored: None,
            },
        }
    }

    #[test]
    fn new_set_creates_a_node_named_after_the_task_under_its_cgroup() {
        let t = tracker();
        let p = t.place(&entry(10, CG, set(2), set(1)));
        let Placement::Create(new) = p else { panic!("{p:?}") };
        assert_eq!((new.parent, new.name(0), new.set, new.parent_set), (CG, "node_10".into(), set(2), set(1)));
    }

    #[test]
    fn unchanged_set_stays() {
        assert_eq!(tracker().place(&entry(10, CG, set(1), set(1))), Placement::Stay);
    }

    #[test]
    fn later_tasks_of_a_set_join_its_node_and_members_stay() {
        let mut t = tracker();
        t.add_node(node(2000, CG, set(2), set(1))).unwrap();
        assert_eq!(t.place(&entry(11, 555, set(2), set(1))), Placement::Move(2000));
        assert_eq!(t.place(&entry(11, 2000, set(2), set(1))), Placement::Stay);
        // A forked child of a pending parent (same set as its parent) follows it.
        assert_eq!(t.place(&entry(12, CG, set(2), set(2))), Placement::Move(2000));
        // A child forked into a new set before its parent was moved nests below the parent's node.
        let Placement::Create(new) = t.place(&entry(13, CG, set(3), set(2))) else { panic!() };
        assert_eq!(new.parent, 2000);
    }

    #[test]
    fn nested_entry_nests_and_setns_back_returns_along_the_lineage() {
        let mut t = tracker();
        t.add_node(node(2000, CG, set(2), set(1))).unwrap();
        let Placement::Create(new) = t.place(&entry(10, 2000, set(3), set(2))) else { panic!() };
        assert_eq!(new.parent, 2000);
        t.add_node(node(3000, 2000, set(3), set(2))).unwrap();
        // From the inner node back to the original set: the cgroup the lineage came from.
        assert_eq!(t.place(&entry(10, 3000, set(1), set(3))), Placement::Move(CG));
        assert_eq!(t.place(&entry(10, 3000, set(2), set(3))), Placement::Move(2000));
    }

    #[test]
    fn a_new_node_knows_how_deep_it_would_be() {
        let mut t = Tracker::new(set(1), Granularity::Thread);
        t.add_node(node(2000, CG, set(2), set(1))).unwrap();
        let Placement::Create(inner) = t.place(&entry(10, 2000, set(3), set(2))) else { panic!() };
        let Placement::Create(outer) = t.place(&entry(10, CG, set(4), set(1))) else { panic!() };
        assert_eq!((inner.depth, outer.depth), (2, 1));
    }

    #[test]
    fn cgroup2_places_processes_by_their_leader() {
        let t = Tracker::new(set(1), Granularity::Process);
        let thread = Entry { tid: 11, tgid: 10, uid: 0, owner: 0, cgroup: CG, set: set(2), prev: set(1) };
        assert_eq!(t.place(&thread), Placement::Refused(Refusal::SplitThread));
        assert!(matches!(t.place(&Entry { tid: 10, ..thread }), Placement::Create(_)));
    }

    #[test]
    fn one_node_per_set() {
        let mut t = tracker();
        t.add_node(node(2000, CG, set(2), set(1))).unwrap();
        assert!(t.add_node(node(2001, CG, set(2), set(1))).is_err());
        assert!(t.add_node(node(2000, CG, set(2), set(1))).is_ok());
        assert_eq!(t.remove_node(2000).map(|n| n.id), Some(2000));
        assert!(t.node_of_set(&set(2)).is_none());
    }

    #[test]
    fn counts_nodes_per_owner() {
        let mut t = tracker();
        t.add_node(node(2000, CG, set(2), set(1))).unwrap();
        t.add_node(node(2002, CG, set(3), set(1))).unwrap();
        t.add_node(node(2001, CG, set(4), set(1))).unwrap();
        assert_eq!((t.nodes_of_owner(0), t.nodes_of_owner(1), t.node_count()), (2, 1, 3));
        t.remove_node(2002);
        assert_eq!(t.nodes_of_owner(0), 1);
        // Subordinate uids (creators 200001.., 200002..) count as their owner, 65534.
        for (i, id) in [3000u64, 3001, 3002].into_iter().enumerate() {
            let mut n = node(id, CG, set(10 + id), set(1));
            n.record.creator_uid = 200_001 + i as u32;
            n.record.owner = Some(65534);
            t.add_node(n).unwrap();
        }
        assert_eq!((t.nodes_of_owner(65534), t.nodes_of_owner(200_001)), (3, 0));
        t.remove_node(3001);
        assert_eq!(t.nodes_of_owner(65534), 2);
    }

    #[test]
    fn a_new_node_is_owned_by_the_entrys_owner() {
        let e = Entry { uid: 200_007, owner: 65534, ..entry(10, CG, set(2), set(1)) };
        let Placement::Create(new) = tracker().place(&e) else { panic!() };
        let record = new.record("sh", 0);
        assert_eq!((record.creator_uid, record.owner()), (200_007, 65534));
    }

    #[test]
    fn a_retired_set_is_not_found_but_its_node_stays() {
        let mut t = tracker();
        t.add_node(node(2000, CG, set(2), set(1))).unwrap();
        t.retire_set(2000);
        assert!(t.node_of_set(&set(2)).is_none());
        assert!(t.node(2000).is_some());
        // The recycled set gets a node of its own, below its task's cgroup.
        assert!(matches!(t.place(&entry(10, CG, set(2), set(1))), Placement::Create(_)));
        assert_eq!(t.remove_node(2000).map(|n| n.id), Some(2000));
    }

    #[test]
    fn lineage_and_home_sets() {
        let mut t = tracker();
        t.add_node(node(2000, CG, set(2), set(1))).unwrap();
        t.add_node(node(3000, 2000, set(3), set(2))).unwrap();
        assert_eq!(t.cleanup_candidates(3000), vec![3000, 2000]);
        assert!(t.on_lineage(CG, 3000) && t.on_lineage(3000, CG) && !t.on_lineage(4242, 3000));
        assert_eq!((t.home_set(3000), t.home_set(CG)), (set(3), set(1)));
        assert!(t.has_child_nodes(2000) && !t.has_child_nodes(3000));
    }
}
