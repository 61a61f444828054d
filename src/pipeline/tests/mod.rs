//! Unit tests of the pipeline's steps, without root: a [`Bed`] is a
//! pipeline over the recording [`FakeBackend`] and a fake procfs in a
//! tempdir, and a [`Loop`] records what the pipeline asked of the loop.

mod checks;
mod events;
mod reconcile;
mod units;
mod upkeep;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bpf::{Event, EventKind};
use crate::config::Config;
use crate::core::node::CgroupId;
use crate::core::nsset::{NsKind, NsSet};
use crate::core::tracker::{Granularity, Tracker};
use crate::pipeline::mirrors::Mirrors;
use crate::pipeline::outcome::Outcome;
use crate::pipeline::placer::Placer;
use crate::pipeline::{Around, Job, Parts, Pipeline};
use crate::policy::gate::Gate;
use crate::testing::procfs::{FakeProc, FakeTask, KEY};
use crate::testing::FakeBackend;

/// The tracked root's id and path.
const ROOT: CgroupId = 1;
const ROOT_PATH: &str = "/t";

/// What the pipeline asked of the loop, and each outcome as a line.
#[derive(Default)]
struct Loop {
    scheduled: Vec<(Duration, Job)>,
    tracked: Vec<(u32, CgroupId)>,
    settled: Vec<u32>,
    outcomes: Vec<String>,
    follows_nodes: bool,
    /// Scopes asked of users' managers; `refuse_units`: the queue is full.
    units: Vec<crate::core::unit::UnitPlan>,
    refuse_units: bool,
}

impl Around for Loop {
    fn schedule(&mut self, after: Duration, job: Job) {
        self.scheduled.push((after, job));
    }
    fn track(&mut self, tid: u32, node: CgroupId) {
        self.tracked.push((tid, node));
    }
    fn settled(&mut self, tid: u32) {
        self.settled.push(tid);
    }
    fn publish(&mut self, outcome: Outcome<'_>) {
        self.outcomes.push(line(&outcome));
    }
    fn follows_nodes(&mut self) -> bool {
        self.follows_nodes
    }
    fn ask_unit(&mut self, plan: &crate::core::unit::UnitPlan) -> bool {
        if !self.refuse_units {
            self.units.push(plan.clone());
        }
        !self.refuse_units
    }
}

/// An outcome in a few words.
fn line(o: &Outcome<'_>) -> String {
    match o {
        Outcome::Events { count, .. } => format!("events {count}"),
        Outcome::Created { path, cause, .. } => format!("created {path} {cause:?}"),
        Outcome::Placed { task, path, created, .. } => format!("placed {} {path}{}", task.tid, if *created { " new" } else { "" }),
        Outcome::Removed { removal, .. } => format!("removed {}", removal.path),
        Outcome::Reconciled { why, report, .. } => format!("reconciled {why} moved {} created {}", report.moved, report.created),
        Outcome::LimitApplied { path, file, value, .. } => format!("limit {path} {file}={value}"),
        Outcome::Coalesced { entries } => format!("coalesced {entries}"),
        Outcome::Overflow { lost } => format!("overflow {lost}"),
        Outcome::Refused { task, why } => format!("refused {} {why:?}", task.tid),
        Outcome::Dropped { tid, why, .. } => format!("dropped {tid} {why:?}"),
        Outcome::NotMirrored { controllers, .. } => format!("not mirrored {controllers}"),
        Outcome::Failed { what, .. } => format!("failed {what:?}"),
        Outcome::OomKill(k) => format!("oom_kill {} {}", k.path, k.kills),
        Outcome::Pressure(p) => format!("pressure {} {}", p.path, p.trigger),
        Outcome::Unit { plan, result: Ok(s) } => format!("unit {} started, {} followed", plan.scope, s.followers),
        Outcome::Unit { plan, result: Err(e) } => format!("unit {} stayed: {e}", plan.scope),
    }
}

/// A pipeline over fakes, with the tasks it knows.
struct Bed {
    dir: tempfile::TempDir,
    fake: FakeProc,
    pipeline: Pipeline<FakeBackend>,
    tasks: BTreeMap<u32, FakeTask>,
    out: Loop,
}

impl Bed {
    /// A bed whose configuration is `toml` (on top of the defaults).
    fn with(toml: &str) -> Bed {
        Bed::build(toml, Granularity::Thread, false)
    }

    fn new() -> Bed {
        Bed::with("")
    }

    fn build(toml: &str, granularity: Granularity, v2: bool) -> Bed {
        Bed::rooted(toml, granularity, v2, ROOT_PATH, |_| None)
    }

    /// A bed tracking `root`, under the delegation rule `delegation` makes
    /// from the bed's directory (none: no rule).
    fn rooted(
        toml: &str,
        granularity: Granularity,
        v2: bool,
        root: &str,
        delegation: impl FnOnce(&std::path::Path) -> Option<crate::sys::delegation::Delegation>,
    ) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeProc::at(dir.path());
        let config = Config::parse(toml, std::path::Path::new("/test.toml")).unwrap();
        let base = fake.set("base").unwrap();
        let tracker = Tracker::new(base, granularity);
        let placer = Placer::new(tracker, FakeBackend::with_root(ROOT, root), || 42);
        let delegation = delegation(dir.path());
        let user_units = config.user_units && delegation.is_some();
        let gate = Gate::new(&config, fake.proc(), KEY, base.get(NsKind::User), delegation);
        let parts = Parts { placer, gate, mirrors: Mirrors::new(Vec::new()), proc: fake.proc(), key: KEY, v2, own_hierarchy: true, user_units };
        let pipeline = Pipeline::new(parts, config).unwrap();
        Bed { dir, fake, pipeline, tasks: BTreeMap::new(), out: Loop::default() }
    }

    /// The set named `name`.
    fn set(&self, name: &str) -> NsSet {
        self.fake.set(name).unwrap()
    }

    /// A record as a node made by task 100 of set `parent` for set `set`
    /// would carry (`NsSet::default()` for `""`: one not complete yet).
    fn record(&self, set: &str, parent: &str) -> crate::core::node::NodeRecord {
        crate::core::node::NodeRecord {
            set: if set.is_empty() { NsSet::default() } else { self.set(set) },
            parent_set: self.set(parent),
            creator_pid: 100,
            creator_comm: "t".into(),
            creator_uid: 0,
            owner: None,
            created_unix: 1,
            mirrors: vec![],
            restored: None,
        }
    }

    /// Starts (or rewrites) a task in the cgroup at `path`, in set `set`.
    fn task(&mut self, t: FakeTask) {
        let id = self.id(&t.cgroup);
        self.backend().put(t.tid, id);
        self.fake.write(&t).unwrap();
        self.tasks.insert(t.tid, t);
    }

    /// A plain task `tid` in `path`, in set `set`.
    fn spawn(&mut self, tid: u32, path: &str, set: &str) {
        self.task(FakeTask::new(tid, path, set));
    }

    /// Changes a task as it would change itself (a new set, another cgroup).
    fn change(&mut self, tid: u32, f: impl FnOnce(&mut FakeTask)) {
        self.sync();
        let mut t = self.tasks[&tid].clone();
        f(&mut t);
        self.task(t);
    }

    /// The task's procfs files follow where the backend put it (the kernel's part).
    fn sync(&mut self) {
        for t in self.tasks.values_mut() {
            let b = self.pipeline.placer().backend();
            if let Some(path) = b.path_of_task(t.tid) {
                t.cgroup = path.to_string();
            }
            self.fake.write(t).unwrap();
        }
    }

    /// An event of `tid`, seen in the cgroup it is in now, from set `prev` to `set`.
    fn ev(&mut self, kind: EventKind, tid: u32, prev: &str, set: &str) -> Event {
        let cgroup = self.pipeline.placer().backend().members.iter().find(|(_, m)| m.contains(&tid)).map_or(ROOT, |(id, _)| *id);
        let mut e = crate::testing::event(kind, tid, cgroup, self.set(prev), self.set(set));
        if let Some(t) = self.tasks.get(&tid) {
            e.tgid = t.pid;
            e.uid = t.uid;
            e.owner = t.uid;
            e.comm = t.comm.clone();
        }
        e
    }

    /// Hands an event to the pipeline (after the procfs caught up).
    fn send(&mut self, e: &Event) {
        self.sync();
        self.pipeline.on_event(e, &mut self.out);
    }

    /// `tid` entered set `set` from `prev` by `kind`: the task changes, then its event comes.
    fn enter(&mut self, kind: EventKind, tid: u32, prev: &str, set: &str) {
        self.change(tid, |t| t.set = set.into());
        let e = self.ev(kind, tid, prev, set);
        self.send(&e);
    }

    /// `tid` exits: gone from /proc and from its cgroup, then its exit event.
    fn exit(&mut self, tid: u32) {
        let e = self.ev(EventKind::Exit, tid, "base", "base");
        let t = self.tasks.remove(&tid).unwrap();
        self.fake.remove(t.pid, t.tid).unwrap();
        for m in self.backend().members.values_mut() {
            m.remove(&tid);
        }
        self.pipeline.on_event(&e, &mut self.out);
    }

    /// Runs the due pipeline jobs the loop was asked for (all of them, at once).
    fn run_jobs(&mut self) {
        for (_, job) in std::mem::take(&mut self.out.scheduled) {
            self.sync();
            match job {
                Job::Settle(tid) => self.pipeline.settle(tid, &mut self.out),
                Job::Cleanup(node, attempt) => self.pipeline.cleanup(node, attempt, &mut self.out),
            }
        }
    }

    fn backend(&mut self) -> &mut FakeBackend {
        self.pipeline.placer().backend()
    }

    fn id(&mut self, path: &str) -> CgroupId {
        self.backend().id_of(path).unwrap_or_else(|| panic!("no cgroup {path}"))
    }

    /// Where `tid` is.
    fn at(&mut self, tid: u32) -> String {
        self.backend().path_of_task(tid).unwrap_or("?").to_string()
    }

    /// The outcomes so far (taken).
    fn outcomes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.out.outcomes)
    }

    /// The backend's log lines so far (taken).
    fn log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.backend().log)
    }
}
