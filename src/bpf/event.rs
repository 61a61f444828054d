//! The events the BPF programs send, decoded. Mirrors `bpf/nsgroup.h`.

use crate::core::nsset::NsSet;

/// Size in bytes of `struct nsg_event`.
pub const EVENT_SIZE: usize = 8 * 3 + 4 * 4 + 4 * 10 * 2 + 16 + 4 * 2;

/// What happened to the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new task whose set differs from its parent's, or whose parent was pending.
    Fork { ptid: u32 },
    Unshare,
    Setns,
    /// A pending task called execve(): its set is settled.
    Exec,
    /// A task living in a node exited.
    Exit,
}

/// One decoded `struct nsg_event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// CLOCK_MONOTONIC nanoseconds when the kernel emitted it.
    pub ktime_ns: u64,
    /// The task's start time (`start_boottime`, the nanoseconds behind
    /// /proc's start time): a reused tid has another.
    pub start_ns: u64,
    /// The task's cgroup in the tracked hierarchy (0 if unknown).
    pub cgroup: u64,
    pub tid: u32,
    pub tgid: u32,
    pub set: NsSet,
    pub prev: NsSet,
    /// The command name, lossily made UTF-8.
    pub comm: String,
    /// The task's real uid (initial user namespace).
    pub uid: u32,
    /// Who owns its set: the owner of its outermost user namespace below
    /// the daemon's, else `uid` (docs/semantics.md §13, "Owners").
    pub owner: u32,
}

/// Why bytes from the ring buffer are not an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes, expected {EVENT_SIZE}")]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        head.try_into().expect("split_at gave N bytes")
    }
    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }
    fn set(&mut self) -> NsSet {
        NsSet::new(std::array::from_fn(|_| u64::from(self.u32())))
    }
}

impl Event {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() != EVENT_SIZE {
            return Err(DecodeError::Size(bytes.len()));
        }
        let mut r = Reader(bytes);
        let ktime_ns = r.u64();
        let start_ns = r.u64();
        let cgroup = r.u64();
        let kind = r.u32();
        let tid = r.u32();
        let tgid = r.u32();
        let ptid = r.u32();
        let set = r.set();
        let prev = r.set();
        let comm = comm(r.take());
        let uid = r.u32();
        let owner = r.u32();
        let kind = match kind {
            1 => EventKind::Fork { ptid },
            2 => EventKind::Unshare,
            3 => EventKind::Setns,
            4 => EventKind::Exec,
            5 => EventKind::Exit,
            k => return Err(DecodeError::Kind(k)),
        };
        Ok(Event { kind, ktime_ns, start_ns, cgroup, tid, tgid, set, prev, comm, uid, owner })
    }

    /// Encodes an event as the kernel would (tests, fuzzing, benchmarks).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(EVENT_SIZE);
        let (kind, ptid) = match self.kind {
            EventKind::Fork { ptid } => (1u32, ptid),
            EventKind::Unshare => (2, 0),
            EventKind::Setns => (3, 0),
            EventKind::Exec => (4, 0),
            EventKind::Exit => (5, 0),
        };
        for v in [self.ktime_ns, self.start_ns, self.cgroup] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [kind, self.tid, self.tgid, ptid] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        for s in [self.set, self.prev] {
            for k in crate::core::nsset::NsKind::ALL {
                out.extend_from_slice(&(s.get(k) as u32).to_ne_bytes());
            }
        }
        let mut comm = [0u8; 16];
        let b = self.comm.as_bytes();
        comm[..b.len().min(15)].copy_from_slice(&b[..b.len().min(15)]);
        out.extend_from_slice(&comm);
        for v in [self.uid, self.owner] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out
    }
}

/// Size in bytes of `struct nsg_task`.
pub const TASK_RECORD_SIZE: usize = 8 * 2 + 4 * 4 + 4 * 10 + 16 + 4 * 2;

/// One task of an `iter/task` snapshot (`struct nsg_task`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    /// Start time (`start_boottime`), nanoseconds after boot.
    pub start_ns: u64,
    pub cgroup: u64,
    pub tid: u32,
    pub tgid: u32,
    /// The leader for a thread, else the parent process.
    pub parent: u32,
    /// The task's real uid (initial user namespace).
    pub uid: u32,
    /// Who owns its set (as [`Event::owner`]).
    pub owner: u32,
    pub set: NsSet,
    pub comm: String,
}

fn comm(bytes: [u8; 16]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

impl TaskRecord {
    /// Decodes a snapshot: whole records back to back; a torn tail is ignored.
    pub fn decode_all(bytes: &[u8]) -> Vec<TaskRecord> {
        bytes
            .chunks_exact(TASK_RECORD_SIZE)
            .map(|chunk| {
                let mut r = Reader(chunk);
                let start_ns = r.u64();
                let cgroup = r.u64();
                let (tid, tgid, parent, uid) = (r.u32(), r.u32(), r.u32(), r.u32());
                let set = r.set();
                let comm = comm(r.take());
                TaskRecord { start_ns, cgroup, tid, tgid, parent, uid, owner: r.u32(), set, comm }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_snapshot_records() {
        let mut bytes = Vec::new();
        for v in [7u64, 9] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [10u32, 10, 1, 65534] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        for i in 0..10u32 {
            bytes.extend_from_slice(&(100 + i).to_ne_bytes());
        }
        bytes.extend_from_slice(b"sleep\0\0\0\0\0\0\0\0\0\0\0");
        for v in [1000u32, 0] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(bytes.len(), TASK_RECORD_SIZE);
        bytes.extend_from_slice(&[1, 2, 3]);
        let recs = TaskRecord::decode_all(&bytes);
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].start_ns, recs[0].cgroup, recs[0].tid, recs[0].parent, recs[0].uid), (7, 9, 10, 1, 65534));
        assert_eq!(recs[0].owner, 1000);
        assert_eq!(recs[0].set.get(crate::core::nsset::NsKind::Uts), 109);
        assert_eq!(recs[0].comm, "sleep");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in [0, 1, EVENT_SIZE - 1, EVENT_SIZE, EVENT_SIZE + 1] {
            for _ in 0..2000 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                if let Ok(e) = Event::decode(&bytes) {
                    assert_eq!(Event::decode(&e.encode()).unwrap().kind, e.kind);
                }
                let _ = crate::sys::connector::parse(&bytes);
            }
        }
    }

    #[test]
    fn round_trips_and_rejects_bad_records() {
        let e = Event {
            kind: EventKind::Fork { ptid: 9 },
            ktime_ns: 1,
            start_ns: 2,
            cgroup: 3,
            tid: 10,
            tgid: 10,
            set: NsSet::new([5; 10]),
            prev: NsSet::new([4; 10]),
            comm: "sleep".into(),
            uid: 200_005,
            owner: 65534,
        };
        let bytes = e.encode();
        assert_eq!(bytes.len(), EVENT_SIZE);
        assert_eq!(Event::decode(&bytes), Ok(e));
        assert_eq!(Event::decode(&bytes[1..]), Err(DecodeError::Size(EVENT_SIZE - 1)));
        let mut bad = bytes.clone();
        bad[24] = 77;
        assert_eq!(Event::decode(&bad), Err(DecodeError::Kind(77)));
        let mut odd = bytes;
        odd[120..136].copy_from_slice(b"a\nb\xff\xfe\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(Event::decode(&odd).unwrap().comm, "a\nb\u{fffd}\u{fffd}");
    }
}
