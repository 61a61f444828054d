//! The status file a running daemon keeps and `nsgroup status` reads: its
//! contents (with the daemon's one counter struct, which the metrics and the
//! counter log line are made from too), where it lives, the mount options
//! it shows, and the atomic write (a temporary file renamed over it) that
//! the status file and the metrics textfile share.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::hierarchy::Hierarchy;

/// The upper bounds (seconds) of the event-to-moved latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// What the daemon counted, and the gauges published beside: one struct
/// for the status file, the metrics and the counter log line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Tasks the OOM killer killed in nodes, by node kind (`NodeRecord::kind`).
    #[serde(default)]
    pub oom_kills: BTreeMap<String, u64>,
    /// Nodes left unwatched by `watch.max_watches`.
    #[serde(default)]
    pub watches_skipped: u64,
    /// `[[pressure]]` triggers that fired, by resource.
    #[serde(default)]
    pub pressure_events: BTreeMap<String, u64>,
    /// Their actions done, by action (`freeze`, `kill`).
    #[serde(default)]
    pub pressure_actions: BTreeMap<String, u64>,
    /// Sandboxes whose user's manager was asked for a scope of their own, by
    /// result (`started`, `stayed`, `left`: it left its unit before its turn).
    #[serde(default)]
    pub user_scopes: BTreeMap<String, u64>,
    /// PSI triggers left unwritten by `watch.max_pressure_triggers`.
    #[serde(default)]
    pub triggers_skipped: u64,
    /// Per bucket of the latency histogram's buckets (not cumulative), then
    /// above them.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_us: u64,
    pub latency_count: u64,
    /// Per mirror (its controllers): tasks placed outside its root, so not
    /// mirrored (in the log line only).
    #[serde(skip)]
    pub not_mirrored: BTreeMap<String, u64>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            events: 0,
            placements: 0,
            nodes_created: 0,
            nodes_removed: 0,
            reconciles: 0,
            refusals: 0,
            dropped_gone: 0,
            dropped_reused: 0,
            dropped_other_writer: 0,
            ring_dropped: 0,
            coalesced_entries: 0,
            history_dropped: 0,
            live_nodes: 0,
            oom_kills: BTreeMap::new(),
            watches_skipped: 0,
            pressure_events: BTreeMap::new(),
            pressure_actions: BTreeMap::new(),
            triggers_skipped: 0,
            user_scopes: BTreeMap::new(),
            latency_buckets: vec![0; LATENCY_BUCKETS.len() + 1],
            latency_sum_us: 0,
            latency_count: 0,
            not_mirrored: BTreeMap::new(),
        }
    }
}

impl Counters {
    /// Counts one event-to-moved latency in its bucket.
    pub fn record_latency(&mut self, us: u64) {
        let secs = us as f64 / 1e6;
        let bucket = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        if let Some(n) = self.latency_buckets.get_mut(bucket) {
            *n += 1;
        }
        self.latency_sum_us += us;
        self.latency_count += 1;
    }
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

/// The options of the mount at `mount` (mount options, then superblock
/// options), from /proc/self/mountinfo.
pub fn mount_options(mount: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mount.to_str()?;
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        let point = f.get(4)?.replace("\\040", " ");
        if point != want {
            return None;
        }
        let superopts = right.split(' ').nth(2).unwrap_or("");
        Some(format!("{} {superopts}", f.get(5)?))
    })
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

    #[test]
    fn latencies_fall_in_the_first_bucket_they_fit_and_the_mirrors_stay_out_of_the_file() {
        let mut c = Counters::default();
        for us in [50, 51, 2500, 20_000_000] {
            c.record_latency(us);
        }
        assert_eq!((c.latency_buckets[0], c.latency_buckets[1], c.latency_buckets[5], c.latency_buckets[16]), (1, 1, 1, 1));
        assert_eq!((c.latency_count, c.latency_sum_us), (4, 20_002_601));
        c.not_mirrored.insert("memory".into(), 2);
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("not_mirrored").is_none(), "{json}");
        assert_eq!(json["latency_buckets"].as_array().map(Vec::len), Some(LATENCY_BUCKETS.len() + 1));
        let back: Counters = serde_json::from_value(json).unwrap();
        assert_eq!(back.latency_count, 4);
    }
}
