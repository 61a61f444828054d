//! The cgroupfs edge that writes: the narrow [`CgroupBackend`] the pipeline
//! carries placements out through, and [`CgroupWriter`], the real one, which
//! creates nodes, stores their records, moves tasks and removes nodes. Every
//! write nsgroup makes to a hierarchy goes through here or, by path for the
//! API, the verbs and mirrors, through [`super::cgroup_dir`].

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use super::error::{or_vanished, IoError};
use super::hierarchy::{Hierarchy, Version, RECORD_XATTR};
use super::subtree::Enabled;
use crate::core::cgpath::join;
use crate::core::node::{CgroupId, NodeRecord};

/// Writes controller `files` into the cgroup directory `dir`, in order;
/// returns what the kernel refused, as `file=value: error` each (the rest is
/// written all the same).
pub fn write_files(dir: &std::path::Path, files: &[(&'static str, String)]) -> Vec<String> {
    files
        .iter()
        .filter_map(|(file, value)| fs::write(dir.join(file), value).err().map(|e| format!("{file}={value}: {e}")))
        .collect()
}

/// What creating a node's directory found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new, empty cgroup.
    New(CgroupId),
    /// A cgroup of that name already existed, with no tasks and no children.
    EmptyLeftover(CgroupId),
    /// A cgroup of that name exists and is in use.
    Taken,
}

/// What a move found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Moved,
    /// The task (or the destination) is gone.
    Vanished,
}

/// What a removal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    Removed,
    /// Still populated (tasks, children, or exiting tasks not yet released).
    Busy,
    Vanished,
}

/// The narrow set of writes nsgroup makes to a hierarchy. The real one is
/// [`CgroupWriter`]; tests use a recording fake.
pub trait CgroupBackend {
    /// The path of a cgroup the backend knows by id (never a walk: an unknown
    /// id answers `None` at once).
    fn path_of(&mut self, id: CgroupId) -> Result<Option<String>, IoError>;
    /// Creates `parent/name`.
    fn create(&mut self, parent: CgroupId, name: &str) -> Result<Created, IoError>;
    /// Stores a node's record on it; `false` where the hierarchy has no xattrs.
    fn store_record(&mut self, id: CgroupId, record: &NodeRecord) -> Result<bool, IoError>;
    /// Moves a task (v1: the thread `tid`; cgroup2: the process `tgid`).
    fn attach(&mut self, id: CgroupId, tid: u32, tgid: u32) -> Result<Attached, IoError>;
    /// Removes an empty cgroup.
    fn remove(&mut self, id: CgroupId) -> Result<Removed, IoError>;
    /// The usage figures the hierarchy keeps for a cgroup (see [`Hierarchy::usage`]).
    fn usage(&mut self, id: CgroupId) -> Vec<(String, u64)>;
    /// Writes controller files of a new cgroup; returns the ones refused
    /// (`file=value: error`).
    fn configure(&mut self, id: CgroupId, files: &[(&'static str, String)]) -> Vec<String>;
    /// The id of the cgroup at path `rel`, learning its path (one stat);
    /// `None` when it is gone.
    fn id_at(&mut self, rel: &str) -> Result<Option<CgroupId>, IoError>;
    /// The tasks of a cgroup, a node's leaf's included.
    fn members_of(&mut self, id: CgroupId) -> Result<Vec<u32>, IoError>;
    /// Learns every cgroup of the subtree again (after a snapshot named one
    /// it did not know).
    fn rescan(&mut self) -> Result<(), IoError>;
    /// The record stored on the cgroup at path `rel`, with the uid owning
    /// its directory; `None` when it has none (or is gone).
    fn record_at(&mut self, rel: &str) -> Result<Option<(u32, Vec<u8>)>, IoError>;
    /// Readies `parent` for a new child: where controllers are wanted for
    /// nodes, enables them in its subtree (a node's own tasks may move into
    /// its leaf for that). Returns what a child made now will lack.
    fn prepare(&mut self, _parent: CgroupId, _parent_is_node: bool) -> Result<Option<String>, IoError> {
        Ok(None)
    }
    /// The node whose tasks a cgroup holds: a node's leaf stands for the node.
    fn home(&self, id: CgroupId) -> CgroupId {
        id
    }
}

/// How many cgroup paths the writer knows before it forgets removed ones.
const MAX_KNOWN_PATHS: usize = 1 << 18;

/// How many membership files the writer keeps open at most.
const MAX_OPEN_ATTACH_FILES: usize = 512;

/// The real backend: keeps each cgroup's path and an open fd of its
/// membership file (of the most recently used ones), so a move is one write(2).
pub struct CgroupWriter {
    hierarchy: Hierarchy,
    root: String,
    paths: HashMap<CgroupId, String>,
    attach_fds: HashMap<CgroupId, fs::File>,
    /// cgroup2 controllers every node gets.
    controllers: Vec<String>,
    /// Whose tasks may move into a leaf so that controllers can be enabled.
    leaf: super::subtree::LeafPolicy,
    /// Node → its leaf (id); leaf → its node.
    leaves: HashMap<CgroupId, CgroupId>,
    leaf_of: HashMap<CgroupId, CgroupId>,
}

impl CgroupWriter {
    /// A writer for the subtree `root` of `hierarchy`; it learns paths as
    /// it creates cgroups or is told them ([`CgroupWriter::learn`],
    /// [`CgroupBackend::id_at`], [`CgroupBackend::rescan`]).
    pub fn new(hierarchy: Hierarchy, root: &str) -> CgroupWriter {
        CgroupWriter {
            hierarchy,
            root: root.to_string(),
            paths: HashMap::new(),
            attach_fds: HashMap::new(),
            controllers: Vec::new(),
            leaf: super::subtree::LeafPolicy::Never,
            leaves: HashMap::new(),
            leaf_of: HashMap::new(),
        }
    }

    /// cgroup2: every node gets `controllers`, with a parent's tasks moved
    /// into its leaf where `leaf` allows.
    pub fn with_controllers(mut self, controllers: Vec<String>, leaf: super::subtree::LeafPolicy) -> CgroupWriter {
        if self.hierarchy.version() == Version::V2 {
            self.controllers = controllers;
            self.leaf = leaf;
        }
        self
    }

    /// Takes `leaf` (a child named [`super::subtree::LEAF`]) as the place of `node`'s tasks.
    pub fn adopt_leaf(&mut self, node: CgroupId, leaf: CgroupId) {
        self.leaves.insert(node, leaf);
        self.leaf_of.insert(leaf, node);
    }

    /// Remembers a path found elsewhere.
    pub fn learn(&mut self, id: CgroupId, path: String) {
        self.paths.insert(id, path);
    }

    fn attach_file(&mut self, id: CgroupId) -> Result<Option<&mut fs::File>, IoError> {
        if !self.attach_fds.contains_key(&id) {
            if self.attach_fds.len() >= MAX_OPEN_ATTACH_FILES {
                self.attach_fds.clear();
            }
            let Some(rel) = self.path_of(id)? else { return Ok(None) };
            let path = self.hierarchy.dir(&rel).join(self.hierarchy.version().attach_file());
            let f = match fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                Err(e) if super::error::vanished(&e) => return Ok(None),
                Err(e) => return Err(IoError::new("open", &path, e)),
            };
            self.attach_fds.insert(id, f);
        }
        Ok(self.attach_fds.get_mut(&id))
    }

    fn is_empty(&self, rel: &str) -> Result<bool, IoError> {
        Ok(self.hierarchy.members(rel)?.is_empty() && self.hierarchy.children(rel)?.is_empty())
    }
}

impl CgroupBackend for CgroupWriter {
    /// The id of the cgroup at `rel` (one stat), learning its path; `None`
    /// when it is gone.
    fn id_at(&mut self, rel: &str) -> Result<Option<CgroupId>, IoError> {
        let id = or_vanished(self.hierarchy.id(rel))?;
        if let Some(id) = id {
            if self.paths.get(&id).is_none_or(|p| p != rel) {
                if self.paths.len() >= MAX_KNOWN_PATHS {
                    // Forget cgroups removed since: amortised over as many lookups.
                    self.rescan()?;
                }
                self.paths.insert(id, rel.to_string());
            }
        }
        Ok(id)
    }

    /// The tasks of a node, its leaf's included.
    fn members_of(&mut self, id: CgroupId) -> Result<Vec<u32>, IoError> {
        let mut out = Vec::new();
        for cg in std::iter::once(id).chain(self.leaves.get(&id).copied()) {
            if let Some(rel) = self.paths.get(&cg) {
                out.extend(self.hierarchy.members(rel)?);
            }
        }
        Ok(out)
    }

    fn record_at(&mut self, rel: &str) -> Result<Option<(u32, Vec<u8>)>, IoError> {
        let Some(bytes) = self.hierarchy.record_bytes(rel) else { return Ok(None) };
        Ok(or_vanished(self.hierarchy.owner(rel))?.map(|owner| (owner, bytes)))
    }
    fn rescan(&mut self) -> Result<(), IoError> {
        self.paths = self.hierarchy.walk(&self.root)?.into_iter().map(|(p, id)| (id, p)).collect();
        Ok(())
    }

    fn path_of(&mut self, id: CgroupId) -> Result<Option<String>, IoError> {
        Ok(self.paths.get(&id).cloned())
    }

    fn create(&mut self, parent: CgroupId, name: &str) -> Result<Created, IoError> {
        let Some(parent_rel) = self.path_of(parent)? else {
            return Err(IoError::new("mkdir in", format!("cgroup id {parent}"), Errno::NOENT));
        };
        let rel = join(&parent_rel, name);
        let dir = self.hierarchy.dir(&rel);
        let made = super::cgroup_dir::make(&dir)?;
        let id = self.hierarchy.id(&rel)?;
        self.paths.insert(id, rel.clone());
        if made {
            return Ok(Created::New(id));
        }
        Ok(if self.is_empty(&rel)? { Created::EmptyLeftover(id) } else { Created::Taken })
    }

    fn store_record(&mut self, id: CgroupId, record: &NodeRecord) -> Result<bool, IoError> {
        let Some(rel) = self.path_of(id)? else { return Ok(false) };
        let dir = self.hierarchy.dir(&rel);
        let fd: OwnedFd = rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| IoError::new("open", &dir, e))?;
        match rustix::fs::fsetxattr(&fd, RECORD_XATTR, &record.to_bytes(), XattrFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::OPNOTSUPP) | Err(Errno::PERM) => Ok(false),
            Err(e) => Err(IoError::new("setxattr trusted.nsgroup", &dir, e)),
        }
    }

    fn attach(&mut self, id: CgroupId, tid: u32, tgid: u32) -> Result<Attached, IoError> {
        let who = self.hierarchy.version().attach_id(tgid, tid);
        // A node with a leaf holds its tasks there.
        let id = self.leaves.get(&id).copied().unwrap_or(id);
        let Some(f) = self.attach_file(id)? else { return Ok(Attached::Vanished) };
        match f.write_all(format!("{who}\n").as_bytes()) {
            Ok(()) => Ok(Attached::Moved),
            Err(e) if super::error::vanished(&e) => Ok(Attached::Vanished),
            Err(e) => {
                let path = self.paths.get(&id).cloned().unwrap_or_default();
                Err(IoError::new("move task into", self.hierarchy.dir(&path), e))
            }
        }
    }

    fn remove(&mut self, id: CgroupId) -> Result<Removed, IoError> {
        if let Some(leaf) = self.leaves.get(&id).copied() {
            match self.remove(leaf)? {
                Removed::Busy => return Ok(Removed::Busy),
                Removed::Removed | Removed::Vanished => {
                    self.leaves.remove(&id);
                    self.leaf_of.remove(&leaf);
                }
            }
        }
        let Some(rel) = self.path_of(id)? else { return Ok(Removed::Vanished) };
        if !super::cgroup_dir::remove(&self.hierarchy.dir(&rel))? {
            return Ok(Removed::Busy);
        }
        self.paths.remove(&id);
        self.attach_fds.remove(&id);
        Ok(Removed::Removed)
    }

    fn usage(&mut self, id: CgroupId) -> Vec<(String, u64)> {
        self.paths.get(&id).map(|rel| self.hierarchy.usage(rel)).unwrap_or_default()
    }

    fn configure(&mut self, id: CgroupId, files: &[(&'static str, String)]) -> Vec<String> {
        let Some(rel) = self.paths.get(&id) else { return Vec::new() };
        let dir = self.hierarchy.dir(rel);
        write_files(&dir, files)
    }

    fn prepare(&mut self, parent: CgroupId, parent_is_node: bool) -> Result<Option<String>, IoError> {
        if self.controllers.is_empty() {
            return Ok(None);
        }
        let Some(rel) = self.path_of(parent)? else { return Ok(None) };
        let may_leaf = self.leaf.allows(parent_is_node);
        match super::subtree::enable(&self.hierarchy, &rel, &self.controllers, may_leaf)? {
            Enabled::All => Ok(None),
            Enabled::AfterLeaf(leaf_rel) => {
                if let Some(leaf) = self.id_at(&leaf_rel)? {
                    self.attach_fds.remove(&parent);
                    self.adopt_leaf(parent, leaf);
                }
                Ok(None)
            }
            Enabled::Lacking { controllers, why } => Ok(Some(format!("lacks {}: {why}", controllers.join(" ")))),
        }
    }

    fn home(&self, id: CgroupId) -> CgroupId {
        self.leaf_of.get(&id).copied().unwrap_or(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_report_what_the_kernel_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let refused = write_files(tmp.path(), &[("pids.max", "8".into()), ("no/such/file", "1".into())]);
        assert_eq!(fs::read_to_string(tmp.path().join("pids.max")).unwrap(), "8");
        assert_eq!(refused.len(), 1);
        assert!(refused[0].starts_with("no/such/file=1: "), "{refused:?}");
    }
}
