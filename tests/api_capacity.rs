//! The API's capacity end to end (issue 16): what users hold of the API
//! never keeps the administrator out, and never grows the daemon's memory
//! past its bound. One owner's many subordinate uids get one owner's share
//! of connections and of requests under way; many owners together leave the
//! share kept for CAP_SYS_ADMIN callers; hundreds of subscribers that never
//! read, from several owners, under a node churn, cost a bounded amount of
//! memory and are dropped, while a reading subscriber gets every event and
//! placement goes on. The users are `nsgroup-workload subuids` (a user
//! namespace of the owner, run as each subordinate uid) running
//! `nsgroup-workload api-hold`. Each test has its own hierarchy and socket.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use nsgroup::api::capacity::{ADMIN_CONNECTIONS, CONNECTIONS_PER_OWNER, MAX_CONNECTIONS};
use nsgroup::api::client::Client;
use nsgroup::api::proto::Request;
use serde_json::Value;

/// The growth of the daemon's RSS that docs/api.md promises at most,
/// whatever the clients do.
const RSS_CEILING_KIB: u64 = 64 * 1024;

/// What these tests ask of the API's daemon.
trait Capacity {
    fn root_lists(&self);
    fn figure(&self, key: &str) -> Option<u64>;
}

impl Capacity for Api {
    /// Root's `list`, on a connection of its own: it must be answered `ok`.
    fn root_lists(&self) {
        let mut c = Client::connect(&self.socket).unwrap();
        let answer = c.call(&Request::List { all: false }).unwrap();
        assert_eq!(answer["type"], "ok", "root's list: {answer}");
    }

    /// A figure `key=N` from the daemon's last log line that has it.
    fn figure(&self, key: &str) -> Option<u64> {
        let needle = format!("{key}=");
        let log = self.daemon.log_text();
        let line = log.lines().rev().find(|l| l.contains(&needle))?;
        line.split(&needle).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }
}

/// `api-hold` as every subordinate uid 1..=`uids` of `owner` (mapped to
/// `base`..): its report, one line per uid.
fn hold_as_subuids(h: &mut Hier, api: &Api, owner: u32, base: u32, uids: u32, hold: &[&str]) -> (Proc, Vec<Value>) {
    let (owner, base, uids) = (owner.to_string(), base.to_string(), uids.to_string());
    // The inner uids run a copy every user can reach (running once the
    // report is read, so the copy may go then).
    let bin = Runnable::new();
    let workload = bin.workload();
    let mut args = vec![WORKLOAD, "subuids", "--owner", &owner, "--base", &base, "--uids", &uids, "--", &workload, "api-hold", "--socket", api.sock()];
    args.extend_from_slice(hold);
    let mut p = h.spawn(&args);
    let report = p.read_json();
    let lines = report["lines"].as_array().unwrap_or_else(|| panic!("{report}")).clone();
    assert_eq!(lines.len(), uids.parse::<usize>().unwrap(), "every subordinate uid answered: {report}");
    (p, lines)
}

fn sum(lines: &[Value], key: &str) -> u64 {
    lines.iter().map(|l| l[key].as_u64().unwrap_or_else(|| panic!("{l}"))).sum()
}

/// KiB from a line of the daemon's /proc status.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap()
}

/// `count` nodes made at once (a storm of `count` tasks, each in a UTS
/// namespace of its own), then removed (the tasks exit). The nodes there
/// are already (the holders' user namespaces) stay.
fn churn(h: &mut Hier, count: usize) {
    let others = h.nodes().len();
    let mut storm = h.spawn(&[WORKLOAD, "storm", "--count", &count.to_string(), "--children", "0", "--until-eof"]);
    wait_for("the storm's nodes", || h.nodes().len() == others + count);
    storm.close_stdin();
    let summary = storm.read_json();
    assert_eq!(summary["reaped"], count, "{summary}");
    wait_for("the storm's nodes removed", || h.nodes().len() == others);
}

#[test]
fn one_owners_subordinate_uids_get_one_owners_share_and_root_is_answered() {
    if !attacks_can_run() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    // 12 subordinate uids of uid 65534, each trying to hold 128 connections
    // (1,536 in all, more than the whole server's 1,024), each asking for
    // the list on all of them again and again.
    let (mut holder, lines) = hold_as_subuids(&mut h, &api, NOBODY, 300_000, 12, &["--connections", "128", "--poll"]);
    assert_eq!(sum(&lines, "held"), CONNECTIONS_PER_OWNER as u64, "the owner holds its share, no more: {lines:?}");
    assert_eq!(sum(&lines, "refused"), 12 * 128 - CONNECTIONS_PER_OWNER as u64);
    let refusal = lines.iter().find_map(|l| l["refusal"].as_str()).unwrap().to_string();
    assert!(refusal.contains("too many connections of user 65534"), "{refusal}");
    // Uid 65534 itself is that owner too: no connection more.
    let mut own = h.spawn(&as_nobody(&[WORKLOAD, "api-hold", "--socket", api.sock(), "--connections", "1"]));
    assert_eq!(own.read_json()["held"], 0);
    own.close_stdin();
    // Meanwhile root is answered, on connections of its own, again and again.
    for _ in 0..20 {
        api.root_lists();
    }
    holder.close_stdin();
    h.reap(holder.pid);
    let mut api = api;
    api.daemon.stop();
    // The owner's requests beyond its share of requests under way waited for a slot.
    let deferred = api.figure("deferred_requests").unwrap_or(0);
    assert!(deferred > 0, "no request of the owner waited:\n{}", api.daemon.log_text());
    assert!(api.daemon.log_lines_with("panicked").is_empty());
}

#[test]
fn many_owners_together_leave_roots_share() {
    if !attacks_can_run() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    // Eight owners, each with its share: more than all users may hold.
    let owners = MAX_CONNECTIONS.div_ceil(CONNECTIONS_PER_OWNER) as u32;
    let mut holders = Vec::new();
    let mut held = 0;
    for i in 0..owners {
        let (p, lines) = hold_as_subuids(&mut h, &api, 61_000 + i, 400_000 + 1000 * i, 2, &["--connections", "64"]);
        assert!(sum(&lines, "held") <= CONNECTIONS_PER_OWNER as u64, "{lines:?}");
        held += sum(&lines, "held");
        if let Some(r) = lines.iter().find_map(|l| l["refusal"].as_str()) {
            assert!(r.contains("callers without CAP_SYS_ADMIN"), "{r}");
        }
        holders.push(p);
    }
    assert_eq!(held, (MAX_CONNECTIONS - ADMIN_CONNECTIONS) as u64, "users together hold all they may, no more");
    // Root gets connections of the share kept for it, and answers on them.
    let mut roots: Vec<Client> = (0..ADMIN_CONNECTIONS / 2).map(|_| Client::connect(&api.socket).unwrap()).collect();
    for c in &mut roots {
        let answer = c.call(&Request::List { all: false }).unwrap();
        assert_eq!(answer["type"], "ok", "root's list: {answer}");
    }
    api.root_lists();
    for mut p in holders {
        p.close_stdin();
        h.reap(p.pid);
    }
    assert!(api.daemon.log_lines_with("panicked").is_empty());
}

#[test]
fn stalled_subscribers_under_a_churn_cost_bounded_memory_and_are_dropped() {
    if !attacks_can_run() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let api = Api::start(&h, "", "");
    // Root's subscriber reads every event.
    let mut reader = UnixStream::connect(&api.socket).unwrap();
    reader.write_all(b"{\"version\":1,\"type\":\"subscribe\"}\n").unwrap();
    let mut lines = BufReader::new(reader.try_clone().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert!(first.contains("\"ok\""), "{first}");
    let events = std::thread::spawn(move || {
        let (mut created, mut removed, mut next, mut line) = (0u64, 0u64, None, String::new());
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            let v: Value = serde_json::from_str(&line).unwrap();
            let seq = v["seq"].as_u64().unwrap();
            assert!(next.is_none_or(|n| n == seq), "events in order without a gap: {line}");
            next = Some(seq + 1);
            match v["event"].as_str() {
                Some("node_created") => created += 1,
                Some("node_removed") => removed += 1,
                Some("lost") => panic!("the reading subscriber lost events: {line}"),
                _ => {}
            }
            line.clear();
        }
        (created, removed)
    });
    // What the daemon needs for the churn itself, with the reader only:
    // the peak after a first round.
    churn(&mut h, 1000);
    let before_kib = status_kib(api.daemon.pid(), "VmHWM:");
    // Five owners, each with two subordinate uids holding 64 subscribers
    // that never read: 640 stalled subscribers.
    let mut holders = Vec::new();
    for i in 0..5 {
        let (p, report) = hold_as_subuids(&mut h, &api, 62_000 + i, 500_000 + 1000 * i, 2, &["--connections", "64", "--subscribe"]);
        assert_eq!(sum(&report, "held"), 128, "{report:?}");
        holders.push(p);
    }
    // The churn: 4,000 nodes made and removed, 1,000 at a time.
    let rounds = 4;
    for _ in 0..rounds {
        churn(&mut h, 1000);
    }
    // The daemon goes on placing: a marker is placed in its node.
    let others = h.nodes().len();
    let marker = h.marker();
    let peak_kib = status_kib(api.daemon.pid(), "VmHWM:");
    eprintln!("the daemon's peak RSS: {before_kib} KiB after a round without stalled subscribers, {peak_kib} KiB after {rounds} with them");
    assert!(
        peak_kib.saturating_sub(before_kib) <= RSS_CEILING_KIB,
        "the daemon's peak RSS grew by {} KiB (from {before_kib} KiB to {peak_kib} KiB), more than {RSS_CEILING_KIB} KiB",
        peak_kib - before_kib
    );
    h.kill(marker.pid);
    wait_for("the marker's node removed", || h.nodes().len() == others);
    for mut p in holders {
        p.close_stdin();
        h.reap(p.pid);
    }
    let mut api = api;
    api.daemon.stop();
    let dropped = api.figure("dropped_slow_subscribers").unwrap_or(0);
    assert!(dropped >= 640, "every stalled subscriber was dropped: {dropped}\n{}", api.daemon.log_text());
    drop(reader);
    let (created, removed) = events.join().unwrap();
    assert!(created > (rounds + 1) * 1000 && removed > (rounds + 1) * 1000, "the reading subscriber saw every node come and go: {created} created, {removed} removed");
    assert!(api.daemon.log_lines_with("panicked").is_empty());
}
