//! Timers: one heap, jobs by key, generic over what a job is (the daemon's
//! is `super::Timer`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Timers in due order.
pub(super) struct Timers<J> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    jobs: HashMap<u64, J>,
    next: u64,
}

impl<J> Default for Timers<J> {
    fn default() -> Timers<J> {
        Timers { heap: BinaryHeap::new(), jobs: HashMap::new(), next: 0 }
    }
}

impl<J> Timers<J> {
    /// Runs `job` after `after`.
    pub(super) fn schedule(&mut self, after: Duration, job: J) {
        self.next += 1;
        self.heap.push(Reverse((Instant::now() + after, self.next)));
        self.jobs.insert(self.next, job);
    }

    /// How long until the next timer is due.
    pub(super) fn next_due(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
    }

    /// The next job due by `now`, removed.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<J> {
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
        t.schedule(Duration::from_secs(60), "sweep");
        t.schedule(Duration::ZERO, "cleanup");
        t.schedule(Duration::ZERO, "report");
        assert_eq!(t.pop_due(Instant::now()), Some("cleanup"));
        assert_eq!(t.pop_due(Instant::now()), Some("report"));
        assert_eq!(t.pop_due(Instant::now()), None);
        assert!(t.next_due().unwrap() > Duration::from_secs(59));
    }
}
