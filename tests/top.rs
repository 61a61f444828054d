//! `nsgroup top` end to end on a private named hierarchy: in a real terminal
//! (tmux runs it, send-keys drives it, capture-pane reads it), in batch mode
//! and as JSON lines; a network namespace's counters after traffic on its
//! loopback, and as its node's final usage; an unprivileged user's view.

mod common;
use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A tmux server of the test's own (its own socket name), running one
/// command in a 160x40 terminal; killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let name = format!("nsgroup-top-{}-{:x}", std::process::id(), rand_nanos());
        let tmux = Tmux { name };
        let ok = tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "40", command]);
        assert!(ok, "tmux could not start {command}");
        tmux
    }

    fn run(&self, args: &[&str]) -> bool {
        Command::new("tmux").args(["-L", &self.name]).args(args).output().is_ok_and(|o| o.status.success())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["-L", &self.name, "capture-pane", "-p", "-t", "top"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(self.run(&["send-keys", "-t", "top", keys]), "tmux send-keys {keys}");
    }

    /// Waits until the screen shows what `cond` looks for; the screen.
    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn rand_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn tmux_present() -> bool {
    let there = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if !there {
        skip("no tmux (scripts/setup installs it)");
    }
    there
}

fn node_of(h: &Hier, pid: u32) -> String {
    wait_for(&format!("{pid} in its node"), || h.in_own_node(pid, &h.root));
    h.cgroup_of(pid).unwrap()
}

fn name_of(node: &str) -> &str {
    node.rsplit('/').next().unwrap()
}

fn top_command(nsgroup: &str, h: &Hier, api: &Api) -> String {
    format!("{nsgroup} top --hierarchy {} --root {} --socket {} -d 0.3", h.mount.display(), h.root, api.sock())
}

#[test]
fn a_frame_shows_the_node_and_its_command_the_keys_freeze_and_thaw_it_and_q_quits() {
    if !privileged() || !tmux_present() {
        return;
    }
    let h = Hier::new(Kind::V1);
    let Some(f) = FreezerRoot::new(&h) else { return };
    let api = Api::start(&h, &format!("[[mirror]]\ncontrollers = \"freezer\"\nroot = \"{}\"\n", f.root), "");
    let mut sleeper = spawn_frozen_able(&h, &f, "unshare --uts sleep 60");
    let node = node_of(&h, sleeper.id());
    let state = f.dir.join(node.trim_start_matches(&format!("{}/", h.root))).join("freezer.state");
    wait_for("the node's freezer mirror", || state.exists());
    let tmux = Tmux::start(&top_command(NSGROUP, &h, &api));
    let screen = tmux.wait_for("the node with its command", |s| s.lines().any(|l| l.contains(name_of(&node)) && l.contains("unshare")));
    assert!(screen.contains("NAME") && screen.contains("PSI c/m/io"), "{screen}");
    assert!(screen.contains(&format!("daemon {} (", api.daemon.pid())), "the header has the daemon's state: {screen}");
    tmux.keys("f");
    wait_for("the node frozen", || std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN"));
    tmux.wait_for("the status line", |s| s.contains(&format!("froze {node}")));
    tmux.keys("t");
    wait_for("the node thawed", || std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "THAWED"));
    tmux.keys("q");
    wait_for("top to quit", || !tmux.alive());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn batch_and_json_frames_show_a_network_namespace_nodes_traffic_and_its_final_usage() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    let mut events = subscribe(&api);
    // UDP to a closed port on the loopback: a datagram out, an ICMP error back.
    let sender = "ip link set lo up && while :; do echo x > /dev/udp/127.0.0.1/9; sleep 0.05; done";
    let p = h.spawn(&["unshare", "--net", "--uts", "bash", "-c", sender]);
    let node = node_of(&h, p.pid);
    let top = |extra: &[&str]| {
        let out = Command::new(NSGROUP)
            .args(["top", "--hierarchy"])
            .arg(&h.mount)
            .args(["--root", &h.root, "-d", "0.5"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = top(&["-b", "-n", "2"]);
    assert_eq!(text.matches("nsgroup top - ").count(), 2, "{text}");
    let line = text.lines().rev().find(|l| l.trim_start().starts_with(name_of(&node))).unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with(" unshare"), "{line}");
    let json = top(&["--json", "-n", "2"]);
    let frames: Vec<Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames.len(), 2, "{json}");
    let row = |f: &Value| f["rows"].as_array().unwrap().iter().find(|r| r["path"] == node.as_str()).cloned().unwrap();
    assert_eq!(row(&frames[0])["rx_bytes_per_s"], Value::Null, "no rate from one sample");
    let second = row(&frames[1]);
    assert_eq!(second["command"], "unshare", "{second}");
    assert!(second["rx_bytes_per_s"].as_f64().unwrap() > 0.0, "{second}");
    assert!(second["tx_bytes_per_s"].as_f64().unwrap() > 0.0, "{second}");
    let tree = tree(&h, &["-o", "net"]);
    assert!(tree.lines().any(|l| l.contains(name_of(&node)) && l.contains("(net rx ")), "{tree}");
    // Its traffic is part of its final usage, read after its last task left.
    h.kill(p.pid);
    let is_removal = |e: &Value| e["event"] == "node_removed" && e["data"]["path"] == node.as_str();
    let seen = read_events(&mut events, |v| v.iter().any(is_removal));
    let removed = seen.into_iter().find(is_removal).unwrap();
    let usage = &removed["data"]["usage"];
    assert!(usage["net_rx_packets"].as_u64().unwrap() > 0 && usage["net_tx_bytes"].as_u64().unwrap() > 0, "{removed}");
}

#[test]
fn an_unprivileged_top_shows_roots_node_and_its_kill_key_is_refused() {
    if !privileged() || !tmux_present() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    let bins = Runnable::new();
    let p = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    let node = node_of(&h, p.pid);
    let as_nobody = format!("{} {}", harness::AS_NOBODY.join(" "), top_command(&bins.nsgroup(), &h, &api));
    let tmux = Tmux::start(&as_nobody);
    // Its record is root's to read: who made it comes from the daemon's list.
    tmux.wait_for("root's node with its command", |s| s.lines().any(|l| l.contains(name_of(&node)) && l.contains("unshare")));
    tmux.keys("k");
    let screen = tmux.wait_for("the refusal", |s| s.contains("refused: "));
    assert!(screen.contains("(rule control.creator_uid)"), "{screen}");
    assert!(std::path::Path::new(&format!("/proc/{}", p.pid)).exists(), "root's node was killed");
    h.expect_in(p.pid, &node);
    tmux.keys("q");
    wait_for("top to quit", || !tmux.alive());
}

#[test]
fn on_cgroup2_a_node_shows_its_pressure_in_tree_and_top() {
    let Some(mut h) = Hier::try_new(Kind::V2) else { return };
    if !h.dir(&h.root).join("cpu.pressure").exists() {
        skip("no PSI on this cgroup2 hierarchy");
        return;
    }
    let _d = Daemon::start(&h, &[]);
    let p = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    let node = node_of(&h, p.pid);
    let tree: Value = serde_json::from_str(&tree(&h, &["--json"])).unwrap();
    let ours = tree["children"].as_array().unwrap().iter().find(|c| c["path"] == node.as_str()).cloned().unwrap();
    let cpu = &ours["readings"]["pressure"]["cpu"]["some"];
    assert!(cpu["avg10"].is_f64() && cpu["total_us"].is_u64(), "{ours}");
    let out = Command::new(NSGROUP).args(["top", "--json", "-n", "1", "--hierarchy"]).arg(&h.mount).args(["--root", &h.root]).output().unwrap();
    let frame: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let row = frame["rows"].as_array().unwrap().iter().find(|r| r["path"] == node.as_str()).cloned().unwrap();
    assert!(row["psi_cpu"].is_f64() && row["psi_memory"].is_f64() && row["psi_io"].is_f64(), "{row}");
    h.kill(p.pid);
}
