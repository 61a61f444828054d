//! What the pipeline remembers between a task's events: setns callers not
//! yet settled (a task that enters several namespaces one setns at a time is
//! placed once, from the set before its first one), tasks whose node
//! `nsgroup exec` is still setting up, and where each task was put last (a
//! backlog's later events still carry the cgroup it was in before).

use std::collections::HashMap;

use crate::bpf::Event;
use crate::core::node::CgroupId;
use crate::core::nsset::NsSet;

/// A setns caller waiting for its last setns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// The set before its first setns.
    pub first_prev: NsSet,
    /// Its latest setns.
    pub last: Event,
}

/// The tasks between events, by tid.
#[derive(Default)]
pub struct Pending {
    deferred: HashMap<u32, Deferred>,
    /// Tasks whose node `nsgroup exec` is still setting up, with the set
    /// they came from: placed at their exec.
    awaiting_exec: HashMap<u32, NsSet>,
    /// Where each task (tid → its start time, its cgroup) was put last.
    last_placed: HashMap<u32, (u64, CgroupId)>,
}

impl Pending {
    /// Notes a setns; `true` when the task was not deferred yet (its settle
    /// timer must start).
    pub fn setns(&mut self, ev: &Event) -> bool {
        let earlier = self.deferred.get(&ev.tid).map(|d| d.first_prev);
        self.deferred.insert(ev.tid, Deferred { first_prev: earlier.unwrap_or(ev.prev), last: ev.clone() });
        earlier.is_none()
    }

    /// Takes a deferred setns caller (its timer came, or a later event of it
    /// or its child supersedes the wait).
    pub fn take_deferred(&mut self, tid: u32) -> Option<Deferred> {
        self.deferred.remove(&tid)
    }

    /// The set a task came from before `ev`, an exec or unshare: that before
    /// its first deferred setns, else the one its node was awaited with
    /// (exec only), else the event's own.
    pub fn came_from(&mut self, ev: &Event) -> NsSet {
        let awaited = if ev.kind == crate::bpf::EventKind::Exec { self.awaiting_exec.remove(&ev.tid) } else { None };
        self.deferred.remove(&ev.tid).map(|d| d.first_prev).or(awaited).unwrap_or(ev.prev)
    }

    /// Waits for `tid`'s exec: its node is being set up by `nsgroup exec`.
    pub fn await_exec(&mut self, tid: u32, came_from: NsSet) {
        self.awaiting_exec.insert(tid, came_from);
    }

    /// Where the task that started at `start_ns` was put last, if anywhere.
    pub fn placed_in(&self, tid: u32, start_ns: u64) -> Option<CgroupId> {
        self.last_placed.get(&tid).filter(|(start, _)| *start == start_ns).map(|&(_, at)| at)
    }

    /// Notes a move of `tid` into `to`; returns where it was put before.
    pub fn placed(&mut self, tid: u32, start_ns: u64, to: CgroupId) -> Option<CgroupId> {
        self.last_placed.insert(tid, (start_ns, to)).map(|(_, at)| at)
    }

    /// Forgets an exited task; returns where it was put last.
    pub fn exited(&mut self, tid: u32) -> Option<CgroupId> {
        self.deferred.remove(&tid);
        self.awaiting_exec.remove(&tid);
        self.last_placed.remove(&tid).map(|(_, at)| at)
    }

    /// After a reconcile: where every task is now, as it found them.
    pub fn replace_placed(&mut self, placed: impl IntoIterator<Item = (u32, u64, CgroupId)>) {
        self.last_placed = placed.into_iter().map(|(tid, start, at)| (tid, (start, at))).collect();
    }

    /// How many tasks are remembered, of each kind (deferred, awaiting exec, placed).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.deferred.len(), self.awaiting_exec.len(), self.last_placed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::EventKind;

    fn set(n: u64) -> NsSet {
        NsSet::new([n; 10])
    }

    fn ev(kind: EventKind, tid: u32, prev: u64, now: u64) -> Event {
        crate::testing::event(kind, tid, 1, set(prev), set(now))
    }

    #[test]
    fn several_setns_keep_the_set_before_the_first() {
        let mut p = Pending::default();
        assert!(p.setns(&ev(EventKind::Setns, 7, 1, 2)), "the first starts the timer");
        assert!(!p.setns(&ev(EventKind::Setns, 7, 2, 3)), "a later one does not");
        let d = p.take_deferred(7).unwrap();
        assert_eq!((d.first_prev, d.last.set), (set(1), set(3)));
        assert_eq!(p.take_deferred(7), None);
    }

    #[test]
    fn an_unshare_after_setns_comes_from_the_set_before_the_setns() {
        // ip netns exec: setns into the named netns, then unshare(CLONE_NEWNS).
        let mut p = Pending::default();
        p.setns(&ev(EventKind::Setns, 7, 1, 2));
        assert_eq!(p.came_from(&ev(EventKind::Unshare, 7, 2, 3)), set(1));
        assert_eq!(p.sizes().0, 0, "the setns is consumed");
        assert_eq!(p.came_from(&ev(EventKind::Unshare, 7, 3, 4)), set(3), "no setns: the event's own");
    }

    #[test]
    fn an_awaited_exec_comes_from_the_set_it_was_awaited_with() {
        let mut p = Pending::default();
        p.await_exec(9, set(1));
        assert_eq!(p.came_from(&ev(EventKind::Unshare, 9, 5, 6)), set(5), "only an exec ends the wait");
        assert_eq!(p.came_from(&ev(EventKind::Exec, 9, 2, 2)), set(1));
        assert_eq!(p.came_from(&ev(EventKind::Exec, 9, 2, 2)), set(2), "taken once");
    }

    #[test]
    fn last_placed_is_per_task_not_per_tid() {
        let mut p = Pending::default();
        assert_eq!(p.placed(5, 100, 11), None);
        assert_eq!(p.placed_in(5, 100), Some(11));
        assert_eq!(p.placed_in(5, 200), None, "a reused tid is another task");
        assert_eq!(p.placed(5, 100, 12), Some(11), "where it was before");
        p.setns(&ev(EventKind::Setns, 5, 1, 2));
        p.await_exec(5, set(1));
        assert_eq!(p.exited(5), Some(12));
        assert_eq!(p.sizes(), (0, 0, 0), "an exit forgets everything of it");
    }

    #[test]
    fn a_reconcile_replaces_what_was_placed() {
        let mut p = Pending::default();
        p.placed(1, 10, 100);
        p.replace_placed([(2, 20, 200)]);
        assert_eq!((p.placed_in(1, 10), p.placed_in(2, 20)), (None, Some(200)));
    }
}
