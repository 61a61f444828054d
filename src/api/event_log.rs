//! The shared log of event lines, addressed by stream position: each
//! event line is kept once for all subscribers, each of which holds only
//! its position in it ([`super::fanout`] fills it, [`super::conn`] sends
//! from it).

use std::collections::VecDeque;

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
