//! The daemon's side of the API server: [`Publisher::publish`] hands an
//! event to the server thread through a queue bounded in count and in
//! bytes, never blocking, and costing an atomic load while nobody
//! subscribes; [`Publisher::flush`] wakes the server once per turn of the
//! daemon's loop.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use super::proto::ApiEvent;

/// Events queued from the daemon to the API thread.
const EVENT_QUEUE: usize = 65536;
/// What the queued events may hold, as [`queued_cost`] estimates it.
const EVENT_QUEUE_BYTES: usize = 16 << 20;
/// Counters, logged when the server stops and every minute something changed.
#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub refused_connections: AtomicU64,
    pub malformed: AtomicU64,
    pub too_long: AtomicU64,
    /// Requests that waited for a slot (their owner's share, or all, under way).
    pub deferred: AtomicU64,
    pub timeouts: AtomicU64,
    pub dropped_slow_subscribers: AtomicU64,
    /// Connections dropped because the server's memory budget was spent.
    pub dropped_over_budget: AtomicU64,
    pub events: AtomicU64,
}

/// State shared by the daemon's side and the server thread.
pub(super) struct Shared {
    pub(super) subscribers: AtomicUsize,
    /// Events in the queue: at most [`EVENT_QUEUE`], holding at most
    /// [`EVENT_QUEUE_BYTES`] (the queue itself grows on demand, so an idle
    /// server holds no room for them).
    pub(super) queued: AtomicUsize,
    pub(super) queued_bytes: AtomicUsize,
    /// Events the daemon could not queue (queue full).
    pub(super) lost: AtomicU64,
    pub(super) wake_pending: AtomicBool,
    pub(super) stop: AtomicBool,
    pub(super) counters: Counters,
}

/// What a queued event holds, roughly: itself and its strings, and a
/// B-tree node per map.
pub(super) fn queued_cost(event: &ApiEvent) -> usize {
    const MAP: usize = 512;
    std::mem::size_of::<ApiEvent>()
        + match event {
            ApiEvent::NodeCreated { path, creator, .. } => path.len() + creator.comm.len() + MAP,
            ApiEvent::NodeRemoved { path, creator, usage, .. } => {
                path.len() + creator.comm.len() + 2 * MAP + usage.keys().map(String::len).sum::<usize>()
            }
            ApiEvent::TaskPlaced { comm, path, .. } => comm.len() + path.len(),
            ApiEvent::LimitsApplied { path, file, value, .. } => path.len() + file.len() + value.len(),
            ApiEvent::Reconcile { why, .. } => why.len(),
            ApiEvent::UserScope(u) => {
                std::mem::size_of::<super::proto::UserScopeView>() + u.origin.len() + u.scope.len() + u.comm.len() + u.error.as_ref().map_or(0, String::len)
            }
            ApiEvent::Pressure(p) => {
                std::mem::size_of::<super::proto::PressureView>()
                    + p.path.len()
                    + p.creator.comm.len()
                    + p.trigger.len()
                    + p.done.as_ref().map_or(0, String::len)
                    + p.error.as_ref().map_or(0, String::len)
            }
            ApiEvent::OomKill(k) => {
                std::mem::size_of::<super::proto::OomKillView>()
                    + k.path.len()
                    + k.creator.comm.len()
                    + MAP
                    + k.victim.as_ref().map_or(0, |v| v.comm.len())
                    + k.memory_max.as_ref().map_or(0, String::len)
            }
            ApiEvent::Checkpointed { path, dir, .. } => path.len() + dir.len(),
            ApiEvent::Restored { path, dir, from_path, .. } => path.len() + dir.len() + from_path.len(),
            ApiEvent::Overflow { .. } | ApiEvent::Lost { .. } => 0,
        }
}

/// The daemon's (and the workers') handle for publishing events and waking the server.
#[derive(Clone)]
pub struct Publisher {
    tx: Sender<(ApiEvent, usize)>,
    pub(super) shared: Arc<Shared>,
    pub(super) wake: Arc<UnixStream>,
}

/// What the server thread takes from the queue: each event with its [`queued_cost`].
pub(super) type Queued = Receiver<(ApiEvent, usize)>;

impl Publisher {
    /// A publisher waking the server through `wake`, and the server's end of the queue.
    pub(super) fn new(wake: UnixStream) -> (Publisher, Queued) {
        let shared = Arc::new(Shared {
            subscribers: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            wake_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let (tx, events) = mpsc::channel();
        (Publisher { tx, shared, wake: Arc::new(wake) }, events)
    }

    /// Whether anybody subscribes: events are only built when so.
    pub fn wants_events(&self) -> bool {
        self.shared.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Queues an event for the subscribers; never blocks. A full queue
    /// counts the event as lost (subscribers are told how many).
    pub fn publish(&self, event: ApiEvent) {
        if !self.wants_events() {
            return;
        }
        let cost = queued_cost(&event);
        let s = &self.shared;
        let full = s.queued.fetch_add(1, Ordering::Relaxed) >= EVENT_QUEUE;
        let too_big = s.queued_bytes.fetch_add(cost, Ordering::Relaxed) + cost > EVENT_QUEUE_BYTES;
        if full || too_big {
            s.queued.fetch_sub(1, Ordering::Relaxed);
            s.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            s.lost.fetch_add(1, Ordering::Relaxed);
        } else if self.tx.send((event, cost)).is_err() {
            // The server has stopped.
            s.queued.fetch_sub(1, Ordering::Relaxed);
            s.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            return;
        }
        s.wake_pending.store(true, Ordering::Relaxed);
    }

    /// Wakes the server if events were queued since the last flush (one
    /// non-blocking write; the daemon calls it once per turn of its loop).
    pub fn flush(&self) {
        if self.shared.wake_pending.swap(false, Ordering::Relaxed) {
            let _ = (&*self.wake).write(&[1]);
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_queued_without_subscribers_and_a_full_queue_counts_the_rest_as_lost() {
        let (wake, _server_end) = UnixStream::pair().unwrap();
        wake.set_nonblocking(true).unwrap();
        let (p, events) = Publisher::new(wake);
        p.publish(ApiEvent::Overflow { lost: 1 });
        assert!(events.try_recv().is_err(), "nobody subscribes: nothing is built or queued");
        p.shared.subscribers.store(1, Ordering::Relaxed);
        for _ in 0..EVENT_QUEUE + 3 {
            p.publish(ApiEvent::Overflow { lost: 1 });
        }
        assert_eq!(p.shared.queued.load(Ordering::Relaxed), EVENT_QUEUE);
        assert_eq!(p.shared.lost.load(Ordering::Relaxed), 3);
        // Bounded in bytes too: large events fill it before the count does.
        while events.try_recv().is_ok() {}
        p.shared.queued.store(0, Ordering::Relaxed);
        p.shared.queued_bytes.store(0, Ordering::Relaxed);
        let big = ApiEvent::Reconcile { why: "x".repeat(64 << 10), examined: 0, moved: 0, created: 0, elapsed_ms: 0 };
        for _ in 0..1000 {
            p.publish(big.clone());
        }
        let queued = p.shared.queued.load(Ordering::Relaxed);
        assert!(queued < 1000 && queued * queued_cost(&big) <= EVENT_QUEUE_BYTES, "{queued} queued");
        assert_eq!(p.shared.lost.load(Ordering::Relaxed), 3 + 1000 - queued as u64);
    }
}
