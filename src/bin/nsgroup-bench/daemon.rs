//! What the suite reads of the daemons it starts (the shared
//! [`DaemonProcess`]): the figures of their logs, their CPU time, wakeups
//! and memory; and a round under a fresh daemon.

use std::time::Duration;

use anyhow::Result;

use crate::harness::{cpu_ticks, DaemonProcess};
use crate::hierarchy::Bench;

/// How long the machine is left alone before each timed round (deferred
/// kernel work of the previous round: namespace and cgroup teardown, BPF
/// program release).
pub const SETTLE: Duration = Duration::from_millis(300);

/// A ` key=value` figure from the last line of a daemon log that has it.
pub fn figure(log: &str, key: &str) -> Option<u64> {
    let pat = format!(" {key}=");
    log.lines().rev().find_map(|l| l.split(&pat).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

/// The daemon's own event-to-moved p50, p99 and max (µs), from its log.
pub fn latency_figures(log: &str) -> [u64; 3] {
    ["latency_p50_us", "latency_p99_us", "latency_max_us"].map(|k| figure(log, k).unwrap_or(0))
}

/// What the suite reads of a daemon it started (beside the shared harness),
/// and how it stops one.
pub trait Measured {
    /// A `key=value` figure from the last log line that has it.
    fn figure(&self, key: &str) -> Option<u64>;

    /// User + system CPU time in ms, and (voluntary + involuntary) context switches.
    fn cpu_and_wakeups(&self) -> (u64, u64);

    /// Time on a CPU so far, in ns, summed over the daemon's threads
    /// (`/proc/<pid>/task/*/schedstat`; exact, where utime + stime count
    /// in clock ticks).
    fn run_time_ns(&self) -> u64;

    /// The number of a line of the daemon's /proc status (`VmRSS:` and
    /// `VmHWM:` in KiB, `voluntary_ctxt_switches:`); 0 without it.
    fn status_field(&self, field: &str) -> u64;

    /// SIGTERM; how long the daemon took to exit (`None`: not within
    /// `limit`, then killed) and how it exited.
    fn stop_within(&mut self, limit: Duration) -> Result<(Option<Duration>, String)>;

    /// SIGTERM, and the log once the daemon has exited.
    fn stop(self) -> Result<String>
    where
        Self: Sized;
}

impl Measured for DaemonProcess {
    fn figure(&self, key: &str) -> Option<u64> {
        figure(&self.log_text(), key)
    }

    fn cpu_and_wakeups(&self) -> (u64, u64) {
        let cpu_ms = cpu_ticks(self.pid()).unwrap_or(0) * 1000 / rustix::param::clock_ticks_per_second();
        (cpu_ms, self.status_field("voluntary_ctxt_switches:") + self.status_field("nonvoluntary_ctxt_switches:"))
    }

    fn run_time_ns(&self) -> u64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).into_iter().flatten().flatten();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    }

    fn stop_within(&mut self, limit: Duration) -> Result<(Option<Duration>, String)> {
        let (took, status) = self.terminate_within(limit)?;
        Ok((took, status.to_string()))
    }

    fn stop(mut self) -> Result<String> {
        self.terminate()?;
        Ok(self.log_text())
    }
}

/// Runs `f` under a fresh daemon, left alone for [`SETTLE`] after it is
/// ready; stops it and removes the nodes it leaves. `f`'s result and the log.
pub fn under_daemon<T>(b: &Bench, extra: &[&str], f: impl FnOnce(&DaemonProcess) -> Result<T>) -> Result<(T, String)> {
    let d = b.start(extra)?;
    std::thread::sleep(SETTLE);
    let out = f(&d)?;
    let log = d.stop()?;
    b.wait_no_nodes(Duration::from_secs(10));
    b.remove_nodes();
    Ok((out, log))
}
