//! The daemon's pace: under a low rate of entries it wakes per event and
//! places at once (under SCHED_FIFO if configured); under a high rate it looks
//! at the ring once per batch window, holds entries for a window so that a
//! task gone by then gets no node, and runs under the normal scheduler.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tracing::debug;

use crate::bpf::{Event, EventKind};
use crate::source::monotonic_ns;

/// How many of the latest entries the rate must be high over to start
/// coalescing: enough that a catch-up burst after a stall of the workload is
/// not taken for a storm.
const ENTER_OVER: usize = 64;
/// How many of the latest entries the rate must be low over to stop: few, so
/// that a burst that did start it costs few entries the window's delay.
const LEAVE_OVER: usize = 16;

/// When the latest entries happened (their BPF timestamps, so that the
/// daemon's batching of its reads does not matter).
#[derive(Default)]
struct Arrivals {
    recent: VecDeque<u64>,
}

impl Arrivals {
    fn note(&mut self, ktime_ns: u64) {
        if self.recent.len() == ENTER_OVER {
            self.recent.pop_front();
        }
        self.recent.push_back(ktime_ns);
    }

    /// The mean gap between the latest `n` entries, once `n` are seen.
    fn mean_gap(&self, n: usize) -> Option<Duration> {
        let len = self.recent.len();
        if n < 2 || len < n {
            return None;
        }
        let span = self.recent[len - 1].saturating_sub(self.recent[len - n]);
        Some(Duration::from_nanos(span / (n as u64 - 1)))
    }

    /// How long ago the latest entry happened.
    fn since_last(&self) -> Option<Duration> {
        self.recent.back().map(|&t| Duration::from_nanos(monotonic_ns().saturating_sub(t)))
    }
}

/// The tasks (tid, start) of a batch that exited within it and forked no
/// child in it: placing them would only make a node to remove at once.
fn short_lived(batch: &[Event]) -> HashSet<(u32, u64)> {
    let parents: HashSet<u32> =
        batch.iter().filter_map(|e| if let EventKind::Fork { ptid } = e.kind { Some(ptid) } else { None }).collect();
    batch.iter().filter(|e| e.kind == EventKind::Exit && !parents.contains(&e.tid)).map(|e| (e.tid, e.start_ns)).collect()
}

/// The pace's state: the latest entries' times, the mode, and the entries
/// held back for the batch window.
pub(super) struct Pace {
    arrivals: Arrivals,
    /// Whether the daemon runs in its high-rate mode.
    busy: bool,
    /// Whether heavy work (a reconcile) is under way: never under SCHED_FIFO.
    heavy: bool,
    /// Events held back for the batch window (high-rate mode), in order.
    held: Vec<Event>,
    window_ns: u64,
    /// The mean gap between entries below which the rate is high.
    enter_gap: Duration,
    realtime_priority: u8,
}

impl Pace {
    pub(super) fn new(batch_window_us: u64, coalesce_above_per_second: u32, realtime_priority: u8) -> Pace {
        Pace {
            arrivals: Arrivals::default(),
            busy: false,
            heavy: false,
            held: Vec::new(),
            window_ns: batch_window_us * 1000,
            enter_gap: Duration::from_secs(1) / coalesce_above_per_second.max(1),
            realtime_priority,
        }
    }

    /// Moves the held events to the front of `batch` (they come first).
    pub(super) fn release_held(&mut self, batch: &mut Vec<Event>) {
        batch.append(&mut self.held);
    }

    /// Splits a batch, in order, into the events to handle now (into
    /// `now`) and those held back: under a high rate, entries younger than
    /// the batch window are held (with every later event of the same task,
    /// and the children it forks) until the window has passed, so that a
    /// task gone by then gets no node. Entries of tasks that exited within
    /// the batch and forked nothing are dropped: their tids are returned.
    pub(super) fn split(&mut self, batch: &mut Vec<Event>, now: &mut Vec<Event>) -> Vec<u32> {
        let hold = self.coalescing();
        let clock = monotonic_ns();
        let short_lived = short_lived(batch);
        let mut held_tids = HashSet::new();
        let mut coalesced = Vec::new();
        for ev in batch.drain(..) {
            let entry = ev.kind != EventKind::Exit;
            if entry && short_lived.contains(&(ev.tid, ev.start_ns)) {
                coalesced.push(ev.tid);
                continue;
            }
            let young = entry && clock.saturating_sub(ev.ktime_ns) < self.window_ns;
            let follows_held = held_tids.contains(&ev.tid) || matches!(ev.kind, EventKind::Fork { ptid } if held_tids.contains(&ptid));
            if hold && (young || follows_held) {
                held_tids.insert(ev.tid);
                self.held.push(ev);
                continue;
            }
            now.push(ev);
        }
        coalesced
    }

    /// After an entry at `ktime_ns`: into the high-rate mode when the rate
    /// over the latest [`ENTER_OVER`] entries is high, out of it when the
    /// rate over the latest [`LEAVE_OVER`] is low (counting afresh from then
    /// on). `true` when the mode changed.
    pub(super) fn note_entry(&mut self, ktime_ns: u64) -> bool {
        self.arrivals.note(ktime_ns);
        let (enter, leave) = self.gaps();
        if !self.busy && self.arrivals.mean_gap(ENTER_OVER).is_some_and(|gap| gap < enter) {
            return self.set_busy(true);
        }
        if self.busy && self.arrivals.mean_gap(LEAVE_OVER).is_some_and(|gap| gap > leave) {
            self.arrivals = Arrivals::default();
            return self.set_busy(false);
        }
        false
    }

    /// A look at the ring found nothing new. In the high-rate mode, once no
    /// entry has come for as long as [`LEAVE_OVER`] entries at the low rate
    /// would take, the rate is low again: back to waking per event. (A single
    /// quiet window, a stall of the workload, does not end it.) `true` when
    /// the mode changed.
    pub(super) fn quiet_tick(&mut self) -> bool {
        if !self.busy || !self.held.is_empty() {
            return false;
        }
        let quiet_enough = self.gaps().1 * LEAVE_OVER as u32;
        if self.arrivals.since_last().is_none_or(|quiet| quiet > quiet_enough) {
            self.arrivals = Arrivals::default();
            return self.set_busy(false);
        }
        false
    }

    /// Heavy work (a reconcile) starts or ends.
    pub(super) fn set_heavy(&mut self, heavy: bool) {
        self.heavy = heavy;
    }

    /// How long until the oldest held event's window has passed.
    pub(super) fn held_until(&self) -> Option<Duration> {
        let oldest = self.held.iter().map(|e| e.ktime_ns).min()?;
        Some(Duration::from_nanos((oldest + self.window_ns).saturating_sub(monotonic_ns())))
    }

    /// Whether entries are held for the batch window and the ring is looked
    /// at on a timer: in the high-rate mode, unless the window is 0.
    pub(super) fn coalescing(&self) -> bool {
        self.busy && self.window_ns > 0
    }

    /// Idle or under a low rate: woken per event, under SCHED_FIFO (if
    /// configured), to place at once; never during heavy work. Under a high
    /// rate: the normal scheduler, so that the daemon does not preempt the
    /// very tasks it places (a real-time wakeup stays on its CPU instead of
    /// taking an idle one), and no wakeups from the ring (it looks once per
    /// window). `None`: the normal scheduler (also when no real-time
    /// priority is configured).
    pub(super) fn realtime(&self) -> Option<u32> {
        (self.realtime_priority != 0 && !self.busy && !self.heavy).then_some(u32::from(self.realtime_priority))
    }

    /// SCHED_FIFO was refused (no CAP_SYS_NICE, RT group scheduling
    /// without a budget): the normal scheduler from now on.
    pub(super) fn realtime_refused(&mut self) {
        self.realtime_priority = 0;
    }

    /// The mean gap between entries below which the rate is high, and
    /// (with hysteresis: nine tenths of the rate) above which it is low again.
    fn gaps(&self) -> (Duration, Duration) {
        (self.enter_gap, self.enter_gap * 10 / 9)
    }

    fn set_busy(&mut self, busy: bool) -> bool {
        let changed = self.busy != busy;
        self.busy = busy;
        if changed {
            debug!(busy, "scheduling mode");
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nsset::NsSet;

    fn ev(kind: EventKind, tid: u32, ktime_ns: u64) -> Event {
        Event { ktime_ns, ..crate::testing::event(kind, tid, 1, NsSet::default(), NsSet::default()) }
    }

    #[test]
    fn a_task_that_exits_within_its_batch_is_coalesced_away_unless_it_forked() {
        let mut p = Pace::new(1000, 1250, 0);
        let now = monotonic_ns();
        let mut batch = vec![
            ev(EventKind::Unshare, 1, now),
            ev(EventKind::Exit, 1, now),
            ev(EventKind::Unshare, 2, now),
            ev(EventKind::Fork { ptid: 2 }, 3, now),
            ev(EventKind::Exit, 2, now),
        ];
        let mut handle = Vec::new();
        assert_eq!(p.split(&mut batch, &mut handle), [1]);
        let kept: Vec<_> = handle.iter().map(|e| (e.tid, e.kind)).collect();
        assert_eq!(kept, [(1, EventKind::Exit), (2, EventKind::Unshare), (3, EventKind::Fork { ptid: 2 }), (2, EventKind::Exit)]);
    }

    #[test]
    fn under_a_high_rate_young_entries_are_held_with_what_follows_them() {
        let mut p = Pace::new(1_000_000, 1250, 1);
        let now = monotonic_ns();
        assert_eq!(p.realtime(), Some(1), "idle: real-time");
        let mut changed = false;
        for i in 0..ENTER_OVER as u64 {
            changed |= p.note_entry(now + i * 1000);
        }
        assert!(changed && p.coalescing(), "1 µs apart: the high-rate mode");
        assert_eq!(p.realtime(), None, "busy: the normal scheduler");
        let mut batch = vec![ev(EventKind::Unshare, 1, now), ev(EventKind::Fork { ptid: 1 }, 2, now - 5_000_000_000), ev(EventKind::Exit, 9, now)];
        let mut handle = Vec::new();
        p.split(&mut batch, &mut handle);
        assert_eq!(handle.iter().map(|e| e.tid).collect::<Vec<_>>(), [9], "the fork follows its held parent");
        assert!(p.held_until().is_some());
        let mut again = Vec::new();
        p.release_held(&mut again);
        assert_eq!(again.iter().map(|e| e.tid).collect::<Vec<_>>(), [1, 2], "in order");
        assert!(!p.quiet_tick(), "a quiet moment right after the burst does not end it");
    }

    #[test]
    fn heavy_work_a_refusal_or_no_priority_mean_the_normal_scheduler() {
        let mut p = Pace::new(1000, 1250, 5);
        p.set_heavy(true);
        assert_eq!(p.realtime(), None);
        p.set_heavy(false);
        assert_eq!(p.realtime(), Some(5));
        p.realtime_refused();
        assert_eq!(p.realtime(), None, "refused once: not asked again");
        assert_eq!(Pace::new(1000, 1250, 0).realtime(), None, "no real-time priority configured");
    }

    #[test]
    fn the_rate_is_the_mean_gap_over_the_latest_entries() {
        let mut a = Arrivals::default();
        assert_eq!(a.mean_gap(LEAVE_OVER), None);
        for i in 0..ENTER_OVER as u64 - 1 {
            a.note(i * 100_000);
        }
        assert_eq!(a.mean_gap(ENTER_OVER), None, "too few entries to tell");
        assert_eq!(a.mean_gap(LEAVE_OVER), Some(Duration::from_micros(100)));
        a.note((ENTER_OVER as u64 - 1) * 100_000);
        assert_eq!(a.mean_gap(ENTER_OVER), Some(Duration::from_micros(100)));
        // A slow stretch shows in the short window at once, in the long one
        // only in part.
        let last = (ENTER_OVER as u64 - 1) * 100_000;
        for i in 1..LEAVE_OVER as u64 {
            a.note(last + i * 1_000_000);
        }
        assert_eq!(a.mean_gap(LEAVE_OVER), Some(Duration::from_millis(1)));
        assert!(a.mean_gap(ENTER_OVER).unwrap() < Duration::from_micros(500));
        assert!(a.since_last().is_some());
    }
}
