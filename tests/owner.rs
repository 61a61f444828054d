//! Who owns a sandbox (docs/semantics.md §13 "Owners"): the uid that created
//! its outermost user namespace, else its uid. A user's subordinate uids (a
//! user namespace of hers whose inner uids map to her /etc/subuid range, as
//! `newuidmap` sets up) are that user: one quota, one rate.

mod common;
use common::*;

/// Without BPF the entries are found by /proc rescans: every 300 ms here.
const WITHOUT_BPF: &str = "source = \"proc\"\nsnapshot_interval_ms = 300\n";

/// Waits until the tree has not changed for longer than a rescan takes to
/// come round (under emulation, too).
fn settle(h: &Hier) {
    h.wait_unchanged(std::time::Duration::from_millis(1500));
}

/// The owner's nodes among the root's, with their records.
fn nodes_owned_by(h: &Hier, owner: u64) -> Vec<serde_json::Value> {
    h.nodes().iter().filter_map(|n| h.record(&h.path(n))).filter(|r| r["owner"].as_u64() == Some(owner)).collect()
}

/// 40 subordinate uids of uid 65534, each entering 4 sets (a user namespace,
/// then a uts namespace on each of 3 threads): 160 entries, one owner.
fn subordinate_storm(h: &mut Hier) -> Proc {
    storm_in_user_namespace(h, &["--owner", "65534", "--base", "200000"])
}

/// 40 inner uids of a user namespace made by `subuids` with `how`, each
/// entering 4 sets as above.
fn storm_in_user_namespace(h: &mut Hier, how: &[&str]) -> Proc {
    let root = h.root.clone();
    // The inner uids run a copy every user can reach (running once the
    // report is read, so the copy may go then).
    let bin = Runnable::new();
    let workload = bin.workload();
    let storm = [workload.as_str(), "userns-storm", "--threads", "3", "--unshares", "1"];
    let mut args = vec![WORKLOAD, "subuids", "--uids", "40"];
    args.extend_from_slice(how);
    args.push("--");
    args.extend_from_slice(&storm);
    let mut p = h.spawn_in(&root, &args);
    let info = p.read_json();
    let lines = info["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 40, "{info}");
    assert!(lines.iter().all(|l| l["entered"] == 3), "{info}");
    p
}

#[test]
fn subordinate_uids_share_their_owners_node_quota() {
    node_quota_holds_for_owners("");
}

/// The same without BPF: owners read from /proc (nsfs ioctls) by the rescans.
#[test]
fn subordinate_uids_share_their_owners_node_quota_without_bpf() {
    node_quota_holds_for_owners(WITHOUT_BPF);
}

fn node_quota_holds_for_owners(extra: &str) {
    if !attacks_can_run() {
        return;
    }
    let (_c, cfg) = config_file(&format!("{extra}max_nodes_per_user = 30\nmax_creations_per_second_per_user = 10000\n"));
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let d = Daemon::start(&h, &["--config", &cfg]);
    let watch = NodeWatch::start(h.dir(&h.root.clone()));
    let _storm = subordinate_storm(&mut h);
    settle(&h);
    let (most, _) = watch.finish();
    let owned = nodes_owned_by(&h, 65534);
    assert!(!owned.is_empty(), "no node owned by 65534: {:?}", h.nodes());
    assert!(owned.len() <= 30, "{} nodes owned by 65534 with max_nodes_per_user = 30", owned.len());
    assert!(most <= 30, "{most} nodes at once");
    // Created by subordinate uids (or the owner itself), owned by 65534.
    for r in &owned {
        let creator = r["creator_uid"].as_u64().unwrap();
        assert!(creator == 65534 || (200_000..200_040).contains(&creator), "{r}");
    }
    assert!(owned.iter().any(|r| r["creator_uid"].as_u64() != Some(65534)), "no node of a subordinate uid");
    // Root still gets its node.
    h.marker();
    // The refusals are reported for the owner, not for 40 uids.
    wait_for("the quota report for owner 65534", || {
        d.log_lines_with("entries refused").iter().any(|l| l.contains("owner_uid=65534") && !l.contains("refused_quota=0"))
    });
    assert!(!d.log_lines_with("entries refused").iter().any(|l| l.contains("owner_uid=2000")), "a subordinate uid reported as a user of its own");
    h.kill_all();
}

#[test]
fn subordinate_uids_share_their_owners_creation_rate() {
    if !attacks_can_run() {
        return;
    }
    // Bursts of 20, then 10 a second, for the owner and all its uids together.
    let (_c, cfg) = config_file("max_nodes_per_user = 1000\nmax_creations_per_second_per_user = 10\n");
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let _d = Daemon::start(&h, &["--config", &cfg]);
    let started = std::time::Instant::now();
    let _storm = subordinate_storm(&mut h);
    settle(&h);
    let owned = nodes_owned_by(&h, 65534).len();
    // What the bucket can have given since the storm began (plus one second of slack).
    let bound = 20 + 10 * (started.elapsed().as_secs() as usize + 1);
    assert!(owned <= bound, "{owned} nodes owned by 65534 within {:?}; the rate allows {bound}", started.elapsed());
    h.kill_all();
}

/// An unprivileged container that root starts (LXC's shape): a user
/// namespace root made, mapping inner uids 0.. to 300000..: its kernel owner
/// is root, but it belongs to its range (the uid its inner root maps to),
/// bound by the quota like any user. A namespace root made for itself
/// (systemd's `PrivateUsers=`: inner 0 is root) stays root's, exempt.
#[test]
fn a_user_namespace_root_made_for_a_range_is_the_ranges() {
    root_made_namespaces_are_their_ranges("");
}

#[test]
fn a_user_namespace_root_made_for_a_range_is_the_ranges_without_bpf() {
    root_made_namespaces_are_their_ranges(WITHOUT_BPF);
}

fn root_made_namespaces_are_their_ranges(extra: &str) {
    if !attacks_can_run() {
        return;
    }
    let (_c, cfg) = config_file(&format!("{extra}max_nodes_per_user = 30\nmax_creations_per_second_per_user = 10000\n"));
    let Some(mut h) = Hier::try_new(Kind::V1) else { return };
    let _d = Daemon::start(&h, &["--config", &cfg]);
    let mut container = storm_in_user_namespace(&mut h, &["--owner", "0", "--range-root", "--base", "300000"]);
    settle(&h);
    let owned = nodes_owned_by(&h, 300_000);
    assert!(!owned.is_empty() && owned.len() <= 30, "{} nodes owned by the range 300000 with max_nodes_per_user = 30", owned.len());
    // Only the namespace's own set, entered by root before it was mapped, is root's.
    let payload_as_root: Vec<_> = nodes_owned_by(&h, 0).into_iter().filter(|r| r["creator_uid"].as_u64() != Some(0)).collect();
    assert!(payload_as_root.is_empty(), "the container's nodes counted as root's: {payload_as_root:?}");
    container.close_stdin();
    h.reap(container.pid);
    settle(&h);
    let _private = storm_in_user_namespace(&mut h, &["--owner", "0", "--base", "300000"]);
    settle(&h);
    let roots = nodes_owned_by(&h, 0).len();
    assert!(roots > 30, "{roots} nodes owned by root: root's own user namespace is exempt");
    h.kill_all();
}
