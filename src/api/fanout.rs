//! The event fan-out: every event line is serialized once, into a log that
//! all subscribers share, and each subscriber holds only its position in it.
//! The log keeps what the subscriber most behind has not been sent yet, so
//! its memory is bounded by how far behind a subscriber may fall
//! ([`SUBSCRIBER_BUFFER`]), not by the number of subscribers: a thousand
//! subscribers that never read cost one log, not a thousand copies. Per
//! event the work is its serialization; per batch of events, one pass over
//! the subscribers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::conn::Conn;
use super::event_log::EventLog;
use super::events::{Queued, Shared};
use super::proto::{event_line, line_of, ApiEvent};

/// Unsent events a subscriber may have before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1 << 20;
/// Event lines serialized into one batch of the log (then sent).
const BATCH_BYTES: usize = 64 << 10;
/// Event lines taken from the queue per turn of the server's loop: then the
/// sockets get their turn, so that a reading subscriber keeps up with a burst.
const EVENTS_PER_TURN: usize = SUBSCRIBER_BUFFER / 4;

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
