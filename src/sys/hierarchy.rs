//! One cgroup hierarchy, rooted at its mount point: finding it, and reading
//! its tree, records and members (the writer is [`super::cgroupfs`]).

use std::fs;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::error::{or_vanished, IoError};
use super::mounts::Mount;
use super::procfs::HierarchyKey;
use crate::core::cgpath::join;
use crate::core::node::{CgroupId, NodeRecord};
use crate::core::tracker::Granularity;

/// The xattr holding a node's [`NodeRecord`].
pub const RECORD_XATTR: &str = "trusted.nsgroup";

/// cgroup v1 or cgroup2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// The file tasks are moved through, which lists the ids a move takes:
    /// v1 moves threads (`tasks`), cgroup2 whole processes (`cgroup.procs`).
    /// With [`Version::thread_list_file`], the one place a membership file is chosen.
    pub fn attach_file(self) -> &'static str {
        match self {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        }
    }

    /// The file that lists every thread of a cgroup: `tasks` on v1,
    /// `cgroup.threads` on cgroup2.
    pub fn thread_list_file(self) -> &'static str {
        match self {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.threads",
        }
    }

    /// The id written to [`Version::attach_file`] to move thread `tid` of process `tgid`.
    pub fn attach_id(self, tgid: u32, tid: u32) -> u32 {
        match self {
            Version::V1 => tid,
            Version::V2 => tgid,
        }
    }
}

/// Why a path cannot be used as a hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum HierarchyError {
    #[error("{} is not the mount point of a cgroup hierarchy (see /proc/self/mountinfo; mount one, or pass --hierarchy with a cgroup mount)", .0.display())]
    NotACgroupMount(PathBuf),
    #[error("{} is a bind mount of {root} inside its hierarchy; pass the hierarchy's own mount point", .path.display())]
    BindMount { path: PathBuf, root: String },
    #[error("cannot tell which line of /proc/self/cgroup belongs to {}", .0.display())]
    UnknownHierarchyId(PathBuf),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A mounted cgroup hierarchy.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    mount: PathBuf,
    version: Version,
    key: HierarchyKey,
    /// Whether it has controllers that keep usage figures.
    accounting: bool,
}

impl Hierarchy {
    /// The hierarchy mounted at `mount_point`; `self_cgroup` is the text of
    /// `/proc/self/cgroup`, which tells a v1 hierarchy's id.
    pub fn at(mount_point: &Path, mounts: &[Mount], self_cgroup: &str) -> Result<Hierarchy, HierarchyError> {
        let wanted = fs::canonicalize(mount_point).unwrap_or_else(|_| mount_point.to_path_buf());
        let m = mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == wanted)
            .filter(|m| m.is_cgroup())
            .ok_or_else(|| HierarchyError::NotACgroupMount(mount_point.to_path_buf()))?;
        if m.root != "/" {
            return Err(HierarchyError::BindMount { path: wanted, root: m.root.clone() });
        }
        let accounting = m.fstype == "cgroup2"
            || m.super_opts.iter().any(|o| ["cpu", "cpuacct", "memory", "pids"].contains(&o.as_str()));
        let (version, key) = if m.fstype == "cgroup2" {
            (Version::V2, HierarchyKey::Unified)
        } else {
            let id = v1_hierarchy_id(m, self_cgroup).ok_or_else(|| HierarchyError::UnknownHierarchyId(wanted.clone()))?;
            (Version::V1, HierarchyKey::V1(id))
        };
        Ok(Hierarchy { mount: wanted, version, key, accounting })
    }

    /// A hierarchy with everything known, for fixtures.
    pub fn new(mount: PathBuf, version: Version, key: HierarchyKey) -> Hierarchy {
        Hierarchy { mount, version, key, accounting: false }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }
    pub fn version(&self) -> Version {
        self.version
    }
    pub fn key(&self) -> &HierarchyKey {
        &self.key
    }

    /// The v1 hierarchy id (0 for cgroup2), as the BPF side matches it.
    pub fn hierarchy_id(&self) -> u32 {
        match self.key {
            HierarchyKey::Unified => 0,
            HierarchyKey::V1(id) => id,
        }
    }

    /// Threads (v1) or whole processes (cgroup2).
    pub fn granularity(&self) -> Granularity {
        match self.version {
            Version::V1 => Granularity::Thread,
            Version::V2 => Granularity::Process,
        }
    }

    /// The directory of a cgroup path.
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.mount.join(rel.trim_start_matches('/'))
    }

    /// The directory inode of a cgroup: its id.
    pub fn id(&self, rel: &str) -> Result<CgroupId, IoError> {
        let d = self.dir(rel);
        Ok(fs::metadata(&d).map_err(|e| IoError::new("stat", &d, e))?.ino())
    }

    /// The task ids in a cgroup (threads); empty when it is gone.
    pub fn members(&self, rel: &str) -> Result<Vec<u32>, IoError> {
        let path = self.dir(rel).join(self.version.thread_list_file());
        let text = or_vanished(fs::read_to_string(&path).map_err(|e| IoError::new("read", &path, e)))?;
        Ok(text.unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// A cgroup's child cgroups with their ids (directory inodes, from the
    /// directory entries), sorted by name; empty when it is gone.
    pub fn child_ids(&self, rel: &str) -> Result<Vec<(String, CgroupId)>, IoError> {
        use std::os::unix::fs::DirEntryExt;
        let d = self.dir(rel);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if super::error::vanished(&e) => return Ok(Vec::new()),
            Err(e) => return Err(IoError::new("list", &d, e)),
        };
        let mut out: Vec<(String, CgroupId)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.ino())))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The names of a cgroup's child cgroups, sorted; empty when it is gone.
    pub fn children(&self, rel: &str) -> Result<Vec<String>, IoError> {
        Ok(self.child_ids(rel)?.into_iter().map(|(name, _)| name).collect())
    }

    /// Every cgroup at and below `rel`, parents before children (siblings
    /// by name), with ids.
    pub fn walk(&self, rel: &str) -> Result<Vec<(String, CgroupId)>, IoError> {
        Ok(self.visit(rel, false)?.into_iter().map(|c| (c.rel, c.id)).collect())
    }

    /// [`Hierarchy::walk`] with each cgroup's owner and record, all read
    /// through one descriptor of its directory (no path looked up twice,
    /// owner and record of the same directory).
    pub fn survey(&self, rel: &str) -> Result<Vec<Surveyed>, IoError> {
        self.visit(rel, true)
    }

    /// The walk: each directory opened relative to its parent's, listed
    /// only when its link count says it has subdirectories (kernfs counts
    /// 2 + subdirectories; any other count is listed), one descriptor open
    /// per level. The subtrees of a top with many children are walked on
    /// several threads (each through its own descriptors).
    fn visit(&self, rel: &str, records: bool) -> Result<Vec<Surveyed>, IoError> {
        let top = self.dir(rel);
        let opened = rustix::fs::open(&top, DIR_FLAGS, Mode::empty()).map_err(|e| IoError::new("open", &top, e));
        let Some(fd) = or_vanished(opened)? else { return Ok(Vec::new()) };
        let (me, children) = self.look(rel, fd, records)?;
        let mut out = vec![me];
        let Some((dir, names)) = children else { return Ok(out) };
        let parent = dir.fd().map_err(|e| IoError::new("list", &top, e))?;
        let walk_some = |names: &[String]| -> Result<Vec<Surveyed>, IoError> {
            let mut out = Vec::new();
            for name in names {
                self.descend(parent, rel, name, records, &mut out)?;
            }
            Ok(out)
        };
        let threads = if names.len() < PARALLEL_WALK_FROM {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WALK_THREADS)
        };
        if threads <= 1 {
            out.extend(walk_some(&names)?);
            return Ok(out);
        }
        let per_thread = names.len().div_ceil(threads);
        let parts: Vec<Result<Vec<Surveyed>, IoError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = names.chunks(per_thread).map(|chunk| scope.spawn(move || walk_some(chunk))).collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    /// Visits `parent_rel/name` (opened in `parent`) and everything below
    /// it, parents first, siblings by name.
    fn descend(&self, parent: BorrowedFd<'_>, parent_rel: &str, name: &str, records: bool, out: &mut Vec<Surveyed>) -> Result<(), IoError> {
        // Directories being visited, each with its subdirectories still to
        // visit (last first).
        let mut stack: Vec<(String, rustix::fs::Dir, Vec<String>)> = Vec::new();
        let mut next = self.open_child(parent, parent_rel, name)?;
        loop {
            if let Some((cg, fd)) = next.take() {
                let (me, children) = self.look(&cg, fd, records)?;
                out.push(me);
                if let Some((dir, mut names)) = children {
                    names.reverse();
                    stack.push((cg, dir, names));
                }
            }
            let Some((cg, dir, names)) = stack.last_mut() else { break };
            let Some(name) = names.pop() else {
                stack.pop();
                continue;
            };
            let parent = dir.fd().map_err(|e| IoError::new("list", self.dir(cg), e))?;
            next = self.open_child(parent, cg, &name)?;
        }
        Ok(())
    }

    /// Opens the directory `name` in `parent`; `None` when it is gone.
    fn open_child(&self, parent: BorrowedFd<'_>, parent_rel: &str, name: &str) -> Result<Option<(String, OwnedFd)>, IoError> {
        let rel = join(parent_rel, name);
        let opened = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()).map_err(|e| IoError::new("open", self.dir(&rel), e));
        Ok(or_vanished(opened)?.map(|fd| (rel, fd)))
    }

    /// What one open cgroup directory tells: its id, owner and record, and
    /// (sorted by name) its subdirectories, if it has any.
    fn look(&self, rel: &str, fd: OwnedFd, records: bool) -> Result<(Surveyed, Option<Listing>), IoError> {
        let st = rustix::fs::fstat(&fd).map_err(|e| IoError::new("stat", self.dir(rel), e))?;
        let record = if records { record_of(&fd) } else { None };
        let me = Surveyed { rel: rel.to_string(), id: st.st_ino, owner: st.st_uid, record };
        if st.st_nlink == 2 {
            return Ok((me, None));
        }
        let mut dir = rustix::fs::Dir::new(fd).map_err(|e| IoError::new("list", self.dir(rel), e))?;
        let listed = subdirectories(&mut dir).map_err(|e| IoError::new("list", self.dir(rel), e));
        let Some(mut names) = or_vanished(listed)? else { return Ok((me, None)) };
        names.sort_unstable();
        Ok((me, Some((dir, names))))
    }

    /// The node record stored on a cgroup, if any.
    pub fn record(&self, rel: &str) -> Option<NodeRecord> {
        NodeRecord::from_bytes(&self.record_bytes(rel)?)
    }

    /// The raw value of a cgroup's record xattr, if it has one.
    pub fn record_bytes(&self, rel: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::getxattr(self.dir(rel), RECORD_XATTR, &mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// The uid owning a cgroup's directory (who may create cgroups in it).
    pub fn owner(&self, rel: &str) -> Result<u32, IoError> {
        let d = self.dir(rel);
        Ok(fs::metadata(&d).map_err(|e| IoError::new("stat", &d, e))?.uid())
    }

    /// Usage figures the hierarchy itself keeps for a cgroup (cgroup2 files
    /// of enabled controllers); missing files are left out.
    pub fn usage(&self, rel: &str) -> Vec<(String, u64)> {
        let dir = self.dir(rel);
        let mut out = Vec::new();
        if !self.accounting {
            return out;
        }
        if let Ok(text) = fs::read_to_string(dir.join("cpu.stat")) {
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok()) {
                out.push(("cpu_usec".to_string(), v));
            }
        }
        for (file, name) in [("memory.current", "memory_bytes"), ("memory.peak", "memory_peak_bytes"), ("pids.current", "pids")] {
            if let Some(v) = fs::read_to_string(dir.join(file)).ok().and_then(|t| t.trim().parse().ok()) {
                out.push((name.to_string(), v));
            }
        }
        if let Ok(Some(v)) = super::readings::swap_v2(&dir) {
            out.push(("swap_bytes".to_string(), v));
        }
        if let Ok(text) = fs::read_to_string(dir.join("io.stat")) {
            // One line per device: `MAJ:MIN rbytes=… wbytes=… …`.
            let sum = |key: &str| -> u64 {
                text.split_ascii_whitespace().filter_map(|f| f.strip_prefix(key)?.parse::<u64>().ok()).sum()
            };
            out.push(("io_read_bytes".to_string(), sum("rbytes=")));
            out.push(("io_write_bytes".to_string(), sum("wbytes=")));
        }
        out
    }
}

/// The hierarchy id of a v1 mount: the `/proc/self/cgroup` line whose
/// controller list matches the mount's options.
fn v1_hierarchy_id(m: &Mount, self_cgroup: &str) -> Option<u32> {
    self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id: u32 = parts.next()?.parse().ok()?;
        let controllers = parts.next()?;
        (id != 0 && !controllers.is_empty() && controllers.split(',').all(|c| m.super_opts.iter().any(|o| o == c)))
            .then_some(id)
    })
}

/// How [`Hierarchy::walk`] opens directories.
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// From this many children of the top, its subtrees are walked on several threads.
const PARALLEL_WALK_FROM: usize = 512;
/// At most this many threads walk.
const MAX_WALK_THREADS: usize = 4;

/// A directory being walked, and its subdirectories' names.
type Listing = (rustix::fs::Dir, Vec<String>);

/// A cgroup as [`Hierarchy::survey`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Surveyed {
    pub rel: String,
    pub id: CgroupId,
    /// The uid owning its directory (who may create cgroups in it).
    pub owner: u32,
    /// The raw value of its record xattr, if it has one.
    pub record: Option<Vec<u8>>,
}

/// The raw record xattr of an open cgroup directory, if it has one.
fn record_of(dir: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::fgetxattr(dir, RECORD_XATTR, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The names of a directory's subdirectories (names that are not UTF-8 are
/// left out, as no cgroup nsgroup makes has one).
fn subdirectories(dir: &mut rustix::fs::Dir) -> Result<Vec<String>, Errno> {
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry?;
        if entry.file_type() != rustix::fs::FileType::Directory {
            continue;
        }
        let Ok(name) = entry.file_name().to_str() else { continue };
        if name != "." && name != ".." {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mounts::parse_mountinfo;

    #[test]
    fn finds_v1_hierarchy_id_by_options() {
        let mounts = parse_mountinfo(
            "1 0 0:1 / /cg/cpu rw - cgroup cgroup rw,cpu,cpuacct\n2 0 0:2 / /cg/mine rw - cgroup cgroup rw,xattr,name=mine\n3 0 0:3 / /cg/u rw - cgroup2 cgroup2 rw\n",
        );
        let self_cg = "12:name=mine:/\n3:cpu,cpuacct:/\n0::/\n";
        let h = Hierarchy::at(Path::new("/cg/mine"), &mounts, self_cg).unwrap();
        assert_eq!((h.version(), h.hierarchy_id()), (Version::V1, 12));
        let h = Hierarchy::at(Path::new("/cg/cpu"), &mounts, self_cg).unwrap();
        assert_eq!(h.hierarchy_id(), 3);
        let h = Hierarchy::at(Path::new("/cg/u"), &mounts, self_cg).unwrap();
        assert_eq!((h.version(), h.granularity()), (Version::V2, Granularity::Process));
        assert!(matches!(Hierarchy::at(Path::new("/nope"), &mounts, self_cg), Err(HierarchyError::NotACgroupMount(_))));
    }

    #[test]
    fn a_wide_top_is_walked_on_threads_in_the_same_order() {
        let tmp = tempfile::tempdir().unwrap();
        let h = Hierarchy::new(tmp.path().to_path_buf(), Version::V1, HierarchyKey::V1(5));
        let count = PARALLEL_WALK_FROM + 37;
        for i in 0..count {
            fs::create_dir_all(tmp.path().join(format!("t/node_{i}/child"))).unwrap();
        }
        let mut expected = vec!["/t".to_string()];
        let mut names: Vec<String> = (0..count).map(|i| format!("node_{i}")).collect();
        names.sort();
        for n in names {
            expected.push(format!("/t/{n}"));
            expected.push(format!("/t/{n}/child"));
        }
        let walked: Vec<String> = h.walk("/t").unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(walked, expected);
    }

    #[test]
    fn reads_a_tree_fixture() {
        let tmp = tempfile::tempdir().unwrap();
        let h = Hierarchy::new(tmp.path().to_path_buf(), Version::V1, HierarchyKey::V1(5));
        fs::create_dir_all(tmp.path().join("t/node_1/node_2")).unwrap();
        fs::write(tmp.path().join("t/node_1/tasks"), "10\n11\n").unwrap();
        let walked: Vec<String> = h.walk("/t").unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(walked, ["/t", "/t/node_1", "/t/node_1/node_2"]);
        assert_eq!(h.members("/t/node_1").unwrap(), vec![10, 11]);
        assert_eq!(h.members("/gone").unwrap(), Vec::<u32>::new());
        assert_eq!(h.children("/t").unwrap(), vec!["node_1"]);
        fs::create_dir_all(tmp.path().join("t/a/b/c")).unwrap();
        let surveyed = h.survey("/t").unwrap();
        let paths: Vec<&str> = surveyed.iter().map(|c| c.rel.as_str()).collect();
        assert_eq!(paths, ["/t", "/t/a", "/t/a/b", "/t/a/b/c", "/t/node_1", "/t/node_1/node_2"]);
        let me = rustix::process::geteuid().as_raw();
        assert!(surveyed.iter().all(|c| c.owner == me && c.record.is_none()));
        assert_eq!(surveyed[3].id, fs::metadata(tmp.path().join("t/a/b/c")).unwrap().ino());
        assert!(h.survey("/gone").unwrap().is_empty());
    }
}
