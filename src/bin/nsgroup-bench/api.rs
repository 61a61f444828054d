//! The API parts: part 1 again while clients hammer the API (issue 9), and
//! the API's capacity (issue 16): root's `list` while users hold every
//! connection they may, the daemon's RSS with stalled subscribers under a
//! node churn.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::mirrored::wait_clean;
use crate::daemon::{Measured, figure, SETTLE};
use crate::harness::{api_config, poll_until, DaemonProcess};
use crate::hierarchy::Bench;
use crate::latency::{self, latency, Latencies, Latency};
use crate::report::Report;
use crate::tasks::Held;

/// How many API clients poll the node list in the API part.
const API_CLIENTS: u32 = 100;

/// A fresh daemon serving an API socket in the bench's work directory.
fn api_daemon(b: &Bench) -> Result<(DaemonProcess, PathBuf)> {
    let (config, socket) = api_config(&b.work, "", "")?;
    let d = b.start(&["--config", config.to_str().context("a UTF-8 path")?])?;
    Ok((d, socket))
}

/// Part 1 under a fresh daemon whose API socket [`API_CLIENTS`] clients
/// hammer with `list` requests meanwhile (from another process: the
/// latency part forks, and forks only single-threaded). Returns the round
/// and how many answers the clients read.
fn latency_with_clients(b: &Bench, samples: u32) -> Result<(Latency, u64)> {
    let (d, socket) = api_daemon(b)?;
    let mut clients = Command::new(&b.workload)
        .args(["api-clients", "--clients", &API_CLIENTS.to_string(), "--socket"])
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting nsgroup-workload api-clients")?;
    let mut out = std::io::BufReader::new(clients.stdout.take().context("piped")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if !line.contains("ready") {
        bail!("the API clients did not connect: {line}");
    }
    let run0 = d.run_time_ns();
    let task = latency(&[b.marker()], samples, 1000)?;
    drop(clients.stdin.take());
    line.clear();
    out.read_line(&mut line)?;
    clients.wait()?;
    let requests = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["requests"].as_u64()).unwrap_or(0);
    Ok((Latency::finish(b, None, d, run0, task, samples)?, requests))
}

/// The API part: part 1's round with clients hammering the socket, next to
/// a plain round of the same run (part 1's, when it ran as many samples).
pub fn clients(b: &Bench, r: &mut Report, latencies: Option<&Latencies>, quick: bool) -> Result<()> {
    let samples = latency::samples(quick);
    let plain = match latencies {
        Some(l) if l.samples == samples => l.plain.task.clone(),
        _ => latency::round(b, None, latency::Start::With(&[]), samples)?.task,
    };
    let (with, requests) = latency_with_clients(b, samples)?;
    let h = &with.task;
    r.row(
        &format!(
            "placement latency seen by the task, {samples} unshares at 1,000/s, without / with {API_CLIENTS} API clients polling the node list ({requests} answers meanwhile) (p50 / p99)"
        ),
        format!("{} / {} µs without; {} / {} µs with", plain.quantile(0.5), plain.quantile(0.99), h.quantile(0.5), h.quantile(0.99)),
        "p99 with clients ≤ 500 µs",
        Some(h.quantile(0.99) <= 500 && h.count() == u64::from(samples)),
    );
    Ok(())
}

/// The API capacity part's load: subordinate uids of one owner, each trying
/// to hold [`HOLD_PER_UID`] connections; [`STALLED`] stalled subscribers,
/// [`STALLED_PER_OWNER`] from each of [`STALLED_OWNERS`] owners (all that
/// users may hold together) and the rest root's; nodes made and removed
/// under them ([`churned`]).
const HOLD_UIDS: u32 = 12;
const HOLD_PER_UID: u32 = 128;
const STALLED: u32 = 1000;
const STALLED_OWNERS: u32 = 8;
const STALLED_PER_OWNER: u32 = 120;

/// The nodes made and removed under the stalled subscribers.
fn churned(quick: bool) -> u32 {
    if quick { 2000 } else { 10_000 }
}

/// `nsgroup-workload api-hold ARGS` as each subordinate uid 1..=`uids` of
/// `owner` (as root without one); they hold their connections until dropped.
struct Holders {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Connections held and refused, over all the uids.
    held: u64,
    refused: u64,
}

impl Holders {
    fn spawn(b: &Bench, socket: &Path, owner: Option<(u32, u32)>, args: &[&str]) -> Result<Holders> {
        let mut cmd = Command::new(&b.workload);
        if let Some((owner, uids)) = owner {
            let base = (300_000 + 1000 * (owner - 60_000)).to_string();
            cmd.args(["subuids", "--owner", &owner.to_string(), "--base", &base, "--uids", &uids.to_string(), "--"]).arg(&b.workload);
        }
        let mut child = cmd
            .args(["api-hold", "--socket"])
            .arg(socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting nsgroup-workload api-hold")?;
        let stdin = child.stdin.take();
        let mut out = std::io::BufReader::new(child.stdout.take().context("piped")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let report: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("the holders' report: {line:?}"))?;
        let lines = match report["lines"].as_array() {
            Some(lines) => lines.clone(),
            None => vec![report],
        };
        let sum = |k: &str| lines.iter().filter_map(|l| l[k].as_u64()).sum();
        Ok(Holders { held: sum("held"), refused: sum("refused"), child, stdin })
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// Root's `list`, each on a connection of its own, `samples` times: the
/// time from connect to the answer.
fn root_lists(socket: &Path, samples: u32) -> Result<Vec<Duration>> {
    use nsgroup::api::{client::Client, proto::Request};
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            let answer = Client::connect(socket)?.call(&Request::List { all: false })?;
            if answer["type"] != "ok" {
                bail!("root's list was not answered ok: {answer}");
            }
            Ok(t.elapsed())
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `count` nodes made and removed, 1,000 at a time (tasks that unshare
/// NEWUTS and wait, then are released); the nodes there already stay.
fn churn(b: &Bench, count: u32) -> Result<()> {
    let others = b.nodes().len();
    let limit = Duration::from_secs(60);
    let period = Duration::from_millis(20);
    for _ in 0..count.div_ceil(1000) {
        let (held, _) = Held::spawn(1000)?;
        if !poll_until(limit, period, || b.nodes().len() >= others + 1000) {
            bail!("1,000 tasks not placed within 60 s");
        }
        held.release();
        if !poll_until(limit, period, || b.nodes().len() <= others) {
            bail!("the churn's nodes not removed within 60 s");
        }
    }
    Ok(())
}

/// The API capacity part (issue 16).
pub fn capacity(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    let samples = if q { 50 } else { 200 };
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    // Root's latency: idle, then while one owner's subordinate uids hold
    // every connection it may and keep asking for the list on all of them.
    let (d, socket) = api_daemon(b)?;
    std::thread::sleep(SETTLE);
    let idle = median(root_lists(&socket, samples)?);
    let per_uid = HOLD_PER_UID.to_string();
    let holders = Holders::spawn(b, &socket, Some((60_000, HOLD_UIDS)), &["--connections", &per_uid])?;
    let held = median(root_lists(&socket, samples)?);
    drop(holders);
    let holders = Holders::spawn(b, &socket, Some((60_000, HOLD_UIDS)), &["--connections", &per_uid, "--poll"])?;
    let polling = median(root_lists(&socket, samples)?);
    let (owner_held, owner_refused) = (holders.held, holders.refused);
    drop(holders);
    let log = d.stop()?;
    wait_clean(b, None, Duration::from_secs(10));
    b.remove_nodes();
    let x = |d: Duration| format!("{:.2}×", d.as_secs_f64() / idle.as_secs_f64());
    r.row(
        &format!(
            "API: root's `list` (connect to answer, {samples} in a row, median): on an idle server / while one owner's {HOLD_UIDS} subordinate uids, each trying {HOLD_PER_UID} connections, hold {owner_held} ({owner_refused} refused) / while they also ask for the list on all of them again and again ({} of their requests waited for a slot); as ratios to the idle server",
            figure(&log, "deferred_requests").unwrap_or(0)
        ),
        format!("{} / {} / {}; {}, {}", us(idle), us(held), us(polling), x(held), x(polling)),
        "answered ok every time",
        Some(owner_held <= nsgroup::api::capacity::CONNECTIONS_PER_OWNER as u64),
    );
    // RSS: the churn without subscribers, then with 1,000 stalled ones, each
    // under a fresh daemon.
    let churned = churned(q);
    let (d, _) = api_daemon(b)?;
    std::thread::sleep(SETTLE);
    let idle_plain = d.status_field("VmRSS:");
    churn(b, churned)?;
    let peak_plain = d.status_field("VmHWM:");
    d.stop()?;
    b.remove_nodes();
    let (d, socket) = api_daemon(b)?;
    std::thread::sleep(SETTLE);
    let idle = d.status_field("VmRSS:");
    let (per_owner, roots) = (STALLED_PER_OWNER.to_string(), (STALLED - STALLED_OWNERS * STALLED_PER_OWNER).to_string());
    let mut stalled: Vec<Holders> = (0..STALLED_OWNERS)
        .map(|i| Holders::spawn(b, &socket, Some((61_000 + i, 1)), &["--connections", &per_owner, "--subscribe"]))
        .collect::<Result<_>>()?;
    stalled.push(Holders::spawn(b, &socket, None, &["--connections", &roots, "--subscribe"])?);
    let subscribed: u64 = stalled.iter().map(|h| h.held).sum();
    churn(b, churned)?;
    let peak = d.status_field("VmHWM:");
    drop(stalled);
    let log = d.stop()?;
    wait_clean(b, None, Duration::from_secs(10));
    b.remove_nodes();
    let dropped = figure(&log, "dropped_slow_subscribers").unwrap_or(0);
    r.row(
        &format!(
            "API: the daemon's RSS, a {churned}-node churn (1,000 nodes at a time made and removed): idle, then the peak (VmHWM) without subscribers / with {subscribed} subscribers that never read ({} from {STALLED_OWNERS} users, the rest root's; {dropped} of them dropped as too slow)",
            STALLED_OWNERS * STALLED_PER_OWNER
        ),
        format!(
            "without: {} idle, {} peak (+{}); with: {} idle, {} peak (+{}, {:.2}× idle)",
            mib(idle_plain),
            mib(peak_plain),
            mib(peak_plain.saturating_sub(idle_plain)),
            mib(idle),
            mib(peak),
            mib(peak.saturating_sub(idle)),
            peak as f64 / idle.max(1) as f64
        ),
        "peak ≤ idle + 64 MiB",
        Some(peak <= idle + 64 * 1024 && subscribed == u64::from(STALLED)),
    );
    Ok(())
}
