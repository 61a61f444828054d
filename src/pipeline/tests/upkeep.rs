//! Cleanup of emptied nodes and sweeps.

use super::*;
use crate::bpf::EventKind::Unshare;
use std::collections::HashSet;

/// A bed with a node for task 100 (set `a`) and one nested in it for 101 (set `b`).
fn nested(toml: &str) -> (Bed, CgroupId, CgroupId) {
    let mut b = Bed::with(toml);
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.spawn(101, "/t/node_100", "a");
    b.enter(Unshare, 101, "a", "b");
    let (outer, inner) = (b.id("/t/node_100"), b.id("/t/node_100/node_101"));
    b.out.scheduled.clear();
    b.outcomes();
    b.log();
    (b, outer, inner)
}

#[test]
fn emptied_parents_are_removed_bottom_up() {
    let (mut b, _, inner) = nested("");
    b.exit(100);
    b.run_jobs();
    assert!(b.outcomes().is_empty(), "the outer node has a child node");
    b.exit(101);
    assert_eq!(b.out.scheduled, [(Duration::from_millis(2), Job::Cleanup(inner, 0))]);
    b.run_jobs();
    assert_eq!(b.outcomes(), ["removed /t/node_100/node_101", "removed /t/node_100"]);
    assert_eq!(b.log(), ["rmdir /t/node_100/node_101", "rmdir /t/node_100"]);
    assert_eq!(b.pipeline.tracker().node_count(), 0);
    assert_eq!(b.pipeline.pinned(), 0, "their namespaces are let go");
}

#[test]
fn a_node_held_by_an_exiting_task_is_tried_again_backing_off() {
    let (mut b, _, inner) = nested("");
    // 101 exits, but the kernel has not released it from its cgroup yet.
    let e = b.ev(crate::bpf::EventKind::Exit, 101, "b", "b");
    b.change(101, |t| t.state = 'Z');
    b.send(&e);
    b.run_jobs();
    assert_eq!(b.out.scheduled, [(Duration::from_millis(20), Job::Cleanup(inner, 1))]);
    b.backend().members.get_mut(&inner).unwrap().clear();
    b.run_jobs();
    assert_eq!(b.outcomes(), ["removed /t/node_100/node_101"]);
}

#[test]
fn a_node_with_a_live_task_is_not_tried_again() {
    let (mut b, _, inner) = nested("");
    b.pipeline.cleanup(inner, 0, &mut b.out);
    assert!(b.out.scheduled.is_empty(), "its live task keeps it; its exit will say");
    assert!(b.outcomes().is_empty());
}

#[test]
fn a_check_of_a_node_gone_already_costs_nothing() {
    let (mut b, _, inner) = nested("");
    b.exit(101);
    b.run_jobs();
    b.log();
    b.outcomes();
    b.pipeline.cleanup(inner, 0, &mut b.out);
    assert!(b.log().is_empty() && b.outcomes().is_empty() && b.out.scheduled.is_empty());
}

#[test]
fn cleanup_keep_never_looks() {
    let (mut b, _, _) = nested("cleanup = \"keep\"\n");
    b.exit(101);
    assert!(b.out.scheduled.is_empty());
    b.pipeline.sweep(&HashSet::new(), &mut b.out);
    assert!(b.log().is_empty());
}

#[test]
fn linger_waits_before_the_first_look() {
    let (mut b, _, inner) = nested("cleanup = \"linger\"\nlinger_seconds = 30\n");
    b.exit(101);
    assert_eq!(b.out.scheduled, [(Duration::from_secs(30), Job::Cleanup(inner, 0))]);
}

#[test]
fn a_sweep_removes_the_empty_leaf_nodes_it_is_not_told_are_occupied() {
    let (mut b, outer, inner) = nested("");
    // Both exits were lost: the nodes are empty, nobody scheduled a look.
    for m in b.backend().members.values_mut() {
        m.clear();
    }
    b.pipeline.sweep(&[inner].into_iter().collect(), &mut b.out);
    assert!(b.outcomes().is_empty(), "the occupied leaf stays, and so its parent");
    b.pipeline.sweep(&HashSet::new(), &mut b.out);
    assert_eq!(b.outcomes(), ["removed /t/node_100/node_101", "removed /t/node_100"]);
    assert!(b.pipeline.tracker().node(outer).is_none());
}

#[test]
fn a_failed_removal_is_reported_and_the_node_kept() {
    let (mut b, _, inner) = nested("");
    b.exit(101);
    b.backend().failing_removals.insert(inner);
    b.run_jobs();
    assert_eq!(b.outcomes(), [format!("failed Remove {{ node: {inner} }}")]);
    assert!(b.pipeline.tracker().node(inner).is_some(), "still tracked");
    assert!(b.out.scheduled.is_empty(), "not retried: the next exit or sweep looks again");
}
