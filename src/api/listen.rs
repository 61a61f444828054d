//! The API socket on disk: one daemon owns a socket path at a time (an
//! exclusive `flock` on `<path>.lock` while it serves), a stale socket left by
//! a crashed daemon is replaced, and the socket gets its documented mode and
//! group. Dropping the [`Listening`] removes the socket.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::sys::error::IoError;

/// A bound socket, removed when dropped.
pub struct Listening {
    pub listener: UnixListener,
    path: PathBuf,
    _lock: File,
}

impl Listening {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What binding found.
pub enum Bound {
    Listening(Listening),
    /// Another process serves the path; its pid when it answered a connect.
    Taken { by: Option<u32> },
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("api.socket_group: no group \"{0}\" in /etc/group")]
    NoGroup(String),
}

/// The gid of a group given by name or number.
pub fn resolve_group(group: &str) -> Result<u32, ListenError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = fs::read_to_string("/etc/group").map_err(|e| IoError::new("read", "/etc/group", e))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == group).then(|| f.nth(1)?.parse().ok()).flatten()
        })
        .ok_or_else(|| ListenError::NoGroup(group.to_string()))
}

/// Binds `path` with `mode` (and group `gid`), unless another daemon serves it.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<Bound, ListenError> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| IoError::new("create directory", dir, e))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(|e| IoError::new("chmod", dir, e))?;
        }
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| IoError::new("open", &lock_path, e))?;
    if let Err(e) = flock(lock.as_fd(), FlockOperation::NonBlockingLockExclusive) {
        if e == rustix::io::Errno::WOULDBLOCK {
            return Ok(Bound::Taken { by: serving_pid(path) });
        }
        return Err(IoError::new("flock", &lock_path, e).into());
    }
    // The lock is ours: whatever is at the path is a leftover.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(IoError::new("remove stale socket", path, e).into()),
    }
    let listener = UnixListener::bind(path).map_err(|e| IoError::new("bind", path, e))?;
    let listening = Listening { listener, path: path.to_path_buf(), _lock: lock };
    if let Some(gid) = gid {
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(|e| IoError::new("chown", path, e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| IoError::new("chmod", path, e))?;
    Ok(Bound::Listening(listening))
}

/// The pid of the process serving `path`, if it answers a connect.
fn serving_pid(path: &Path) -> Option<u32> {
    let s = UnixStream::connect(path).ok()?;
    let cred = rustix::net::sockopt::socket_peercred(&s).ok()?;
    u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_per_path_and_stale_sockets_are_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/api.sock");
        let Bound::Listening(first) = bind(&path, 0o640, None).unwrap() else { panic!("free path") };
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        match bind(&path, 0o666, None).unwrap() {
            Bound::Taken { by } => assert_eq!(by, Some(std::process::id())),
            Bound::Listening(_) => panic!("two owners"),
        }
        drop(first);
        assert!(!path.exists(), "removed when dropped");
        // A crash leaves the socket file behind: the next owner replaces it.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let Bound::Listening(second) = bind(&path, 0o666, None).unwrap() else { panic!("a stale socket is no owner") };
        assert!(UnixStream::connect(second.path()).is_ok());
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(resolve_group("no-such-group-nsgroup"), Err(ListenError::NoGroup(_))));
    }
}
