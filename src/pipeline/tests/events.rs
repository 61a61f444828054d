//! The event path: entries, setns sequences, forks, exits.

use super::*;
use crate::bpf::EventKind::{Exec, Fork, Setns, Unshare};

#[test]
fn an_unshare_makes_a_node_and_moves_the_task_into_it() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    assert_eq!(b.at(100), "/t/node_100");
    assert_eq!(b.outcomes(), ["created /t/node_100 Event", "placed 100 /t/node_100 new"]);
    assert_eq!(b.log(), ["mkdir /t/node_100", "move 100 /t/node_100"]);
    let node = b.id("/t/node_100");
    assert_eq!(b.out.tracked, [(100, node)]);
    assert_eq!(b.out.settled, [100], "done with its entry");
}

#[test]
fn unshare_fork_pid_nests_the_child_below_its_parent() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    // The child, forked into the new pid namespace, has a set of its own.
    b.spawn(101, "/t/node_100", "b");
    let e = b.ev(Fork { ptid: 100 }, 101, "a", "b");
    b.send(&e);
    assert_eq!(b.at(101), "/t/node_100/node_101");
}

#[test]
fn a_task_joining_a_set_that_has_a_node_moves_into_it() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.spawn(200, "/t", "base");
    b.enter(Exec, 200, "base", "a");
    assert_eq!(b.at(200), "/t/node_100");
    assert_eq!(b.outcomes().last().unwrap(), "placed 200 /t/node_100");
    assert!(!b.log().iter().any(|l| l == "mkdir /t/node_200"));
}

#[test]
fn nsenters_several_setns_are_placed_once_when_it_settles() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.log();
    b.spawn(300, "/t", "base");
    // One namespace per setns: base → half → a.
    b.enter(Setns, 300, "base", "half");
    b.enter(Setns, 300, "half", "a");
    assert_eq!(b.out.scheduled.len(), 1, "one settle timer");
    assert_eq!(b.at(300), "/t", "not moved before it settles");
    b.run_jobs();
    assert_eq!(b.at(300), "/t/node_100");
    assert_eq!(b.log(), ["move 300 /t/node_100"], "no node for the half-way set");
}

#[test]
fn ip_netns_exec_is_placed_in_a_node_of_its_own_and_not_moved_back_up() {
    // setns into the named netns, then unshare(CLONE_NEWNS), as root (who may
    // move anywhere): the unshare consumes the setns, so when the settle timer
    // comes there is nothing to move back to the tracked root.
    let mut b = Bed::new();
    b.fake.derive("netns", "base", &[NsKind::Net]).unwrap();
    b.fake.derive("netns+mnt", "netns", &[NsKind::Mnt]).unwrap();
    b.task(FakeTask { cap_eff: 1 << 21, ..FakeTask::new(400, "/t", "base") });
    b.enter(Setns, 400, "base", "netns");
    b.enter(Unshare, 400, "netns", "netns+mnt");
    b.run_jobs();
    assert_eq!(b.at(400), "/t/node_400", "{:?}", b.outcomes());
    assert!(!b.log().iter().any(|l| l == "move 400 /t"), "never moved back up");
    let node = b.id("/t/node_400");
    let base = b.set("base");
    assert_eq!(b.backend().records[&node].parent_set, base, "it came from the base set");
}

#[test]
fn twenty_ip_netns_exec_at_once_each_get_a_node() {
    let mut b = Bed::new();
    for i in 0..20 {
        b.spawn(500 + i, "/t", "base");
        b.enter(Setns, 500 + i, "base", &format!("netns{i}"));
    }
    for i in 0..20 {
        b.enter(Unshare, 500 + i, &format!("netns{i}"), &format!("netns{i}+mnt"));
    }
    b.run_jobs();
    for i in 0..20 {
        assert_eq!(b.at(500 + i), format!("/t/node_{}", 500 + i));
    }
}

#[test]
fn an_exec_after_setns_into_a_new_set_records_the_set_before_the_first_setns() {
    let mut b = Bed::new();
    b.spawn(600, "/t", "base");
    b.enter(Setns, 600, "base", "half");
    b.change(600, |t| t.set = "z".into());
    let e = b.ev(Exec, 600, "half", "z");
    b.send(&e);
    assert_eq!(b.at(600), "/t/node_600", "placed at its exec, before the timer");
    let node = b.id("/t/node_600");
    let base = b.set("base");
    assert_eq!(b.backend().records[&node].parent_set, base);
}

#[test]
fn a_fork_of_a_deferred_setns_caller_places_the_caller_first() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.spawn(700, "/t", "base");
    b.enter(Setns, 700, "base", "a");
    b.spawn(701, "/t", "a");
    let e = b.ev(Fork { ptid: 700 }, 701, "a", "a");
    b.send(&e);
    assert_eq!((b.at(700), b.at(701)), ("/t/node_100".into(), "/t/node_100".into()));
}

#[test]
fn setns_back_to_the_base_set_leaves_the_node_and_looks_at_it() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    // Entering the base set's namespaces again takes CAP_SYS_ADMIN there.
    b.task(FakeTask { cap_eff: 1 << 21, ..FakeTask::new(800, "/t", "base") });
    b.enter(Exec, 800, "base", "a");
    b.exit(100);
    b.run_jobs();
    assert_eq!(b.at(800), "/t/node_100", "a live task keeps the node");
    b.enter(Setns, 800, "a", "base");
    b.run_jobs();
    assert_eq!(b.at(800), "/t");
    let node = b.id("/t/node_100");
    assert!(b.out.scheduled.iter().any(|(_, j)| *j == Job::Cleanup(node, 0)), "the node it left may be empty now");
    b.run_jobs();
    assert!(b.outcomes().contains(&"removed /t/node_100".to_string()));
}

#[test]
fn a_backlogged_event_is_decided_from_where_the_task_was_put() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    // A later event of the same task still carries the root as its cgroup.
    b.change(100, |t| t.set = "b".into());
    let mut e = b.ev(Unshare, 100, "a", "b");
    e.cgroup = ROOT;
    b.send(&e);
    assert_eq!(b.at(100), "/t/node_100/node_100", "nested below the node it was put in");
}

#[test]
fn an_unknown_previous_set_is_what_the_tasks_cgroup_expects() {
    // The proc connector's exec events carry no previous set.
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.change(100, |t| t.set = "a".into());
    let mut e = b.ev(Exec, 100, "base", "a");
    e.prev = NsSet::default();
    b.send(&e);
    assert_eq!(b.at(100), "/t/node_100");
}

#[test]
fn a_child_forked_mid_move_follows_its_parent() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    // Its child was forked after the unshare, before the move: same set, old cgroup.
    b.task(FakeTask { ppid: 100, ..FakeTask::new(101, "/t", "a") });
    b.change(100, |t| t.children = vec![101]);
    b.enter(Unshare, 100, "base", "a");
    assert_eq!(b.at(101), "/t/node_100");
    let node = b.id("/t/node_100");
    assert!(b.out.tracked.contains(&(101, node)));
}

#[test]
fn a_child_elsewhere_or_in_another_set_stays() {
    let mut b = Bed::new();
    b.backend().add_cgroup(5, "/t/other");
    b.spawn(100, "/t", "base");
    b.task(FakeTask { ppid: 100, ..FakeTask::new(101, "/t/other", "a") });
    b.task(FakeTask { ppid: 100, ..FakeTask::new(102, "/t", "c") });
    b.change(100, |t| t.children = vec![101, 102]);
    b.enter(Unshare, 100, "base", "a");
    assert_eq!((b.at(101), b.at(102)), ("/t/other".into(), "/t".into()));
}

#[test]
fn a_child_the_gate_refuses_is_published_as_a_refusal() {
    let mut b = Bed::new();
    b.fake.derive("a-uts", "base", &[NsKind::Uts]).unwrap();
    b.spawn(50, "/t", "base");
    b.enter(Unshare, 50, "base", "a-uts");
    b.backend().add_cgroup(5, "/t/side");
    // A parent with CAP_SYS_ADMIN joins the node's set from a sibling cgroup;
    // its child, forked mid-move, has no CAP_SYS_ADMIN: the gate refuses it.
    b.task(FakeTask { ppid: 100, ..FakeTask::new(101, "/t/side", "a-uts") });
    b.task(FakeTask { cap_eff: 1 << 21, children: vec![101], ..FakeTask::new(100, "/t/side", "base") });
    b.outcomes();
    b.enter(Exec, 100, "base", "a-uts");
    assert_eq!((b.at(100), b.at(101)), ("/t/node_50".into(), "/t/side".into()));
    assert!(b.outcomes().contains(&"refused 101 OutsideSubtree".to_string()), "the child's refusal is counted");
}

#[test]
fn a_child_that_is_exiting_is_not_moved() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.task(FakeTask { ppid: 100, state: 'Z', ..FakeTask::new(101, "/t", "a") });
    b.change(100, |t| t.children = vec![101]);
    b.enter(Unshare, 100, "base", "a");
    assert_eq!(b.at(101), "/t", "the child's move is checked like any other");
    assert!(b.outcomes().contains(&"dropped 101 Gone".to_string()));
}

#[test]
fn a_task_gone_before_its_move_leaves_no_node() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.change(100, |t| t.set = "a".into());
    b.backend().vanished_tids.insert(100);
    let e = b.ev(Unshare, 100, "base", "a");
    b.send(&e);
    assert_eq!(b.log(), ["mkdir /t/node_100", "rmdir /t/node_100"]);
    assert!(b.outcomes().is_empty());
    assert!(b.pipeline.tracker().node_of_set(&b.set("a")).is_none());
}

#[test]
fn an_exit_looks_at_the_node_it_died_in_and_the_one_it_was_put_in() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.out.scheduled.clear();
    b.exit(100);
    let node = b.id("/t/node_100");
    assert_eq!(b.out.scheduled, [(Duration::from_millis(2), Job::Cleanup(node, 0))]);
    b.run_jobs();
    assert_eq!(b.outcomes().last().unwrap(), "removed /t/node_100");
    assert_eq!(b.log().last().unwrap(), "rmdir /t/node_100");
}

#[test]
fn a_coalesced_entry_forgets_its_pending_setns() {
    let mut b = Bed::new();
    b.spawn(900, "/t", "base");
    b.enter(Setns, 900, "base", "a");
    b.pipeline.forget_entry(900);
    b.run_jobs();
    assert_eq!(b.at(900), "/t", "its settle timer finds nothing");
}

#[test]
fn a_node_nsgroup_exec_is_setting_up_waits_for_the_exec_then_is_adopted() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    // `nsgroup exec` made node_100 with a record not complete yet.
    b.backend().add_cgroup(50, "/t/node_100");
    let mut record = b.record("", "base");
    b.backend().records.insert(50, record.clone());
    b.enter(Unshare, 100, "base", "a");
    assert!(b.out.settled.is_empty(), "left pending: its exec must be reported");
    assert_eq!(b.at(100), "/t");
    // exec finished the record and moved the task; then the task execs.
    record.set = b.set("a");
    b.backend().records.insert(50, record);
    b.backend().put(100, 50);
    b.enter(Exec, 100, "a", "a");
    assert_eq!(b.out.settled, [100]);
    assert!(b.out.tracked.contains(&(100, 50)));
    assert_eq!(b.pipeline.tracker().node_of_set(&b.set("a")).map(|n| n.id), Some(50), "adopted, not made anew");
    assert!(!b.log().iter().any(|l| l.starts_with("mkdir")));
}

#[test]
fn a_node_restore_is_filling_holds_the_tasks_born_in_it_and_looks_again_until_it_is_adopted() {
    let mut b = Bed::new();
    // `nsgroup restore` made node_900 (its record restored, its set empty);
    // CRIU, inside it, clones the tree's root with new namespaces.
    b.backend().add_cgroup(50, "/t/node_900");
    let mut record = b.record("", "base");
    record.creator_pid = 0;
    let now = crate::sys::clock::unix_now();
    record.restored = Some(crate::core::node::Restored { dir: "/img".into(), restored_unix: now, from_path: "/t/node_7".into(), from_cgroup_id: 7 });
    b.backend().records.insert(50, record.clone());
    b.spawn(300, "/t/node_900", "base");
    b.enter(Unshare, 300, "base", "a");
    assert!(b.out.settled.is_empty(), "left pending while CRIU restores");
    assert!(!b.log().iter().any(|l| l.starts_with("mkdir") || l.starts_with("move")), "no node made, nothing moved");
    assert_eq!(b.out.scheduled.len(), 1, "looked at again shortly");
    b.run_jobs();
    assert!(b.pipeline.tracker().node_of_set(&b.set("a")).is_none(), "still filling");
    // CRIU is done: the record names the restored set (and its root, which
    // need not be the task that looks).
    record.set = b.set("a");
    record.creator_pid = 299;
    b.backend().records.insert(50, record.clone());
    b.run_jobs();
    assert_eq!(b.pipeline.tracker().node_of_set(&b.set("a")).map(|n| n.id), Some(50), "adopted, not made anew");
    assert!(!b.log().iter().any(|l| l.starts_with("mkdir")));
    assert_eq!(b.at(300), "/t/node_900");
    assert!(b.out.tracked.contains(&(300, 50)));

    // CRIU's unshare() and setns() calls, one after another: the last ends
    // in the set the one before came from, which decides nothing; the task
    // still waits for the record (measured in the guest).
    let mut b = Bed::new();
    b.backend().add_cgroup(50, "/t/node_900");
    record.set = NsSet::default();
    record.creator_pid = 0;
    b.backend().records.insert(50, record.clone());
    b.spawn(300, "/t/node_900", "base");
    b.enter(Unshare, 300, "base", "a");
    b.enter(Unshare, 300, "a", "b");
    b.enter(Setns, 300, "b", "a");
    b.run_jobs();
    b.run_jobs();
    assert!(!b.out.settled.contains(&300), "still waiting for the record");
    record.set = b.set("a");
    b.backend().records.insert(50, record.clone());
    b.run_jobs();
    assert_eq!(b.pipeline.tracker().node_of_set(&b.set("a")).map(|n| n.id), Some(50), "adopted after CRIU's calls");
    assert!(!b.log().iter().any(|l| l.starts_with("mkdir")));

    // A restore that never finished holds nobody: placed as usual.
    let mut b = Bed::new();
    b.backend().add_cgroup(50, "/t/node_900");
    record.set = NsSet::default();
    record.restored.as_mut().unwrap().restored_unix = now - crate::pipeline::adopt::RESTORE_WAIT_S - 1;
    b.backend().records.insert(50, record);
    b.spawn(300, "/t/node_900", "base");
    b.enter(Unshare, 300, "base", "a");
    assert_eq!(b.out.settled, [300]);
    assert!(b.log().iter().any(|l| l.starts_with("mkdir")), "{:?}", b.outcomes());
}

#[test]
fn a_record_on_a_directory_another_uid_owns_is_not_an_exec_node() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.backend().add_cgroup(50, "/t/node_100");
    b.backend().owners.insert(50, 65534);
    let record = b.record("a", "base");
    b.backend().records.insert(50, record);
    b.enter(Unshare, 100, "base", "a");
    // Not adopted: made as any node (the empty leftover reused, its record rewritten).
    assert!(b.log().contains(&"mkdir /t/node_100".to_string()));
    assert_eq!(b.backend().records[&50].created_unix, 42, "the daemon's record, not the forged one");
    assert_eq!(b.out.settled, [100]);
}

#[test]
fn no_exec_node_is_adopted_beyond_max_depth() {
    let mut b = Bed::with("max_depth = 1\n");
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    let node = b.id("/t/node_100");
    b.backend().add_cgroup(60, "/t/node_100/node_100");
    let record = b.record("b", "a");
    b.backend().records.insert(60, record);
    b.enter(Unshare, 100, "a", "b");
    assert_eq!(b.pipeline.tracker().node(60).map(|n| n.id), None, "not adopted");
    assert_eq!(b.at(100), "/t/node_100");
    assert!(b.pipeline.tracker().node(node).is_some());
    assert!(b.outcomes().last().unwrap().starts_with("refused 100 TooDeep"));
}
