//! Reconcile after loss: a snapshot of every task, through the same checks.

use super::*;
use crate::bpf::EventKind::Unshare;
use crate::sys::scan::TaskSample;
use std::sync::atomic::AtomicBool;

/// The snapshot the bed's tasks make.
pub(super) fn snapshot(b: &mut Bed) -> Vec<TaskSample> {
    b.sync();
    let tasks: Vec<FakeTask> = b.tasks.values().cloned().collect();
    tasks
        .into_iter()
        .map(|t| {
            let cgroup = b.id(&t.cgroup);
            TaskSample {
                tid: t.tid,
                tgid: t.pid,
                parent: t.ppid,
                start: t.start_ticks * crate::sys::procfs::ns_per_tick(),
                uid: t.uid,
                owner: t.uid,
                comm: t.comm.clone(),
                cgroup,
                cgroup_path: t.cgroup.clone(),
                set: b.set(&t.set),
            }
        })
        .collect()
}

fn reconcile(b: &mut Bed) -> crate::pipeline::reconcile::Report {
    let tasks = snapshot(b);
    b.pipeline.reconcile(tasks, "test", &AtomicBool::new(false), &mut b.out).unwrap()
}

#[test]
fn lost_entries_are_placed_and_the_nodes_published() {
    let mut b = Bed::new();
    b.out.follows_nodes = true;
    b.spawn(100, "/t", "a");
    b.spawn(101, "/t", "a");
    b.spawn(102, "/t", "base");
    let r = reconcile(&mut b);
    assert_eq!((r.examined, r.moved, r.created), (3, 2, 1));
    assert_eq!((b.at(100), b.at(101), b.at(102)), ("/t/node_100".into(), "/t/node_100".into(), "/t".into()));
    assert_eq!(b.outcomes(), ["created /t/node_100 Reconcile", "reconciled test moved 2 created 1"]);
    let node = b.id("/t/node_100");
    assert!(b.out.tracked.contains(&(100, node)) && b.out.tracked.contains(&(101, node)));
}

#[test]
fn a_second_reconcile_moves_nothing() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "a");
    reconcile(&mut b);
    b.log();
    let r = reconcile(&mut b);
    assert_eq!((r.moved, r.created), (0, 0));
    assert!(b.log().is_empty());
}

#[test]
fn a_reconcile_sees_the_same_quota_as_events() {
    let mut b = Bed::with("max_nodes_per_user = 1\n");
    b.task(FakeTask { uid: 1000, ..FakeTask::new(100, "/t", "a") });
    b.task(FakeTask { uid: 1000, ..FakeTask::new(101, "/t", "b") });
    let r = reconcile(&mut b);
    assert_eq!((r.created, r.refused), (1, 1));
}

#[test]
fn a_reconcile_drops_what_the_checks_drop() {
    let mut b = Bed::new();
    b.task(FakeTask { start_ticks: 7, ..FakeTask::new(100, "/t", "a") });
    let mut tasks = snapshot(&mut b);
    tasks[0].start += 1_000_000_000; // the tid is another task's by now
    b.pipeline.reconcile(tasks, "test", &AtomicBool::new(false), &mut b.out).unwrap();
    assert_eq!(b.at(100), "/t");
    assert!(b.outcomes().contains(&"dropped 100 Reused".to_string()));
}

#[test]
fn a_stop_cuts_a_reconcile_short() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "a");
    let tasks = snapshot(&mut b);
    let r = b.pipeline.reconcile(tasks, "test", &AtomicBool::new(true), &mut b.out).unwrap();
    assert_eq!(r.moved, 0);
    assert_eq!(b.at(100), "/t");
}

#[test]
fn after_loss_nodes_emptied_meanwhile_go_and_those_left_forget_their_set() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.spawn(200, "/t", "base");
    b.enter(Unshare, 200, "base", "c");
    // Lost: 100's exit. 200 moved on to another set (its node no longer holds "c").
    let t = b.tasks.remove(&100).unwrap();
    b.fake.remove(t.pid, t.tid).unwrap();
    let node_100 = b.id("/t/node_100");
    b.backend().members.get_mut(&node_100).unwrap().clear();
    b.outcomes();
    reconcile(&mut b);
    assert!(b.outcomes().contains(&"removed /t/node_100".to_string()));
    assert_eq!(b.at(200), "/t/node_200");
}

#[test]
fn a_reconcile_does_not_publish_nodes_nobody_follows() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "a");
    reconcile(&mut b);
    assert_eq!(b.outcomes(), ["reconciled test moved 1 created 1"]);
}

#[test]
fn a_reconcile_replaces_where_tasks_were_put() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "a");
    reconcile(&mut b);
    // A backlogged event after the reconcile is decided from the node.
    b.change(100, |t| t.set = "b".into());
    let mut e = b.ev(Unshare, 100, "a", "b");
    e.cgroup = ROOT;
    b.send(&e);
    assert_eq!(b.at(100), "/t/node_100/node_100");
}
