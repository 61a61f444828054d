//! Control, end to end: mirrors in this machine's v1 controller hierarchies
//! (each confined to a private subtree the test makes and removes), limits
//! that bite (v1 mirrors here; memory, pids and cpu on cgroup2 in the systemd
//! guest), limits a user may only tighten, and bad control configuration. Never the memory hierarchy here
//! (this machine's own processes are accounted there).

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A private subtree of one v1 controller hierarchy, removed on drop (with
/// the test's processes in it killed by pid).
struct ControllerRoot {
    controllers: &'static str,
    mount: PathBuf,
    root: String,
}

impl ControllerRoot {
    /// `None` (with the reason printed) where the hierarchy is not mounted.
    fn new(controllers: &'static str, h: &Hier) -> Option<ControllerRoot> {
        let mount = PathBuf::from("/sys/fs/cgroup").join(controllers);
        if !mount.join("tasks").exists() {
            eprintln!("skipped the {controllers} mirror: no v1 {controllers} hierarchy at {}", mount.display());
            return None;
        }
        let root = format!("/{}", h.name);
        std::fs::create_dir(mount.join(&h.name)).unwrap();
        Some(ControllerRoot { controllers, mount, root })
    }

    fn dir(&self, rel: &str) -> PathBuf {
        self.mount.join(rel.trim_start_matches('/'))
    }

    /// A task's cgroup in this hierarchy.
    fn cgroup_of(&self, tid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{tid}/cgroup")).ok()?;
        text.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrl, path) = (p.next()?, p.next()?, p.next()?);
            (ctrl == self.controllers).then(|| path.to_string())
        })
    }

    fn config(&self) -> String {
        format!("[[mirror]]\ncontrollers = \"{}\"\nroot = \"{}\"\n", self.controllers, self.root)
    }

    /// Every cgroup below the root, relative to it, sorted.
    fn below(&self) -> Vec<String> {
        subdirs(&self.dir(&self.root))
    }
}

impl Drop for ControllerRoot {
    fn drop(&mut self) {
        let mut dirs: Vec<PathBuf> = self.below().iter().map(|r| self.dir(&self.root).join(r)).collect();
        dirs.sort();
        dirs.reverse();
        dirs.push(self.dir(&self.root));
        for d in &dirs {
            for tid in std::fs::read_to_string(d.join("tasks")).unwrap_or_default().lines().filter_map(|l| l.parse::<i32>().ok()) {
                // Only the test's own tasks are ever in this private subtree.
                let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(tid).unwrap(), rustix::process::Signal::KILL);
            }
        }
        for d in dirs {
            for _ in 0..200 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Starts `args` in the tracked root and in every controller root.
fn spawn_everywhere(h: &Hier, roots: &[&ControllerRoot], args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut files = vec![h.dir(&h.root).join(if h.kind == Kind::V1 { "tasks" } else { "cgroup.procs" })];
    files.extend(roots.iter().map(|r| r.dir(&r.root).join("tasks")));
    let script = files.iter().map(|f| format!("echo $$ > '{}'", f.display())).collect::<Vec<_>>().join(" && ");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{script} && exec \"$@\""))
        .arg("sh")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn read_json(out: &mut BufReader<std::process::ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn finish(mut children: Vec<Child>) {
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn mirrors_follow_nodes_nest_adopt_and_vanish() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let roots: Vec<ControllerRoot> = ["pids", "freezer", "cpu", "cpuacct"].into_iter().filter_map(|c| ControllerRoot::new(c, &h)).collect();
    if roots.is_empty() {
        eprintln!("skipped: no v1 controller hierarchy to mirror in (a pure cgroup2 host)");
        return;
    }
    let config: String = roots.iter().map(ControllerRoot::config).collect();
    let (_c, config) = config_file(&config);
    let mut d = Daemon::start(&h, &["--config", &config]);
    let refs: Vec<&ControllerRoot> = roots.iter().collect();
    let (outer, _) = spawn_everywhere(&h, &refs, &["unshare", "--fork", "--pid", "--uts", "--kill-child", "sleep", "60"]);
    let p = outer.id();
    wait_for("two nodes", || h.node_paths().len() == 2);
    let child = children_of(p)[0];
    let (node_p, node_c) = (format!("node_{p}"), format!("node_{p}/node_{child}"));
    for r in &roots {
        wait_for(&format!("mirrors in {}", r.controllers), || r.below() == vec![node_p.clone(), node_c.clone()]);
        assert_eq!(r.cgroup_of(p), Some(format!("{}/{node_p}", r.root)), "{}", r.controllers);
        assert_eq!(r.cgroup_of(child), Some(format!("{}/{node_c}", r.root)), "{}", r.controllers);
    }
    let record = h.record(&h.path(&node_p)).expect("a record");
    assert_eq!(record["mirrors"].as_array().map(Vec::len), Some(roots.len()), "{record}");
    // `tree` shows what the mirrors' controllers account, and says so.
    if roots.iter().any(|r| r.controllers == "pids") {
        let text = tree(&h, &[]);
        let line = text.lines().find(|l| l.contains(&format!("node_{p} "))).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("kernel ") && line.contains("pids=2"), "P and C, below it too: {line}");
    }

    // After a crash, the restarted daemon adopts the mirrors: a task joining
    // the set goes into the same mirror, and no second mirror is made.
    d.crash();
    let d = Daemon::start(&h, &["--config", &config]);
    // nsenter's own set is P's (P's uts, the host's pid, C's pid for children).
    let target = child.to_string();
    let (joiner, _) = spawn_everywhere(&h, &refs, &["nsenter", "-t", &target, "-u", "-p", "sleep", "60"]);
    let j = joiner.id();
    h.expect_in(j, &h.path(&node_p));
    for r in &roots {
        wait_for("the joiner in the adopted mirror", || r.cgroup_of(j) == Some(format!("{}/{node_p}", r.root)));
        assert_eq!(r.below(), vec![node_p.clone(), node_c.clone()], "{}", r.controllers);
    }
    finish(vec![outer, joiner]);
    h.kill_all();
    wait_for("nodes removed", || h.node_paths().is_empty());
    for r in &roots {
        wait_for(&format!("mirrors removed in {}", r.controllers), || r.below().is_empty());
    }
    assert!(d.log_text().contains("pids="), "the removal log carries mirror usage: {}", d.log_text());
}

#[test]
fn a_pids_limit_bites_inside_the_set_only() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let Some(pids) = ControllerRoot::new("pids", &h) else { return };
    let config = format!("{}[[limit]]\ncomm = [\"nsgroup-workloa\"]\nset = {{ \"pids.max\" = 8 }}\n", pids.config());
    let (_c, config) = config_file(&config);
    let d = Daemon::start(&h, &["--config", &config]);
    let (inside, mut out) = spawn_everywhere(&h, &[&pids], &[WORKLOAD, "contained", "--forks", "20"]);
    let v = read_json(&mut out);
    assert_eq!(v["forked"], 7, "the node's pids.max = 8 holds the workload and 7 children: {v}");
    let node = format!("{}/node_{}", pids.root, inside.id());
    assert_eq!(std::fs::read_to_string(pids.dir(&node).join("pids.max")).unwrap().trim(), "8");
    let (outside, mut out) = spawn_everywhere(&h, &[&pids], &[WORKLOAD, "contained", "--forks", "20", "--outside"]);
    assert_eq!(read_json(&mut out)["forked"], 20, "outside the set the same loop runs on");
    finish(vec![inside, outside]);
    drop(d);
}

#[test]
fn a_cpu_quota_gives_a_busy_loop_its_share() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let Some(cpu) = ControllerRoot::new("cpu", &h) else { return };
    let config = format!("{}[[limit]]\ncomm = [\"nsgroup-workloa\"]\nset = {{ \"cpu.max\" = \"20000 100000\" }}\n", cpu.config());
    let (_c, config) = config_file(&config);
    let _d = Daemon::start(&h, &["--config", &config]);
    let (inside, mut out) = spawn_everywhere(&h, &[&cpu], &[WORKLOAD, "contained", "--spin-ms", "1500"]);
    let v = read_json(&mut out);
    let node = format!("{}/node_{}", cpu.root, inside.id());
    assert_eq!(std::fs::read_to_string(cpu.dir(&node).join("cpu.cfs_quota_us")).unwrap().trim(), "20000");
    let cpu_ms = v["cpu_ms"].as_u64().unwrap();
    assert!(cpu_ms < 900, "a 20 % quota: {cpu_ms} ms of CPU in 1500 ms");
    finish(vec![inside]);
}

#[test]
fn bad_control_configuration_is_refused() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let run = |config: &str| {
        let (_c, path) = config_file(config);
        let out = Command::new(NSGROUP)
            .args(["run", "--hierarchy"])
            .arg(&h.mount)
            .args(["--root", &h.root, "--config", &path])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run("controllers = [\"memroy\"]\n");
    assert!(code == Some(1) && err.contains("memroy"), "{err}");
    let (code, err) = run("[[mirror]]\ncontrollers = \"nosuch\"\n");
    assert!(code == Some(1) && err.contains("nosuch") && err.contains("mounted"), "{err}");
    let (code, err) = run("[[limit]]\nset = { \"memory.swap.max\" = 1 }\n");
    assert!(code == Some(1) && err.contains("memory.swap.max") && err.contains("line 2"), "{err}");
    let (code, err) = run("\n[[limit]]\ncomm = [\"x\"]\nset = { \"pids.max\" = \"lots\" }\n");
    assert!(code == Some(1) && err.contains("pids.max") && err.contains("line 4"), "{err}");
}

#[test]
fn a_value_the_kernel_refuses_is_a_warning_and_the_task_is_placed() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let Some(blkio) = ControllerRoot::new("blkio", &h) else { return };
    // No block device 250:0: the kernel refuses the throttle.
    let config = format!("{}[[limit]]\nset = {{ \"io.max\" = \"250:0 rbps=1000\" }}\n", blkio.config());
    let (_c, config) = config_file(&config);
    let d = Daemon::start(&h, &["--config", &config]);
    let (task, _) = spawn_everywhere(&h, &[&blkio], &["unshare", "--uts", "sleep", "60"]);
    let node = format!("node_{}", task.id());
    h.expect_in(task.id(), &h.path(&node));
    wait_for("the task in its mirror", || blkio.cgroup_of(task.id()) == Some(format!("{}/{node}", blkio.root)));
    wait_for("the warning", || d.log_text().contains("blkio.throttle.read_bps_device"));
    let log = d.log_text();
    assert!(log.contains("limit not applied") && log.contains(&node), "{log}");
    finish(vec![task]);
}

/// Enables a controller in the cgroup2 root's subtree for the test, and
/// disables it again on drop if it was not enabled before.
struct RootController {
    file: PathBuf,
    controller: &'static str,
    enabled_here: bool,
}

impl RootController {
    fn enable(mount: &std::path::Path, controller: &'static str) -> RootController {
        let file = mount.join("cgroup.subtree_control");
        let before = std::fs::read_to_string(&file).unwrap();
        let enabled_here = !before.split_whitespace().any(|c| c == controller);
        if enabled_here {
            std::fs::write(&file, format!("+{controller}")).unwrap();
        }
        RootController { file, controller, enabled_here }
    }
}

impl Drop for RootController {
    fn drop(&mut self) {
        if self.enabled_here {
            if let Err(e) = std::fs::write(&self.file, format!("-{}", self.controller)) {
                eprintln!("warning: could not restore {}: {e}", self.file.display());
            }
        }
    }
}

fn controllers_of(h: &Hier, rel: &str) -> String {
    std::fs::read_to_string(h.dir(rel).join("cgroup.controllers")).unwrap_or_default()
}

#[test]
fn cgroup2_nodes_get_controllers_by_the_leaf_policy() {
    if !privileged() {
        return;
    }
    let mount = PathBuf::from("/sys/fs/cgroup/unified");
    if !std::fs::read_to_string(mount.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb")) {
        eprintln!("skipped: no cgroup2 hierarchy with hugetlb at {} (the hybrid bed only)", mount.display());
        return;
    }
    // Declared first: dropped last, after the test's cgroups are gone.
    let _hugetlb = RootController::enable(&mount, "hugetlb");
    let mut h = Hier::new(Kind::V2);
    std::fs::write(h.dir(&h.root).join("cgroup.subtree_control"), "+hugetlb").unwrap();
    let work = h.path("work");
    std::fs::create_dir(h.dir(&work)).unwrap();

    // Default policy: the tasks of a cgroup nsgroup did not make stay; the
    // node made below it lacks the controller, and the log says so.
    let (_c, nodes_only) = config_file("controllers = [\"hugetlb\"]\n");
    let mut d = Daemon::start(&h, &["--config", &nodes_only]);
    let x = h.spawn_in(&work, &["unshare", "--uts", "sleep", "60"]);
    let node_x = format!("{work}/node_{}", x.pid);
    h.expect_in(x.pid, &node_x);
    assert!(!controllers_of(&h, &node_x).contains("hugetlb"));
    wait_for("the lack reported", || d.log_text().contains("lacks hugetlb"));
    d.stop();
    h.kill_all();
    wait_for("the node gone", || !h.dir(&node_x).exists() || std::fs::remove_dir(h.dir(&node_x)).is_ok());

    // `everywhere` (a subtree delegated to nsgroup): the parent's tasks move
    // into its leaf first; nested, the node's own tasks move into the node's leaf.
    let (_c, everywhere) = config_file("controllers = [\"hugetlb\"]\nleaf = \"everywhere\"\n");
    let _d = Daemon::start(&h, &["--config", &everywhere]);
    let bystander = h.spawn_in(&work, &["sleep", "60"]);
    let p = h.spawn_in(&work, &["unshare", "--uts", "sh", "-c", "unshare --uts sleep 60; sleep 60"]);
    let node_p = format!("{work}/node_{}", p.pid);
    wait_for("the inner node", || children_of(p.pid).first().is_some_and(|c| h.cgroup_of(*c).is_some_and(|g| g.starts_with(&format!("{node_p}/node_")))));
    let inner = h.cgroup_of(children_of(p.pid)[0]).unwrap();
    assert!(controllers_of(&h, &node_p).contains("hugetlb"), "the node under work got it");
    assert!(controllers_of(&h, &inner).contains("hugetlb"), "the nested node got it");
    assert_eq!(h.cgroup_of(bystander.pid), Some(format!("{work}/leaf")), "work's own tasks moved into its leaf");
    assert_eq!(h.cgroup_of(p.pid), Some(format!("{node_p}/leaf")), "the node's own task moved into its leaf");
    // The node's leaf stands for the node: its task is not moved again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.cgroup_of(p.pid), Some(format!("{node_p}/leaf")));
}

/// cgroup2 with memory, pids and cpu (the systemd guest): a subtree of a
/// delegated scope the test starts, whose cgroup passes the controllers on,
/// and a daemon with one limit rule for the workload's sets. `leaf =
/// "everywhere"`: the subtree is delegated to nsgroup, so the tracked root's
/// own tasks move into its `leaf` and the nodes below it get the
/// controllers (with `nodes`, a node directly below a cgroup nsgroup did not
/// make lacks them: §14). Fields drop in order: daemon, subtree, scope.
struct LimitBed {
    d: Daemon,
    h: Hier,
    /// The daemon's API socket.
    socket: String,
    _config: tempfile::TempDir,
    _scope: DelegatedScope,
}

impl LimitBed {
    /// `None` (after saying why) off the guest bed.
    fn new(set: &str) -> Option<LimitBed> {
        LimitBed::with(&format!("[[limit]]\ncomm = [\"nsgroup-workloa\"]\nset = {{ {set} }}\n"))
    }

    /// The bed with `limits` (`[[limit]]` tables) in the daemon's configuration.
    fn with(limits: &str) -> Option<LimitBed> {
        let scope = DelegatedScope::start(&["memory", "pids", "cpu"]).map_err(|why| skip(&why)).ok()?;
        let h = Hier::v2_in(&scope.cgroup);
        let (config_dir, config, socket) = with_api(&format!("controllers = [\"memory\", \"pids\", \"cpu\"]\nleaf = \"everywhere\"\n{limits}"));
        let d = Daemon::start(&h, &["--config", &config]);
        wait_for("the API socket", || std::path::Path::new(&socket).exists());
        Some(LimitBed { d, h, socket, _config: config_dir, _scope: scope })
    }

    /// A file of the workload `pid`'s node.
    fn node_file(&self, pid: u32, file: &str) -> String {
        let path = self.h.dir(&self.h.path(&format!("node_{pid}"))).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.d.log_text()))
    }
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or_else(|| panic!("no {key} in {text:?}"))
}

#[test]
fn a_cgroup2_memory_limit_oom_kills_inside_the_set_only() {
    if !privileged() {
        return;
    }
    let Some(bed) = LimitBed::new("\"memory.max\" = \"64M\"") else { return };
    // Outside the set first (a task in the tracked root: the first node moves
    // it into the root's leaf), then the same hog inside it.
    let (mut outside, mut out) = spawn_everywhere(&bed.h, &[], &[WORKLOAD, "contained", "--outside", "--forks", "1", "--hog-mb", "192"]);
    assert_eq!(read_json(&mut out)["hogged_mb"], 192, "outside the set the hog keeps its 192 MiB");
    // Its lingering child keeps stdout open: the hog's end is its exit.
    let (mut inside, _out) = spawn_everywhere(&bed.h, &[], &[WORKLOAD, "contained", "--forks", "1", "--hog-mb", "192"]);
    let mut status = None;
    wait_for("the hog inside to end", || {
        status = inside.try_wait().unwrap();
        status.is_some()
    });
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.and_then(|s| s.signal()), Some(9), "inside a 64 MiB node the hog was SIGKILLed: {status:?}");
    // The node lives on in the workload's lingering child.
    assert_eq!(bed.node_file(inside.id(), "memory.max").trim(), (64u64 << 20).to_string());
    let events = bed.node_file(inside.id(), "memory.events");
    assert!(keyed(&events, "oom_kill") >= 1, "the kernel's OOM killer did it, in the node: {events}");
    assert!(outside.try_wait().unwrap().is_none(), "the hog outside runs on");
    assert_eq!(bed.h.cgroup_of(outside.id()), Some(bed.h.path("leaf")), "outside the node, in the root's leaf");
    finish(vec![outside]);
}

/// `nsgroup events` on `socket`, its lines handed over as they come.
fn subscribe(socket: &str) -> (Child, std::sync::mpsc::Receiver<serde_json::Value>) {
    let mut child = Command::new(NSGROUP).args(["events", "--socket", socket]).stdout(Stdio::piped()).spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // The subscription's first line: the daemon publishes to it from now on.
    rx.recv_timeout(Duration::from_secs(30)).expect("the subscription's answer");
    (child, rx)
}

/// The first event named `name` within a minute.
fn event_named(rx: &std::sync::mpsc::Receiver<serde_json::Value>, name: &str) -> serde_json::Value {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == name => return v,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no {name} event within a minute")
}

#[test]
fn an_oom_kill_in_a_node_is_an_event_naming_the_node_its_victim_and_limit() {
    if !privileged() {
        return;
    }
    let history = tempfile::tempdir().unwrap();
    let db = history.path().join("history.sqlite").display().to_string();
    let rule = format!("[[limit]]\ncomm = [\"nsgroup-workloa\"]\nset = {{ \"memory.max\" = \"64M\" }}\n[history]\ndatabase = \"{db}\"\n");
    let Some(bed) = LimitBed::with(&rule) else { return };
    let (mut events, rx) = subscribe(&bed.socket);
    let (mut inside, _out) = spawn_everywhere(&bed.h, &[], &[WORKLOAD, "contained", "--forks", "1", "--hog-mb", "192"]);
    let hog = inside.id();
    let node = bed.h.path(&format!("node_{hog}"));
    let v = event_named(&rx, "oom_kill");
    let d = &v["data"];
    assert_eq!(d["path"], node.as_str(), "{v}\n{}", bed.d.log_text());
    assert!(d["kills"].as_u64() >= Some(1) && d["oom_kill"].as_u64() >= Some(1), "{v}");
    assert_eq!(d["memory_max"], (64u64 << 20).to_string(), "{v}");
    assert_eq!((d["creator"]["pid"].as_u64(), d["owner"].as_u64()), (Some(u64::from(hog)), Some(0)), "{v}");
    assert!(d["set"]["uts"].as_u64().is_some_and(|i| i > 0), "{v}");
    // Root reads the kernel's log: the victim is the hog itself.
    assert_eq!((d["victim"]["pid"].as_u64(), d["victim"]["comm"].as_str()), (Some(u64::from(hog)), Some("nsgroup-workloa")), "{v}");
    let _ = inside.wait();
    // The node's timeline has it too.
    wait_for("the OOM kill in the timeline", || {
        let out = Command::new(NSGROUP).args(["history", "--json", "--database", &db, &node]).output().unwrap();
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let has = |what: &str, key: &str, value: serde_json::Value| {
            t["events"].as_array().is_some_and(|e| e.iter().any(|e| e["what"] == what && e["detail"][key] == value))
        };
        has("oom_kill", "victim_pid", hog.into()) && has("limit", "file", "memory.max".into())
    });
    assert!(bed.d.log_text().contains("the OOM killer killed in a node"), "{}", bed.d.log_text());
    let _ = events.kill();
    let _ = events.wait();
}

#[test]
fn a_pressure_rule_kills_the_thrashing_node_only_not_its_parent_or_sibling() {
    if !privileged() {
        return;
    }
    // memory.high far below what the hog writes: the kernel throttles it,
    // and the throttling is memory stall (PSI "some").
    let rules = "[[limit]]\ncomm = [\"nsgroup-workloa\"]\nset = { \"memory.high\" = \"8M\" }\n\
                 [[pressure]]\ncomm = [\"nsgroup-workloa\"]\nresource = \"memory\"\nthreshold_us = 100000\nwindow_us = 1000000\naction = \"kill\"\n";
    if !std::path::Path::new("/proc/pressure/memory").exists() {
        return skip("the kernel accounts no pressure (PSI off: boot with psi=1)");
    }
    let Some(bed) = LimitBed::with(rules) else { return };
    let (mut events, rx) = subscribe(&bed.socket);
    // The parent: a node of its own (made by `unshare`: no rule), whose shell
    // starts the hog (a node below it) and then lives on.
    let script = format!("{WORKLOAD} contained --hog-mb 192 </dev/null; exec sleep 600");
    let (mut parent, _pout) = spawn_everywhere(&bed.h, &[], &["unshare", "--uts", "sh", "-c", &script]);
    let (mut sibling, _sout) = spawn_everywhere(&bed.h, &[], &["unshare", "--uts", "sleep", "600"]);
    let parent_node = bed.h.path(&format!("node_{}", parent.id()));
    let sibling_node = bed.h.path(&format!("node_{}", sibling.id()));
    let v = event_named(&rx, "pressure");
    let d = &v["data"];
    let path = d["path"].as_str().unwrap_or_default().to_string();
    assert!(path.starts_with(&format!("{parent_node}/node_")), "the hog's node, below its parent: {v}\n{}", bed.d.log_text());
    assert_eq!((d["resource"].as_str(), d["trigger"].as_str()), (Some("memory"), Some("some 100000 1000000")), "{v}");
    assert_eq!(d["creator"]["comm"], "nsgroup-workloa", "{v}");
    assert_eq!(d["action"], "kill", "{v}");
    assert!(d["done"].is_string() && d.get("error").is_none(), "{v}");
    wait_for("the hog's node gone", || !bed.h.dir(&path).exists());
    // Only the culprit: its parent and a sibling live on.
    std::thread::sleep(Duration::from_millis(500));
    assert!(parent.try_wait().unwrap().is_none() && sibling.try_wait().unwrap().is_none(), "{}", bed.d.log_text());
    assert!(bed.h.dir(&parent_node).is_dir() && bed.h.dir(&sibling_node).is_dir());
    let _ = events.kill();
    let _ = events.wait();
    finish(vec![parent, sibling]);
}

#[test]
fn a_cgroup2_pids_limit_stops_a_fork_loop_inside_the_set_only() {
    if !privileged() {
        return;
    }
    let Some(bed) = LimitBed::new("\"pids.max\" = 8") else { return };
    let (outside, mut out) = spawn_everywhere(&bed.h, &[], &[WORKLOAD, "contained", "--outside", "--forks", "20"]);
    assert_eq!(read_json(&mut out)["forked"], 20, "outside the set the loop runs on");
    let (inside, mut out) = spawn_everywhere(&bed.h, &[], &[WORKLOAD, "contained", "--forks", "20"]);
    let v = read_json(&mut out);
    assert_eq!(v["forked"], 7, "pids.max = 8 holds the workload and 7 children: {v}");
    assert_eq!(bed.node_file(inside.id(), "pids.max").trim(), "8");
    assert_eq!(bed.node_file(inside.id(), "pids.current").trim(), "8");
    let events = bed.node_file(inside.id(), "pids.events");
    assert!(keyed(&events, "max") >= 1, "the kernel refused the 9th fork: {events}");
    finish(vec![inside, outside]);
}

#[test]
fn a_cgroup2_cpu_quota_gives_a_busy_loop_its_share() {
    if !privileged() {
        return;
    }
    let Some(bed) = LimitBed::new("\"cpu.max\" = \"20000 100000\"") else { return };
    let spin_ms = 3000;
    let (inside, mut out) = spawn_everywhere(&bed.h, &[], &[WORKLOAD, "contained", "--spin-ms", &spin_ms.to_string()]);
    let v = read_json(&mut out);
    assert_eq!(bed.node_file(inside.id(), "cpu.max").trim(), "20000 100000");
    // A 20 % quota, asserted generously: at most half of the spin's wall time
    // (the node's usage covers its whole life, a little more than the spin).
    let stat = bed.node_file(inside.id(), "cpu.stat");
    let usage_us = keyed(&stat, "usage_usec");
    assert!(usage_us <= spin_ms * 1000 / 2, "the node used {usage_us} µs of CPU in a {spin_ms} ms spin: {stat}");
    assert!(keyed(&stat, "nr_throttled") >= 1, "the quota throttled it: {stat}");
    assert!(v["cpu_ms"].as_u64().unwrap() <= spin_ms / 2, "{v}");
    finish(vec![inside]);
}

/// Runs `nsgroup exec ARGS` from inside the tracked root; its status and stdout.
fn exec_in_root(h: &Hier, args: &[&str]) -> (Option<i32>, String, String) {
    let procs = h.dir(&h.root).join(if h.kind == Kind::V1 { "tasks" } else { "cgroup.procs" });
    let out = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(&procs)
        .arg(NSGROUP)
        .args(["exec", "--hierarchy"])
        .arg(&h.mount)
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The node path `cat /proc/self/cgroup` printed for the test hierarchy.
fn printed_node(h: &Hier, stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| match h.kind {
            Kind::V1 => l.contains(&format!(":name={}:", h.name)),
            Kind::V2 => l.starts_with("0::"),
        })
        .unwrap_or_else(|| panic!("no line for the hierarchy in {stdout:?}"));
    line.rsplit(':').next().unwrap().to_string()
}

#[test]
fn exec_starts_the_command_in_its_node_with_or_without_the_daemon() {
    if !privileged() {
        return;
    }
    for kind in [Kind::V1, Kind::V2] {
        let h = Hier::new(kind);
        // Without a daemon: the command's first instruction is in its node;
        // its status comes back; the node goes with it.
        let (code, out, err) = exec_in_root(&h, &["--unshare", "uts,pid", "--", "sh", "-c", "cat /proc/self/cgroup; exit 7"]);
        assert_eq!(code, Some(7), "{err}");
        let node = printed_node(&h, &out);
        assert!(node.starts_with(&format!("{}/node_", h.root)), "{kind:?}: {node}");
        assert!(h.node_paths().is_empty(), "{kind:?}: the node went with the command");

        // With a daemon: it adopts the node and makes no second one.
        let d = Daemon::start(&h, &[]);
        let (code, out, err) = exec_in_root(&h, &["--unshare", "uts,ipc", "--", "sh", "-c", "cat /proc/self/cgroup; sleep 0.5"]);
        assert_eq!(code, Some(0), "{err}");
        let node = printed_node(&h, &out);
        assert!(node.starts_with(&format!("{}/node_", h.root)), "{kind:?}: {node}");
        assert_eq!(node.matches("/node_").count(), 1, "{kind:?}: no nested second node: {node}");
        wait_for("the adoption logged", || d.log_text().contains("node_adopted"));
        assert!(!d.log_text().contains("node_created"), "{kind:?}: {}", d.log_text());
        wait_for("the node removed", || h.node_paths().is_empty());
    }
}

#[test]
fn exec_refuses_bad_input() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let (code, _, err) = exec_in_root(&h, &["--unshare", "bogus", "--", "true"]);
    assert!(code != Some(0) && err.contains("bogus"), "{err}");
    let (code, _, err) = exec_in_root(&h, &["--limit", "pids.max=lots", "--", "true"]);
    assert!(code != Some(0) && err.contains("pids.max"), "{err}");
    let (code, _, err) = exec_in_root(&h, &["--", "/nonexistent/command"]);
    assert_eq!(code, Some(127), "{err}");
    assert!(err.contains("/nonexistent/command"), "{err}");
}

/// A configuration (`text`, then an `[api]` table) whose API socket every
/// user may reach: its directory, the file's path and the socket's.
fn with_api(text: &str) -> (tempfile::TempDir, String, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("api.sock").display().to_string();
    let config = dir.path().join("nsgroup.toml");
    std::fs::write(&config, format!("{text}\n[api]\nsocket = \"{socket}\"\n")).unwrap();
    let config = config.display().to_string();
    (dir, config, socket)
}

/// A shell of uid 65534 in a node of its own (made for its new user and uts
/// namespaces: owned by 65534) that runs `nsgroup limit <its pid> SETTING`
/// from inside the node, where a caller without CAP_SYS_ADMIN must be.
struct OwnSandbox {
    child: Child,
    stdin: std::process::ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    socket: String,
    _bin: Runnable,
}

impl OwnSandbox {
    /// Starts it in the tracked root and in each of `roots`. It runs a copy
    /// of `nsgroup` any user may run from inside a user namespace (the
    /// guest's 9p share of the build refuses that: `Permission denied`).
    fn start(h: &Hier, roots: &[&ControllerRoot], socket: &str) -> OwnSandbox {
        let bin = Runnable::new();
        let nsgroup = bin.nsgroup();
        let script = format!("while read -r setting; do '{nsgroup}' limit --socket '{socket}' $$ \"$setting\" 2>&1; echo \"exit $?\"; done");
        let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
        let args: Vec<&str> = nobody.into_iter().chain(["unshare", "--user", "--uts", "sh", "-c", &script]).collect();
        let (mut child, out) = spawn_everywhere(h, roots, &args);
        let stdin = child.stdin.take().unwrap();
        OwnSandbox { child, stdin, out, socket: socket.to_string(), _bin: bin }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The sandbox's `nsgroup limit` of SETTING on its own node: exit code and output.
    fn limit(&mut self, setting: &str) -> (i32, String) {
        use std::io::Write;
        writeln!(self.stdin, "{setting}").unwrap();
        let mut output = String::new();
        loop {
            let mut line = String::new();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "the sandbox ended: {output}");
            if let Some(code) = line.trim().strip_prefix("exit ") {
                return (code.parse().unwrap(), output);
            }
            output.push_str(&line);
        }
    }

    fn allowed(&mut self, setting: &str) {
        let (code, output) = self.limit(setting);
        assert_eq!(code, 0, "{setting}: {output}");
    }

    /// Refused by `rule` (exit code 2, the rule named).
    fn refused(&mut self, setting: &str, rule: &str) {
        let (code, output) = self.limit(setting);
        assert!(code == 2 && output.contains(&format!("(rule {rule})")), "{setting}: expected {rule}, got exit {code}: {output}");
    }

    /// Root's `nsgroup limit` of SETTING on the sandbox's node (CAP_SYS_ADMIN).
    fn root_limit(&self, setting: &str) {
        let out = Command::new(NSGROUP).args(["limit", "--socket", &self.socket, &self.pid().to_string(), setting]).output().unwrap();
        assert!(out.status.success(), "root's {setting}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnSandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_trimmed(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

#[test]
fn a_user_only_tightens_its_own_nodes_limits_in_v1_mirrors() {
    if !attacks_can_run() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let (Some(pids), Some(cpu)) = (ControllerRoot::new("pids", &h), ControllerRoot::new("cpu", &h)) else { return };
    let (_dir, config, socket) = with_api(&format!("{}{}[[limit]]\nset = {{ \"pids.max\" = 32 }}\n", pids.config(), cpu.config()));
    let _d = Daemon::start(&h, &["--config", &config]);
    wait_for("the API socket", || std::path::Path::new(&socket).exists());
    let mut sandbox = OwnSandbox::start(&h, &[&pids, &cpu], &socket);
    let node = format!("node_{}", sandbox.pid());
    let pids_max = || read_trimmed(pids.dir(&format!("{}/{node}", pids.root)).join("pids.max"));
    let shares = || read_trimmed(cpu.dir(&format!("{}/{node}", cpu.root)).join("cpu.shares"));
    wait_for("the node's pids mirror with the policy's 32", || std::fs::read_to_string(pids.dir(&format!("{}/{node}", pids.root)).join("pids.max")).is_ok_and(|v| v.trim() == "32"));
    wait_for("the node's cpu mirror", || cpu.dir(&format!("{}/{node}", cpu.root)).join("cpu.shares").exists());

    // Above the policy's 32: refused, and the value stays.
    for setting in ["pids.max=max", "pids.max=64", "pids.max=33", "pids.max=0x40", "pids.max=-1"] {
        let (code, output) = sandbox.limit(setting);
        assert_eq!(code, 2, "{setting}: {output}");
        assert_eq!(pids_max(), "32", "{setting}: {output}");
    }
    sandbox.refused("pids.max=max", "limit.tighten_only");
    sandbox.allowed("pids.max=16");
    assert_eq!(pids_max(), "16");
    sandbox.refused("pids.max=24", "limit.tighten_only");
    assert_eq!(pids_max(), "16", "not above the value in force either");
    // cpu.weight's v1 twin: not above the default 1024; below is fine.
    sandbox.refused("cpu.shares=2048", "limit.weight_default");
    assert_eq!(shares(), "1024");
    sandbox.allowed("cpu.shares=512");
    assert_eq!(shares(), "512");
    // Protections: never, whatever the hierarchy has.
    sandbox.refused("memory.low=1G", "limit.no_protection");
    sandbox.refused("memory.min=1", "limit.no_protection");

    // Root may still raise.
    sandbox.root_limit("pids.max=64");
    assert_eq!(pids_max(), "64");
    sandbox.root_limit("cpu.shares=4096");
    assert_eq!(shares(), "4096");
    // ... and the user may not follow above the policy's 32.
    sandbox.refused("pids.max=48", "limit.tighten_only");
}

#[test]
fn a_cgroup2_user_only_tightens_its_own_nodes_limits() {
    if !attacks_can_run() {
        return;
    }
    let Some(bed) = LimitBed::with("[[limit]]\nset = { \"pids.max\" = 32 }\n") else { return };
    let mut sandbox = OwnSandbox::start(&bed.h, &[], &bed.socket);
    let pid = sandbox.pid();
    wait_for("the node with the policy's pids.max", || bed.h.in_own_node(pid, &bed.h.root));
    let file = |f: &str| bed.node_file(pid, f).trim().to_string();
    assert_eq!(file("pids.max"), "32");

    sandbox.refused("pids.max=max", "limit.tighten_only");
    sandbox.refused("pids.max=64", "limit.tighten_only");
    assert_eq!(file("pids.max"), "32");
    sandbox.allowed("pids.max=16");
    assert_eq!(file("pids.max"), "16");
    sandbox.refused("cpu.weight=200", "limit.weight_default");
    assert_eq!(file("cpu.weight"), "100");
    sandbox.allowed("cpu.weight=50");
    assert_eq!(file("cpu.weight"), "50");
    sandbox.refused("memory.low=1G", "limit.no_protection");
    sandbox.refused("memory.min=1G", "limit.no_protection");
    assert_eq!((file("memory.low"), file("memory.min")), ("0".to_string(), "0".to_string()));
    sandbox.allowed("memory.max=100M");
    assert_eq!(file("memory.max"), (100u64 << 20).to_string());
    sandbox.refused("memory.max=max", "limit.tighten_only");
    sandbox.allowed("cpu.max=50000");
    assert_eq!(file("cpu.max"), "50000 100000");
    sandbox.refused("cpu.max=50000 50000", "limit.tighten_only");
    assert_eq!(file("cpu.max"), "50000 100000", "a shorter period is a higher rate");

    // Root may still raise, and protect.
    sandbox.root_limit("pids.max=max");
    sandbox.root_limit("cpu.weight=200");
    sandbox.root_limit("memory.low=1M");
    assert_eq!((file("pids.max"), file("cpu.weight"), file("memory.low")), ("max".to_string(), "200".to_string(), (1u64 << 20).to_string()));
    sandbox.refused("pids.max=33", "limit.tighten_only");
}
