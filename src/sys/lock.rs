//! One daemon per hierarchy and root: an exclusive `flock` on a file named
//! after the hierarchy's superblock and the root cgroup's inode.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::hierarchy::Hierarchy;
use super::error::IoError;
use crate::core::escape::Escaped;

/// Where the lock files live by default.
pub const DEFAULT_DIR: &str = "/run/nsgroup";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another nsgroup ({}) already manages {} root {} (lock {})",
        .pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")), .mount.display(), Escaped(.root), .lock.display())]
    Held { pid: Option<u32>, mount: PathBuf, root: String, lock: PathBuf },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// An exclusive claim on a hierarchy and root, held until dropped.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl Drop for InstanceLock {
    /// Removes the lock file while still holding the lock; a waiter that
    /// opened it meanwhile notices and takes the file's successor.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl InstanceLock {
    /// Takes the lock for `root` of `hierarchy` in `dir` (created 0755 if
    /// missing) and writes our pid into it; fails at once when another
    /// process holds it, naming that process.
    pub fn acquire(dir: &Path, hierarchy: &Hierarchy, root: &str) -> Result<InstanceLock, LockError> {
        let path = dir.join(lock_name(hierarchy, root)?);
        create_dir(dir)?;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| IoError::new("open", &path, e))?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    let pid = holder(&file);
                    return Err(LockError::Held { pid, mount: hierarchy.mount().to_path_buf(), root: root.into(), lock: path });
                }
                Err(e) => return Err(IoError::new("flock", &path, e).into()),
            }
            // A holder that exited removed the file after we opened it: the
            // lock taken is on a file nobody else can find. Take the new one.
            let ours = file.metadata().map(|m| m.ino()).ok();
            if std::fs::symlink_metadata(&path).map(|m| m.ino()).ok() != ours {
                continue;
            }
            write_pid(&file, &path)?;
            return Ok(InstanceLock { _file: file, path });
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `<st_dev of the mount point>-<inode of the root cgroup>.lock`.
fn lock_name(hierarchy: &Hierarchy, root: &str) -> Result<String, IoError> {
    let mount = hierarchy.mount();
    let dev = std::fs::metadata(mount).map_err(|e| IoError::new("stat", mount, e))?.dev();
    Ok(format!("{dev}-{}.lock", hierarchy.id(root)?))
}

fn create_dir(dir: &Path) -> Result<(), IoError> {
    match DirBuilder::new().recursive(true).mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IoError::new("mkdir", dir, e)),
    }
}

fn write_pid(file: &File, path: &Path) -> Result<(), IoError> {
    file.set_len(0).map_err(|e| IoError::new("truncate", path, e))?;
    file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0).map_err(|e| IoError::new("write", path, e))
}

/// The pid the holder wrote, if it has written one yet.
fn holder(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::hierarchy::Version;
    use crate::sys::procfs::HierarchyKey;

    #[test]
    fn second_claim_on_one_root_fails_naming_the_holder() {
        let mount = tempfile::tempdir().unwrap();
        std::fs::create_dir(mount.path().join("a")).unwrap();
        let locks = tempfile::tempdir().unwrap();
        let dir = locks.path().join("run");
        let h = Hierarchy::new(mount.path().to_path_buf(), Version::V1, HierarchyKey::V1(7));
        let first = InstanceLock::acquire(&dir, &h, "/").unwrap();
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let e = InstanceLock::acquire(&dir, &h, "/").unwrap_err();
        assert!(matches!(&e, LockError::Held { pid: Some(p), .. } if *p == std::process::id()), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())) && msg.contains("root /"), "{msg}");
        // Another root of the same hierarchy is another claim.
        let other = InstanceLock::acquire(&dir, &h, "/a").unwrap();
        assert_ne!(other.path(), first.path());
        drop(first);
        InstanceLock::acquire(&dir, &h, "/").unwrap();
    }
}
