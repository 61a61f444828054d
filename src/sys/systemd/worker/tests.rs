use super::*;
use crate::core::unit::Origin;
use crate::sys::hierarchy::Version;
use crate::testing::manager::{self, Answer, Calls};
use crate::testing::procfs::{FakeProc, FakeTask, KEY};

const ORIGIN: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-sandbox1.scope";

struct Bed {
    tmp: tempfile::TempDir,
    fake: FakeProc,
    settings: Settings,
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl Bed {
    fn new(timeout: Duration) -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeProc::at(tmp.path());
        let cg = tmp.path().join("cg");
        std::fs::create_dir_all(cg.join(ORIGIN.trim_start_matches('/'))).unwrap();
        let hierarchy = Hierarchy::new(cg, Version::V2, KEY);
        let settings = Settings { runtime: tmp.path().join("run"), hierarchy, proc: fake.proc(), timeout, backoff: Duration::from_secs(60) };
        Bed { tmp, fake, settings }
    }

    fn task(&self, pid: u32, cgroup: &str, children: &[u32]) -> FakeTask {
        let mut t = FakeTask::new(pid, cgroup, "box");
        t.children = children.to_vec();
        self.fake.write(&t).unwrap();
        t
    }

    fn limit(&self, file: &str, value: &str) {
        std::fs::write(self.settings.hierarchy.dir(ORIGIN).join(file), value).unwrap();
    }

    fn manager(&self, answer: Answer) -> Calls {
        manager::serve(&self.settings.runtime, me(), answer)
    }
}

fn plan(pid: u32) -> UnitPlan {
    let mut p = UnitPlan::for_task(ORIGIN, pid, crate::testing::procfs::default_start_ns(), "unshare").unwrap();
    // The fake manager is the test's own uid's.
    p.origin = Origin { uid: me(), ..p.origin };
    p
}

/// Moves `task` into `to` once the manager was asked for a unit (as the
/// real manager does with the scope's PIDs).
fn moved_when_asked(bed: &Bed, calls: &Calls, mut task: FakeTask, to: String) -> std::thread::JoinHandle<()> {
    let calls = Calls::clone(calls);
    let proc_dir = bed.tmp.path().to_path_buf();
    std::thread::spawn(move || {
        let t = Instant::now();
        while calls.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        task.cgroup = to;
        FakeProc::at(&proc_dir).write(&task).unwrap();
    })
}

#[test]
fn the_sandbox_gets_its_scope_with_its_units_limits_and_its_early_children_follow() {
    let bed = Bed::new(Duration::from_secs(5));
    let calls = bed.manager(Answer::Accept);
    bed.limit("pids.max", "50\n");
    bed.limit("memory.max", "max\n");
    let first = bed.task(7, ORIGIN, &[8, 9]);
    bed.task(8, ORIGIN, &[]);
    bed.task(9, "/elsewhere", &[]);
    let p = plan(7);
    let mover = moved_when_asked(&bed, &calls, first, p.scope_cgroup());
    let started = serve_one(&bed, &p).unwrap();
    mover.join().unwrap();
    assert_eq!(started, Started { cgroup: p.scope_cgroup(), followers: 1 });
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(u64::try_from(calls[0].properties["TasksMax"].try_clone().unwrap()).unwrap(), 50);
    assert!(!calls[0].properties.contains_key("MemoryMax"));
    assert_eq!((calls[1].method.as_str(), calls[1].unit.as_str(), calls[1].pids.as_slice()), ("AttachProcessesToUnit", p.scope.as_str(), &[8][..]));
}

fn serve_one(bed: &Bed, plan: &UnitPlan) -> Result<Started, UnitError> {
    serve(&bed.settings, &mut Backoff::default(), plan)
}

#[test]
fn a_limit_that_cannot_be_handed_on_or_a_task_gone_keeps_the_sandbox_where_it_is_unasked() {
    let bed = Bed::new(Duration::from_secs(5));
    let calls = bed.manager(Answer::Accept);
    bed.task(7, ORIGIN, &[]);
    bed.limit("io.max", "8:0 rbps=1048576 wbps=max riops=max wiops=max\n");
    assert!(matches!(serve_one(&bed, &plan(7)), Err(UnitError::Limits(u)) if u.file == "io.max"));
    // Another task under the same pid (another start time), and one moved on.
    let mut reused = plan(7);
    reused.start_ns += 1_000_000_000;
    assert!(matches!(serve_one(&bed, &reused), Err(UnitError::Gone)));
    bed.task(8, "/elsewhere", &[]);
    assert!(matches!(serve_one(&bed, &plan(8)), Err(UnitError::Left { cgroup }) if cgroup == "/elsewhere"));
    assert!(matches!(serve_one(&bed, &plan(99)), Err(UnitError::Gone)));
    assert!(calls.lock().unwrap().is_empty());
}

#[test]
fn a_manager_that_does_not_answer_is_left_alone_for_a_while_and_one_that_refuses_is_not() {
    let short = Duration::from_millis(200);
    let bed = Bed::new(short);
    bed.task(7, ORIGIN, &[]);
    // Absent: not there yet.
    let mut backoff = Backoff::default();
    assert!(matches!(serve(&bed.settings, &mut backoff, &plan(7)), Err(UnitError::Bus(BusError::Open { .. }))));
    let t = Instant::now();
    assert!(matches!(serve(&bed.settings, &mut backoff, &plan(7)), Err(UnitError::BackingOff { .. })));
    assert!(t.elapsed() < short, "a manager backed off from costs nothing");
    // Refusing: asked each time.
    let calls = bed.manager(Answer::Refuse);
    let mut backoff = Backoff::default();
    for _ in 0..2 {
        assert!(matches!(serve(&bed.settings, &mut backoff, &plan(7)), Err(UnitError::Bus(BusError::Refused(_)))));
    }
    assert_eq!(calls.lock().unwrap().len(), 2);
    // Accepting, but the task never arrives.
    let other = Bed::new(short);
    other.task(7, ORIGIN, &[]);
    other.manager(Answer::Accept);
    assert!(matches!(serve_one(&other, &plan(7)), Err(UnitError::NotMoved { .. })));
}

#[test]
fn the_queue_is_bounded_per_user_and_answers_wake_the_loop() {
    let bed = Bed::new(Duration::from_secs(2));
    bed.task(7, ORIGIN, &[]);
    bed.manager(Answer::Hang);
    let mut worker = UnitWorker::start(bed.settings.clone()).unwrap();
    for _ in 0..PER_USER {
        worker.ask(plan(7)).unwrap();
    }
    assert_eq!(worker.ask(plan(7)), Err(Busy::User));
    // The first waits its deadline; the rest are backed off from at once.
    let mut done = Vec::new();
    let t = Instant::now();
    while done.len() < PER_USER && t.elapsed() < Duration::from_secs(20) {
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(worker.fd(), rustix::event::PollFlags::IN)];
        let _ = rustix::event::poll(&mut fds, None);
        done.extend(worker.finished());
    }
    assert_eq!(done.len(), PER_USER);
    assert!(matches!(done[0].result, Err(UnitError::Bus(BusError::Timeout(_)))), "{:?}", done[0].result);
    assert!(done[1..].iter().all(|d| matches!(d.result, Err(UnitError::BackingOff { .. }))));
    worker.ask(plan(7)).unwrap();
}
