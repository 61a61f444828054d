//! Test utilities, public so that tests outside the library can use them
//! too: a recording fake of the cgroupfs edge ([`FakeBackend`]) and a fake
//! procfs rooted at a directory ([`procfs`]). Neither needs root.

mod backend;
pub mod manager;
pub mod procfs;

pub use backend::FakeBackend;

use crate::bpf::{Event, EventKind};
use crate::core::node::CgroupId;
use crate::core::nsset::NsSet;

/// An event of `tid` (a process of its own, uid and owner 0, started when
/// the fake procfs's tasks start by default, emitted now) that was in `cgroup`, moving from set `prev` to `set`.
pub fn event(kind: EventKind, tid: u32, cgroup: CgroupId, prev: NsSet, set: NsSet) -> Event {
    Event {
        kind,
        ktime_ns: crate::source::monotonic_ns(),
        start_ns: procfs::default_start_ns(),
        cgroup,
        tid,
        tgid: tid,
        set,
        prev,
        comm: "t".into(),
        uid: 0,
        owner: 0,
    }
}
