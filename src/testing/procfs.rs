//! A fake procfs rooted at a directory (a tempdir in tests): the files
//! [`ProcFs`] reads, written for made-up tasks, so that whatever reads /proc
//! can be tested without root and without real tasks. A namespace set is a
//! directory of ten regular files: their inode numbers stand for the set's
//! namespaces, and differ from set to set as real ones do.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::core::nsset::{NsKind, NsSet};
use crate::sys::procfs::{ns_per_tick, HierarchyKey, ProcFs};

/// The start time (clock ticks) of every made-up task unless it says otherwise.
const START_TICKS: u64 = 1234;

/// The start time in nanoseconds that a task written with the default start has.
pub fn default_start_ns() -> u64 {
    START_TICKS * ns_per_tick()
}

/// The hierarchy the fake tasks' cgroup lines name: `10:name=x:PATH`.
pub const KEY: HierarchyKey = HierarchyKey::V1(10);

/// One made-up task.
#[derive(Clone, Debug)]
pub struct FakeTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub ppid: u32,
    /// Its cgroup in [`KEY`]'s hierarchy.
    pub cgroup: String,
    /// The name of its namespace set (see [`FakeProc::set`]).
    pub set: String,
    pub start_ticks: u64,
    /// Its stat state letter (`S`, `R`, `Z`, `X`) and flags (PF_EXITING: 0x4).
    pub state: char,
    pub flags: u64,
    pub uid: u32,
    /// Its effective capabilities (CAP_SYS_ADMIN is bit 21).
    pub cap_eff: u64,
    pub children: Vec<u32>,
}

impl FakeTask {
    /// A sleeping single-threaded process `pid` of uid 0 without
    /// capabilities, in `cgroup`, in the set named `set`.
    pub fn new(pid: u32, cgroup: &str, set: &str) -> FakeTask {
        FakeTask {
            pid,
            tid: pid,
            comm: "t".into(),
            ppid: 1,
            cgroup: cgroup.into(),
            set: set.into(),
            start_ticks: START_TICKS,
            state: 'S',
            flags: 0x400100,
            uid: 0,
            cap_eff: 0,
            children: Vec::new(),
        }
    }
}

/// A procfs at `<dir>/proc`, namespace sets at `<dir>/ns-sets`.
pub struct FakeProc {
    dir: PathBuf,
}

impl FakeProc {
    /// A fake procfs in `dir` (which must exist).
    pub fn at(dir: &Path) -> FakeProc {
        FakeProc { dir: dir.to_path_buf() }
    }

    /// The reader of this procfs.
    pub fn proc(&self) -> ProcFs {
        ProcFs::new(self.dir.join("proc"))
    }

    /// The set named `name` (made on first use), as [`ProcFs::ns_set`] reads it.
    pub fn set(&self, name: &str) -> io::Result<NsSet> {
        let dir = ns_dir(&self.dir, name)?;
        let mut inodes = [0u64; 10];
        for (slot, kind) in inodes.iter_mut().zip(NsKind::ALL) {
            *slot = fs::metadata(dir.join(kind.proc_name()))?.ino();
        }
        Ok(NsSet::new(inodes))
    }

    /// The set named `name`: the set `from` with new namespaces of the
    /// kinds `changed` only (what an unshare of those kinds makes). Made on
    /// first use; the kinds kept are the same files (hard links).
    pub fn derive(&self, name: &str, from: &str, changed: &[NsKind]) -> io::Result<NsSet> {
        let dir = self.dir.join("ns-sets").join(name);
        if !dir.exists() {
            let base = ns_dir(&self.dir, from)?;
            fs::create_dir_all(&dir)?;
            for k in NsKind::ALL.into_iter().filter(|k| !changed.contains(k)) {
                fs::hard_link(base.join(k.proc_name()), dir.join(k.proc_name()))?;
            }
        }
        ns_dir(&self.dir, name)?;
        self.set(name)
    }

    /// Writes (or rewrites) a task.
    pub fn write(&self, t: &FakeTask) -> io::Result<()> {
        let root = self.dir.join("proc");
        let ns = ns_dir(&self.dir, &t.set)?;
        let dir = root.join(format!("{}/task/{}", t.pid, t.tid));
        fs::create_dir_all(&dir)?;
        let stat = format!(
            "{} ({}) {} {} 1 1 0 -1 {} 0 0 0 0 3 4 0 0 20 0 1 0 {} 1000 56 0\n",
            t.tid, t.comm, t.state, t.ppid, t.flags, t.start_ticks
        );
        fs::write(dir.join("stat"), stat)?;
        let HierarchyKey::V1(id) = KEY else { unreachable!("KEY is a v1 hierarchy") };
        fs::write(dir.join("cgroup"), format!("{id}:name=x:{}\n0::/\n", t.cgroup))?;
        let children: Vec<String> = t.children.iter().map(u32::to_string).collect();
        fs::write(dir.join("children"), children.join(" "))?;
        let status = format!("Name:\t{}\nTgid:\t{}\nUid:\t{u}\t{u}\t{u}\t{u}\nCapEff:\t{:016x}\n", t.comm, t.pid, t.cap_eff, u = t.uid);
        fs::write(dir.join("status"), &status)?;
        let link = dir.join("ns");
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(ns, &link)?;
        if t.pid == t.tid {
            fs::write(root.join(format!("{}/status", t.pid)), status)?;
        }
        Ok(())
    }

    /// Removes a task: it exited and was reaped.
    pub fn remove(&self, pid: u32, tid: u32) -> io::Result<()> {
        let root = self.dir.join("proc");
        if pid == tid {
            fs::remove_dir_all(root.join(pid.to_string()))
        } else {
            fs::remove_dir_all(root.join(format!("{pid}/task/{tid}")))
        }
    }
}

/// The directory of ten namespace files standing for the set `name` (made on first use).
pub fn ns_dir(root: &Path, name: &str) -> io::Result<PathBuf> {
    let dir = root.join("ns-sets").join(name);
    fs::create_dir_all(&dir)?;
    for k in NsKind::ALL {
        let f = dir.join(k.proc_name());
        if !f.exists() {
            fs::write(f, "")?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tasks_from_a_fixture_and_vanished_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeProc::at(tmp.path());
        fake.write(&FakeTask { comm: "sh".into(), ..FakeTask::new(10, "/t", "a") }).unwrap();
        fake.write(&FakeTask { tid: 11, comm: "worker".into(), ..FakeTask::new(10, "/t", "b") }).unwrap();
        let proc = fake.proc();
        assert_eq!(proc.pids().unwrap(), vec![10]);
        assert_eq!(proc.tids(10).unwrap(), vec![10, 11]);
        let sa = proc.ns_set(10, 10).unwrap().unwrap();
        let sb = proc.ns_set(10, 11).unwrap().unwrap();
        assert_ne!(sa, sb);
        assert_eq!(proc.stat(10, 11).unwrap().unwrap().comm, "worker");
        assert_eq!(proc.cgroup_path(10, 10, &HierarchyKey::V1(10)).unwrap().as_deref(), Some("/t"));
        assert_eq!(proc.tgid(10).unwrap(), Some(10));
        assert_eq!(proc.ns_set(99, 99).unwrap(), None);
        assert_eq!(proc.stat(99, 99).unwrap(), None);
        assert_eq!(proc.tids(99).unwrap(), Vec::<u32>::new());
        assert_eq!(proc.children(99, 99).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn a_fixture_without_nsfs_files_reads_as_the_uid() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeProc::at(dir.path());
        fake.write(&FakeTask { uid: 200_005, ..FakeTask::new(7, "/x", "a") }).unwrap();
        let proc = fake.proc();
        assert_eq!(crate::sys::owner::owner(&proc, 7, 7, 1).unwrap(), Some(200_005));
    }
}
