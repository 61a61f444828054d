//! Sandboxes in an undelegated scope of a user's manager: asked a scope of
//! their own once, placed in it when the manager made it, left (counted)
//! when it did not.

use super::*;
use crate::core::unit::UnitPlan;
use crate::sys::delegation::Delegation;
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::systemd::worker::{Started, UnitError};

const MANAGER: &str = "/user.slice/user-1000.slice/user@1000.service";
const ORIGIN: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-sandbox1.scope";

/// A bed on a user manager's cgroup under the delegation rule (no unit
/// delegated yet), with its origin scope.
fn bed(toml: &str) -> Bed {
    let rule = |dir: &std::path::Path| {
        let h = Hierarchy::new(dir.join("cg"), Version::V2, KEY);
        Some(Delegation::new(h).with_user_runtime(dir.join("run")))
    };
    let mut b = Bed::rooted(toml, Granularity::Thread, true, MANAGER, rule);
    b.backend().add_cgroup(2, &format!("{MANAGER}/app.slice"));
    b.backend().add_cgroup(3, ORIGIN);
    b
}

/// What the manager does for `plan`: the scope beside the origin,
/// delegated (its transient unit file says so), holding `moved`.
fn make_scope(b: &mut Bed, plan: &UnitPlan, moved: &[u32]) -> Started {
    let cgroup = plan.scope_cgroup();
    b.backend().add_cgroup(10, &cgroup);
    let transient = b.dir.path().join("run/1000/systemd/transient");
    std::fs::create_dir_all(&transient).unwrap();
    std::fs::write(transient.join(&plan.scope), "[Scope]\nDelegate=yes\n").unwrap();
    for &tid in moved {
        let id = b.id(&cgroup);
        b.backend().put(tid, id);
    }
    b.sync();
    Started { cgroup, followers: moved.len() - 1 }
}

#[test]
fn a_sandbox_in_a_users_scope_is_asked_a_scope_once_and_gets_its_node_there() {
    let mut b = bed("");
    b.spawn(7, ORIGIN, "base");
    b.change(7, |t| t.children = vec![8]);
    b.enter(EventKind::Unshare, 7, "base", "box");
    assert_eq!(b.out.units.len(), 1, "{:?}", b.outcomes());
    let plan = b.out.units[0].clone();
    assert_eq!((plan.origin.unit.as_str(), plan.origin.slice.as_deref(), plan.pid), ("app-sandbox1.scope", Some("app.slice"), 7));
    assert_eq!(b.outcomes(), Vec::<String>::new(), "asked, not refused");
    assert_eq!(b.at(7), ORIGIN, "nothing written in the origin");
    // A child forked before the answer stays with its parent: no second request.
    b.spawn(8, ORIGIN, "box");
    b.change(8, |t| t.ppid = 7);
    let fork = b.ev(EventKind::Fork { ptid: 7 }, 8, "box", "box");
    b.send(&fork);
    assert_eq!(b.out.units.len(), 1);
    assert_eq!(b.outcomes(), Vec::<String>::new());
    // The manager made the scope with 7 in it, and 8 followed it there.
    let started = make_scope(&mut b, &plan, &[7, 8]);
    b.pipeline.unit_done(&plan, Ok(&started), &mut b.out);
    let node = format!("{}/node_7", plan.scope_cgroup());
    assert_eq!(
        b.outcomes(),
        [
            format!("unit {} started, 1 followed", plan.scope),
            format!("created {node} Event"),
            format!("placed 7 {node} new"),
        ]
    );
    assert_eq!((b.at(7), b.at(8)), (node.clone(), node));
    assert!(b.backend().id_of(&format!("{ORIGIN}/node_7")).is_none(), "no cgroup in the origin");
}

#[test]
fn a_sandbox_whose_manager_did_not_make_its_scope_stays_counted_and_is_not_asked_again_at_once() {
    let mut b = bed("");
    b.spawn(7, ORIGIN, "base");
    b.enter(EventKind::Unshare, 7, "base", "box");
    let plan = b.out.units.pop().unwrap();
    b.pipeline.unit_done(&plan, Err(&UnitError::Gone), &mut b.out);
    assert_eq!(b.outcomes(), [format!("unit {} stayed: the task ended first", plan.scope)]);
    assert_eq!(b.at(7), ORIGIN);
    // The sandbox's next entry is refused as before, and not asked for.
    b.spawn(9, ORIGIN, "base");
    b.enter(EventKind::Exec, 9, "base", "box");
    assert!(b.out.units.is_empty());
    assert_eq!(b.outcomes(), ["refused 9 NotDelegated"]);
    // An answer nobody waits for is published and changes nothing.
    b.pipeline.unit_done(&plan, Err(&UnitError::Gone), &mut b.out);
    assert_eq!(b.outcomes().len(), 1);
}

#[test]
fn no_scope_is_asked_when_off_for_threads_services_or_a_full_queue() {
    let mut off = bed("user_units = false\n");
    off.spawn(7, ORIGIN, "base");
    off.enter(EventKind::Unshare, 7, "base", "box");
    assert!(off.out.units.is_empty());
    assert_eq!(off.outcomes(), ["refused 7 NotDelegated"]);

    let mut b = bed("");
    // A thread of a process: a scope holds processes.
    b.task(FakeTask { tid: 71, ..FakeTask::new(70, ORIGIN, "base") });
    b.enter(EventKind::Unshare, 71, "base", "box");
    // A service's task: its main process is the service.
    let service = format!("{MANAGER}/app.slice/run-u7.service");
    b.backend().add_cgroup(4, &service);
    b.spawn(5, &service, "base");
    b.enter(EventKind::Unshare, 5, "base", "box2");
    assert!(b.out.units.is_empty());
    assert_eq!(b.outcomes(), ["refused 71 NotDelegated", "refused 5 NotDelegated"]);
    // The worker's queue is full: refused, counted, asked at the next entry.
    b.out.refuse_units = true;
    b.spawn(6, ORIGIN, "base");
    b.enter(EventKind::Unshare, 6, "base", "box3");
    assert_eq!(b.outcomes(), ["refused 6 NotDelegated"]);
    b.out.refuse_units = false;
    b.spawn(16, ORIGIN, "base");
    b.enter(EventKind::Unshare, 16, "base", "box3");
    assert_eq!(b.out.units.len(), 1);
}

#[test]
fn a_sandbox_found_by_a_reconcile_is_asked_for_too_once() {
    let mut b = bed("");
    b.spawn(7, ORIGIN, "base");
    b.change(7, |t| t.children = vec![8]);
    b.spawn(8, ORIGIN, "base");
    // Both entered the set while nobody watched: the sandbox and its child.
    b.change(7, |t| t.set = "box".into());
    b.change(8, |t| (t.set, t.ppid) = ("box".into(), 7));
    let tasks = super::reconcile::snapshot(&mut b);
    let report = b.pipeline.reconcile(tasks, "start", &std::sync::atomic::AtomicBool::new(false), &mut b.out).unwrap();
    assert_eq!(report.refused, 2);
    assert_eq!(b.out.units.iter().map(|p| p.pid).collect::<Vec<_>>(), [7]);
    assert_eq!((b.at(7), b.at(8)), (ORIGIN.to_string(), ORIGIN.to_string()));
}

#[test]
fn a_nested_sandbox_that_followed_its_parent_into_its_scope_gets_its_node_below_the_parents() {
    let mut b = bed("");
    // P enters a set; C, forked before P's move, enters one of its own (a pid namespace).
    b.spawn(7, ORIGIN, "base");
    b.change(7, |t| t.children = vec![8]);
    b.enter(EventKind::Unshare, 7, "base", "box");
    b.spawn(8, ORIGIN, "box");
    b.change(8, |t| t.ppid = 7);
    b.fake.derive("inner", "box", &[NsKind::Pid]).unwrap();
    b.enter(EventKind::Fork { ptid: 7 }, 8, "box", "inner");
    let (p, c) = (b.out.units[0].clone(), b.out.units[1].clone());
    // P's scope holds both (C followed P); C's own request finds it gone there.
    let started = make_scope(&mut b, &p, &[7, 8]);
    b.pipeline.unit_done(&p, Ok(&started), &mut b.out);
    let left = UnitError::Left { cgroup: p.scope_cgroup() };
    b.pipeline.unit_done(&c, Err(&left), &mut b.out);
    let node = format!("{}/node_7", p.scope_cgroup());
    assert_eq!((b.at(7), b.at(8)), (node.clone(), format!("{node}/node_8")), "{:?}", b.outcomes());
    // Both end: their nodes go, and the scope with them (its manager cannot
    // remove what lies in root's nodes).
    b.exit(8);
    b.exit(7);
    b.run_jobs();
    b.run_jobs();
    assert!(b.backend().id_of(&node).is_none(), "{:?}", b.outcomes());
    assert!(b.backend().id_of(&p.scope_cgroup()).is_none(), "the emptied scope is removed too: {:?}", b.log());
    assert!(b.backend().id_of(ORIGIN).is_some(), "the origin is its manager's");
}
