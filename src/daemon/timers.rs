//! The daemon's timers: one heap, jobs by key.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use crate::core::node::CgroupId;

/// Work the daemon does later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// A setns caller's set has settled.
    Settle(u32),
    /// Look for empty nodes whose exit events may have been lost.
    Sweep,
    /// Without BPF: rescan /proc; the interval (ms) backs off while nothing is found.
    Rescan(u64),
    /// See whether a node emptied; the attempt number backs off.
    Cleanup(CgroupId, u32),
    /// A reconcile asked for while the last one was too recent.
    Reconcile,
    /// Write the summaries of refusals and suppressed log lines.
    Report,
    /// Metrics, status file and counter log work (`metrics`).
    Ops(super::metrics::OpsJob),
    /// Tell the service manager the daemon is alive (`WATCHDOG=1`), and what it does.
    Watchdog(Duration),
}

/// Timers in due order.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    jobs: HashMap<u64, Timer>,
    next: u64,
}

impl Timers {
    /// Runs `job` after `after`.
    pub(super) fn schedule(&mut self, after: Duration, job: Timer) {
        self.next += 1;
        self.heap.push(Reverse((Instant::now() + after, self.next)));
        self.jobs.insert(self.next, job);
    }

    /// How long until the next timer is due.
    pub(super) fn next_due(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
    }

    /// The next job due by `now`, removed.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if let Some(job) = self.jobs.remove(&key) {
                return Some(job);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_come_due_in_order() {
        let mut t = Timers::default();
        t.schedule(Duration::from_secs(60), Timer::Sweep);
        t.schedule(Duration::ZERO, Timer::Cleanup(7, 1));
        t.schedule(Duration::ZERO, Timer::Report);
        assert_eq!(t.pop_due(Instant::now()), Some(Timer::Cleanup(7, 1)));
        assert_eq!(t.pop_due(Instant::now()), Some(Timer::Report));
        assert_eq!(t.pop_due(Instant::now()), None);
        assert!(t.next_due().unwrap() > Duration::from_secs(59));
    }
}
