//! Mirrors: on hybrid and v1 hosts a node carries no controller in
//! nsgroup's own named hierarchy, so every node gets a twin of the same name
//! in each configured v1 controller hierarchy (`pids`, `freezer`,
//! `cpu,cpuacct`, …), as a child of the cgroup its task is in *there*, with
//! the node's limits written before the task moves in. The tracked
//! hierarchy decides; mirrors follow: created, joined, adopted (from the
//! node's record) and removed with their node. Each mirror has a root of its
//! own: tasks outside it are not mirrored, and counted.

use std::collections::HashMap;
use std::path::Path;

use crate::config::MirrorConfig;
use crate::core::cgpath::{join, within};
use crate::core::node::{CgroupId, Node};
use crate::sys::cgroup_dir;
use crate::sys::cgroupfs::Removed;
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::error::{or_vanished, IoError};
use crate::sys::mounts::Mount;
use crate::sys::procfs::ProcFs;

/// How many names a mirror tries before it gives up (a taken name is a
/// cgroup in use that is no mirror of this node).
const MAX_NAME_ATTEMPTS: u32 = 100;

/// Why a mirror cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("no cgroup v1 hierarchy with the controllers {0:?} is mounted (see /proc/self/mountinfo)")]
    NotMounted(String),
    #[error("mirror {controllers}: its root {root} does not exist in {mount}")]
    NoRoot { controllers: String, root: String, mount: String },
    #[error(transparent)]
    Hierarchy(#[from] crate::sys::hierarchy::HierarchyError),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What mirroring a task did.
#[derive(Debug, PartialEq, Eq)]
pub enum Mirrored {
    /// It is in the node's mirror already.
    Stayed,
    /// Moved into the node's mirror.
    Moved,
    /// The mirror was made for it (at this path) and it moved in; `refused`
    /// are the limit files the kernel did not take.
    Created { path: String, refused: Vec<String> },
    /// It is outside this mirror's root: not mirrored.
    Outside,
    /// It exited meanwhile.
    Gone,
}

/// One mirrored hierarchy.
#[derive(Debug)]
pub struct Mirror {
    controllers: String,
    hierarchy: Hierarchy,
    root: String,
    /// Node id (in the tracked hierarchy) → its mirror's path here.
    nodes: HashMap<CgroupId, String>,
    /// Whole processes (`cgroup.procs`, when the tracked hierarchy is
    /// cgroup2) or threads (`tasks`).
    per_process: bool,
}

impl Mirror {
    /// The mounted hierarchy carrying `config.controllers`, rooted at `config.root`.
    pub fn open(config: &MirrorConfig, mounts: &[Mount], self_cgroup: &str, per_process: bool) -> Result<Mirror, MirrorError> {
        let wanted: Vec<&str> = config.controllers.split(',').collect();
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.root == "/" && wanted.iter().all(|c| m.super_opts.iter().any(|o| o == c)))
            .ok_or_else(|| MirrorError::NotMounted(config.controllers.clone()))?;
        let hierarchy = Hierarchy::at(&mount.mount_point, mounts, self_cgroup)?;
        if or_vanished(hierarchy.id(&config.root))?.is_none() {
            return Err(MirrorError::NoRoot {
                controllers: config.controllers.clone(),
                root: config.root.clone(),
                mount: hierarchy.mount().display().to_string(),
            });
        }
        Ok(Mirror { controllers: config.controllers.clone(), hierarchy, root: config.root.clone(), nodes: HashMap::new(), per_process })
    }

    /// The controllers, as `/proc/<pid>/cgroup` lists them.
    pub fn controllers(&self) -> &str {
        &self.controllers
    }

    /// The hierarchy's mount point.
    pub fn mount(&self) -> &Path {
        self.hierarchy.mount()
    }

    /// The path of a node's mirror.
    pub fn path_of(&self, node: CgroupId) -> Option<&str> {
        self.nodes.get(&node).map(String::as_str)
    }

    /// Takes over a mirror an earlier run recorded for `node`, if it still
    /// exists inside the root and is owned by root.
    pub fn adopt(&mut self, node: CgroupId, path: &str) -> bool {
        let usable = within(path, &self.root) && path != self.root && self.hierarchy.owner(path).is_ok_and(|uid| uid == 0);
        if usable {
            self.nodes.insert(node, path.to_string());
        }
        usable
    }

    /// Puts a task of `node` into the node's mirror, making the mirror (with
    /// `files` written first) when the node has none yet: as a child of the
    /// task's cgroup here, or of the mirror of the node's parent node when
    /// that lies below it (a child forked before its parent moved: mirrors
    /// nest as their nodes do).
    pub fn place(
        &mut self,
        proc: &ProcFs,
        node: &Node,
        tgid: u32,
        tid: u32,
        files: &[(&'static str, String)],
    ) -> Result<Mirrored, IoError> {
        let Some(here) = proc.cgroup_path(tgid, tid, self.hierarchy.key())? else { return Ok(Mirrored::Gone) };
        if let Some(path) = self.nodes.get(&node.id) {
            if *path == here {
                return Ok(Mirrored::Stayed);
            }
            let path = path.clone();
            return self.attach(&path, tgid, tid).map(|moved| if moved { Mirrored::Moved } else { Mirrored::Gone });
        }
        if !within(&here, &self.root) {
            return Ok(Mirrored::Outside);
        }
        let base = match self.nodes.get(&node.parent) {
            Some(parent_mirror) if within(parent_mirror, &here) => parent_mirror.clone(),
            _ => here,
        };
        let Some(path) = self.make(&base, &node.name)? else { return Ok(Mirrored::Gone) };
        let dir = self.hierarchy.dir(&path);
        let refused = crate::sys::cgroupfs::write_files(&dir, files);
        self.nodes.insert(node.id, path.clone());
        if !self.attach(&path, tgid, tid)? {
            return Ok(Mirrored::Gone);
        }
        Ok(Mirrored::Created { path, refused })
    }

    /// Creates `parent/name` (or the next free `name~N`); reuses an empty
    /// leftover. `None` when the parent vanished.
    fn make(&self, parent: &str, name: &str) -> Result<Option<String>, IoError> {
        for attempt in 1..=MAX_NAME_ATTEMPTS {
            let candidate = if attempt == 1 { name.to_string() } else { format!("{name}~{attempt}") };
            let path = join(parent, &candidate);
            match or_vanished(cgroup_dir::make(&self.hierarchy.dir(&path)))? {
                Some(true) => return Ok(Some(path)),
                Some(false) => {
                    let empty = self.hierarchy.members(&path)?.is_empty() && self.hierarchy.children(&path)?.is_empty();
                    if empty && !self.nodes.values().any(|p| *p == path) {
                        return Ok(Some(path));
                    }
                }
                None => return Ok(None),
            }
        }
        Err(IoError::new("mkdir", self.hierarchy.dir(&join(parent, name)), std::io::Error::other("no free name")))
    }

    /// Moves a thread (or, under a cgroup2 tracked hierarchy, its process)
    /// into `path`; false when it is gone.
    fn attach(&self, path: &str, tgid: u32, tid: u32) -> Result<bool, IoError> {
        // The tracked hierarchy's granularity, in this one.
        let version = if self.per_process { Version::V2 } else { Version::V1 };
        Ok(or_vanished(cgroup_dir::move_task(&self.hierarchy.dir(path), version, tgid, tid))?.is_some())
    }

    /// Removes a node's mirror (the node is gone or going).
    pub fn remove(&mut self, node: CgroupId) -> Result<Removed, IoError> {
        let Some(path) = self.nodes.get(&node).cloned() else { return Ok(Removed::Vanished) };
        if !cgroup_dir::remove(&self.hierarchy.dir(&path))? {
            return Ok(Removed::Busy);
        }
        self.nodes.remove(&node);
        Ok(Removed::Removed)
    }

    /// Forgets a mirror left in place.
    pub fn forget(&mut self, node: CgroupId) {
        self.nodes.remove(&node);
    }

    /// The figures this hierarchy's controllers keep for a node's mirror.
    pub fn usage(&self, node: CgroupId) -> Vec<(String, u64)> {
        self.nodes.get(&node).map(|p| v1_usage(&self.hierarchy.dir(p))).unwrap_or_default()
    }
}

/// The mirrors `config` lists, opened; `per_process` when the tracked
/// hierarchy is cgroup2.
pub fn open_all(config: &crate::config::Config, per_process: bool) -> Result<Vec<Mirror>, MirrorError> {
    if config.mirror.is_empty() {
        return Ok(Vec::new());
    }
    let mounts = crate::sys::mounts::read_mountinfo(Path::new("/proc/self/mountinfo"))?;
    let self_cgroup =
        std::fs::read_to_string("/proc/self/cgroup").map_err(|e| IoError::new("read", "/proc/self/cgroup", e))?;
    config.mirror.iter().map(|m| Mirror::open(m, &mounts, &self_cgroup, per_process)).collect()
}

/// Usage figures of v1 controllers in a cgroup directory; missing files are left out.
pub fn v1_usage(dir: &Path) -> Vec<(String, u64)> {
    let files = [
        ("pids.current", "pids"),
        ("memory.usage_in_bytes", "memory_bytes"),
        ("memory.max_usage_in_bytes", "memory_peak_bytes"),
        ("cpuacct.usage", "cpu_nsec"),
    ];
    let mut out: Vec<(String, u64)> = files
        .iter()
        .filter_map(|(file, name)| {
            let v = std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()?;
            Some((name.to_string(), v))
        })
        .collect();
    if let Ok(Some(v)) = crate::sys::readings::swap_v1(dir) {
        out.push(("swap_bytes".to_string(), v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mounts::parse_mountinfo;

    #[test]
    fn finds_the_hierarchy_by_its_controllers() {
        let mounts = parse_mountinfo(
            "1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n2 0 0:2 / /cg/pids rw - cgroup cgroup rw,pids\n",
        );
        let cfg = |c: &str| MirrorConfig { controllers: c.into(), root: "/".into() };
        let err = Mirror::open(&cfg("memory"), &mounts, "3:pids:/\n", false).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        // The mount points do not exist here: found, then refused on its root.
        let err = Mirror::open(&cfg("pids"), &mounts, "3:pids:/\n4:cpu,cpuacct:/\n", false).unwrap_err();
        assert!(matches!(err, MirrorError::NoRoot { .. } | MirrorError::Io(_)), "{err}");
    }

    #[test]
    fn reads_v1_usage() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("pids.current"), "3\n").unwrap();
        std::fs::write(tmp.path().join("cpuacct.usage"), "123456\n").unwrap();
        assert_eq!(v1_usage(tmp.path()), vec![("pids".into(), 3), ("cpu_nsec".into(), 123456)]);
    }
}
