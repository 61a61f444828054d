//! End-to-end harness: a private cgroup hierarchy (or cgroup2 subtree) per
//! test, the real daemon binary, and processes the test starts itself.
//! Everything created is removed in Drop, also when the test fails. What
//! the benchmark suite needs as well is in [`harness`], which it shares.
// Every test binary uses a part of it only.
#![allow(dead_code, unused_imports)]

pub mod attack;
pub mod daemon;
pub mod events;
pub mod freezer;
pub mod harness;
pub mod hier;
pub mod host;
pub mod systemd;

pub use attack::*;
pub use daemon::*;
pub use events::*;
pub use freezer::*;
pub use hier::*;
pub use host::*;
pub use systemd::*;

use std::time::Duration;

pub const NSGROUP: &str = env!("CARGO_BIN_EXE_nsgroup");
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_nsgroup-workload");

/// Whether the end-to-end tests can run here (root); they say so when skipped.
pub fn privileged() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: end-to-end tests need root (real cgroups, namespaces and BPF)");
    }
    root
}

fn random_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}-{n}-{nanos:x}", std::process::id())
}

/// Polls `cond` every 10 ms for up to 30 s; the deadline only bounds a hang.
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    if !harness::poll_until(Duration::from_secs(30), Duration::from_millis(10), cond) {
        panic!("timed out waiting for {what}");
    }
}

/// The test's name (its thread's, under the libtest harness).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

/// Says on stderr what the current test skips and why (visible with
/// `cargo test -- --show-output`; scripts/vm-test lists them).
pub fn skip(why: &str) {
    eprintln!("skipped: {}: {why}", test_name());
}

/// Sends a signal to a process the test started.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig).unwrap();
}

/// SIGKILL to a process the test started, if it is still there.
fn sigkill(pid: u32) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::KILL);
}

/// A configuration file for `--config`; keep the directory while it is used.
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nsgroup.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.display().to_string();
    (dir, p)
}
