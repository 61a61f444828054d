//! Checkpoint and restore, end to end (docs/semantics.md §17): a sandbox
//! made by `unshare --pid --fork --mount-proc --uts --ipc --mount` with a counter, its node
//! limited, checkpointed and restored into a fresh node with the same
//! limits; a user refused; a dump CRIU refuses leaving the sandbox running.
//! Needs CRIU and a cgroup2 subtree with memory and pids (the guest bed);
//! skips, saying why, elsewhere.

mod common;
use common::harness::{api_config, as_nobody_command};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Why CRIU cannot run here, if it cannot.
fn criu_missing() -> Option<String> {
    match Command::new("criu").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("criu --version failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => Some(format!("no criu here ({e})")),
    }
}

/// A daemon on a delegated cgroup2 subtree with memory and pids, with its API.
struct Bed {
    d: Daemon,
    h: Hier,
    socket: String,
    config: tempfile::TempDir,
    _scope: DelegatedScope,
}

impl Bed {
    fn new() -> Option<Bed> {
        if !privileged() {
            return None;
        }
        if let Some(why) = criu_missing() {
            skip(&why);
            return None;
        }
        let scope = DelegatedScope::start(&["memory", "pids"]).map_err(|why| skip(&why)).ok()?;
        let h = Hier::v2_in(&scope.cgroup);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755)).unwrap();
        let top = format!("controllers = [\"memory\", \"pids\"]\nleaf = \"everywhere\"\n[history]\ndatabase = \"{}\"\n", dir.path().join("history.sqlite").display());
        let (config, socket) = api_config(dir.path(), &top, "").unwrap();
        let d = Daemon::start(&h, &["--config", config.to_str().unwrap()]);
        wait_for("the API socket", || socket.exists());
        Some(Bed { d, h, socket: socket.display().to_string(), config: dir, _scope: scope })
    }

    /// `nsgroup ARGS --socket S --json`: exit code, the answer, stderr.
    fn nsgroup(&self, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
        let out = Command::new(NSGROUP).args(args).args(["--socket", &self.socket, "--json"]).output().unwrap();
        let answer = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code(), answer, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Starts a sandbox in the tracked root (its leaf once the daemon made
    /// one): `unshare --pid --fork --mount-proc --uts --ipc --mount` running
    /// `prepare`, then a counter appending to `count`; its stdio is
    /// /dev/null (a pipe to the test would lie outside the tree). The
    /// daemon gives its set a node. The unshare process and the sandbox's init.
    fn sandbox(&self, prepare: &str, count: &Path) -> (Child, u32) {
        let root = self.h.dir(&self.h.root);
        let script = format!("{prepare}; i=0; while :; do echo $i >> {}; i=$((i+1)); sleep 0.1; done", count.display());
        let child = Command::new("sh")
            .arg("-c")
            .arg("{ echo $$ > \"$0/cgroup.procs\" || echo $$ > \"$0/leaf/cgroup.procs\"; } 2>/dev/null && exec \"$@\"")
            .arg(&root)
            .args(["setsid", "unshare", "--pid", "--fork", "--mount-proc", "--uts", "--ipc", "--mount", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the counter to count", || numbers(count).len() >= 3);
        let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id())).unwrap();
        let init: u32 = children.split_whitespace().next().expect("unshare has its child").parse().unwrap();
        wait_for("the sandbox's own node", || self.h.cgroup_of(init).is_some_and(|c| c.contains("/node_")));
        (child, init)
    }

    /// The node a task is in.
    fn node_of(&self, pid: u32) -> String {
        let c = self.h.cgroup_of(pid).expect("the task is in the hierarchy");
        c.strip_suffix("/leaf").unwrap_or(&c).to_string()
    }

    fn file(&self, node: &str, file: &str) -> String {
        std::fs::read_to_string(self.h.dir(node).join(file)).unwrap().trim().to_string()
    }
}

/// The numbers the counter wrote.
fn numbers(count: &Path) -> Vec<u64> {
    std::fs::read_to_string(count).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A root-owned private directory below a fresh root-owned one, for images.
fn image_dir() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::Builder::new().prefix("nsgroup-ckpt-").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(base.path(), <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755)).unwrap();
    let img = base.path().join("img");
    (base, img)
}

#[test]
fn a_sandbox_is_checkpointed_and_restored_into_a_fresh_node_with_its_limits() {
    let Some(mut bed) = Bed::new() else { return };
    let work = tempfile::tempdir().unwrap();
    let count = work.path().join("count");
    let (mut exec, init) = bed.sandbox(":", &count);
    let node = bed.node_of(init);
    assert!(node.starts_with(&format!("{}/node_", bed.h.root)), "{node}");
    for (file, value) in [("pids.max", "64"), ("memory.max", "268435456")] {
        let (code, _, err) = bed.nsgroup(&["limit", &node, &format!("{file}={value}")]);
        assert_eq!(code, Some(0), "{err}");
    }
    let (_keep, img) = image_dir();
    let img_s = img.to_str().unwrap();

    // A user is refused both, before anything is done.
    let out = as_nobody_command(NSGROUP).args(["checkpoint", &node, "--dir", img_s, "--socket", &bed.socket]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("checkpoint.needs_cap_sys_admin"), "{err}");
    assert!(!img.exists(), "nothing made for a refused request");
    let out = as_nobody_command(NSGROUP).args(["restore", img_s, "--socket", &bed.socket]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint.needs_cap_sys_admin"));

    // The checkpoint ends the tasks; the node goes as usual.
    let (code, answer, err) = bed.nsgroup(&["checkpoint", &node, "--dir", img_s]);
    assert_eq!(code, Some(0), "{err}\n{answer}\n{}", bed.d.log_text());
    assert_eq!(answer["data"]["root_pid"], init);
    let _ = exec.wait();
    let before = numbers(&count);
    let last = *before.last().unwrap();
    wait_for("the source node removed", || !bed.h.dir(&node).exists());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(numbers(&count).len(), before.len(), "nothing counts while checkpointed");

    // Restored: a fresh node, the same limits, the counter goes on.
    let (code, answer, err) = bed.nsgroup(&["restore", img_s]);
    assert_eq!(code, Some(0), "{err}\n{answer}\n{}", bed.d.log_text());
    let fresh = answer["data"]["path"].as_str().unwrap().to_string();
    assert_ne!(fresh, node);
    assert_eq!(answer["data"]["from_path"], node.as_str());
    let root_pid = answer["data"]["root_pid"].as_u64().unwrap() as u32;
    assert_eq!(bed.node_of(root_pid), fresh);
    assert_eq!(bed.file(&fresh, "pids.max"), "64");
    assert_eq!(bed.file(&fresh, "memory.max"), "268435456");
    wait_for("the counter to go on", || numbers(&count).len() >= before.len() + 3);
    let after = numbers(&count);
    let next = after[before.len()];
    assert!(next == last + 1 || next == last, "the counter went on from {last} with {next}");
    wait_for("the restored node adopted", || bed.d.log_text().contains("node_adopted") && bed.h.node_paths().contains(&fresh));
    let check = Command::new(NSGROUP).args(["check", "--hierarchy"]).arg(&bed.h.mount).args(["--root", &bed.h.root]).output().unwrap();
    assert!(check.status.success(), "{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    // The history links the two nodes.
    let db = bed.config.path().join("history.sqlite");
    wait_for("the history to link the restored node", || {
        let out = Command::new(NSGROUP).args(["history", "--json", "--database"]).arg(&db).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nodes"].as_array().is_some_and(|rows| {
            rows.iter().any(|r| r["path"] == fresh.as_str() && r["restored_from"]["from_path"] == node.as_str())
                && rows.iter().any(|r| r["path"] == node.as_str() && !r["removed_unix"].is_null())
        })
    });
    let text = Command::new(NSGROUP).args(["history", "--database"]).arg(&db).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("(restored from {node}, cgroup id ")));
    let (code, _, err) = bed.nsgroup(&["kill", &fresh]);
    assert_eq!(code, Some(0), "{err}");
    bed.h.kill_all();
}

#[test]
fn a_dump_criu_refuses_leaves_the_sandbox_running_and_says_why() {
    let Some(mut bed) = Bed::new() else { return };
    // A host share mounted where the host has none: CRIU cannot dump it
    // and nsgroup does not hand it over as external.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(share) = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        matches!(right.split(' ').next()?, "9p" | "virtiofs" | "nfs" | "nfs4").then(|| left.split(' ').nth(4).unwrap().to_string())
    }) else {
        return skip("no 9p, virtiofs or NFS mount here to make CRIU refuse a dump");
    };
    let work = tempfile::tempdir().unwrap();
    let count = work.path().join("count");
    let at = work.path().join("elsewhere");
    std::fs::create_dir(&at).unwrap();
    let (mut exec, init) = bed.sandbox(&format!("mount --bind {share} {}", at.display()), &count);
    let node = bed.node_of(init);
    let (_keep, img) = image_dir();
    let (code, answer, err) = bed.nsgroup(&["checkpoint", &node, "--dir", img.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or(&err).to_string();
    assert!(message.contains("criu dump failed") && message.contains("Error ("), "{message}");
    assert_eq!(bed.file(&node, "cgroup.events").lines().find(|l| l.starts_with("frozen")), Some("frozen 0"));
    let n = numbers(&count).len();
    wait_for("the sandbox to count on", || numbers(&count).len() >= n + 3);

    // --leave-running on a dump that works: unchanged, still counting.
    let (_keep2, img2) = image_dir();
    let (code, answer, _) = bed.nsgroup(&["kill", &node]);
    assert_eq!(code, Some(0), "{answer}");
    let _ = exec.wait();
    let (mut exec, init) = bed.sandbox(":", &count);
    let node = bed.node_of(init);
    let (code, answer, err) = bed.nsgroup(&["checkpoint", &node, "--dir", img2.to_str().unwrap(), "--leave-running"]);
    assert_eq!(code, Some(0), "{err}\n{answer}");
    assert_eq!(bed.node_of(init), node);
    let n = numbers(&count).len();
    wait_for("the sandbox to count on after --leave-running", || numbers(&count).len() >= n + 3);
    // A second checkpoint into the same (no longer empty) directory is refused.
    let (code, answer, _) = bed.nsgroup(&["checkpoint", &node, "--dir", img2.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(answer["error"]["message"].as_str().unwrap().contains("not empty"), "{answer}");
    let (code, answer, _) = bed.nsgroup(&["kill", &node]);
    assert_eq!(code, Some(0), "{answer}");
    let _ = exec.wait();
    bed.h.kill_all();
}
