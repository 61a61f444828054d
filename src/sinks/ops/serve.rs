//! The metrics threads and the loop's side of them. The loop publishes the
//! counters and the node changes it noted into a shared state, with
//! `try_lock` only: while a scrape holds the lock, the changes wait for a
//! later turn. Scrapes are served by a thread of their own, one connection
//! at a time with timeouts; the textfile has a writer thread. Both render
//! from the shared state and read each node's task list themselves: a slow
//! scraper delays only other scrapes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::metrics::{render, Bounds, NodeLabel, NodeReading};
use crate::config::MetricsConfig;
use crate::core::node::{CgroupId, Node};
use crate::render::exposition::Format;
use crate::sinks::error::SinkError;
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::readings;
use crate::sys::status_file::{write_atomically, Counters};

/// What the metrics threads read.
#[derive(Default)]
pub(super) struct State {
    pub(super) counters: Counters,
    pub(super) nodes: BTreeMap<CgroupId, NodeLabel>,
}

enum Change {
    Add(CgroupId, NodeLabel),
    Remove(CgroupId),
}

/// How long before a publication the lock was busy for is tried again.
pub(super) const RETRY_PUBLISH: Duration = Duration::from_millis(50);

/// The loop's side: the shared state, and what waits to be published.
pub(super) struct Metrics {
    shared: Arc<Mutex<State>>,
    pending: Vec<Change>,
    published: Option<Counters>,
    /// A retry is due on a timer.
    retry_armed: bool,
}

/// What a metrics thread renders from.
struct Scraped {
    shared: Arc<Mutex<State>>,
    hierarchy: Hierarchy,
    bounds: Bounds,
}

impl Metrics {
    /// The loop's side of `shared`.
    pub(super) fn new(shared: Arc<Mutex<State>>) -> Metrics {
        Metrics { shared, pending: Vec::new(), published: None, retry_armed: false }
    }

    /// Binds `metrics.listen` and starts its server, starts the textfile's
    /// writer; none when both are off. Also returns the address bound.
    pub(super) fn start(
        m: &MetricsConfig,
        hierarchy: &Hierarchy,
        started_unix: u64,
    ) -> Result<(Option<Metrics>, Option<String>), SinkError> {
        if m.listen.is_empty() && m.file.as_os_str().is_empty() {
            return Ok((None, None));
        }
        let shared = Arc::new(Mutex::new(State::default()));
        let scraped = || Scraped {
            shared: Arc::clone(&shared),
            hierarchy: hierarchy.clone(),
            bounds: Bounds { max_node_series: m.max_node_series, started_unix },
        };
        let mut listen = None;
        if !m.listen.is_empty() {
            let listener = TcpListener::bind(&m.listen).map_err(|e| SinkError::Config(format!("metrics.listen {}: {e}", m.listen)))?;
            let addr = listener.local_addr().map_err(|e| SinkError::Config(format!("metrics.listen: {e}")))?;
            let scraped = scraped();
            std::thread::Builder::new()
                .name("nsgroup-metrics".into())
                .spawn(move || serve(listener, &scraped))
                .map_err(|e| SinkError::Config(format!("metrics.listen: starting the server: {e}")))?;
            info!(address = %addr, path = "/metrics", "serving metrics");
            listen = Some(addr.to_string());
        }
        if !m.file.as_os_str().is_empty() {
            let (scraped, file, every) = (scraped(), m.file.clone(), Duration::from_secs(m.file_interval_seconds));
            std::thread::Builder::new()
                .name("nsgroup-textfile".into())
                .spawn(move || write_textfile_every(&file, every, &scraped))
                .map_err(|e| SinkError::Config(format!("metrics.file: starting its writer: {e}")))?;
            info!(file = %m.file.display(), interval_s = m.file_interval_seconds, "writing metrics for the textfile collector");
        }
        Ok((Some(Metrics::new(shared)), listen))
    }

    /// Notes a node made at `path`, for the node series.
    pub(super) fn added(&mut self, node: &Node, path: &str) {
        self.pending.push(Change::Add(node.id, NodeLabel::of(node, path)));
    }

    /// Notes a node removed.
    pub(super) fn removed(&mut self, id: CgroupId) {
        self.pending.push(Change::Remove(id));
    }

    /// Publishes `counters` and the noted changes if anything changed,
    /// unless a scrape holds the lock: then returns when to try again
    /// (unless a retry is due already).
    pub(super) fn publish(&mut self, counters: &Counters) -> Option<Duration> {
        if self.published.as_ref() == Some(counters) && self.pending.is_empty() {
            return None;
        }
        let Ok(mut state) = self.shared.try_lock() else {
            let first = !self.retry_armed;
            self.retry_armed = true;
            return first.then_some(RETRY_PUBLISH);
        };
        for change in self.pending.drain(..) {
            match change {
                Change::Add(id, label) => {
                    state.nodes.insert(id, label);
                }
                Change::Remove(id) => {
                    state.nodes.remove(&id);
                }
            }
        }
        state.counters.clone_from(counters);
        drop(state);
        self.published = Some(counters.clone());
        None
    }

    /// The retry's timer: the next publication happens even without a change.
    pub(super) fn retry(&mut self) {
        self.retry_armed = false;
        self.published = None;
    }
}

impl Scraped {
    /// The exposition, from a copy of the state taken under the lock; each
    /// node's task list is read after, without it.
    fn text(&self, format: Format) -> String {
        let (counters, nodes): (Counters, Vec<(CgroupId, NodeLabel)>) = {
            let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            (s.counters.clone(), s.nodes.iter().map(|(id, l)| (*id, l.clone())).collect())
        };
        let read = |label: &NodeLabel, full: bool| {
            let members = self.hierarchy.members(label.path()).unwrap_or_default();
            let mut reading = NodeReading { tasks: members.len() as u64, ..NodeReading::default() };
            if full && self.hierarchy.version() == Version::V2 {
                reading.pressure = readings::pressures(&self.hierarchy.dir(label.path())).unwrap_or_default();
            }
            if let (true, Some(ns)) = (full, label.net_ns) {
                reading.network = readings::net_dev_of_members(Path::new("/proc"), &members, ns).ok().flatten();
            }
            reading
        };
        render(&counters, &nodes, &self.bounds, format, read)
    }
}

/// Serves `GET /metrics`, one connection at a time, each bounded by timeouts.
fn serve(listener: TcpListener, scraped: &Scraped) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = answer(conn, scraped);
    }
}

fn answer(mut conn: TcpStream, scraped: &Scraped) -> std::io::Result<()> {
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
            ("200 OK", format.content_type(), scraped.text(format))
        }
        ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", "nsgroup: metrics at /metrics\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_string()),
    };
    write!(conn, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

fn write_textfile_every(file: &Path, every: Duration, scraped: &Scraped) {
    let mut failed = false;
    loop {
        let text = scraped.text(Format::Prometheus);
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
