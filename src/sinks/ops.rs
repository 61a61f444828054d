//! Operability, the daemon's side: the metrics endpoint and textfile, the
//! history writer, the status file `nsgroup status` reads, periodic counters
//! and SIGHUP.
//!
//! Nothing here blocks the loop. Its hooks only count, queue history records
//! (a bounded channel to the writer thread; full: dropped and counted) and
//! note node changes. Once per turn [`Daemon::ops_turn`] publishes the
//! counters and the noted changes to the state the metrics threads read,
//! with `try_lock` only: while a scrape holds the lock, the changes wait for
//! a later turn (a short timer makes sure there is one). Scrapes are served
//! by a thread of their own, one connection at a time with timeouts, and
//! read each node's task list themselves: a slow scraper delays only other
//! scrapes. The status file is rewritten by the loop at most every
//! [`STATUS_EVERY`], and only after the counters changed: an idle daemon
//! does not wake for it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::error::SinkError;
use crate::pipeline::outcome::{Dropped, Outcome, Sink};
use crate::config::Config;
use crate::core::node::{CgroupId, Node};
use crate::core::nsset::NsKind;
use crate::history::{Msg, NodeRow, Retention, Writer};
use crate::pipeline::placer::unix_now;
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::status_file::{status_path, write_atomically, Counters, StatusFile};

/// The upper bounds (seconds) of the event-to-moved latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// How often at most the status file is rewritten (only after a change).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How long before a publication the lock was busy for is tried again.
pub(crate) const RETRY_PUBLISH: Duration = Duration::from_millis(50);

/// The figure docs/benchmarks.md measured for the syscall tracepoints (its getppid row).
pub const TRACEPOINT_COST: &str =
    "the syscall tracepoints put every task on the slow syscall path: every syscall of every task pays ~15-28 ns (+15-19 %, docs/benchmarks.md, getppid row)";
/// What a hierarchy without favordynmods costs.
pub const NO_FAVORDYNMODS_COST: &str =
    "the hierarchy is mounted without favordynmods: every placement waits for an RCU grace period (milliseconds) in the kernel";

/// Timer jobs of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpsJob {
    Status,
    LogCounters,
    Publish,
}

/// A node as the metrics show it.
#[derive(Clone, Debug)]
pub(crate) struct NodeLabel {
    name: String,
    path: String,
    created_unix: u64,
    owner: u32,
}

pub(crate) enum Change {
    Add(CgroupId, NodeLabel),
    Remove(CgroupId),
}

/// What the metrics threads read.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) counters: Counters,
    pub(crate) nodes: BTreeMap<CgroupId, NodeLabel>,
}

/// Where the threads find the hierarchy and their bounds.
#[derive(Clone)]
struct View {
    mount: PathBuf,
    v2: bool,
    max_node_series: usize,
    started_unix: u64,
}

/// What the pipeline did, counted from its outcomes.
#[derive(Default)]
pub struct Counted {
    pub events: u64,
    pub moved: u64,
    pub created: u64,
    pub removed: u64,
    pub reconciles: u64,
    pub refused: u64,
    /// Moves dropped because the task exited first.
    pub dropped_gone: u64,
    /// Moves dropped because the tid had become another task's.
    pub dropped_reused: u64,
    /// Moves dropped because another writer had moved the task.
    pub dropped_other_writer: u64,
    /// Per mirror (its controllers): tasks placed outside its root, so not mirrored.
    pub not_mirrored: BTreeMap<String, u64>,
    /// Event-to-moved latency (µs).
    pub latency: crate::core::histogram::Histogram,
}

/// The daemon's operability state.
pub struct Ops {
    counted: Counted,
    pub(crate) state: Arc<Mutex<State>>,
    /// Whether node changes are followed (metrics or history on).
    pub(crate) follow: bool,
    pub(crate) metrics_on: bool,
    pub(crate) history: Option<Writer>,
    pub(crate) pending: Vec<Change>,
    pub(crate) latency: Vec<u64>,
    pub(crate) latency_sum_us: u64,
    /// Entries coalesced away (no node made), in total and not yet sent to history.
    pub(crate) coalesced: u64,
    pub(crate) coalesced_sent: u64,
    pub(crate) published: Option<Counters>,
    pub(crate) publish_armed: bool,
    pub(crate) status_path: Option<PathBuf>,
    pub(crate) status: StatusFile,
    pub(crate) status_armed: bool,
    pub(crate) status_written: Option<Counters>,
    pub(crate) log_armed: bool,
    pub(crate) logged: Option<Counters>,
    pub(crate) hup: Arc<AtomicBool>,
}

/// The options of the mount at `mount` (mount options, then superblock
/// options), from /proc/self/mountinfo.
pub fn mount_options(mount: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mount.to_str()?;
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        let point = f.get(4)?.replace("\\040", " ");
        if point != want {
            return None;
        }
        let superopts = right.split(' ').nth(2).unwrap_or("");
        Some(format!("{} {superopts}", f.get(5)?))
    })
}

pub(crate) fn node_row(node: &Node, path: String) -> NodeRow {
    let r = &node.record;
    NodeRow {
        cgroup_id: node.id,
        path,
        set: NsKind::ALL.into_iter().filter(|k| r.set.get(*k) != 0).map(|k| (k.proc_name().to_string(), r.set.get(k))).collect(),
        creator_pid: r.creator_pid,
        creator_comm: r.creator_comm.clone(),
        creator_uid: r.creator_uid,
        owner_uid: r.owner(),
        created_unix: r.created_unix,
    }
}

pub(crate) fn label_of(node: &Node, path: String) -> NodeLabel {
    NodeLabel { name: node.name.clone(), path, created_unix: node.record.created_unix, owner: node.record.owner() }
}

impl Ops {
    /// Opens the history, binds the metrics address, starts the threads and
    /// installs the SIGHUP handler (its signal wakes the loop through `wake`).
    pub fn start(config: &Config, hierarchy: &Hierarchy, root: &str, wake: &UnixStream) -> Result<Ops, SinkError> {
        let hup = Arc::new(AtomicBool::new(false));
        let sig = signal_hook::consts::SIGHUP;
        signal_hook::flag::register(sig, Arc::clone(&hup)).map_err(SinkError::Signals)?;
        signal_hook::low_level::pipe::register(sig, wake.try_clone().map_err(SinkError::Signals)?).map_err(SinkError::Signals)?;

        let state = Arc::new(Mutex::new(State::default()));
        let view = View {
            mount: hierarchy.mount().to_path_buf(),
            v2: hierarchy.version() == Version::V2,
            max_node_series: config.metrics.max_node_series,
            started_unix: unix_now(),
        };
        let m = &config.metrics;
        let mut listen = None;
        if !m.listen.is_empty() {
            let listener = TcpListener::bind(&m.listen).map_err(|e| SinkError::Config(format!("metrics.listen {}: {e}", m.listen)))?;
            let addr = listener.local_addr().map_err(|e| SinkError::Config(format!("metrics.listen: {e}")))?;
            let (state, view) = (Arc::clone(&state), view.clone());
            std::thread::Builder::new()
                .name("nsgroup-metrics".into())
                .spawn(move || serve(listener, &state, &view))
                .map_err(|e| SinkError::Config(format!("metrics.listen: starting the server: {e}")))?;
            info!(address = %addr, path = "/metrics", "serving metrics");
            listen = Some(addr.to_string());
        }
        if !m.file.as_os_str().is_empty() {
            let (state, view, file, every) = (Arc::clone(&state), view.clone(), m.file.clone(), m.file_interval_seconds);
            std::thread::Builder::new()
                .name("nsgroup-textfile".into())
                .spawn(move || write_textfile_every(&file, Duration::from_secs(every), &state, &view))
                .map_err(|e| SinkError::Config(format!("metrics.file: starting its writer: {e}")))?;
            info!(file = %m.file.display(), interval_s = m.file_interval_seconds, "writing metrics for the textfile collector");
        }
        let h = &config.history;
        let history = if h.database.as_os_str().is_empty() {
            None
        } else {
            let retention = Retention { days: h.retention_days, rows: h.retention_rows };
            match Writer::start(&h.database, hierarchy.mount().display().to_string(), root.to_string(), retention) {
                Ok(w) => {
                    info!(database = %h.database.display(), "recording history");
                    Some(w)
                }
                Err(e) => {
                    warn!(database = %h.database.display(), error = %e, "cannot open the history database; running without history");
                    None
                }
            }
        };
        let status_path = if config.status.dir.as_os_str().is_empty() {
            None
        } else {
            match status_path(&config.status.dir, hierarchy, root) {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!(dir = %config.status.dir.display(), error = %e, "no status file");
                    None
                }
            }
        };
        let status = StatusFile {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_unix: view.started_unix,
            hierarchy: hierarchy.mount().display().to_string(),
            cgroup_version: format!("{:?}", hierarchy.version()).to_lowercase(),
            root: root.to_string(),
            metrics_listen: listen,
            metrics_file: (!m.file.as_os_str().is_empty()).then(|| m.file.display().to_string()),
            history_database: history.as_ref().map(|_| h.database.display().to_string()),
            ..StatusFile::default()
        };
        Ok(Ops {
            counted: Counted::default(),
            state,
            follow: !m.listen.is_empty() || !m.file.as_os_str().is_empty() || history.is_some(),
            metrics_on: !m.listen.is_empty() || !m.file.as_os_str().is_empty(),
            history,
            pending: Vec::new(),
            latency: vec![0; LATENCY_BUCKETS.len() + 1],
            latency_sum_us: 0,
            coalesced: 0,
            coalesced_sent: 0,
            published: None,
            publish_armed: false,
            status_path,
            status,
            status_armed: false,
            status_written: None,
            log_armed: false,
            logged: None,
            hup,
        })
    }
}

impl Ops {
    /// What was counted so far.
    pub fn counted(&self) -> &Counted {
        &self.counted
    }
}

impl Sink for Ops {
    fn follows_nodes(&self) -> bool {
        self.follow
    }

    /// Latencies and coalesced entries counted; nodes made and removed to
    /// the metrics' node series and the history.
    fn take(&mut self, outcome: &Outcome<'_>) {
        let c = &mut self.counted;
        match *outcome {
            Outcome::Events { count, .. } => c.events += count,
            Outcome::Refused { .. } => c.refused += 1,
            Outcome::Dropped { why, .. } => match why {
                Dropped::Gone => c.dropped_gone += 1,
                Dropped::Reused => c.dropped_reused += 1,
                Dropped::OtherWriter => c.dropped_other_writer += 1,
            },
            Outcome::NotMirrored { controllers, .. } => *c.not_mirrored.entry(controllers.to_string()).or_default() += 1,
            Outcome::Reconciled { .. } => c.reconciles += 1,
            Outcome::Placed { latency_us, created, .. } => {
                c.moved += 1;
                c.created += u64::from(created);
                c.latency.record(latency_us);
                let secs = latency_us as f64 / 1e6;
                let bucket = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
                self.latency[bucket] += 1;
                self.latency_sum_us += latency_us;
            }
            Outcome::Created { node, path, .. } if self.follow => {
                if self.metrics_on {
                    self.pending.push(Change::Add(node.id, label_of(node, path.to_string())));
                }
                if let Some(h) = &self.history {
                    h.send(Msg::Created(node_row(node, path.to_string())));
                }
            }
            Outcome::Removed { removal, .. } => {
                c.removed += 1;
                if self.metrics_on {
                    self.pending.push(Change::Remove(removal.node.id));
                }
                if let Some(h) = &self.history {
                    let usage = removal.usage.iter().cloned().collect();
                    h.send(Msg::Removed { node: node_row(&removal.node, removal.path.clone()), removed_unix: unix_now(), usage });
                }
            }
            Outcome::Coalesced { entries } => self.coalesced += entries,
            Outcome::Created { .. } | Outcome::LimitApplied { .. } | Outcome::Overflow { .. } | Outcome::Failed { .. } => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The exposition, rendered by the metrics threads.
// ---------------------------------------------------------------------------

/// Text format: OpenMetrics (`# EOF`, counters' family names without
/// `_total`) or Prometheus 0.0.4 (for node_exporter's textfile collector and
/// scrapers that do not ask for OpenMetrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

fn family(out: &mut String, format: Format, name: &str, kind: &str, help: &str) {
    use std::fmt::Write as _;
    let fam = if kind == "counter" && format == Format::Prometheus { format!("{name}_total") } else { name.to_string() };
    let _ = writeln!(out, "# HELP {fam} {help}");
    let _ = writeln!(out, "# TYPE {fam} {kind}");
}

fn label_value(v: &str) -> String {
    crate::core::escape::Escaped(v).to_string().replace('\\', "\\\\").replace('"', "\\\"")
}

/// The number of tasks (threads) in a node.
fn tasks_in(view: &View, path: &str) -> u64 {
    let file = if view.v2 { "cgroup.threads" } else { "tasks" };
    let p = view.mount.join(path.trim_start_matches('/')).join(file);
    std::fs::File::open(p).map_or(0, |f| BufReader::new(f).lines().count() as u64)
}

fn render(state: &Mutex<State>, view: &View, format: Format) -> String {
    use std::fmt::Write as _;
    let (c, nodes): (Counters, Vec<(CgroupId, NodeLabel)>) = {
        let s = state.lock().unwrap_or_else(|e| e.into_inner());
        (s.counters.clone(), s.nodes.iter().map(|(id, l)| (*id, l.clone())).collect())
    };
    let mut o = String::with_capacity(4096 + nodes.len().min(view.max_node_series) * 160);
    let counters: [(&str, &str, u64); 9] = [
        ("nsgroup_events", "Events taken from the source (entries into new sets, forks, execs, exits of tracked tasks).", c.events),
        ("nsgroup_placements", "Tasks moved into their set's node.", c.placements),
        ("nsgroup_nodes_created", "Nodes created.", c.nodes_created),
        ("nsgroup_nodes_removed", "Nodes removed after their last task exited.", c.nodes_removed),
        ("nsgroup_ring_dropped_events", "Events lost because the BPF ring buffer was full (each triggers a reconcile).", c.ring_dropped),
        ("nsgroup_reconciles", "Reconciles from /proc (start, overflow, rescans).", c.reconciles),
        ("nsgroup_refusals", "Entries refused by quota, rate or rules (their tasks stay where they are).", c.refusals),
        ("nsgroup_coalesced_entries", "Entries of tasks that exited within the batch window: no node made (high-rate mode).", c.coalesced_entries),
        ("nsgroup_history_dropped_records", "History records dropped because the writer's queue was full.", c.history_dropped),
    ];
    for (name, help, v) in counters {
        family(&mut o, format, name, "counter", help);
        let _ = writeln!(o, "{name}_total {v}");
    }
    family(&mut o, format, "nsgroup_dropped_moves", "counter", "Moves not made, by why: the task exited first, its tid was reused, another writer moved it.");
    for (why, v) in [("gone", c.dropped_gone), ("reused", c.dropped_reused), ("other_writer", c.dropped_other_writer)] {
        let _ = writeln!(o, "nsgroup_dropped_moves_total{{reason=\"{why}\"}} {v}");
    }
    family(&mut o, format, "nsgroup_placement_latency_seconds", "histogram", "From the event (BPF timestamp) to the task moved.");
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += c.latency_buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(o, "nsgroup_placement_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += c.latency_buckets.get(LATENCY_BUCKETS.len()).copied().unwrap_or(0);
    let _ = writeln!(o, "nsgroup_placement_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(o, "nsgroup_placement_latency_seconds_sum {}", c.latency_sum_us as f64 / 1e6);
    let _ = writeln!(o, "nsgroup_placement_latency_seconds_count {cumulative}");

    family(&mut o, format, "nsgroup_nodes", "gauge", "Live nodes.");
    let _ = writeln!(o, "nsgroup_nodes {}", c.live_nodes);
    // Every node's task list is read here, in this thread, never by the loop.
    let tasks: Vec<u64> = nodes.iter().map(|(_, l)| tasks_in(view, &l.path)).collect();
    family(&mut o, format, "nsgroup_tasks", "gauge", "Tasks (threads) in nodes.");
    let _ = writeln!(o, "nsgroup_tasks {}", tasks.iter().sum::<u64>());
    let cap = view.max_node_series.min(nodes.len());
    family(&mut o, format, "nsgroup_node_tasks", "gauge", "Tasks (threads) in a node, by node id and name (the first max_node_series nodes by id).");
    for ((id, l), n) in nodes.iter().zip(&tasks).take(cap) {
        let _ = writeln!(o, "nsgroup_node_tasks{{id=\"{id}\",name=\"{}\"}} {n}", label_value(&l.name));
    }
    family(&mut o, format, "nsgroup_node_created_timestamp_seconds", "gauge", "When a node was created (unix time), by node id and name.");
    for (id, l) in nodes.iter().take(cap) {
        let _ = writeln!(o, "nsgroup_node_created_timestamp_seconds{{id=\"{id}\",name=\"{}\"}} {}", label_value(&l.name), l.created_unix);
    }
    family(&mut o, format, "nsgroup_node_owner", "gauge", "Who owns a node (docs/semantics.md §13 \"Owners\"), by node id and name: 1.");
    for (id, l) in nodes.iter().take(cap) {
        let _ = writeln!(o, "nsgroup_node_owner{{id=\"{id}\",name=\"{}\",owner=\"{}\"}} 1", label_value(&l.name), l.owner);
    }
    family(&mut o, format, "nsgroup_node_series_cut", "gauge", "Nodes left without per-node series by metrics.max_node_series.");
    let _ = writeln!(o, "nsgroup_node_series_cut {}", nodes.len() - cap);
    // Per owner: the owners with most nodes first, as many as per-node series.
    let mut per_owner: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, l) in nodes.iter() {
        *per_owner.entry(l.owner).or_default() += 1;
    }
    let mut owners: Vec<(u32, u64)> = per_owner.into_iter().collect();
    owners.sort_by_key(|&(owner, n)| (std::cmp::Reverse(n), owner));
    let shown = view.max_node_series.min(owners.len());
    family(&mut o, format, "nsgroup_owner_nodes", "gauge", "Live nodes per owner (the owners with most nodes, as many as metrics.max_node_series).");
    for (owner, n) in &owners[..shown] {
        let _ = writeln!(o, "nsgroup_owner_nodes{{owner=\"{owner}\"}} {n}");
    }
    family(&mut o, format, "nsgroup_owner_series_cut", "gauge", "Owners left without a series by metrics.max_node_series.");
    let _ = writeln!(o, "nsgroup_owner_series_cut {}", owners.len() - shown);
    family(&mut o, format, "nsgroup_start_time_seconds", "gauge", "When the daemon started (unix time).");
    let _ = writeln!(o, "nsgroup_start_time_seconds {}", view.started_unix);
    family(&mut o, format, "nsgroup_build_info", "gauge", "The daemon's version.");
    let _ = writeln!(o, "nsgroup_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    if format == Format::OpenMetrics {
        o.push_str("# EOF\n");
    }
    o
}

/// Serves `GET /metrics`, one connection at a time, each bounded by timeouts.
fn serve(listener: TcpListener, state: &Mutex<State>, view: &View) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = answer(conn, state, view);
    }
}

fn answer(mut conn: TcpStream, state: &Mutex<State>, view: &View) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(std::io::Read::take(conn.try_clone()?, 16 * 1024));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut openmetrics = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("accept:") && lower.contains("application/openmetrics-text") {
            openmetrics = true;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let format = if openmetrics { Format::OpenMetrics } else { Format::Prometheus };
            let ctype = match format {
                Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            };
            ("200 OK", ctype, render(state, view, format))
        }
        ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", "nsgroup: metrics at /metrics\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_string()),
    };
    write!(conn, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

fn write_textfile_every(file: &Path, every: Duration, state: &Mutex<State>, view: &View) {
    let mut failed = false;
    loop {
        let text = render(state, view, Format::Prometheus);
        match write_atomically(file, text.as_bytes(), 0o644) {
            Ok(()) => failed = false,
            Err(e) if !failed => {
                warn!(file = %file.display(), error = %e, "writing the metrics file failed");
                failed = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(every);
    }
}

/// Where a metrics address from the command line is checked.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("{text:?} is not an address like 127.0.0.1:9853"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_counted_and_their_series_capped_most_nodes_first() {
        let state = Mutex::new(State::default());
        {
            let mut s = state.lock().unwrap();
            s.counters.latency_buckets = vec![0; LATENCY_BUCKETS.len() + 1];
            // Owner 7 has 3 nodes, 8 has 2, every other owner one.
            for (id, owner) in [(1, 7), (2, 8), (3, 7), (4, 9), (5, 8), (6, 7), (7, 10)] {
                s.nodes.insert(id, NodeLabel { name: format!("node_{id}"), path: format!("/x/node_{id}"), created_unix: 10, owner });
            }
        }
        let view = View { mount: "/nonexistent".into(), v2: false, max_node_series: 2, started_unix: 1 };
        let text = render(&state, &view, Format::Prometheus);
        let owners: Vec<&str> = text.lines().filter(|l| l.starts_with("nsgroup_owner_nodes{")).collect();
        assert_eq!(owners, ["nsgroup_owner_nodes{owner=\"7\"} 3", "nsgroup_owner_nodes{owner=\"8\"} 2"]);
        assert!(text.contains("nsgroup_owner_series_cut 2\n"), "{text}");
        assert_eq!(text.matches("nsgroup_node_owner{").count(), 2);
    }

    #[test]
    fn exposition_is_well_formed_and_capped() {
        let state = Mutex::new(State::default());
        {
            let mut s = state.lock().unwrap();
            s.counters.events = 7;
            s.counters.latency_buckets = vec![0; LATENCY_BUCKETS.len() + 1];
            s.counters.latency_buckets[3] = 2;
            for id in 1..=5 {
                s.nodes.insert(id, NodeLabel { name: format!("node_{id}"), path: format!("/x/node_{id}"), created_unix: 10, owner: 1000 });
            }
        }
        let view = View { mount: "/nonexistent".into(), v2: false, max_node_series: 3, started_unix: 1 };
        let om = render(&state, &view, Format::OpenMetrics);
        assert!(om.contains("# TYPE nsgroup_events counter\nnsgroup_events_total 7\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("nsgroup_placement_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert_eq!(om.matches("nsgroup_node_tasks{").count(), 3);
        assert!(om.contains("nsgroup_node_series_cut 2"));
        assert!(om.contains("nsgroup_node_owner{id=\"1\",name=\"node_1\",owner=\"1000\"} 1"), "{om}");
        assert!(om.contains("nsgroup_owner_nodes{owner=\"1000\"} 5\n"), "{om}");
        assert!(om.contains("nsgroup_owner_series_cut 0\n"), "{om}");
        let prom = render(&state, &view, Format::Prometheus);
        assert!(prom.contains("# TYPE nsgroup_events_total counter\n"));
        assert!(!prom.contains("# EOF"));
    }
}
