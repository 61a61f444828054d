//! Who owns a task's set, read from /proc: the uid that created the task's
//! outermost user namespace below the daemon's, else the task's real uid; a
//! namespace root made for another uid range belongs to that range. The BPF
//! programs compute the same in the kernel (`owner_of` in
//! bpf/nsgroup.bpf.c); this is the /proc side (the proc connector, the /proc
//! reconcile, API callers). docs/semantics.md §13 "Owners" says why.

use std::os::fd::{AsFd, OwnedFd};

use super::error::{or_vanished, IoError};
use super::procfs::ProcFs;
use crate::core::nsset::NsKind;

/// How deep user namespaces nest (the kernel allows 32 levels).
const MAX_DEPTH: usize = 33;
/// How many ancestors are looked at for one that lives in a namespace itself.
const MAX_ANCESTORS: usize = 64;

fn inode(fd: &OwnedFd) -> rustix::io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
}

/// Where the walk up from a task's user namespace ended.
enum Outermost {
    /// The task is in the daemon's user namespace, or not below it.
    None,
    /// The child of the daemon's namespace (its inode): the task's own, or
    /// one further up, and the namespace below it on the way.
    Found { owner: u32, inode: u64, own: bool, below: Option<OwnedFd> },
}

/// The owner of task `tid`'s set; `base_userns` is the inode of the daemon's
/// user namespace. `None` when the task is gone. A namespace that is not
/// below the daemon's (or a fixture's plain file) yields the real uid.
pub fn owner(proc: &ProcFs, pid: u32, tid: u32, base_userns: u64) -> Result<Option<u32>, IoError> {
    let Some(uid) = proc.uid(tid)? else { return Ok(None) };
    let Some(ns) = proc.open_ns(pid, tid, NsKind::User)? else { return Ok(None) };
    Ok(Some(match outermost(ns, base_userns) {
        Outermost::None => uid,
        Outermost::Found { owner, .. } if owner != 0 => owner,
        // Root made it, for a range of uids: the range's.
        Outermost::Found { own: true, .. } => match proc.uid_map(pid, tid)? {
            Some(map) => lowest_mapped(&map),
            None => return Ok(None),
        },
        // Its map is read through an ancestor that lives in it (the one that
        // made the next namespace down, typically); without one, the uid (of
        // that range) that made the next namespace down.
        Outermost::Found { inode, below, .. } => match ancestor_in(proc, pid, inode)? {
            Some(map) => lowest_mapped(&map),
            None => below.and_then(|b| crate::ffi::user_ns_owner(b.as_fd()).ok()).unwrap_or(0),
        },
    }))
}

/// The `uid_map` of the nearest ancestor of process `pid` whose user
/// namespace is `inode` (bounded: [`MAX_ANCESTORS`] steps).
fn ancestor_in(proc: &ProcFs, pid: u32, inode: u64) -> Result<Option<String>, IoError> {
    let mut at = pid;
    for _ in 0..MAX_ANCESTORS {
        let Some(stat) = proc.stat(at, at)? else { return Ok(None) };
        at = stat.ppid;
        if at <= 1 {
            return Ok(None);
        }
        if proc.ns_inode(at, at, NsKind::User)? == Some(inode) {
            return proc.uid_map(at, at);
        }
    }
    Ok(None)
}

/// Walks up from `ns` to the child of `base`.
fn outermost(mut ns: OwnedFd, base: u64) -> Outermost {
    let mut walk = || -> Option<Outermost> {
        if inode(&ns).ok()? == base {
            return Some(Outermost::None);
        }
        let mut below = None;
        for level in 0..MAX_DEPTH {
            let parent = crate::ffi::user_ns_parent(ns.as_fd()).ok()?;
            if inode(&parent).ok()? == base {
                let owner = crate::ffi::user_ns_owner(ns.as_fd()).ok()?;
                return Some(Outermost::Found { owner, inode: inode(&ns).ok()?, own: level == 0, below });
            }
            below = Some(std::mem::replace(&mut ns, parent));
        }
        None
    };
    walk().unwrap_or(Outermost::None)
}

/// The uid a `uid_map` maps its lowest inner uid to (0: unmapped, or root).
fn lowest_mapped(map: &str) -> u32 {
    let extent = |l: &str| {
        let mut f = l.split_ascii_whitespace().map(|v| v.parse::<u32>().ok());
        Some((f.next()??, f.next()??))
    };
    map.lines().filter_map(extent).min().map_or(0, |(_, lower)| lower)
}

impl ProcFs {
    /// A thread's `uid_map`; `None` when it is gone.
    pub fn uid_map(&self, pid: u32, tid: u32) -> Result<Option<String>, IoError> {
        let path = self.root().join(format!("{pid}/task/{tid}/uid_map"));
        or_vanished(std::fs::read_to_string(&path).map_err(|e| IoError::new("read", &path, e)))
    }
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
    fn a_range_is_known_by_the_uid_its_lowest_inner_uid_maps_to() {
        assert_eq!(lowest_mapped("         0     100000      65536\n"), 100_000);
        assert_eq!(lowest_mapped("      1000       1000          1\n         0          0          1\n"), 0);
        assert_eq!(lowest_mapped("5 200005 10\n1 300001 4\n"), 300_001);
        assert_eq!(lowest_mapped(""), 0);
        assert_eq!(lowest_mapped("garbage\n0 x 1\n"), 0);
    }
}
