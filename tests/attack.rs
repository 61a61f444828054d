//! nsgroup under attack: what an unprivileged user (uid 65534, with user
//! namespaces) or a race can make the daemon do, end to end. Every test runs
//! on its own private named v1 hierarchy, tracks `/t`, and only ever moves,
//! signals and kills processes it started itself.

mod common;
use common::*;
use std::time::Duration;

/// The paths of a task's cgroups sampled until `done` holds, checked by `ok`
/// at every sample: "never" asserted over the daemon's whole reaction.
fn never_leaves(h: &Hier, tid: u32, ok: impl Fn(&str) -> bool, mut done: impl FnMut() -> bool) {
    wait_for(&format!("the daemon to settle while watching task {tid}"), || {
        if let Some(c) = h.cgroup_of(tid) {
            assert!(ok(&c), "task {tid} was moved to {c}");
        }
        done()
    });
}

/// A storm of 15,000 nested UTS namespaces by an unprivileged user: root's
/// entries are still placed meanwhile and after, SIGTERM stops the daemon at
/// once (it used to take minutes), and once the attacker is gone every node
/// is removed and the daemon goes quiet.
#[test]
fn storm_by_nobody_leaves_the_daemon_responsive_and_stoppable() {
    if !attacks_can_run() {
        return;
    }
    let storm_args = [WORKLOAD, "userns-storm", "--threads", "100", "--unshares", "150"];
    {
        let Some(mut h) = Hier::try_new(Kind::V1) else { return };
        let mut d = Daemon::start(&h, &[]);
        let root = h.root.clone();
        let mut storm = h.spawn_as_nobody(&root, &storm_args);
        let _during = h.marker();
        let done = storm.read_json();
        assert_eq!(done["entered"], 15_000, "{done}");
        let _after = h.marker();
        // SIGTERM while the attacker holds its 15,000 namespaces.
        let status = d.stop_within(Duration::from_secs(5));
        assert!(status.is_some(), "the daemon did not exit within 5 s of SIGTERM after a storm");
        assert!(status.unwrap().success(), "{status:?}");
    }
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let d = Daemon::start(&h, &[]);
    let root = h.root.clone();
    let mut storm = h.spawn_as_nobody(&root, &storm_args);
    assert_eq!(storm.read_json()["entered"], 15_000);
    let marker = h.marker();
    // The attacker and the marker exit: every node goes, then the daemon is quiet.
    storm.close_stdin();
    h.reap(storm.pid);
    h.kill(marker.pid);
    wait_for("every node removed after the storm", || h.node_paths().is_empty());
    let before = d.cpu_seconds();
    std::thread::sleep(Duration::from_secs(2));
    let spent = d.cpu_seconds() - before;
    assert!(spent < 0.3, "the daemon used {spent:.2} s of CPU in the 2 s after the storm was cleaned up");
}

/// The entrant's pid is reused between its event and the daemon's move: the
/// new holder of that pid, a root task outside the tracked root, is not moved.
#[test]
fn a_pid_reused_between_event_and_move_is_not_moved() {
    if !attacks_can_run() {
        return;
    }
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let elsewhere = h.outside("elsewhere");
    let d = Daemon::start(&h, &[]);
    let root = h.root.clone();
    let host_user = ns_inode(std::process::id(), "user");

    d.pause();
    // The entrant enters a user namespace, then a thread of it unshares
    // UTS 5,000 times: more events than one read of the ring takes, so that
    // its exit is not read together with its entry (which alone would make
    // the entry look short-lived and skipped).
    let mut entrant = h.spawn_as_nobody(
        &root,
        &[WORKLOAD, "userns-storm", "--threads", "1", "--unshares", "5000", "--no-keep"],
    );
    let pid = entrant.pid;
    assert_eq!(entrant.read_json()["entered"], 5000);
    assert_ne!(ns_inode_of(pid, "user"), Some(host_user));
    h.kill(pid);
    wait_for("the entrant's pid free", || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    // A root task takes the same pid, outside the tracked root.
    let mut holder = h.spawn_in(&elsewhere.rel, &[WORKLOAD, "spawn-at-pid", "--pid", &pid.to_string()]);
    assert_eq!(holder.read_json()["child"], pid);
    assert_eq!(h.cgroup_of(pid), Some(elsewhere.rel.clone()));
    d.resume();

    let _marker = h.marker();
    assert_eq!(h.cgroup_of(pid), Some(elsewhere.rel.clone()), "the new holder of pid {pid} was moved");
}

/// A root task enters namespaces (net, uts) and goes back to the host's:
/// it must return to the root, never into a look-alike node.
fn setns_back_returns_to_the_root(h: &mut Hier) {
    let root = h.root.clone();
    let mut back = h.spawn(&[WORKLOAD, "setns-back"]);
    back.read_json();
    let node = h.path(&format!("node_{}", back.pid));
    wait_for("the task placed", || h.cgroup_of(back.pid).is_some_and(|c| c != root));
    assert_eq!(h.cgroup_of(back.pid), Some(node.clone()), "a new set entered from {root} gets its node there");
    back.poke();
    assert_eq!(back.read_json()["state"], "back");
    // On its way back it may nest in its node for a moment: where its setns
    // calls straddle the settle window (seen under TCG), the set it passes
    // through gets a node of its own (docs/semantics.md §2). Never anywhere else.
    let in_node = |c: &str| c == node || c.starts_with(&format!("{node}/"));
    never_leaves(h, back.pid, |c| c == root || in_node(c), || h.cgroup_of(back.pid).as_deref() == Some(root.as_str()));
    let _marker = h.marker();
    assert_eq!(h.cgroup_of(back.pid), Some(root.clone()), "back in the host set, it belongs in {root}");
}

/// Cgroups that look like nodes are not adopted: a user's own `node_1` in a
/// cgroup delegated to it (no record), and a root-made cgroup whose record
/// claims the host's set. A root task that enters namespaces and goes back
/// returns to /t, never into either.
#[test]
fn look_alike_nodes_are_not_adopted() {
    if !attacks_can_run() {
        return;
    }
    // A cgroup delegated to uid 65534, who makes a `node_1` with its own task.
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let u = h.path("u");
    h.mkdir(&u);
    h.chown_cgroup(&u, NOBODY);
    let u_dir = h.dir(&u).display().to_string();
    let squatter = h.spawn_as_nobody(
        &u,
        &["sh", "-c", "mkdir \"$0/node_1\" && echo $$ > \"$0/node_1/tasks\" && exec sleep 600", &u_dir],
    );
    let look_alike = format!("{u}/node_1");
    h.expect_in(squatter.pid, &look_alike);
    let first = Daemon::start(&h, &[]);
    setns_back_returns_to_the_root(&mut h);
    assert_eq!(h.cgroup_of(squatter.pid), Some(look_alike), "the user's own task stays in its own cgroup");
    drop(first);
    drop(h);

    // A root-made cgroup with a well-formed record claiming the host's set.
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let fake = h.path("fake");
    h.mkdir(&fake);
    let host = own_set_text();
    let record = serde_json::json!({
        "set": host,
        "parent_set": host,
        "creator_pid": 1,
        "creator_comm": "forged",
        "created_unix": 0,
    });
    rustix::fs::setxattr(h.dir(&fake), "trusted.nsgroup", record.to_string().as_bytes(), rustix::fs::XattrFlags::empty())
        .unwrap();
    // Not empty, or the daemon would remove it at start as an empty node.
    let resident = h.spawn_in(&fake, &["sleep", "600"]);
    let d = Daemon::start(&h, &[]);
    setns_back_returns_to_the_root(&mut h);
    assert_eq!(h.cgroup_of(resident.pid), Some(fake.clone()));
    assert!(h.node_paths().iter().all(|p| p == "fake" || p.starts_with("node_")), "nothing nested below {fake}: {:?}", h.node_paths());
    let lines: Vec<String> =
        d.log_text().lines().filter(|l| l.contains(&fake) && l.to_lowercase().contains("record")).map(str::to_string).collect();
    assert_eq!(lines.len(), 1, "the unusable record of {fake} is logged once: {lines:#?}");
}

/// A task that joins another user's namespaces from another cgroup (B joins
/// A's user namespace) is not moved sideways into A's node.
#[test]
fn joining_a_set_from_elsewhere_never_moves_sideways() {
    if !attacks_can_run() {
        return;
    }
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let (a, b) = (h.path("a"), h.path("b"));
    h.mkdir(&a);
    h.mkdir(&b);
    let _d = Daemon::start(&h, &[]);
    let pa = h.spawn_as_nobody(&a, &["unshare", "--user", "sleep", "600"]);
    h.expect_in(pa.pid, &format!("{a}/node_{}", pa.pid));
    let a_user = ns_inode(pa.pid, "user");
    // B waits in /t/b for a line, then joins A's user namespace.
    let mut pb = h.spawn_as_nobody(
        &b,
        &["sh", "-c", "read go && exec nsenter --user -t \"$0\" --preserve-credentials sleep 600", &pa.pid.to_string()],
    );
    pb.poke();
    wait_for("B in A's user namespace", || ns_inode_of(pb.pid, "user") == Some(a_user));
    let below_b = |c: &str| c == b || c.starts_with(&format!("{b}/"));
    let marker = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    never_leaves(&h, pb.pid, below_b, || h.in_own_node(marker.pid, &h.root));
    let at = h.cgroup_of(pb.pid).unwrap();
    assert!(below_b(&at), "B left {b}'s subtree for {at}");
    assert_eq!(h.cgroup_of(pa.pid), Some(format!("{a}/node_{}", pa.pid)));
}

/// What another cgroup writer does while the daemon has an event pending
/// wins: a task moved out of the root, or to a non-node inside it, stays.
#[test]
fn other_writers_win_over_pending_events() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let elsewhere = h.outside("elsewhere");
    let other = h.path("other");
    h.mkdir(&other);
    let d = Daemon::start(&h, &[]);
    let host_uts = ns_inode(std::process::id(), "uts");

    d.pause();
    let out = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    let inside = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    for p in [&out, &inside] {
        wait_for("the task in its new namespace", || ns_inode_of(p.pid, "uts").is_some_and(|i| i != host_uts));
    }
    h.move_task(out.pid, &elsewhere.rel);
    h.move_task(inside.pid, &other);
    d.resume();

    let _marker = h.marker();
    assert_eq!(h.cgroup_of(out.pid), Some(elsewhere.rel.clone()), "moved back from outside the root");
    assert_eq!(h.cgroup_of(inside.pid), Some(other.clone()), "moved out of a cgroup another writer chose");
}

/// Runs `threads` × 200 nested unshares as uid 65534 (with the daemon paused
/// meanwhile when `read_late`: every event then carries the cgroup from
/// before any move), and checks that no node is deeper than `max_depth` and
/// that at most `threads × max_depth` nodes (and the marker's) exist at once.
fn depth_bound_holds(config: &str, max_depth: usize, threads: u32, read_late: bool) {
    if !attacks_can_run() {
        return;
    }
    let (_c, cfg) = config_file(config);
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let d = Daemon::start(&h, &["--config", &cfg]);
    let root = h.root.clone();
    let watch = NodeWatch::start(h.dir(&root));
    if read_late {
        d.pause();
    }
    let threads_arg = threads.to_string();
    let mut storm = h.spawn_as_nobody(&root, &[WORKLOAD, "userns-storm", "--threads", &threads_arg, "--unshares", "200"]);
    assert_eq!(storm.read_json()["entered"], u64::from(threads) * 200);
    if read_late {
        d.resume();
    }
    let _marker = h.marker();
    h.wait_unchanged(Duration::from_millis(500));
    let (most, deepest) = watch.finish();
    eprintln!("at most {most} nodes at once (with the marker's), the deepest {deepest} levels below {root}");
    assert!(deepest <= max_depth, "a node {deepest} levels deep with max_depth = {max_depth}");
    let bound = threads as usize * max_depth + 1;
    assert!(most <= bound, "{most} nodes at once for {threads} threads with max_depth = {max_depth} (and the marker's)");
}

/// `max_depth = 5` holds against 20 threads × 200 nested unshares.
#[test]
fn max_depth_holds_under_a_nested_storm() {
    depth_bound_holds("max_depth = 5\n", 5, 20, false);
}

/// The default `max_depth` (32) holds against nested unshares too, also
/// when the daemon reads them late (all of them queued while it is stopped,
/// so that each event's cgroup is the one from before any move).
#[test]
fn default_max_depth_holds_under_nested_unshares_read_late() {
    depth_bound_holds("", 32, 8, true);
}

/// `max_nodes_per_user = 20`: uid 65534 holding 51 sets gets at most 20
/// nodes, root still gets its own, and the log says why.
#[test]
fn a_per_user_quota_bounds_one_users_nodes() {
    if !attacks_can_run() {
        return;
    }
    let (_c, cfg) = config_file("max_nodes_per_user = 20\n");
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let d = Daemon::start(&h, &["--config", &cfg]);
    let root = h.root.clone();
    let watch = NodeWatch::start(h.dir(&root));
    let mut holders = h.spawn_as_nobody(&root, &[WORKLOAD, "userns-storm", "--threads", "50", "--unshares", "1"]);
    let info = holders.read_json();
    assert_eq!(info["entered"], 50);
    let mut attacker: Vec<u64> = info["tids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    attacker.push(u64::from(holders.pid));
    let marker = h.marker();
    h.wait_unchanged(Duration::from_millis(500));
    let marker_node = h.cgroup_of(marker.pid).unwrap();
    let nodes: Vec<String> = h.nodes().into_iter().filter(|n| h.path(n) != marker_node).collect();
    let by_attacker = nodes
        .iter()
        .filter(|n| h.record(&h.path(n)).and_then(|r| r["creator_pid"].as_u64()).is_none_or(|p| attacker.contains(&p)))
        .count();
    assert!(by_attacker <= 20, "{by_attacker} nodes for uid 65534 with max_nodes_per_user = 20");
    assert!(nodes.len() <= 20, "{} nodes besides root's", nodes.len());
    let (most, _) = watch.finish();
    assert!(most <= 20 + 1, "{most} nodes at once (root's marker included)");
    // Refusals may be reported in a periodic summary: wait for it.
    wait_for("the log to mention the quota", || d.log_text().to_lowercase().contains("quota"));
}

/// 15,000 unshares in a row by one unprivileged process do not flood the
/// log: fewer than 200 warnings, and a note of what was suppressed.
#[test]
fn an_unshare_flood_does_not_flood_the_log() {
    if !attacks_can_run() {
        return;
    }
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let d = Daemon::start(&h, &[]);
    let root = h.root.clone();
    // Each namespace is kept alive: a freed one's inode number would be
    // handed to the next, and the flood would only alternate between two sets.
    let mut flood = h.spawn_as_nobody(&root, &[WORKLOAD, "userns-storm", "--threads", "1", "--unshares", "15000"]);
    assert_eq!(flood.read_json()["entered"], 15_000);
    // It lives until the daemon has handled its entries, then exits.
    let marker = h.marker();
    flood.close_stdin();
    h.reap(flood.pid);
    let marker_node = h.cgroup_of(marker.pid).unwrap();
    wait_for("the flood's nodes removed", || h.nodes().iter().all(|n| h.path(n) == marker_node));
    let warns = d.log_text().lines().filter(|l| l.contains(" WARN ")).count();
    eprintln!("{warns} WARN lines");
    assert!(warns < 200, "{warns} WARN lines for one process's unshare flood");
    wait_for("a note of suppressed log lines", || d.log_text().contains("suppressed"));
}

/// A command name with a line break and a terminal sequence reaches neither
/// the log nor `nsgroup tree` raw.
#[test]
fn a_forged_command_name_cannot_forge_log_lines() {
    if !attacks_can_run() {
        return;
    }
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let d = Daemon::start(&h, &[]);
    let root = h.root.clone();
    let mut odd = h.spawn_as_nobody(&root, &[WORKLOAD, "odd-comm", "--userns"]);
    assert_eq!(odd.read_json()["comm"], "a\nFAKE\u{1b}[31mX");
    wait_for("the odd task in a node", || h.cgroup_of(odd.pid).is_some_and(|c| c.starts_with(&format!("{root}/node_"))));
    let marker = h.marker();
    let clean = |what: &str, text: &str| {
        let esc: Vec<&str> = text.lines().filter(|l| l.contains('\u{1b}')).collect();
        assert!(esc.is_empty(), "{what} holds a raw ESC: {esc:#?}");
        let forged: Vec<&str> = text.lines().filter(|l| l.starts_with("FAKE")).collect();
        assert!(forged.is_empty(), "{what} holds a forged line: {forged:#?}");
    };
    clean("nsgroup tree", &tree(&h, &[]));
    clean("nsgroup tree --all", &tree(&h, &["--all"]));
    // Its nodes' removal is logged too.
    h.kill(odd.pid);
    let marker_node = h.cgroup_of(marker.pid).unwrap();
    wait_for("the odd task's nodes removed", || h.nodes().iter().all(|n| h.path(n) == marker_node));
    clean("the daemon log", &d.log_text());
}

/// A new namespace that gets the inode number of a dead one does not join
/// the dead one's lingering node.
#[test]
fn a_recycled_namespace_inode_does_not_join_the_old_node() {
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let d = Daemon::start(&h, &[]);
    let root = h.root.clone();
    let host_uts = ns_inode(std::process::id(), "uts");
    let mut p = h.spawn(&[WORKLOAD, "nest-child"]);
    let info = p.read_json();
    let (pid, child) = (p.pid, info["child"].as_u64().unwrap() as u32);
    let first_uts = info["first_uts"].as_u64().unwrap();
    let node_p = h.path(&format!("node_{pid}"));
    h.expect_in(pid, &node_p);
    h.expect_in(child, &format!("{node_p}/node_{child}"));
    // P exits: its first UTS namespace dies; node_P stays (node_C is below it).
    p.close_stdin();
    h.reap(pid);
    // The kernel hands out the lowest free inode number: a Q that gets a
    // lower one (freed meanwhile by namespaces of earlier tests) is kept,
    // holding it, so that the next Q gets the next free number.
    let mut seen = vec![];
    for attempt in 1..=20 {
        let q = h.spawn(&["unshare", "--uts", "sleep", "60"]);
        wait_for("Q in its new namespace", || ns_inode_of(q.pid, "uts").is_some_and(|i| i != host_uts));
        let got = ns_inode_of(q.pid, "uts").unwrap();
        if got != first_uts {
            seen.push(got);
            if got > first_uts {
                // Not free yet (or taken): give this one back, try again.
                h.kill(q.pid);
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        eprintln!("attempt {attempt}: Q {} got the dead namespace's inode {first_uts}", q.pid);
        let _marker = h.marker();
        let at = h.cgroup_of(q.pid).unwrap();
        assert_ne!(at, node_p, "Q joined the node of a dead namespace that had its inode number");
        assert!(h.in_own_node(q.pid, &root), "Q gets a node of its own under {root}, not {at}");
        return;
    }
    // No new namespace got the number: then it is still taken, and it must
    // be the daemon that holds it (node_P keeps one of its set's namespaces
    // open), not the kernel failing to recycle.
    let held = format!("uts:[{first_uts}]");
    let holds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == held));
    assert!(holds, "no new UTS namespace got {first_uts} in 20 tries ({seen:?}), yet the daemon does not hold it");
    assert!(h.dir(&node_p).exists(), "node_P stays while node_C is below it");
}
