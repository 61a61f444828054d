//! The status file a running daemon keeps and `nsgroup status` reads: its
//! contents, where it lives, and the atomic write (a temporary file renamed
//! over it) that the status file and the metrics textfile share.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::cgroupfs::Hierarchy;

/// The daemon's counters, as published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events: u64,
    pub placements: u64,
    pub nodes_created: u64,
    pub nodes_removed: u64,
    pub reconciles: u64,
    pub refusals: u64,
    pub dropped_gone: u64,
    pub dropped_reused: u64,
    pub dropped_other_writer: u64,
    pub ring_dropped: u64,
    pub coalesced_entries: u64,
    pub history_dropped: u64,
    pub live_nodes: u64,
    /// Per bucket of the latency histogram's buckets (not cumulative), then
    /// above them.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_us: u64,
    pub latency_count: u64,
}

/// The status file: what `nsgroup status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub version: String,
    pub started_unix: u64,
    pub written_unix: u64,
    pub hierarchy: String,
    pub cgroup_version: String,
    pub root: String,
    pub own_hierarchy: bool,
    /// The mount's options and its superblock's, from /proc/self/mountinfo.
    pub mount_options: String,
    pub favordynmods: bool,
    /// The event source and its hooks.
    pub source: String,
    pub syscall_tracepoints: bool,
    /// Why these hooks: the fallbacks taken.
    pub hooks_why: String,
    /// What tracking costs the machine, one line each.
    pub costs: Vec<String>,
    pub metrics_listen: Option<String>,
    pub metrics_file: Option<String>,
    pub history_database: Option<String>,
    pub counters: Counters,
}

/// The status file of `root` in `hierarchy`: `<dir>/<st_dev of the mount
/// point>-<inode of the root cgroup>.status.json`, like the lock file.
pub fn status_path(dir: &Path, hierarchy: &Hierarchy, root: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(hierarchy.mount())?.dev();
    let id = hierarchy.id(root).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(dir.join(format!("{dev}-{id}.status.json")))
}

/// Writes `path` through a temporary file in its directory and a rename.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    let _ = std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.status.json");
        write_atomically(&path, b"old", 0o600).unwrap();
        write_atomically(&path, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["x.status.json"]);
    }
}
