//! The event fan-out: every event line is serialized once, into a log that
//! all subscribers share, and each subscriber holds only its position in it.
//! The log keeps what the subscriber most behind has not been sent yet, so
//! its memory is bounded by how far behind a subscriber may fall
//! ([`SUBSCRIBER_BUFFER`]), not by the number of subscribers: a thousand
//! subscribers that never read cost one log, not a thousand copies. Per
//! event the work is its serialization; per batch of events, one pass over
//! the subscribers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use super::conn::Conn;
use super::proto::{event_line, ApiEvent};
use super::publisher::{Queued, Shared};
use super::workers::line_of;

/// Unsent events a subscriber may have before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1 << 20;
/// Event lines serialized into one batch of the log (then sent).
const BATCH_BYTES: usize = 64 << 10;
/// Event lines taken from the queue per turn of the server's loop: then the
/// sockets get their turn, so that a reading subscriber keeps up with a burst.
const EVENTS_PER_TURN: usize = SUBSCRIBER_BUFFER / 4;

/// Lines appended together: whole event lines, so a batch's start is a line
/// boundary.
struct Batch {
    /// Position of its first byte in the stream (bytes since the server started).
    start: u64,
    bytes: Vec<u8>,
}

/// The shared log of event lines, addressed by stream position.
#[derive(Default)]
pub struct EventLog {
    batches: VecDeque<Batch>,
    /// Position just past the last byte appended.
    head: u64,
    /// Bytes the batches hold (their allocations).
    held: usize,
}

impl EventLog {
    /// Position just past the latest event line: where a new subscriber starts.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The bytes the log holds.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Appends whole event lines.
    pub fn append(&mut self, mut bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        bytes.shrink_to_fit();
        self.held += bytes.capacity();
        let start = self.head;
        self.head += bytes.len() as u64;
        self.batches.push_back(Batch { start, bytes });
    }

    /// The batch holding position `at`, by index.
    fn index_of(&self, at: u64) -> Option<usize> {
        let i = self.batches.partition_point(|b| b.start + b.bytes.len() as u64 <= at);
        (i < self.batches.len() && self.batches[i].start <= at).then_some(i)
    }

    /// The bytes from `at` to the end of its batch; empty at the head.
    /// `None` when `at` was trimmed away (its subscriber was dropped).
    pub fn from(&self, at: u64) -> Option<&[u8]> {
        if at == self.head {
            return Some(&[]);
        }
        let b = &self.batches[self.index_of(at)?];
        Some(&b.bytes[(at - b.start) as usize..])
    }

    /// Whether `at` lies between two lines (an answer may go out there).
    pub fn at_line_start(&self, at: u64) -> bool {
        at == self.head || self.index_of(at).is_some_and(|i| self.batches[i].start == at)
    }

    /// Forgets every batch that ends at or before `at` (the position of
    /// the subscriber most behind; the head when nobody subscribes).
    pub fn trim_to(&mut self, at: u64) {
        while let Some(b) = self.batches.front() {
            if b.start + b.bytes.len() as u64 > at {
                break;
            }
            self.held -= b.bytes.capacity();
            self.batches.pop_front();
        }
        if self.batches.is_empty() {
            self.batches = VecDeque::new();
        }
    }
}

/// The server's side of the events: the queue from the daemon, their
/// numbers, and the log they are sent from.
pub(super) struct Fanout {
    pub(super) log: EventLog,
    events: Queued,
    /// The sequence number of the latest event.
    seq: u64,
    /// Events lost so far, as subscribers were told.
    seen_lost: u64,
}

impl Fanout {
    pub(super) fn new(events: Queued) -> Fanout {
        Fanout { log: EventLog::default(), events, seq: 0, seen_lost: 0 }
    }

    /// The sequence number of the latest event (a new subscriber's first is the next).
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Serializes queued events into the log, at most [`EVENTS_PER_TURN`]
    /// bytes, a `lost` line where the daemon could not queue some, and sends
    /// each batch to every subscriber that reads. The bytes appended.
    pub(super) fn take(&mut self, shared: &Shared, conns: &mut HashMap<u64, Conn>) -> usize {
        let mut taken = 0;
        while taken < EVENTS_PER_TURN {
            let mut bytes = Vec::new();
            let mut count = 0;
            while bytes.len() < BATCH_BYTES {
                let Ok((ev, cost)) = self.events.try_recv() else { break };
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                shared.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
                self.seq += 1;
                bytes.extend(line_of(&event_line(self.seq, &ev)));
                count += 1;
            }
            let lost = shared.lost.load(Ordering::Relaxed);
            if lost > self.seen_lost {
                self.seq += 1;
                bytes.extend(line_of(&event_line(self.seq, &ApiEvent::Lost { events: lost - self.seen_lost })));
                self.seen_lost = lost;
                count += 1;
            }
            if bytes.is_empty() {
                break;
            }
            shared.counters.events.fetch_add(count, Ordering::Relaxed);
            taken += bytes.len();
            self.log.append(bytes);
            for c in conns.values_mut().filter(|c| c.cursor.is_some() && !c.stalled && !c.drop_now) {
                if c.flush(&self.log).is_err() {
                    c.drop_now = true;
                }
            }
        }
        taken
    }

    /// Marks the subscribers more than [`SUBSCRIBER_BUFFER`] behind to be dropped; their keys.
    pub(super) fn too_slow(&self, conns: &mut HashMap<u64, Conn>) -> Vec<u64> {
        let mut slow = Vec::new();
        for (k, c) in conns.iter_mut().filter(|(_, c)| !c.drop_now) {
            if c.behind(&self.log).is_some_and(|b| b > SUBSCRIBER_BUFFER) {
                c.drop_now = true;
                slow.push(*k);
            }
        }
        slow
    }

    /// What the log will hold for the subscriber `most_behind` bytes behind
    /// (`None`: nobody subscribes): from there, and at most a batch before it.
    pub(super) fn held_for(&self, most_behind: Option<usize>) -> usize {
        most_behind.map_or(0, |b| (b + BATCH_BYTES).min(self.log.held()))
    }

    /// Forgets what every subscriber has been sent; how many subscribe.
    pub(super) fn trim(&mut self, conns: &HashMap<u64, Conn>) -> usize {
        let cursors = conns.values().filter_map(|c| c.cursor);
        let subscribers = cursors.clone().count();
        self.log.trim_to(cursors.min().unwrap_or(self.log.head()));
        subscribers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_read_from_their_position_and_the_log_keeps_only_what_is_unsent() {
        let mut log = EventLog::default();
        assert_eq!(log.from(0), Some(&b""[..]));
        log.append(b"a1\na2\n".to_vec());
        log.append(b"b1\n".to_vec());
        assert_eq!(log.head(), 9);
        assert_eq!(log.from(0), Some(&b"a1\na2\n"[..]));
        assert_eq!(log.from(4), Some(&b"2\n"[..]));
        assert_eq!(log.from(6), Some(&b"b1\n"[..]));
        assert_eq!(log.from(9), Some(&b""[..]));
        assert!(log.at_line_start(0) && log.at_line_start(6) && log.at_line_start(9));
        assert!(!log.at_line_start(4), "inside a batch, mid-line or not, answers wait");
        assert_eq!(log.held(), 9);
        // The one most behind is at 4: the first batch stays.
        log.trim_to(4);
        assert_eq!(log.from(0), Some(&b"a1\na2\n"[..]));
        log.trim_to(6);
        assert_eq!(log.from(0), None, "trimmed away");
        assert_eq!(log.from(6), Some(&b"b1\n"[..]));
        assert_eq!(log.held(), 3);
        log.trim_to(log.head());
        assert_eq!(log.held(), 0);
        assert_eq!(log.from(9), Some(&b""[..]));
        assert_eq!(log.from(3), None);
        log.append(Vec::new());
        assert_eq!(log.head(), 9);
    }
}
