//! The operability sink without root: counting from outcomes, the timers it
//! asks for, the status file in a temporary directory.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::serve::{State, RETRY_PUBLISH};
use super::status::STATUS_EVERY;
use super::*;
use crate::bpf::EventKind;
use crate::core::node::{CgroupId, NodeRecord};
use crate::core::nsset::NsSet;
use crate::core::tracker::Refusal;
use crate::pipeline::outcome::{Cause, Failure, Task};
use crate::pipeline::placer::Removal;
use crate::pipeline::reconcile::Report;
use crate::sys::hierarchy::Version;
use crate::sys::procfs::HierarchyKey;

/// A node of `owner`, made by its creator named `unshare`.
fn node(id: CgroupId, owner: u32) -> Node {
    let record = NodeRecord {
        set: NsSet::default(),
        parent_set: NsSet::default(),
        creator_pid: 5,
        creator_comm: "unshare".into(),
        creator_uid: owner,
        owner: None,
        created_unix: 9,
        mirrors: vec![],
        restored: None,
    };
    Node { id, parent: 1, name: format!("node_{id}"), record }
}

/// A sink whose status file lives in a temporary directory; no metrics, no history.
struct Fixture {
    ops: Ops,
    status: PathBuf,
    _wake: UnixStream,
    _dir: tempfile::TempDir,
}

fn fixture(log_counters_seconds: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.history.database = PathBuf::new();
    config.status.dir = dir.path().join("run");
    config.status.log_counters_seconds = log_counters_seconds;
    let hierarchy = Hierarchy::new(dir.path().to_path_buf(), Version::V1, HierarchyKey::V1(1));
    let (wake, _) = UnixStream::pair().unwrap();
    let ops = Ops::start(&config, &hierarchy, "/", &wake).unwrap();
    let status = status_path(&config.status.dir, &hierarchy, "/").unwrap();
    Fixture { ops, status, _wake: wake, _dir: dir }
}

fn started() -> Started {
    Started { source: "bpf: tracepoint/syscalls".into(), own_hierarchy: true, mirrors: vec!["memory".into(), "pids".into()] }
}

type Asked = Vec<(Duration, OpsJob)>;

fn turn(ops: &mut Ops, gauges: &Gauges) -> Asked {
    let mut asked = Vec::new();
    ops.turn(gauges, &mut |after, job| asked.push((after, job)));
    asked
}

fn timer(ops: &mut Ops, job: OpsJob, gauges: &Gauges) -> Asked {
    let mut asked = Vec::new();
    ops.timer(job, gauges, &mut |after, job| asked.push((after, job)));
    asked
}

fn start(ops: &mut Ops, gauges: &Gauges) -> Asked {
    let mut asked = Vec::new();
    ops.started(started(), gauges, std::iter::empty(), &mut |after, job| asked.push((after, job)));
    asked
}

fn read_status(path: &std::path::Path) -> StatusFile {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn placed(ops: &mut Ops, latency_us: u64, created: bool) {
    let task = crate::testing::event(EventKind::Unshare, 10, 1, NsSet::default(), NsSet::default());
    ops.take(&Outcome::Placed { task: &task, to: 2, path: "/node_10", created, latency_us });
}

#[test]
fn each_outcome_is_counted_once() {
    let mut f = fixture(0);
    let ops = &mut f.ops;
    let task = crate::testing::event(EventKind::Unshare, 10, 1, NsSet::default(), NsSet::default());
    let removal = Removal { node: node(2, 0), path: "/node_10".into(), usage: vec![] };
    let n = node(3, 0);
    ops.take(&Outcome::Events { count: 5, undecodable: 1 });
    placed(ops, 40, true);
    placed(ops, 3000, false);
    ops.take(&Outcome::Created { node: &n, path: "/node_3", cause: Cause::Reconcile });
    ops.take(&Outcome::Refused { task: Task::of(&task), why: &Refusal::SplitThread });
    for why in [Dropped::Gone, Dropped::Reused, Dropped::Reused, Dropped::OtherWriter] {
        ops.take(&Outcome::Dropped { tid: 10, comm: "t", why });
    }
    ops.take(&Outcome::NotMirrored { node: 2, controllers: "pids" });
    ops.take(&Outcome::Reconciled { why: "start", report: &Report::default(), elapsed: Duration::ZERO });
    ops.take(&Outcome::Removed { removal: &removal, mirrored: &[] });
    ops.take(&Outcome::Coalesced { entries: 4 });
    ops.take(&Outcome::Overflow { lost: 9 });
    ops.take(&Outcome::Failed { what: Failure::Place { tid: 10 }, error: &"gone" });
    let c = ops.counters();
    assert_eq!((c.events, c.placements, c.nodes_created, c.nodes_removed), (5, 2, 1, 1));
    assert_eq!((c.refusals, c.reconciles, c.coalesced_entries), (1, 1, 4));
    assert_eq!((c.dropped_gone, c.dropped_reused, c.dropped_other_writer), (1, 2, 1));
    assert_eq!(c.not_mirrored.get("pids"), Some(&1));
    assert_eq!((c.latency_count, c.latency_sum_us, c.latency_buckets[0], c.latency_buckets[6]), (2, 3040, 1, 1));
    assert_eq!((ops.latency.count(), ops.latency.max()), (2, 3000));
    assert!(!ops.follows_nodes(), "neither metrics nor history");
}

#[test]
fn oom_kills_are_counted_by_node_kind() {
    let mut f = fixture(0);
    let mut uts = node(4, 0);
    uts.record.set = NsSet::new([1, 1, 1, 1, 1, 1, 1, 1, 1, 2]);
    uts.record.parent_set = NsSet::new([1; 10]);
    let counts = crate::sys::watch::MemCounts { oom: 3, oom_kill: 2, oom_group_kill: 0 };
    let kill = crate::pipeline::outcome::OomKill { node: uts, path: "/node_4".into(), counts, kills: 2, victim: None, memory_max: None };
    f.ops.take(&Outcome::OomKill(&kill));
    f.ops.take(&Outcome::OomKill(&crate::pipeline::outcome::OomKill { node: node(5, 0), kills: 1, ..kill.clone() }));
    let c = f.ops.counters();
    assert_eq!((c.oom_kills.get("uts"), c.oom_kills.get("other")), (Some(&2), Some(&1)));
}

#[test]
fn the_status_is_written_at_start_and_at_the_first_change_then_at_most_every_5_s_and_only_after_a_change() {
    let mut f = fixture(0);
    let gauges = Gauges { ring_dropped: 3, ring_emitted: 40, live_nodes: 2, pinned: 2, watches_skipped: 1, triggers_skipped: 0 };
    assert_eq!(start(&mut f.ops, &gauges), []);
    let s = read_status(&f.status);
    assert_eq!(s.counters.watches_skipped, 1);
    assert!(s.own_hierarchy && s.syscall_tracepoints && s.costs.iter().any(|c| c.contains("getppid")), "{s:?}");
    assert_eq!((s.source.as_str(), s.counters.ring_dropped, s.counters.live_nodes), ("bpf: tracepoint/syscalls", 3, 2));
    assert_eq!(turn(&mut f.ops, &gauges), [], "idle: no timer");
    placed(&mut f.ops, 10, true);
    assert_eq!(turn(&mut f.ops, &gauges), [], "the first change is written at once");
    assert_eq!(read_status(&f.status).counters.placements, 1);
    placed(&mut f.ops, 10, true);
    assert_eq!(turn(&mut f.ops, &gauges), [(STATUS_EVERY, OpsJob::Status)]);
    placed(&mut f.ops, 10, true);
    assert_eq!(turn(&mut f.ops, &gauges), [], "one timer at a time");
    assert_eq!(read_status(&f.status).counters.placements, 1);
    let later = Gauges { live_nodes: 4, ..gauges };
    assert_eq!(timer(&mut f.ops, OpsJob::Status, &later), []);
    let s = read_status(&f.status);
    assert_eq!((s.counters.placements, s.counters.live_nodes), (3, 4));
    assert_eq!(turn(&mut f.ops, &later), []);
    assert_eq!(turn(&mut f.ops, &gauges), [(STATUS_EVERY, OpsJob::Status)], "a gauge changed");
}

#[test]
fn the_counters_are_logged_at_most_every_interval_and_only_after_a_change() {
    let mut f = fixture(30);
    let gauges = Gauges::default();
    let every = Duration::from_secs(30);
    assert_eq!(start(&mut f.ops, &gauges), [(every, OpsJob::LogCounters)]);
    f.ops.take(&Outcome::Events { count: 1, undecodable: 0 });
    assert_eq!(turn(&mut f.ops, &gauges), [], "the log's timer is due already, the status's first change written at once");
    assert_eq!(timer(&mut f.ops, OpsJob::LogCounters, &gauges), []);
    assert_eq!(turn(&mut f.ops, &gauges), []);
    f.ops.take(&Outcome::Events { count: 1, undecodable: 0 });
    assert_eq!(turn(&mut f.ops, &gauges), [(STATUS_EVERY, OpsJob::Status), (every, OpsJob::LogCounters)]);
}

#[test]
fn a_publication_a_scrape_held_up_is_retried_on_a_timer() {
    let mut f = fixture(0);
    let shared = Arc::new(Mutex::new(State::default()));
    f.ops.metrics = Some(Metrics::new(Arc::clone(&shared)));
    assert!(f.ops.follows_nodes());
    let gauges = Gauges { live_nodes: 1, ..Gauges::default() };
    let nodes = [node(7, 1000), node(8, 1000)];
    let mut asked = Vec::new();
    f.ops.started(started(), &gauges, nodes.iter().map(|n| (n, format!("/{}", n.name))), &mut |after, job| asked.push((after, job)));
    assert_eq!(asked, []);
    assert_eq!(shared.lock().unwrap().nodes.len(), 2);
    let removal = Removal { node: node(7, 1000), path: "/node_7".into(), usage: vec![] };
    f.ops.take(&Outcome::Removed { removal: &removal, mirrored: &[] });
    let scrape = shared.lock().unwrap();
    assert_eq!(turn(&mut f.ops, &gauges), [(RETRY_PUBLISH, OpsJob::Publish)], "the status's first change is written at once");
    assert_eq!(turn(&mut f.ops, &gauges), []);
    drop(scrape);
    assert_eq!(timer(&mut f.ops, OpsJob::Publish, &gauges), []);
    let state = shared.lock().unwrap();
    assert_eq!((state.nodes.keys().copied().collect::<Vec<_>>(), state.counters.nodes_removed), (vec![8], 1));
}

#[test]
fn at_exit_the_status_file_goes() {
    let mut f = fixture(0);
    start(&mut f.ops, &Gauges::default());
    assert!(f.status.exists());
    f.ops.stopped(&Gauges::default());
    assert!(!f.status.exists());
}

#[test]
fn changes_wait_while_a_scrape_holds_the_lock_and_only_changes_are_published() {
    let shared = Arc::new(Mutex::new(State::default()));
    let mut m = Metrics::new(Arc::clone(&shared));
    let mut counters = Counters { events: 3, ..Counters::default() };
    m.added(&node(5, 0), "/x/node_5");
    let scrape = shared.lock().unwrap();
    assert_eq!(m.publish(&counters), Some(RETRY_PUBLISH));
    assert_eq!(m.publish(&counters), None, "one retry at a time");
    drop(scrape);
    m.retry();
    assert_eq!(m.publish(&counters), None);
    {
        let s = shared.lock().unwrap();
        assert_eq!((s.counters.events, s.nodes.len()), (3, 1));
    }
    m.removed(5);
    counters.events += 1;
    let scrape = shared.lock().unwrap();
    assert_eq!(m.publish(&counters), Some(RETRY_PUBLISH), "a new change, a new retry");
    drop(scrape);
    assert_eq!(m.publish(&counters), None);
    let s = shared.lock().unwrap();
    assert_eq!((s.counters.events, s.nodes.len()), (4, 0));
}
