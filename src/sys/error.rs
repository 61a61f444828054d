//! The one I/O error type of the system edge: the operation and the path
//! always travel with the cause.

use std::io;
use std::path::{Path, PathBuf};

/// An I/O failure on a path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// Wraps `source` with what was being done to which path.
    pub fn new(op: &'static str, path: impl AsRef<Path>, source: impl Into<io::Error>) -> IoError {
        IoError { op, path: path.as_ref().to_path_buf(), source: source.into() }
    }

    /// The task or cgroup is gone: a normal outcome, not a failure.
    pub fn is_vanished(&self) -> bool {
        vanished(&self.source)
    }
}

/// ENOENT, ESRCH and ENODEV (a removed cgroup's open files): the thing went
/// away while we looked.
pub fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV))
        || e.kind() == io::ErrorKind::NotFound
}

/// Turns "it vanished" into `Ok(None)`.
pub fn or_vanished<T>(r: Result<T, IoError>) -> Result<Option<T>, IoError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_vanished() => Ok(None),
        Err(e) => Err(e),
    }
}
