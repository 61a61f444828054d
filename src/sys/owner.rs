//! Who owns a task's set, read from /proc: the uid that created the task's
//! outermost user namespace below the daemon's, else the task's real uid.
//! The BPF programs compute the same in the kernel (`owner_of` in
//! bpf/nsgroup.bpf.c); this is the /proc side (the proc connector, the /proc
//! reconcile, API callers). docs/semantics.md §13 "Owners" says why.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::error::IoError;
use super::procfs::ProcFs;
use crate::core::nsset::NsKind;

/// How deep user namespaces nest (the kernel allows 32 levels).
const MAX_DEPTH: usize = 33;

fn inode(fd: &OwnedFd) -> std::io::Result<u64> {
    Ok(std::fs::File::from(fd.try_clone()?).metadata()?.ino())
}

/// The owner of task `tid`'s set; `base_userns` is the inode of the daemon's
/// user namespace. `None` when the task is gone. A namespace that is not
/// below the daemon's (or a fixture's plain file) yields the real uid.
pub fn owner(proc: &ProcFs, pid: u32, tid: u32, base_userns: u64) -> Result<Option<u32>, IoError> {
    let Some(uid) = proc.uid(tid)? else { return Ok(None) };
    let Some(ns) = proc.open_ns(pid, tid, NsKind::User)? else { return Ok(None) };
    Ok(Some(outermost_owner(ns, base_userns).unwrap_or(uid)))
}

/// Walks up from `ns` to the child of `base`; its owner. `None` where the
/// walk leaves the namespaces below `base` or `ns` is not an nsfs file.
fn outermost_owner(mut ns: OwnedFd, base: u64) -> Option<u32> {
    if inode(&ns).ok()? == base {
        return None;
    }
    for _ in 0..MAX_DEPTH {
        let parent = crate::ffi::user_ns_parent(ns.as_fd()).ok()?;
        if inode(&parent).ok()? == base {
            return crate::ffi::user_ns_owner(ns.as_fd()).ok();
        }
        ns = parent;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_user_namespaces_the_owner_is_the_uid() {
        let proc = ProcFs::new("/proc");
        let me = std::process::id();
        let base = proc.ns_inode(me, me, NsKind::User).unwrap().unwrap();
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(owner(&proc, me, me, base).unwrap(), Some(uid));
        assert_eq!(owner(&proc, u32::MAX - 1, u32::MAX - 1, base).unwrap(), None);
    }

    #[test]
    fn a_fixture_without_nsfs_files_reads_as_the_uid() {
        let dir = tempfile::tempdir().unwrap();
        let ns = super::super::procfs::fixture::ns_dir(dir.path(), "a");
        super::super::procfs::fixture::write_task(dir.path(), 7, 7, "sh", 1, "/x", &ns);
        std::fs::write(dir.path().join("7/status"), "Name:\tsh\nTgid:\t7\nUid:\t200005\t200005\t200005\t200005\n").unwrap();
        let proc = ProcFs::new(dir.path());
        assert_eq!(owner(&proc, 7, 7, 1).unwrap(), Some(200_005));
    }
}
