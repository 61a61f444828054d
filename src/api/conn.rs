//! One client connection of the API server: the bytes received and not yet
//! taken as request lines, the answers not yet sent, and — for a subscriber —
//! its position in the shared event log ([`super::event_log`]). Answers and
//! event lines go out whole, each between two lines of the other.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::capacity::Class;
use super::event_log::EventLog;
use super::peer::Peer;
use super::proto::MAX_LINE;
use super::workers::Job;

/// Unsent answers beyond which a connection's further requests are not read.
const ANSWER_BACKLOG: usize = 4 << 20;
/// Stands in the input for a line that was too long (answered in its turn).
pub const TOO_LONG_MARK: &[u8] = b"\0too long\n";
/// An input buffer this large is given back once it is empty.
const INPUT_KEEP: usize = 16 << 10;

/// One client.
pub struct Conn {
    pub stream: UnixStream,
    pub peer: Result<Peer, String>,
    /// Whom it counts as (fixed at accept).
    pub class: Class,
    /// Received bytes not yet taken as lines.
    input: Vec<u8>,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
    /// Answer lines to send, and how much of the first went already.
    answers: VecDeque<Vec<u8>>,
    sent: usize,
    /// The bytes the answers hold (their allocations).
    answers_held: usize,
    /// A subscriber's position in the event log: the next byte to send.
    pub cursor: Option<u64>,
    /// Its last send found the socket full (it is not reading).
    pub stalled: bool,
    /// A request of it is being carried out.
    pub busy: bool,
    /// A request waiting for a slot to be carried out in.
    pub waiting: Option<Job>,
    /// Since when the input holds an unfinished line.
    pub partial_since: Option<Instant>,
    /// The peer closed its end (answers still go out while it reads).
    pub eof: bool,
    /// To be closed once the output is sent (or at once when `drop_now`).
    pub closing: bool,
    pub drop_now: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, peer: Result<Peer, String>, class: Class) -> Conn {
        Conn {
            stream,
            peer,
            class,
            input: Vec::new(),
            skipping: false,
            answers: VecDeque::new(),
            sent: 0,
            answers_held: 0,
            cursor: None,
            stalled: false,
            busy: false,
            waiting: None,
            partial_since: None,
            eof: false,
            closing: false,
            drop_now: false,
        }
    }

    /// Whether to read more: not while a full line waits, a request is under
    /// way, or answers pile up unread.
    pub fn wants_input(&self) -> bool {
        !self.eof && !self.closing && !self.drop_now && self.answers_held < ANSWER_BACKLOG && self.input.len() < MAX_LINE
    }

    /// Whether anything waits to be sent.
    pub fn has_output(&self, log: &EventLog) -> bool {
        !self.answers.is_empty() || self.cursor.is_some_and(|c| c < log.head())
    }

    /// The bytes it holds of its own: unfinished input and unsent answers.
    pub fn held(&self) -> usize {
        self.input.capacity() + self.answers_held
    }

    /// A subscriber's events not yet sent.
    pub fn behind(&self, log: &EventLog) -> Option<usize> {
        self.cursor.map(|c| (log.head() - c) as usize)
    }

    /// Queues an answer line.
    pub fn answer(&mut self, line: Vec<u8>) {
        self.answers_held += line.capacity();
        self.answers.push_back(line);
    }

    /// Forgets what was received (closing).
    pub fn clear_input(&mut self) {
        self.input = Vec::new();
        self.partial_since = None;
    }

    /// Appends received bytes; a line beyond [`MAX_LINE`] is skipped up to
    /// its newline and stands as [`TOO_LONG_MARK`] in its turn. Returns
    /// how many lines were too long.
    pub fn take_input(&mut self, mut bytes: &[u8]) -> u64 {
        let mut too_long = 0;
        while !bytes.is_empty() {
            if self.skipping {
                match bytes.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        self.skipping = false;
                        bytes = &bytes[nl + 1..];
                    }
                    None => return too_long,
                }
                continue;
            }
            let line_start = self.input.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            let room = MAX_LINE.saturating_sub(self.input.len() - line_start);
            let take = match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) if nl < room => nl + 1,
                _ => bytes.len().min(room),
            };
            self.input.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let unfinished = self.input.len() - self.input.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            if unfinished >= MAX_LINE {
                let keep = self.input.len() - unfinished;
                self.input.truncate(keep);
                self.skipping = true;
                too_long += 1;
                self.input.extend_from_slice(TOO_LONG_MARK);
            }
        }
        too_long
    }

    /// The next complete line (newline and a `\r` before it stripped);
    /// notes since when an unfinished one waits.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let Some(nl) = self.input.iter().position(|&b| b == b'\n') else {
            self.partial_since = if self.input.is_empty() { None } else { self.partial_since.or(Some(Instant::now())) };
            if self.input.is_empty() && self.input.capacity() > INPUT_KEEP {
                self.input = Vec::new();
            }
            return None;
        };
        let mut line: Vec<u8> = self.input.drain(..=nl).collect();
        self.partial_since = None;
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(line)
    }

    /// Sends what it can without blocking: answers between event lines,
    /// event lines from the shared log. An error: the connection is dead
    /// (or its position was trimmed from the log).
    pub fn flush(&mut self, log: &EventLog) -> io::Result<()> {
        loop {
            let between_events = self.cursor.is_none_or(|c| log.at_line_start(c));
            let answering = self.sent > 0 || (!self.answers.is_empty() && between_events);
            let bytes: &[u8] = if answering {
                &self.answers[0][self.sent..]
            } else if let Some(c) = self.cursor {
                match log.from(c) {
                    Some(b) => b,
                    None => return Err(io::Error::other("its events were dropped from the log")),
                }
            } else {
                &[]
            };
            if bytes.is_empty() {
                return Ok(());
            }
            let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
            let n = match rustix::net::send(self.stream.as_fd(), bytes, flags) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN) => {
                    self.stalled = true;
                    return Ok(());
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            self.stalled = false;
            if answering {
                self.sent += n;
                if self.sent == self.answers[0].len() {
                    let done = self.answers.pop_front().expect("an answer was being sent");
                    self.answers_held -= done.capacity();
                    self.sent = 0;
                }
            } else if let Some(c) = &mut self.cursor {
                *c += n as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, Err("test".into()), Class::User(Some(1))), b)
    }

    #[test]
    fn lines_are_taken_whole_and_a_long_one_is_marked_in_its_turn() {
        let (mut c, _peer) = conn();
        assert_eq!(c.take_input(b"one\r\ntw"), 0);
        assert_eq!(c.next_line().as_deref(), Some(&b"one"[..]));
        assert_eq!(c.next_line(), None);
        assert!(c.partial_since.is_some(), "an unfinished line is timed");
        let mut big = vec![b'x'; MAX_LINE + 5];
        big.extend_from_slice(b"\nthree\n");
        assert_eq!(c.take_input(b"o\n"), 0);
        assert_eq!(c.take_input(&big), 1);
        assert_eq!(c.next_line().as_deref(), Some(&b"two"[..]));
        assert_eq!(c.next_line().as_deref(), Some(&TOO_LONG_MARK[..TOO_LONG_MARK.len() - 1]));
        assert_eq!(c.next_line().as_deref(), Some(&b"three"[..]));
        assert_eq!(c.next_line(), None);
        assert_eq!((c.partial_since, c.input.capacity()), (None, 0), "an emptied large buffer is given back");
    }

    #[test]
    fn answers_go_out_between_event_lines_and_a_full_socket_marks_it_stalled() {
        let (mut c, mut peer) = conn();
        let mut log = EventLog::default();
        log.append(b"e1\n".to_vec());
        c.cursor = Some(log.head());
        c.answer(b"ok\n".to_vec());
        log.append(b"e2\ne3\n".to_vec());
        assert_eq!(c.behind(&log), Some(6));
        c.flush(&log).unwrap();
        let mut got = [0u8; 64];
        let n = peer.read(&mut got).unwrap();
        assert_eq!(&got[..n], b"ok\ne2\ne3\n");
        assert_eq!((c.behind(&log), c.held(), c.stalled), (Some(0), 0, false));
        // Nobody reads: the socket fills, the connection is stalled.
        let line = vec![b'y'; 4096];
        for _ in 0..1024 {
            log.append([&line[..], b"\n"].concat());
            c.flush(&log).unwrap();
            if c.stalled {
                break;
            }
        }
        assert!(c.stalled && c.behind(&log).unwrap() > 0);
        // Its position trimmed away: the connection cannot go on.
        log.trim_to(log.head());
        assert!(c.flush(&log).is_err());
    }
}
