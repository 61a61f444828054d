//! Checkpoint and restore of a node as a unit (docs/semantics.md
//! "Checkpoint and restore"): the node's subtree frozen, its set's
//! pid-namespace init dumped with CRIU ([`crate::sys::criu`]) beside a
//! [`manifest`]; a restore makes a fresh node with the same limits and
//! restores the tree into it. A failing dump leaves the node as it was.

pub mod image_dir;
pub mod manifest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::control::verbs::{self, Subtree, Timing, VerbError};
use crate::core::cgpath::join;
use crate::core::limit::{Limit, LimitKey};
use crate::core::naming;
use crate::core::node::{NodeRecord, Restored};
use crate::core::nsset::{NsKind, NsSet};
use crate::sys::cgroup_dir;
use crate::sys::cgroupfs::{CgroupBackend, CgroupWriter, Created};
use crate::sys::criu::{Criu, CriuError, Dump, Restore as CriuRestore};
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::error::IoError;
use crate::sys::mounts::{read_mountinfo, Mount};
use crate::sys::procfs::ProcFs;
use image_dir::DirError;
use manifest::{Manifest, ManifestError};

/// Filesystems CRIU mounts anew for the tree itself (they belong to its
/// namespaces, or CRIU needs its own instance); every other mount the tree
/// shares with the host is handed to CRIU as external.
pub const CRIU_MOUNTS_ANEW: [&str; 5] = ["proc", "sysfs", "cgroup", "cgroup2", "devpts"];

/// Why a checkpoint or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Verb(#[from] VerbError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the node's set has no pid namespace of its own: CRIU dumps a tree from its pid-namespace init (a dump from outside is refused: \"Can't dump nested pid namespace\")")]
    NoPidNs,
    #[error("no task of the node is its set's pid-namespace init (the init exited, or lives outside the node)")]
    NoInit,
    #[error("the set's init (pid {init}) is in session {session}, led from outside its pid namespace, which CRIU cannot dump: start the tree as its own session inside the namespace (`unshare --pid --fork setsid …`)")]
    SessionOutside { init: u32, session: u32 },
    #[error("no free node name below {}", crate::core::escape::Escaped(.0))]
    NoName(String),
    #[error("the tree's root (a {fstype} filesystem, device {dev}, directory {}) is no directory of the host's mounts, so a restore could not give it back to the tree: CRIU restores a tree onto a root it is given", crate::core::escape::Escaped(.root))]
    RootUnreachable { fstype: String, dev: String, root: String },
}

/// What a checkpoint is asked for.
#[derive(Clone, Debug)]
pub struct CheckpointSpec {
    pub dir: PathBuf,
    pub leave_running: bool,
    pub tcp_established: bool,
}

/// The set's pid-namespace init among `tasks`: a thread-group leader in
/// the set's pid namespace whose parent is outside it.
pub fn find_init(proc: &ProcFs, record: &NodeRecord, tasks: &[u32]) -> Result<u32, CheckpointError> {
    let pid_ns = record.set.get(NsKind::Pid);
    if pid_ns == 0 || pid_ns == record.parent_set.get(NsKind::Pid) {
        return Err(CheckpointError::NoPidNs);
    }
    for &tid in tasks {
        if proc.tgid(tid)? != Some(tid) || proc.ns_inode(tid, tid, NsKind::Pid)? != Some(pid_ns) {
            continue;
        }
        let Some(stat) = proc.stat(tid, tid)? else { continue };
        if proc.ns_inode(stat.ppid, stat.ppid, NsKind::Pid)? != Some(pid_ns) {
            return Ok(tid);
        }
    }
    Err(CheckpointError::NoInit)
}

/// The mounts of the tree that CRIU is told are external: the host's own
/// (the same filesystem, root and point as a mount of the daemon's mount
/// namespace, copied in when the tree's mount namespace was made), bound
/// back from the host on restore, but its root and [`CRIU_MOUNTS_ANEW`].
/// CRIU cannot dump most of them (9p, configfs, …), and binding the host's
/// keeps them the host's (a tmpfs is not copied into the image).
pub fn external_mounts(tree: &[Mount], host: &[Mount]) -> Vec<String> {
    let mut out: Vec<String> = tree
        .iter()
        .filter(|m| m.mount_point != Path::new("/") && !CRIU_MOUNTS_ANEW.contains(&m.fstype.as_str()))
        .filter(|m| host.iter().any(|h| h.mount_point == m.mount_point && h.fstype == m.fstype && h.dev == m.dev && h.root == m.root))
        .filter_map(|m| m.mount_point.to_str().map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(manifest::MAX_MOUNTS);
    out
}

/// The host directory that is the tree's root: the directory of the
/// tree's `/` mount (the visible one, listed last) reached through a host
/// mount of the same filesystem whose root holds it, for CRIU's `--root`
/// on restore. A sandbox on the host's root gets `/`; one that pivoted into
/// a directory of a host filesystem (a container's root) gets that
/// directory. `Err` with what the root is when no host mount reaches it.
pub fn tree_root(tree: &[Mount], host: &[Mount]) -> Result<PathBuf, CheckpointError> {
    let Some(root) = tree.iter().rev().find(|m| m.mount_point == Path::new("/")) else {
        return Err(CheckpointError::RootUnreachable { fstype: "(none)".into(), dev: "(none)".into(), root: "(no / mount)".into() });
    };
    let within = |base: &str| -> Option<PathBuf> {
        let rest = if base == "/" { root.root.strip_prefix('/') } else { root.root.strip_prefix(base).and_then(|r| if r.is_empty() { Some(r) } else { r.strip_prefix('/') }) }?;
        Some(PathBuf::from(rest))
    };
    host.iter()
        .filter(|h| h.dev == root.dev && h.fstype == root.fstype)
        .filter_map(|h| within(&h.root).map(|rest| (h, rest)))
        // The host mount nearest the tree's root: the shortest rest, then the shortest point.
        .min_by_key(|(h, rest)| (rest.as_os_str().len(), h.mount_point.as_os_str().len()))
        .map(|(h, rest)| if rest.as_os_str().is_empty() { h.mount_point.clone() } else { h.mount_point.join(rest) })
        .ok_or_else(|| CheckpointError::RootUnreachable { fstype: root.fstype.clone(), dev: root.dev.clone(), root: root.root.clone() })
}

/// Whether the tree is a shell job to CRIU (`--shell-job`): its root has a
/// controlling terminal.
pub fn shell_job(stat: &crate::sys::procfs::TaskStat) -> bool {
    stat.tty_nr != 0
}

/// Whether the root leads its own session or its session is led inside the
/// tree (CRIU refuses a session led from outside the pid namespace even as a
/// shell job: "A session leader of N(1) is outside of its pid namespace",
/// measured in the guest with `setsid unshare --pid --fork`).
fn session_inside(proc: &ProcFs, root: u32, stat: &crate::sys::procfs::TaskStat, pid_ns: u64) -> Result<bool, IoError> {
    Ok(stat.session == root || (stat.session != 0 && proc.ns_inode(stat.session, stat.session, NsKind::Pid)? == Some(pid_ns)))
}

/// The node's cgroup2 limit values, as they are now (files it lacks are left out).
pub fn read_limits(dir: &Path, version: Version) -> BTreeMap<String, String> {
    if version != Version::V2 {
        return BTreeMap::new();
    }
    LimitKey::ALL
        .into_iter()
        .filter_map(|k| {
            let v = cgroup_dir::read(&dir.join(k.file())).ok()?;
            let v = v.trim();
            (!v.is_empty() && !v.contains('\n') && crate::core::limit::Limit::new(k.file(), v).is_ok()).then(|| (k.file().to_string(), v.to_string()))
        })
        .collect()
}

/// Whether the subtree is frozen now.
fn frozen(s: &Subtree) -> bool {
    match (s.version, &s.freezer) {
        (Version::V2, _) => cgroup_dir::events(&s.dir, "frozen").ok().flatten().as_deref() == Some("1"),
        (Version::V1, Some(f)) => cgroup_dir::freezer_state(f).is_ok_and(|st| st.trim() == "FROZEN"),
        (Version::V1, None) => false,
    }
}

/// The node being checkpointed.
pub struct Source<'a> {
    pub path: &'a str,
    pub cgroup_id: u64,
    pub record: &'a NodeRecord,
    pub subtree: &'a Subtree,
}

/// Checkpoints the node: freezes it, dumps its set's init with CRIU into
/// `spec.dir` and writes the manifest there. The node is thawed afterwards
/// unless it was frozen before and stays running; on any failure it is as
/// it was (its tasks untouched, thawed if they ran).
pub fn checkpoint(criu: &Criu, proc: &ProcFs, src: &Source, spec: &CheckpointSpec, timing: Timing) -> Result<Manifest, CheckpointError> {
    image_dir::for_dump(&spec.dir)?;
    let s = src.subtree;
    let freezer = match (s.version, &s.freezer) {
        (Version::V2, _) => s.dir.clone(),
        (Version::V1, Some(f)) => f.clone(),
        (Version::V1, None) => return Err(VerbError::NoFreezer(s.dir.clone()).into()),
    };
    let was_frozen = frozen(s);
    verbs::freeze(s, timing)?;
    let result = dump_frozen(criu, proc, src, spec, freezer);
    // Thawed unless it was frozen before and runs on: a failed dump leaves
    // it as it was, a dump that ended the tasks lets them die.
    if !(was_frozen && (spec.leave_running || result.is_err())) {
        let thawed = verbs::thaw(s, timing);
        // Tasks that run on must run; ended ones may have taken their node
        // with them already (the daemon's cleanup).
        if result.is_ok() && spec.leave_running {
            thawed?;
        }
    }
    result
}

fn dump_frozen(criu: &Criu, proc: &ProcFs, src: &Source, spec: &CheckpointSpec, freezer: PathBuf) -> Result<Manifest, CheckpointError> {
    let tasks = verbs::tasks(&src.subtree.dir, src.subtree.version)?;
    let init = find_init(proc, src.record, &tasks)?;
    let stat = proc.stat(init, init)?.ok_or(CheckpointError::NoInit)?;
    if !session_inside(proc, init, &stat, src.record.set.get(NsKind::Pid))? {
        return Err(CheckpointError::SessionOutside { init, session: stat.session });
    }
    let tree_mounts = read_mountinfo(&proc.root().join(format!("{init}/mountinfo"))).unwrap_or_default();
    let host_mounts = read_mountinfo(&proc.root().join("self/mountinfo")).unwrap_or_default();
    let root = tree_root(&tree_mounts, &host_mounts)?;
    let dump = Dump {
        pid: init,
        dir: spec.dir.clone(),
        freezer,
        leave_running: spec.leave_running,
        tcp_established: spec.tcp_established,
        shell_job: shell_job(&stat),
        external_mounts: external_mounts(&tree_mounts, &host_mounts),
    };
    let manifest = Manifest {
        version: manifest::VERSION,
        source_path: src.path.to_string(),
        source_cgroup_id: src.cgroup_id,
        record: src.record.clone(),
        limits: read_limits(&src.subtree.dir, src.subtree.version),
        namespaces: src.record.set.differing(&src.record.parent_set).map(|(k, _)| k.proc_name().to_string()).collect(),
        root_pid: init,
        checkpointed_unix: crate::sys::clock::unix_now(),
        shell_job: dump.shell_job,
        tcp_established: dump.tcp_established,
        external_mounts: dump.external_mounts.clone(),
        root: root.display().to_string(),
    };
    criu.run("dump", &dump.args(), &spec.dir.join(Dump::LOG))?;
    let path = spec.dir.join(manifest::FILE);
    write_private(&path, &manifest.to_bytes())?;
    Ok(manifest)
}

/// Writes a file only root can read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| IoError::new("create", path, e))?;
    f.write_all(bytes).map_err(|e| IoError::new("write", path, e))
}

/// Reads and checks the manifest of an image directory (checked first).
pub fn read_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    image_dir::for_restore(dir)?;
    let path = dir.join(manifest::FILE);
    let bytes = read_bounded(&path, manifest::MAX_BYTES + 1)?;
    Ok(Manifest::parse(&bytes)?)
}

fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, IoError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| IoError::new("open", path, e))?;
    let mut out = Vec::new();
    f.take(max as u64).read_to_end(&mut out).map_err(|e| IoError::new("read", path, e))?;
    Ok(out)
}

/// A node `restore` made and filled.
#[derive(Clone, Debug)]
pub struct RestoredNode {
    pub path: String,
    pub cgroup_id: u64,
    /// The restored tree's root, as the host sees it.
    pub root_pid: u32,
    /// Limits the kernel refused (each says which and why).
    pub refused: Vec<String>,
}

/// Restores the image in `dir` (checked by [`read_manifest`]) into a fresh
/// node below `parent`, named for `namer_pid` like every node: its record
/// (saying it is restored, from where) and limits first, then CRIU, run
/// inside the node so that every restored task is born there; the record
/// gets the restored set once CRIU is done. A failure removes the node.
pub fn restore(criu: &Criu, hierarchy: &Hierarchy, proc: &ProcFs, dir: &Path, manifest: &Manifest, parent: &str, namer_pid: u32) -> Result<RestoredNode, CheckpointError> {
    let limits = manifest.checked_limits()?;
    let mut writer = CgroupWriter::new(hierarchy.clone(), parent);
    let parent_id = hierarchy.id(parent)?;
    writer.learn(parent_id, parent.to_string());
    let mut made = None;
    for attempt in 0..1000 {
        let name = naming::candidate(namer_pid, attempt);
        if let Created::New(id) = writer.create(parent_id, &name)? {
            made = Some((id, join(parent, &name)));
            break;
        }
    }
    let Some((id, path)) = made else { return Err(CheckpointError::NoName(parent.to_string())) };
    let mut record = manifest.record.clone();
    // An empty set: the daemon leaves the tasks CRIU makes here pending
    // until the record names their set.
    record.set = NsSet::default();
    record.created_unix = crate::sys::clock::unix_now();
    record.mirrors = Vec::new();
    record.restored = Some(Restored {
        dir: dir.display().to_string(),
        restored_unix: record.created_unix,
        from_path: manifest.source_path.clone(),
        from_cgroup_id: manifest.source_cgroup_id,
    });
    let result = (|| {
        writer.store_record(id, &record)?;
        let files: Vec<_> = limits.iter().map(Limit::v2).collect();
        let refused = if hierarchy.version() == Version::V2 { writer.configure(id, &files) } else { Vec::new() };
        let pidfile = dir.join(format!("restored-{}.pid", path.rsplit('/').next().unwrap_or("node")));
        let _ = std::fs::remove_file(&pidfile);
        let args = CriuRestore {
            dir: dir.to_path_buf(),
            cgroup_roots: vec![path.clone()],
            pidfile: pidfile.clone(),
            root: PathBuf::from(&manifest.root),
            tcp_established: manifest.tcp_established,
            shell_job: manifest.shell_job,
            external_mounts: manifest.external_mounts.clone(),
        }
        .args();
        let procs = hierarchy.dir(&path).join("cgroup.procs");
        criu.run_in("restore", &args, &dir.join(CriuRestore::LOG), Some(&procs))?;
        let text = std::fs::read_to_string(&pidfile).map_err(|e| IoError::new("read", &pidfile, e))?;
        let root_pid: u32 = text.trim().parse().map_err(|_| IoError::new("parse", &pidfile, std::io::Error::other("not a pid")))?;
        record.set = proc.ns_set(root_pid, root_pid)?.unwrap_or_default();
        record.creator_pid = root_pid;
        writer.store_record(id, &record)?;
        Ok(RestoredNode { path: path.clone(), cgroup_id: id, root_pid, refused })
    })();
    if result.is_err() {
        let _ = writer.remove(id);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mounts::parse_mountinfo;

    #[test]
    fn the_host_s_own_mounts_are_external_but_the_root_and_what_criu_mounts_anew() {
        let host = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/vda rw\n2 1 0:27 / /work/repo ro - 9p repo rw\n3 1 0:5 / /proc rw - proc proc rw\n4 1 0:31 / /sys/kernel/config rw - configfs configfs rw\n5 1 0:40 / /run rw - tmpfs tmpfs rw\n6 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        );
        let tree = parse_mountinfo(
            "10 0 8:1 / / rw - ext4 /dev/vda rw\n11 10 0:27 / /work/repo ro - 9p repo rw\n12 10 0:59 / /proc rw - proc proc rw\n13 10 0:31 / /sys/kernel/config rw - configfs configfs rw\n14 10 0:40 / /run rw - tmpfs tmpfs rw\n15 10 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n16 10 0:27 / /srv/elsewhere rw - 9p repo rw\n17 10 0:41 / /tmp/own rw - tmpfs tmpfs rw\n18 10 0:27 /sub /work/repo2 ro - 9p repo rw\n",
        );
        assert_eq!(external_mounts(&tree, &host), ["/run", "/sys/kernel/config", "/work/repo"]);
        assert!(external_mounts(&[], &host).is_empty());
    }

    #[test]
    fn the_tree_s_root_is_found_among_the_host_s_mounts() {
        let host = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/vda rw\n2 1 0:27 / /work/repo ro - 9p repo rw\n3 1 8:2 /srv /data rw - xfs /dev/vdb rw\n4 1 0:50 / /var/lib/c/merged rw - overlay overlay rw\n",
        );
        let root = |line: &str| tree_root(&parse_mountinfo(line), &host).map(|p| p.display().to_string()).map_err(|e| e.to_string());
        assert_eq!(root("10 0 8:1 / / rw - ext4 /dev/vda rw\n11 10 0:59 / /proc rw - proc proc rw\n").unwrap(), "/");
        assert_eq!(root("10 0 8:1 /var/lib/machines/m / rw - ext4 /dev/vda rw\n").unwrap(), "/var/lib/machines/m");
        assert_eq!(root("10 0 8:2 /srv/box / rw - xfs /dev/vdb rw\n").unwrap(), "/data/box");
        assert_eq!(root("10 0 8:2 /srv / rw - xfs /dev/vdb rw\n").unwrap(), "/data");
        assert_eq!(root("10 0 0:50 / / rw - overlay overlay rw\n").unwrap(), "/var/lib/c/merged");
        // A root over a root: the visible one counts.
        assert_eq!(root("10 0 8:1 / / rw - ext4 /dev/vda rw\n12 10 8:1 /var/lib/machines/m / rw - ext4 /dev/vda rw\n").unwrap(), "/var/lib/machines/m");
        // /srvbox is not below /srv.
        let e = root("10 0 8:2 /srvbox / rw - xfs /dev/vdb rw\n").unwrap_err();
        assert!(e.contains("xfs filesystem, device 8:2, directory /srvbox"), "{e}");
        assert!(root("10 0 0:77 / / rw - tmpfs tmpfs rw\n").is_err(), "a root of its own");
        assert!(root("").is_err());
    }

    #[test]
    fn a_tree_with_a_terminal_is_a_shell_job_and_one_led_from_outside_is_refused() {
        let stat = |session: u32, tty_nr: u64| crate::sys::procfs::TaskStat::parse(format!("7 (sh) S 6 7 {session} {tty_nr} -1 4194560 1 0 0 0 1 2 0 0 20 0 1 0 100 1 2").as_bytes()).unwrap();
        assert!(!shell_job(&stat(7, 0)));
        assert!(shell_job(&stat(7, 34816)), "a terminal");
        let proc = ProcFs::new("/nonexistent");
        assert!(session_inside(&proc, 7, &stat(7, 0), 99).unwrap(), "its own session");
        assert!(!session_inside(&proc, 7, &stat(6, 0), 99).unwrap(), "setsid unshare: the session is unshare's, outside");
        assert!(!session_inside(&proc, 7, &stat(0, 0), 99).unwrap());
        let e = CheckpointError::SessionOutside { init: 7, session: 6 }.to_string();
        assert!(e.contains("session 6") && e.contains("setsid"), "{e}");
    }

    #[test]
    fn limits_are_read_as_the_allow_list_has_them() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("pids.max"), "32\n").unwrap();
        std::fs::write(t.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(t.path().join("cpu.max"), "garbage value\n").unwrap();
        std::fs::write(t.path().join("io.max"), "").unwrap();
        let l = read_limits(t.path(), Version::V2);
        assert_eq!(l, BTreeMap::from([("memory.max".into(), "max".into()), ("pids.max".into(), "32".into())]));
        assert!(read_limits(t.path(), Version::V1).is_empty());
    }

    #[test]
    fn a_set_without_its_own_pid_namespace_cannot_be_dumped() {
        let proc = ProcFs::new("/nonexistent");
        let mut record = crate::control::checkpoint::manifest::tests::sample().record;
        record.parent_set = record.set;
        assert!(matches!(find_init(&proc, &record, &[1]), Err(CheckpointError::NoPidNs)));
    }
}
