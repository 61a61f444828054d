//! The check and prepare steps: identity, the seed's rules, quotas, filters
//! and limit rules, as the pipeline applies them.

use super::*;
use crate::bpf::EventKind::{Exec, Setns, Unshare};

#[test]
fn a_reused_tid_is_dropped_and_counted_once() {
    let mut b = Bed::new();
    b.task(FakeTask { start_ticks: 999, ..FakeTask::new(100, "/t", "a") });
    let e = b.ev(Unshare, 100, "base", "a");
    b.send(&e);
    assert_eq!(b.at(100), "/t");
    assert_eq!(b.outcomes(), ["dropped 100 Reused"]);
    assert!(b.log().is_empty(), "no node made");
}

#[test]
fn a_task_gone_from_proc_is_dropped_as_gone() {
    let mut b = Bed::new();
    let e = crate::testing::event(Unshare, 100, ROOT, b.set("base"), b.set("a"));
    b.send(&e);
    assert_eq!(b.outcomes(), ["dropped 100 Gone"]);
    assert_eq!(b.out.settled, [100]);
}

#[test]
fn an_exiting_task_is_dropped_as_gone() {
    let mut b = Bed::new();
    b.task(FakeTask { flags: 0x400104, ..FakeTask::new(100, "/t", "a") });
    let e = b.ev(Unshare, 100, "base", "a");
    b.send(&e);
    assert_eq!(b.outcomes(), ["dropped 100 Gone"]);
}

#[test]
fn a_task_another_writer_moved_is_left_where_it_went() {
    let mut b = Bed::new();
    b.backend().add_cgroup(5, "/t/elsewhere");
    b.spawn(100, "/t", "base");
    b.change(100, |t| t.set = "a".into());
    let e = b.ev(Unshare, 100, "base", "a");
    b.change(100, |t| t.cgroup = "/t/elsewhere".into());
    b.pipeline.on_event(&e, &mut b.out);
    assert_eq!(b.at(100), "/t/elsewhere");
    assert_eq!(b.outcomes(), ["dropped 100 OtherWriter"]);
}

#[test]
fn entering_a_set_whose_node_is_outside_ones_cgroup_needs_cap_sys_admin() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.backend().add_cgroup(5, "/t/side");
    // A task in a sibling cgroup joins the node's set: the node is not below it.
    b.spawn(200, "/t/side", "base");
    b.enter(Exec, 200, "base", "a");
    assert_eq!(b.at(200), "/t/side");
    assert_eq!(b.outcomes().last().unwrap(), "refused 200 OutsideSubtree");
}

#[test]
fn with_cap_sys_admin_in_the_daemons_user_namespace_it_may() {
    let mut b = Bed::new();
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.backend().add_cgroup(5, "/t/side");
    // Its set keeps the base set's user namespace: CAP_SYS_ADMIN counts there.
    b.fake.derive("a-uts", "base", &[NsKind::Uts]).unwrap();
    b.spawn(150, "/t", "base");
    b.enter(Unshare, 150, "base", "a-uts");
    b.task(FakeTask { cap_eff: 1 << 21, ..FakeTask::new(200, "/t/side", "base") });
    b.enter(Exec, 200, "base", "a-uts");
    assert_eq!(b.at(200), "/t/node_150");
}

#[test]
fn nodes_are_not_nested_beyond_max_depth() {
    let mut b = Bed::with("max_depth = 1\n");
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.enter(Unshare, 100, "a", "b");
    assert_eq!(b.at(100), "/t/node_100", "stays in its parent node");
    assert_eq!(b.outcomes().last().unwrap(), "refused 100 TooDeep { depth: 2 }");
}

#[test]
fn no_node_is_made_beyond_max_nodes_and_a_refusal_makes_none() {
    let mut b = Bed::with("max_nodes = 1\n");
    b.spawn(100, "/t", "base");
    b.spawn(101, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.enter(Unshare, 101, "base", "b");
    assert_eq!(b.at(101), "/t");
    assert_eq!(b.outcomes().last().unwrap(), "refused 101 TooMany { count: 1 }");
    assert!(!b.log().iter().any(|l| l.contains("node_101")), "no mkdir for a refused entry");
}

#[test]
fn an_owner_over_its_quota_gets_no_more_nodes_and_others_still_do() {
    let mut b = Bed::with("max_nodes_per_user = 1\n");
    b.task(FakeTask { uid: 1000, ..FakeTask::new(100, "/t", "base") });
    b.task(FakeTask { uid: 1000, ..FakeTask::new(101, "/t", "base") });
    b.task(FakeTask { uid: 2000, ..FakeTask::new(102, "/t", "base") });
    b.enter(Unshare, 100, "base", "a");
    b.enter(Unshare, 101, "base", "b");
    b.enter(Unshare, 102, "base", "c");
    assert_eq!((b.at(100), b.at(101), b.at(102)), ("/t/node_100".into(), "/t".into(), "/t/node_102".into()));
    assert!(b.outcomes().contains(&"refused 101 UserQuota { owner: 1000, live: 1 }".to_string()));
}

#[test]
fn a_users_subordinate_uids_share_her_quota() {
    let mut b = Bed::with("max_nodes_per_user = 1\n");
    b.task(FakeTask { uid: 1000, ..FakeTask::new(100, "/t", "base") });
    b.task(FakeTask { uid: 200_000, ..FakeTask::new(101, "/t", "base") });
    b.enter(Unshare, 100, "base", "a");
    b.change(101, |t| t.set = "b".into());
    let mut e = b.ev(Unshare, 101, "base", "b");
    e.owner = 1000; // its user namespace is hers
    b.send(&e);
    assert_eq!(b.at(101), "/t");
    assert_eq!(b.outcomes().last().unwrap(), "refused 101 UserQuota { owner: 1000, live: 1 }");
}

#[test]
fn an_owner_creating_too_fast_is_refused() {
    let mut b = Bed::with("max_creations_per_second_per_user = 1\n");
    for tid in 100..104 {
        b.task(FakeTask { uid: 1000, ..FakeTask::new(tid, "/t", "base") });
        b.enter(Unshare, tid, "base", &format!("s{tid}"));
    }
    let refused = b.outcomes().iter().filter(|o| o.ends_with("UserRate { owner: 1000 }")).count();
    assert_eq!(refused, 2, "a burst of twice the rate, then refusals");
}

#[test]
fn exempt_uids_have_no_quota() {
    let mut b = Bed::with("max_nodes_per_user = 1\nquota_exempt_uids = [1000]\n");
    for tid in 100..103 {
        b.task(FakeTask { uid: 1000, ..FakeTask::new(tid, "/t", "base") });
        b.enter(Unshare, tid, "base", &format!("s{tid}"));
        assert_eq!(b.at(tid), format!("/t/node_{tid}"));
    }
}

#[test]
fn excluded_commands_are_not_tracked_but_settled() {
    let mut b = Bed::with("[exclude]\ncomm = [\"skip\"]\n");
    b.task(FakeTask { comm: "skip".into(), ..FakeTask::new(100, "/t", "base") });
    b.enter(Unshare, 100, "base", "a");
    assert_eq!(b.at(100), "/t");
    assert!(b.outcomes().is_empty(), "not a refusal: not tracked at all");
    assert_eq!(b.out.settled, [100]);
}

#[test]
fn an_include_uid_matches_the_owner_not_the_uid() {
    let mut b = Bed::with("[include]\nuid = [1000]\n");
    b.task(FakeTask { uid: 200_000, ..FakeTask::new(100, "/t", "base") });
    b.change(100, |t| t.set = "a".into());
    let mut e = b.ev(Unshare, 100, "base", "a");
    e.owner = 1000;
    b.send(&e);
    assert_eq!(b.at(100), "/t/node_100");
    b.task(FakeTask { uid: 1000, ..FakeTask::new(101, "/t", "base") });
    b.change(101, |t| t.set = "b".into());
    let mut e = b.ev(Unshare, 101, "base", "b");
    e.owner = 2000;
    b.send(&e);
    assert_eq!(b.at(101), "/t", "its set is another owner's");
}

#[test]
fn include_cgroup_filters_by_the_tasks_cgroup() {
    let mut b = Bed::with("[include]\ncgroup = [\"/t/in\"]\n");
    b.backend().add_cgroup(5, "/t/in");
    b.backend().add_cgroup(6, "/t/out");
    b.spawn(100, "/t/in", "base");
    b.spawn(101, "/t/out", "base");
    b.enter(Unshare, 100, "base", "a");
    b.enter(Unshare, 101, "base", "b");
    assert_eq!((b.at(100), b.at(101)), ("/t/in/node_100".into(), "/t/out".into()));
}

#[test]
fn a_limit_rule_is_written_before_the_first_task_moves_in() {
    let mut b = Bed::build("[[limit]]\ncomm = [\"box\"]\nset = { \"pids.max\" = 32 }\n", Granularity::Process, true);
    b.task(FakeTask { comm: "box".into(), ..FakeTask::new(100, "/t", "base") });
    b.enter(Unshare, 100, "base", "a");
    assert_eq!(b.log(), ["mkdir /t/node_100", "write /t/node_100/pids.max 32", "move 100 /t/node_100"]);
    assert_eq!(b.outcomes(), ["created /t/node_100 Event", "limit /t/node_100 pids.max=32", "placed 100 /t/node_100 new"]);
}

#[test]
fn a_limit_the_kernel_refuses_is_reported_and_the_task_placed_anyway() {
    let mut b = Bed::build("[[limit]]\nset = { \"pids.max\" = 32, \"memory.max\" = \"64M\" }\n", Granularity::Process, true);
    b.backend().refused_files.insert("memory.max".into());
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    assert_eq!(b.at(100), "/t/node_100");
    let out = b.outcomes();
    assert!(out.contains(&r#"failed Limit { node: "/t/node_100" }"#.to_string()), "{out:?}");
    assert!(out.contains(&"limit /t/node_100 pids.max=32".to_string()));
    assert!(!out.iter().any(|o| o.contains("memory.max=")), "{out:?}");
}

#[test]
fn limit_rules_match_the_owner_and_leave_other_nodes_alone() {
    let mut b = Bed::build("[[limit]]\nuid = [1000]\nset = { \"pids.max\" = 8 }\n", Granularity::Process, true);
    b.task(FakeTask { uid: 1000, ..FakeTask::new(100, "/t", "base") });
    b.spawn(101, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.enter(Unshare, 101, "base", "b");
    let writes: Vec<String> = b.log().into_iter().filter(|l| l.starts_with("write")).collect();
    assert_eq!(writes, ["write /t/node_100/pids.max 8"]);
}

#[test]
fn on_v1_limits_are_not_written_on_the_node_itself() {
    let mut b = Bed::with("[[limit]]\nset = { \"pids.max\" = 32 }\n");
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    assert!(!b.log().iter().any(|l| l.starts_with("write")), "v1 hierarchies take them in mirrors");
}

#[test]
fn a_setns_caller_refused_is_refused_once_at_settle() {
    let mut b = Bed::with("max_depth = 1\n");
    b.spawn(100, "/t", "base");
    b.enter(Unshare, 100, "base", "a");
    b.outcomes();
    b.enter(Setns, 100, "a", "x");
    b.enter(Setns, 100, "x", "y");
    assert!(b.outcomes().is_empty());
    b.run_jobs();
    assert_eq!(b.outcomes(), ["refused 100 TooDeep { depth: 2 }"]);
}
