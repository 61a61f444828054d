//! The API end to end: every row of the permission table (docs/semantics.md)
//! as uid 0 and uid 65534, with and without CAP_SYS_ADMIN, through the
//! `nsgroup` command run as that caller; the event stream during a storm;
//! malformed, slow and vanishing clients while the daemon keeps placing; a
//! subscriber that does not read; the socket's permissions; the verbs on v1
//! with a freezer mirror and on cgroup2; the fallback without a daemon; strict
//! mode (where LSM programs load). Each test has its own private hierarchy and
//! its own socket path.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nsgroup::api::client::Client;
use nsgroup::api::proto::Request;
use serde_json::Value;

/// The four kinds of caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Root,
    RootWithoutCap,
    NobodyWithCap,
    Nobody,
}

impl Caller {
    fn prefix(self) -> Vec<&'static str> {
        match self {
            Caller::Root => vec![],
            Caller::RootWithoutCap => vec!["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"],
            Caller::NobodyWithCap => vec![
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=+sys_admin",
                "--ambient-caps=+sys_admin",
            ],
            Caller::Nobody => vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
        }
    }
    fn cap(self) -> bool {
        matches!(self, Caller::Root | Caller::NobodyWithCap)
    }
    fn uid(self) -> u32 {
        if matches!(self, Caller::Root | Caller::RootWithoutCap) { 0 } else { NOBODY }
    }
}

/// Runs `nsgroup args…` as `caller`, from inside cgroup `rel` (root's shell
/// moves itself there, then drops to the caller and execs).
fn nsgroup_in(h: &Hier, rel: &str, caller: Caller, args: &[&str]) -> Output {
    let procs = h.dir(rel).join("cgroup.procs");
    Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(&procs)
        .args(caller.prefix())
        .arg(NSGROUP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// What a row expects: allowed, or refused by the rule named.
fn expect(row: &str, out: &Output, rule: Option<&str>) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    match rule {
        None => assert!(out.status.success(), "{row}: expected allowed, got {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status),
        Some(r) => {
            assert_eq!(out.status.code(), Some(2), "{row}: expected refused by {r}\nstdout: {stdout}\nstderr: {stderr}");
            assert!(stderr.contains(&format!("(rule {r})")), "{row}: expected rule {r}\nstderr: {stderr}");
        }
    }
}

/// Waits until task `pid` is in a node of its own directly below `parent`; the node's path.
fn node_of(h: &Hier, pid: u32, parent: &str) -> String {
    wait_for(&format!("{pid} in its node below {parent}"), || h.in_own_node(pid, parent));
    h.cgroup_of(pid).unwrap()
}

fn permission_table(caller: Caller) {
    if !attacks_can_run() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    let s = api.sock().to_string();
    // The caller lives in C; O is a sibling subtree.
    let c = h.path("c");
    let o = h.path("o");
    for rel in [&c, &o] {
        h.mkdir(rel);
    }
    for k in ["k", "k2", "k2/g", "k3", "busy", "k5"] {
        h.mkdir(&format!("{c}/{k}"));
    }
    h.mkdir(&format!("{o}/k"));
    let _busy = h.spawn_in(&format!("{c}/busy"), &["sleep", "60"]);

    // Moving oneself (the command moves itself, then runs cat).
    let self_rows: [(&str, String, Option<&str>); 4] = [
        ("self into a child", format!("{c}/k"), None),
        ("self into a grandchild", format!("{c}/k2/g"), Some("attach.child_only")),
        ("self into a sibling", format!("{}/o", h.root), Some("attach.child_only")),
        ("self into a non-empty child", format!("{c}/busy"), Some("attach.empty_only")),
    ];
    for (row, dest, rule) in &self_rows {
        let out = nsgroup_in(&h, &c, caller, &["attach", "--socket", &s, dest, "--", "cat", "/proc/self/cgroup"]);
        expect(row, &out, *rule);
        if rule.is_none() {
            let line = format!("name={}:{dest}", h.name);
            assert!(text(&out.stdout).lines().any(|l| l.ends_with(&line)), "{row}: not in {dest}: {}", text(&out.stdout));
        }
    }

    // Moving another task: one in C, one in O.
    let victim = h.spawn_in(&c, &["sleep", "60"]).pid;
    let outsider = h.spawn_in(&o, &["sleep", "60"]).pid;
    let other_rule = (!caller.cap()).then_some("attach.other_needs_cap_sys_admin");
    let out = nsgroup_in(&h, &c, caller, &["attach", "--socket", &s, &format!("{c}/k3"), &victim.to_string()]);
    expect("another task into an empty child of its cgroup", &out, other_rule);
    if caller.cap() {
        h.expect_in(victim, &format!("{c}/k3"));
    }
    let out = nsgroup_in(&h, &c, caller, &["attach", "--socket", &s, &format!("{o}/k"), &outsider.to_string()]);
    expect("another task, outside the mover's subtree", &out, Some(other_rule.unwrap_or("attach.other_below_mover")));
    let victim2 = h.spawn_in(&c, &["sleep", "60"]).pid;
    let out = nsgroup_in(&h, &c, caller, &["attach", "--socket", &s, &format!("{c}/k2/g"), &victim2.to_string()]);
    expect("another task into a grandchild", &out, Some(other_rule.unwrap_or("attach.child_only")));

    // Creating below and outside one's cgroup.
    let create_rule = (!caller.cap()).then_some("create.needs_cap_sys_admin");
    let out = nsgroup_in(&h, &c, caller, &["create", "--socket", &s, "--json", &c, "--name", "made"]);
    expect("create below one's cgroup", &out, create_rule);
    assert_eq!(h.dir(&format!("{c}/made")).exists(), caller.cap());
    let out = nsgroup_in(&h, &c, caller, &["create", "--socket", &s, &o, "--name", "made"]);
    expect("create outside one's cgroup", &out, Some(create_rule.unwrap_or("create.below_creator")));
    assert!(!h.dir(&format!("{o}/made")).exists());

    // Killing one's own sandbox and someone else's: nodes the daemon made
    // for an unshare by the caller's uid, and by the other uid.
    let sandbox = |h: &mut Hier, rel: &str, uid: u32| -> (u32, String) {
        let p = if uid == 0 {
            h.spawn_in(rel, &["unshare", "--uts", "sleep", "60"]).pid
        } else {
            h.spawn_as_nobody(rel, &["unshare", "--user", "--uts", "sleep", "60"]).pid
        };
        let node = node_of(h, p, rel);
        (p, node)
    };
    let other_uid = if caller.uid() == 0 { NOBODY } else { 0 };
    let (own_pid, own_node) = sandbox(&mut h, &c, caller.uid());
    let (_, theirs) = sandbox(&mut h, &c, other_uid);
    let (_, own_outside) = sandbox(&mut h, &o, caller.uid());
    let out = nsgroup_in(&h, &c, caller, &["kill", "--socket", &s, &own_pid.to_string()]);
    expect("kill one's own sandbox (by pid)", &out, None);
    wait_for("the own sandbox gone", || !h.dir(&own_node).exists());
    let out = nsgroup_in(&h, &c, caller, &["kill", "--socket", &s, &theirs]);
    expect("kill someone else's sandbox", &out, (!caller.cap()).then_some("control.creator_uid"));
    assert_eq!(!h.dir(&theirs).exists() || h.processes_in(&theirs).is_empty(), caller.cap());
    let out = nsgroup_in(&h, &c, caller, &["kill", "--socket", &s, &own_outside]);
    expect("kill one's own node outside one's cgroup", &out, (!caller.cap()).then_some("control.below_caller"));
    let out = nsgroup_in(&h, &c, caller, &["kill", "--socket", &s, "/elsewhere/node_1"]);
    expect("kill outside the tracked subtree", &out, Some("scope.tracked_root"));
    // Not a node: exit code 1 (target not found).
    let out = nsgroup_in(&h, &c, caller, &["kill", "--socket", &s, &format!("{c}/k5")]);
    assert_eq!(out.status.code(), Some(1), "not a node: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is not a node"), "{}", text(&out.stderr));
    // Reading is open to every caller.
    let out = nsgroup_in(&h, &c, caller, &["api", "--socket", &s, r#"{"version":1,"type":"list"}"#]);
    expect("list", &out, None);
    let v: Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(v["data"]["root"], h.root);
    drop(api);
}

trait ProcessesIn {
    fn processes_in(&self, rel: &str) -> Vec<u32>;
}

impl ProcessesIn for Hier {
    fn processes_in(&self, rel: &str) -> Vec<u32> {
        std::fs::read_to_string(self.dir(rel).join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    }
}

#[test]
fn permission_table_uid0_with_cap_sys_admin() {
    permission_table(Caller::Root);
}

#[test]
fn permission_table_uid0_without_cap_sys_admin() {
    permission_table(Caller::RootWithoutCap);
}

#[test]
fn permission_table_uid65534_with_cap_sys_admin() {
    permission_table(Caller::NobodyWithCap);
}

#[test]
fn permission_table_uid65534_without_cap_sys_admin() {
    permission_table(Caller::Nobody);
}

#[test]
fn a_subscriber_sees_every_node_of_a_storm_in_order() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    let mut events = subscribe(&api);
    // The members live until told to exit: every one gets its node however
    // slow the machine (the guest's TCG) is.
    let mut storm = h.spawn(&[WORKLOAD, "storm", "--count", "200", "--children", "1", "--until-eof"]);
    wait_for("200 nodes", || h.nodes().len() == 200);
    storm.close_stdin();
    let summary = storm.read_json();
    assert_eq!(summary["members"], 200, "{summary}");
    wait_for("every node removed", || h.nodes().is_empty());
    // The daemon's own log names every node a placement created and every
    // node removed; a reconcile (after a ring overflow) logs how many it created.
    let log = api.daemon.log_text();
    let logged = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let by_reconcile: usize = log
        .lines()
        .filter(|l| l.contains("reconciled"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("created=")?.parse::<usize>().ok()))
        .sum();
    let created = logged("event=\"node_created\"") + by_reconcile;
    let removed = logged("event=\"node_removed\"");
    assert!(created >= 200, "{created} nodes created for 200 members");
    assert_eq!(created, removed, "every node created was removed");
    let count = |v: &[Value], what: &str| v.iter().filter(|e| e["event"] == what).count();
    let all = read_events(&mut events, |v| count(v, "node_created") >= created && count(v, "node_removed") >= removed);
    assert_eq!((count(&all, "node_created"), count(&all, "node_removed")), (created, removed), "events beyond what the log says");
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq numbers with gaps or out of order");
    assert!(all.iter().all(|e| e["event"] != "lost"), "events were lost");
    // Each node: created before removed, exactly once each.
    let mut open = std::collections::HashMap::new();
    for e in &all {
        let path = e["data"]["path"].as_str().unwrap_or_default().to_string();
        match e["event"].as_str() {
            Some("node_created") => {
                assert!(open.insert(path.clone(), e["data"]["creator"]["pid"].clone()).is_none(), "{path} created twice");
                assert!(!e["data"]["set"].as_object().unwrap().is_empty());
            }
            Some("node_removed") => {
                assert!(open.remove(&path).is_some(), "{path} removed before it was created");
                assert!(e["data"]["lifetime_s"].is_u64());
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "created, never removed: {open:?}");
    assert!(all.iter().any(|e| e["event"] == "task_placed" && e["data"]["created"] == true));
}

/// Sends raw bytes on a fresh connection and reads the first answer line.
fn exchange(socket: &Path, bytes: &[u8]) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(bytes).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn bad_slow_vanishing_and_many_clients_while_the_daemon_places() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    // Placement goes on throughout.
    let mut storm = h.spawn(&[WORKLOAD, "storm", "--count", "100", "--children", "1", "--hold-ms", "3000"]);
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();
    assert_eq!(code(&exchange(&api.socket, b"not json\n")), "malformed");
    assert_eq!(code(&exchange(&api.socket, b"[1,2]\n")), "malformed");
    assert_eq!(code(&exchange(&api.socket, b"{\"version\":1,\"type\":\"reboot\"}\n")), "unknown_request");
    assert_eq!(code(&exchange(&api.socket, b"{\"version\":9,\"type\":\"list\"}\n")), "unsupported_version");
    assert_eq!(code(&exchange(&api.socket, b"{\"version\":1,\"type\":\"kill\",\"target\":\"/t\",\"x\":1}\n")), "malformed");
    // Oversized: answered too_long, and the same connection goes on.
    {
        let mut s = UnixStream::connect(&api.socket).unwrap();
        let mut big = vec![b'x'; 200 * 1024];
        big.push(b'\n');
        s.write_all(&big).unwrap();
        s.write_all(b"{\"version\":1,\"id\":5,\"type\":\"list\"}\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("too_long"), "{line}");
        line.clear();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!((v["id"].as_u64(), v["type"].as_str()), (Some(5), Some("ok")));
    }
    // Slow: a line in two halves a second apart.
    {
        let mut s = UnixStream::connect(&api.socket).unwrap();
        s.write_all(b"{\"version\":1,\"id\":6,").unwrap();
        std::thread::sleep(Duration::from_secs(1));
        s.write_all(b"\"type\":\"list\"}\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"id\":6") && line.contains("\"ok\""), "{line}");
    }
    // Vanishing: mid-line, and right after a request.
    for bytes in [&b"{\"version\":1,\"ty"[..], &b"{\"version\":1,\"type\":\"list\"}\n"[..]] {
        for _ in 0..20 {
            let mut s = UnixStream::connect(&api.socket).unwrap();
            s.write_all(bytes).unwrap();
            drop(s);
        }
    }
    // 100 clients at once, each polling the node list.
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let socket = api.socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                for _ in 0..5 {
                    let a = c.call(&Request::List { all: false }).unwrap();
                    assert_eq!(a["type"], "ok", "{a}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let summary = storm.read_json();
    assert_eq!(summary["members"], 100, "{summary}");
    let marker = h.marker();
    h.kill(marker.pid);
    wait_for("every node removed", || h.nodes().is_empty());
    assert!(api.daemon.log_lines_with("panicked").is_empty());
}

#[test]
fn a_subscriber_that_does_not_read_is_dropped_and_placement_goes_on() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    let mut lazy = UnixStream::connect(&api.socket).unwrap();
    lazy.write_all(b"{\"version\":1,\"type\":\"subscribe\"}\n").unwrap();
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&lazy, 4096);
    // Storms until the daemon drops it (more than 1 MiB of events unsent).
    for round in 0..8 {
        let mut storm = h.spawn(&[WORKLOAD, "storm", "--count", "500", "--children", "2", "--hold-ms", "100"]);
        storm.read_json();
        wait_for("the storm's nodes removed", || h.nodes().is_empty());
        if !api.daemon.log_lines_with("dropped a subscriber").is_empty() {
            break;
        }
        assert!(round < 7, "the subscriber was never dropped");
    }
    // It was closed: reading what was sent ends.
    lazy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    let r = lazy.read_to_end(&mut sink);
    assert!(r.is_ok() || r.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
    let marker = h.marker();
    h.kill(marker.pid);
    // The counter is in the API's log line at stop.
    let mut api = api;
    api.daemon.stop();
    assert!(!api.daemon.log_lines_with("dropped_slow_subscribers=1").is_empty(), "{}", api.daemon.log_text());
}

#[test]
fn the_socket_keeps_out_whom_its_mode_keeps_out() {
    if !attacks_can_run() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let open = Api::start(&h, "", "");
    assert_eq!(std::fs::metadata(&open.socket).unwrap().permissions().mode() & 0o777, 0o666);
    let list = r#"{"version":1,"type":"list"}"#;
    let out = nsgroup_in(&h, &h.root, Caller::Nobody, &["api", "--socket", open.sock(), list]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(open);
    let h2 = Hier::new(Kind::V1);
    let closed = Api::start(&h2, "", "socket_mode = 0o600");
    assert_eq!(std::fs::metadata(&closed.socket).unwrap().permissions().mode() & 0o777, 0o600);
    let out = nsgroup_in(&h2, &h2.root, Caller::Nobody, &["api", "--socket", closed.sock(), list]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("permission denied"), "{}", text(&out.stderr));
    let out = nsgroup_in(&h2, &h2.root, Caller::Root, &["api", "--socket", closed.sock(), list]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A second daemon cannot take a socket path set explicitly.
    let h3 = Hier::new(Kind::V1);
    let dir = closed.socket.parent().unwrap();
    let config = dir.join("second.toml");
    std::fs::write(&config, format!("[api]\nsocket = \"{}\"\n", closed.sock())).unwrap();
    let out = Command::new(NSGROUP)
        .args(["run", "--hierarchy"])
        .arg(&h3.mount)
        .args(["--root", &h3.root, "--history-database", "", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is served by pid"), "{}", text(&out.stderr));
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?)
}

#[test]
fn freeze_thaw_and_kill_a_forking_subtree_on_v1_with_a_freezer_mirror() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let Some(f) = FreezerRoot::new(&h) else { return };
    let (dir, config) = freezer_config(&f, "");
    let socket = dir.path().join("api.sock");
    let _d = Daemon::start(&h, &["--config", config.to_str().unwrap()]);
    let s = socket.to_str().unwrap().to_string();
    // A loop that forks as fast as it can, in a node of its own.
    let mut looper = spawn_frozen_able(&h, &f, "unshare --uts sh -c 'while :; do (:) & done'");
    let pid = looper.id();
    let node = node_of(&h, pid, &h.root);
    wait_for("the node's freezer mirror", || f.dir.join(node.trim_start_matches(&format!("{}/", h.root))).join("freezer.state").exists());
    let run = |args: &[&str]| Command::new(NSGROUP).args(args).output().unwrap();
    let out = run(&["freeze", "--socket", &s, &pid.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("freezer.state"), "{}", text(&out.stdout));
    let before = cpu_ticks(pid);
    let tasks = |n: &str| std::fs::read_to_string(h.dir(n).join("tasks")).unwrap_or_default();
    let frozen_tasks = tasks(&node);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_ticks(pid), before, "the loop ran while frozen");
    assert_eq!(tasks(&node), frozen_tasks, "tasks came or went while frozen");
    let out = run(&["thaw", "--socket", &s, &node]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for("the loop running again", || cpu_ticks(pid) != before);
    let out = run(&["kill", "--socket", &s, "--json", &node]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["data"]["method"], "freeze, signals, thaw", "{v}");
    assert!(v["data"].get("warning").is_none());
    let _ = looper.wait();
    wait_for("the node removed", || !h.dir(&node).exists());
}

#[test]
fn the_timeline_shows_a_node_created_frozen_thawed_killed_and_removed() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let Some(f) = FreezerRoot::new(&h) else { return };
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("history.sqlite");
    let (dir, config) = freezer_config(&f, &format!("[history]\ndatabase = \"{}\"\n", db.display()));
    let socket = dir.path().join("api.sock");
    let _d = Daemon::start(&h, &["--config", config.to_str().unwrap()]);
    let (s, db) = (socket.to_str().unwrap().to_string(), db.to_str().unwrap().to_string());
    let mut sleeper = spawn_frozen_able(&h, &f, "unshare --uts sleep 600");
    let pid = sleeper.id();
    let node = node_of(&h, pid, &h.root);
    wait_for("the node's freezer mirror", || f.dir.join(node.trim_start_matches(&format!("{}/", h.root))).join("freezer.state").exists());
    let run = |args: &[&str]| Command::new(NSGROUP).args(args).output().unwrap();
    let timeline = |target: &str| -> Value {
        let out = run(&["history", "--json", "--database", &db, target]);
        assert!(out.status.success(), "history {target}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let whats = |t: &Value| -> Vec<String> { t["events"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap().to_string()).collect() };
    for verb in ["freeze", "thaw"] {
        let out = run(&[verb, "--socket", &s, &node]);
        assert!(out.status.success(), "{verb}: {}", text(&out.stderr));
    }
    // A live pid names the node it is in.
    wait_for("freeze and thaw in the timeline", || whats(&timeline(&pid.to_string())) == ["freeze", "thaw"]);
    let out = run(&["kill", "--socket", &s, &node]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = sleeper.wait();
    wait_for("the node removed", || !h.dir(&node).exists());
    let mut t = Value::Null;
    wait_for("the removal in the timeline", || {
        t = timeline(&node);
        !t["node"]["removed_unix"].is_null()
    });
    assert_eq!(whats(&t), ["freeze", "thaw", "kill"], "{t}");
    let events = t["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["by"] == "api" && e["uid"] == 0), "{t}");
    assert_eq!(events[0]["detail"]["method"], "freezer.state", "{t}");
    assert_eq!(t["node"]["creator_comm"], "unshare", "{t}");
    assert_eq!(t["events_dropped"], 0);
    // The text form: created, the verbs, removed, in order; a gone pid names the last node it created.
    let out = run(&["history", "--database", &db, &pid.to_string()]);
    let lines = text(&out.stdout);
    let order: Vec<usize> = ["created", "freeze", "thaw", "kill", "removed"].iter().map(|w| lines.find(&format!("  {w} ")).unwrap_or(usize::MAX)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]) && order[4] != usize::MAX, "{lines}");
    assert!(lines.contains(&node), "{lines}");
    let out = run(&["history", "--database", &db, "/no/such/node"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no node"), "{}", text(&out.stderr));
}

#[test]
fn freeze_and_kill_on_cgroup2() {
    let Some(h) = Hier::try_new(Kind::V2) else { return };
    let api = Api::start(&h, "", "");
    let s = api.sock().to_string();
    let mut looper = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > '{}' && exec unshare --uts sh -c 'while :; do (:) & done'", h.dir(&h.root).join("cgroup.procs").display()))
        .spawn()
        .unwrap();
    let pid = looper.id();
    let node = node_of(&h, pid, &h.root);
    let run = |args: &[&str]| Command::new(NSGROUP).args(args).output().unwrap();
    let out = run(&["freeze", "--socket", &s, &node]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(h.dir(&node).join("cgroup.events")).unwrap().contains("frozen 1"));
    let out = run(&["thaw", "--socket", &s, &node]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // cgroup.kill where the kernel has it (5.14+), else freeze/signal/thaw rounds, said so.
    let has_kill = h.dir(&node).join("cgroup.kill").exists();
    let out = run(&["kill", "--socket", &s, &node]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    if has_kill {
        assert!(text(&out.stdout).contains("cgroup.kill"), "{}", text(&out.stdout));
    } else {
        assert!(text(&out.stdout).contains("freeze, signals, thaw"), "{}", text(&out.stdout));
        assert!(text(&out.stderr).contains("no cgroup.kill"), "{}", text(&out.stderr));
    }
    let _ = looper.wait();
    wait_for("the node removed", || !h.dir(&node).exists());
}

#[test]
fn without_a_daemon_the_verbs_act_directly_as_root() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let d = Daemon::start(&h, &[]);
    let p = h.spawn(&["unshare", "--uts", "sleep", "60"]).pid;
    let root = h.root.clone();
    let node = node_of(&h, p, &root);
    drop(d);
    let nowhere = "/nonexistent/nsgroup-test.sock";
    let mount = h.mount.to_str().unwrap().to_string();
    let run = |args: &[&str]| Command::new(NSGROUP).args(args).output().unwrap();
    // Not found: 1; usage: 2; without a freezer, kill says what it cannot guarantee.
    let out = run(&["kill", "--socket", nowhere, "--hierarchy", &mount, &h.path("nothing")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = run(&["limit", "--socket", nowhere, "--hierarchy", &mount, &node, "nonsense"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(&["freeze", "--socket", nowhere, "--hierarchy", &mount, &node]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("has no freezer"), "{}", text(&out.stderr));
    let out = run(&["kill", "--socket", nowhere, "--hierarchy", &mount, &p.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("warning: no freezer"), "{}", text(&out.stderr));
    h.reap(p);
    assert!(std::fs::read_to_string(h.dir(&node).join("tasks")).unwrap().trim().is_empty());
    // An unprivileged caller without a daemon is told why it cannot act.
    let out = nsgroup_in(&h, &root, Caller::Nobody, &["kill", "--socket", nowhere, &node]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("needs root"), "{}", text(&out.stderr));
}

/// Why strict mode cannot run here, if it cannot: what `nsgroup run --strict` says.
fn strict_refusal(h: &Hier) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nsgroup.toml");
    std::fs::write(&config, format!("[api]\nsocket = \"{}\"\nstrict = true\n", dir.path().join("api.sock").display())).unwrap();
    let mut child = Command::new(NSGROUP)
        .args(["run", "--hierarchy"])
        .arg(&h.mount)
        .args(["--root", &h.root, "--history-database", "", "--config", config.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert_eq!(status.code(), Some(1), "{err}");
            return Some(err);
        }
        if dir.path().join("api.sock").exists() || Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a refusal of `nsgroup run --strict` is one this bed may give (the
/// kernel cannot run the program): then the test skips, saying why. A verifier
/// rejection or any other failure is a bug, and fails the test.
fn expected_refusal(err: &str) -> bool {
    ["LSM programs are refused", "not among the active LSMs", "securityfs", "strict mode needs Linux"].iter().any(|why| err.contains(why))
}

#[test]
fn strict_mode_refuses_to_start_where_lsm_programs_cannot_run_and_enforces_where_they_can() {
    strict_table(Kind::V1);
}

#[test]
fn strict_mode_enforces_the_permission_table_on_cgroup2_writes() {
    strict_table(Kind::V2);
}

/// One row of the table by a direct write: its name, the caller's script
/// (run by bash in cgroup `C`) and the rule expected to refuse it, if any.
struct StrictRow {
    name: &'static str,
    script: String,
    rule: Option<&'static str>,
}

/// A process in cgroup `rel`, moved there before strict mode starts (after,
/// the move itself would be judged), that waits for one line, a script, and
/// runs it with bash as `caller`.
fn waiting_caller(h: &Hier, rel: &str, caller: Caller) -> Child {
    let child = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0\" && read -r script && exec \"$@\" bash -c \"$script\"")
        .arg(h.dir(rel).join("cgroup.procs"))
        .args(caller.prefix())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    h.expect_in(child.id(), rel);
    child
}

/// Hands `script` to a waiting caller.
fn start_script(child: &mut Child, script: &str) {
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{script}\n").as_bytes()).unwrap();
}

/// The counters strict mode logs when it is detached, by name.
fn strict_counters(log: &str) -> std::collections::BTreeMap<String, u64> {
    let line = log.lines().rev().find(|l| l.contains("strict mode: detached")).unwrap_or_else(|| panic!("no counters logged:\n{log}"));
    line.split_whitespace().filter_map(|w| w.split_once('=')).filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?))).collect()
}

/// Every row of the permission table (docs/semantics.md §15) attempted by
/// direct writes to `tasks` (v1) or `cgroup.procs` (cgroup2) and by `mkdir`,
/// with strict mode on, as uid 0 and uid 65534, each with and without
/// CAP_SYS_ADMIN. Each caller has subtrees of its own: `C` (where it lives),
/// `S` (a sibling of C), `O` (another subtree). Every refusal must be EPERM
/// and counted under its rule; every allowed write must take effect; and the
/// daemon's own placement must go on.
fn strict_table(kind: Kind) {
    if !attacks_can_run() {
        return;
    }
    let Some(mut h) = Hier::try_new(kind) else { return };
    if let Some(err) = strict_refusal(&h) {
        assert!(expected_refusal(&err), "the refusal does not say the kernel cannot run the program: {err}");
        skip(&format!("strict mode cannot run here (checked that it says why): {}", err.trim()));
        return;
    }
    let file = if kind == Kind::V1 { "tasks" } else { "cgroup.procs" };
    let callers = [Caller::Root, Caller::RootWithoutCap, Caller::NobodyWithCap, Caller::Nobody];
    // Set up before strict mode starts: cgroups, the tasks to move, and one
    // waiting caller per row in C (afterwards, none of it could be placed).
    let mut rows: Vec<(Caller, StrictRow, Child)> = vec![];
    let mut moved: Vec<(Caller, &'static str, u32, String)> = vec![];
    let mut made: Vec<(Caller, &'static str, String, bool)> = vec![];
    for (i, caller) in callers.into_iter().enumerate() {
        let (c, s, o) = (h.path(&format!("c{i}")), h.path(&format!("s{i}")), h.path(&format!("o{i}")));
        let dirs = [c.clone(), format!("{c}/k"), format!("{c}/k2"), format!("{c}/k2/g"), format!("{c}/busy"), format!("{c}/k3"), s.clone(), o.clone(), format!("{o}/k")];
        for d in &dirs {
            h.mkdir(d);
            // The kernel's own checks let the caller write there (uid 65534
            // needs the files; v1 moves only tasks of its own uid): a
            // refusal can only be strict mode's.
            h.chown_cgroup(d, caller.uid());
        }
        let spawn_as = |h: &mut Hier, rel: &str| {
            if caller.uid() == 0 { h.spawn_in(rel, &["sleep", "600"]).pid } else { h.spawn_as_nobody(rel, &["sleep", "600"]).pid }
        };
        spawn_as(&mut h, &format!("{c}/busy"));
        let victim = spawn_as(&mut h, &c);
        let victim2 = spawn_as(&mut h, &c);
        let outsider = spawn_as(&mut h, &o);
        let write = |pid: &str, dest: &str| format!("echo {pid} > '{}'", h.dir(dest).join(file).display());
        let cap = caller.cap();
        let other = |rule: &'static str| Some(if cap { rule } else { "attach.other_needs_cap_sys_admin" });
        let create = |allowed: bool| if cap { (!allowed).then_some("create.below_creator") } else { Some("create.needs_cap_sys_admin") };
        let table = [
            StrictRow { name: "self into an empty child", script: format!("{} && cat /proc/self/cgroup", write("0", &format!("{c}/k"))), rule: None },
            StrictRow { name: "self into a grandchild", script: write("0", &format!("{c}/k2/g")), rule: Some("attach.child_only") },
            StrictRow { name: "self into a sibling", script: write("0", &s), rule: Some("attach.child_only") },
            StrictRow { name: "self into a non-empty child", script: write("0", &format!("{c}/busy")), rule: Some("attach.empty_only") },
            StrictRow {
                name: "another task in C into an empty child of C",
                script: write(&victim.to_string(), &format!("{c}/k3")),
                rule: (!cap).then_some("attach.other_needs_cap_sys_admin"),
            },
            StrictRow { name: "another task in C into a grandchild of C", script: write(&victim2.to_string(), &format!("{c}/k2/g")), rule: other("attach.child_only") },
            StrictRow { name: "another task in O into an empty child of O", script: write(&outsider.to_string(), &format!("{o}/k")), rule: other("attach.other_below_mover") },
            StrictRow { name: "mkdir below C", script: format!("mkdir '{}'", h.dir(&format!("{c}/made")).display()), rule: create(true) },
            StrictRow { name: "mkdir outside C", script: format!("mkdir '{}'", h.dir(&format!("{o}/made")).display()), rule: create(false) },
        ];
        moved.push((caller, "another task in C into an empty child of C", victim, if cap { format!("{c}/k3") } else { c.clone() }));
        moved.push((caller, "another task in C into a grandchild of C", victim2, c.clone()));
        moved.push((caller, "another task in O into an empty child of O", outsider, o.clone()));
        made.push((caller, "mkdir below C", format!("{c}/made"), cap));
        made.push((caller, "mkdir outside C", format!("{o}/made"), false));
        for row in table {
            let child = waiting_caller(&h, &c, caller);
            rows.push((caller, row, child));
        }
    }
    // The daemon's placement under strict mode: a root caller that unshares.
    let c0 = h.path("c0");
    let mut unsharer = waiting_caller(&h, &c0, Caller::Root);

    let mut api = Api::start(&h, "", "strict = true");
    assert!(!api.daemon.log_lines_with("strict mode: direct writes").is_empty(), "{}", api.daemon.log_text());
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for (caller, row, mut child) in rows {
        start_script(&mut child, &row.script);
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let what = format!("{kind:?} {caller:?}: {}: `{}`", row.name, row.script);
        match row.rule {
            None => {
                assert!(out.status.success(), "{what}: expected allowed, got {:?}: {stderr}", out.status);
                eprintln!("strict: {what}: allowed");
            }
            Some(rule) => {
                assert!(!out.status.success(), "{what}: expected refused by {rule}, but it was allowed: {stdout}");
                assert!(stderr.contains("Operation not permitted"), "{what}: expected EPERM (rule {rule}), got: {stderr}");
                eprintln!("strict: {what}: refused, EPERM (rule {rule}): {}", stderr.trim());
            }
        }
        if row.name == "self into an empty child" {
            assert!(stdout.lines().any(|l| l.ends_with(&format!(":{}/k", h.path(&format!("c{}", caller as u8))))), "{what}: not moved: {stdout}");
        }
        *expected.entry(row.rule.unwrap_or("passed").to_string()).or_default() += 1;
    }
    for (caller, row, pid, dest) in &moved {
        assert_eq!(h.cgroup_of(*pid).as_deref(), Some(dest.as_str()), "{caller:?}: {row}: where the task is");
    }
    for (caller, row, dir, exists) in &made {
        assert_eq!(h.dir(dir).exists(), *exists, "{caller:?}: {row}: whether {dir} exists");
    }
    start_script(&mut unsharer, "exec unshare --uts sleep 600");
    let node = node_of(&h, unsharer.id(), &c0);
    eprintln!("strict: the daemon placed an unshare()r in {node} while strict mode was on");
    api.daemon.stop();
    let _ = unsharer.kill();
    let _ = unsharer.wait();
    // Each refusal was strict mode's, under the rule the table names.
    let counters = strict_counters(&api.daemon.log_text());
    for name in nsgroup::api::strict::COUNTERS {
        assert_eq!(counters.get(name).copied(), Some(expected.get(name).copied().unwrap_or(0)), "counter {name}: {counters:?}");
    }
}
