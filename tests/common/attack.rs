//! Helpers for the attack tests (tests/attack.rs) and the bounds they check:
//! the unprivileged attacker, namespace inodes and sets, a process's CPU
//! time, the nodes below a root watched as they come and go.

use std::path::PathBuf;
use std::time::Duration;

use super::harness::{cgroups_below, cpu_ticks, nobody_can_attack, AS_NOBODY};
use super::WORKLOAD;

/// The unprivileged attacker's uid and gid.
pub const NOBODY: u32 = 65534;

/// `args` run as uid and gid 65534 without supplementary groups.
pub fn as_nobody<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = AS_NOBODY.to_vec();
    v.extend_from_slice(args);
    v
}

/// Whether an attack test runs: `false` (it skips, saying why) without
/// root; panics with a clear message unless uid 65534 can run the workload
/// binary and create user (and UTS) namespaces here.
pub fn attacks_can_run() -> bool {
    if !super::privileged() {
        return false;
    }
    nobody_can_attack(WORKLOAD.as_ref()).unwrap_or_else(|e| panic!("{e:#}"));
    true
}

/// A namespace inode of a task.
pub fn ns_inode(tid: u32, kind: &str) -> u64 {
    ns_inode_of(tid, kind).unwrap_or_else(|| panic!("task {tid} has no {kind} namespace"))
}

/// A namespace inode of a task, `None` once it is gone.
pub fn ns_inode_of(tid: u32, kind: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{tid}/task/{tid}/ns/{kind}")).ok().map(|m| m.ino())
}

/// The test's own namespace set in the text form of node records
/// (`cgroup:…,ipc:…,…,uts:…`, ten kinds in order; 0 for a kind the kernel lacks).
pub fn own_set_text() -> String {
    use std::os::unix::fs::MetadataExt;
    const KINDS: [&str; 10] =
        ["cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "time_for_children", "user", "uts"];
    KINDS
        .iter()
        .map(|k| {
            let ino = std::fs::metadata(format!("/proc/thread-self/ns/{k}")).map_or(0, |m| m.ino());
            format!("{k}:{ino}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// User plus system CPU time of a process so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = cpu_ticks(pid).unwrap_or_else(|| panic!("no CPU time of process {pid} in /proc"));
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Samples the nodes below a root from a thread of its own, as often as it
/// can, and keeps the most seen at once and the deepest: bounds that must
/// hold at every moment, not only once the daemon has removed what emptied.
pub struct NodeWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl NodeWatch {
    /// Starts watching the cgroups named `node_*` below `root_dir`.
    pub fn start(root_dir: PathBuf) -> NodeWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut most, mut deepest) = (0, 0);
            loop {
                let last = flag.load(std::sync::atomic::Ordering::Relaxed);
                let (n, d) = count_nodes(&root_dir);
                most = most.max(n);
                deepest = deepest.max(d);
                if last {
                    return (most, deepest);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        NodeWatch { stop, thread: Some(thread) }
    }

    /// Stops (after one more sample) and returns the most nodes seen at
    /// once and the deepest level seen.
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many cgroups named `node_*` lie below `dir`, and the deepest level.
pub fn count_nodes(dir: &std::path::Path) -> (usize, usize) {
    let below = cgroups_below(dir);
    let nodes: Vec<&PathBuf> = below.iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("node_"))).collect();
    let deepest = nodes.iter().filter_map(|p| Some(p.strip_prefix(dir).ok()?.components().count())).max().unwrap_or(0);
    (nodes.len(), deepest)
}
