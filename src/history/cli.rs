//! The command line of operability: `nsgroup history`, `nsgroup status`,
//! and `nsgroup run`'s `--metrics` / `--metrics-file` flags.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::{coalesced, open_ro, parse_since, query, HistoryRow, Query};
use crate::config::Config;
use crate::core::cgpath::canonical;
use crate::core::escape::Escaped;
use crate::sys::status_file::{status_path, StatusFile};
use crate::placer::unix_now;

/// `nsgroup run`'s metrics flags.
#[derive(clap::Args, Debug, Default)]
pub struct MetricsFlags {
    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9853; port 0 picks one, shown by `nsgroup status`). Off by
    /// default (metrics.listen).
    #[arg(long = "metrics", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Write the metrics to PATH for node_exporter's textfile collector,
    /// atomically every metrics.file_interval_seconds.
    #[arg(long = "metrics-file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The history database (history.database); an empty PATH keeps none.
    #[arg(long = "history-database", value_name = "PATH")]
    pub history: Option<String>,
}

impl MetricsFlags {
    /// The flags over the configuration (checked with it afterwards).
    pub fn apply(self, config: &mut Config) {
        if let Some(l) = self.listen {
            config.metrics.listen = l;
        }
        if let Some(f) = self.file {
            config.metrics.file = f;
        }
        if let Some(h) = self.history {
            config.history.database = PathBuf::from(h);
        }
    }
}

/// `nsgroup history`: every node that existed, from the history database.
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// Nodes that existed at or after T: seconds since the epoch, or a
    /// duration ago (90s, 15m, 2h, 7d).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Only nodes whose creator had this command name.
    #[arg(long, value_name = "COMM")]
    pub comm: Option<String>,
    /// Print JSON: {"nodes": [...], "coalesced": [...]}.
    #[arg(long)]
    pub json: bool,
    /// At most this many nodes (the oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// The database. Default: the configuration's history.database.
    #[arg(long, value_name = "FILE")]
    pub database: Option<PathBuf>,
    /// Configuration file, for history.database. Default: /etc/nsgroup/nsgroup.toml if present.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn time(unix: u64) -> String {
    // UTC, without a time zone database.
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let (y, m, d) = civil(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn lifetime(r: &HistoryRow, now: u64) -> String {
    let s = r.removed_unix.unwrap_or(now).saturating_sub(r.created_unix);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

/// Runs `nsgroup history`; works whether the daemon runs or not.
pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let db = match args.database {
        Some(p) => p,
        None => Config::load(args.config.as_deref())?.history.database,
    };
    if db.as_os_str().is_empty() {
        bail!("history is off (history.database is empty in the configuration)");
    }
    if !db.exists() {
        bail!("no history database at {} (the daemon creates it when it runs with history.database set)", db.display());
    }
    let now = unix_now();
    let since = args.since.as_deref().map(|s| parse_since(s, now)).transpose().map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let conn = open_ro(&db).with_context(|| format!("opening {}", db.display()))?;
    let q = Query { since_unix: since, comm: args.comm, limit: args.limit };
    let rows = query(&conn, &q).with_context(|| format!("reading {}", db.display()))?;
    let coalesced = coalesced(&conn, since).with_context(|| format!("reading {}", db.display()))?;
    let mut out = io::stdout().lock();
    if args.json {
        let v = serde_json::json!({ "nodes": rows, "coalesced": coalesced });
        serde_json::to_writer_pretty(&mut out, &v).context("writing the history (JSON) to stdout")?;
        writeln!(out).context("writing the history to stdout")?;
        return Ok(ExitCode::SUCCESS);
    }
    let write = || -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{:<19}  {:<19}  {:>8}  {:>7}  {:<15}  {:>5}  PATH", "CREATED (UTC)", "REMOVED (UTC)", "LIFETIME", "PID", "COMM", "UID")?;
        for r in &rows {
            let removed = match (r.removed_unix, r.closed_at_start) {
                (None, _) => "-".to_string(),
                (Some(t), false) => time(t),
                (Some(t), true) => format!("{}*", time(t)),
            };
            write!(
                out,
                "{:<19}  {:<20} {:>8}  {:>7}  {:<15}  {:>5}  {}",
                time(r.created_unix),
                removed,
                lifetime(r, now),
                r.creator_pid,
                Escaped(&r.creator_comm).to_string(),
                r.creator_uid,
                Escaped(&r.path)
            )?;
            if let Some(u) = &r.usage {
                let figures: Vec<String> = u.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if !figures.is_empty() {
                    write!(out, "  [{}]", figures.join(" "))?;
                }
            }
            writeln!(out)?;
        }
        if rows.iter().any(|r| r.closed_at_start) {
            writeln!(out, "* removed while no daemon ran: closed when the next one started")?;
        }
        let total: u64 = coalesced.iter().map(|c| c.entries).sum();
        if total > 0 {
            writeln!(out, "entries coalesced away (exited within the batch window, no node made): {total} in {} minutes", coalesced.len())?;
        }
        Ok(())
    };
    drop(out);
    write().context("writing the history to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// `nsgroup status`: what a running daemon tracks and how, what it costs, its counters.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Mount point of the daemon's hierarchy. Default: as for run.
    #[arg(long, value_name = "PATH")]
    pub hierarchy: Option<PathBuf>,
    /// The daemon's root. Default: the configuration's root, else /.
    #[arg(long, value_name = "CGROUP", value_parser = canonical)]
    pub root: Option<String>,
    /// Configuration file, for status.dir. Default: /etc/nsgroup/nsgroup.toml if present.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the status file's JSON, with uptime_s and running added.
    #[arg(long)]
    pub json: bool,
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `nsgroup status`: reads the status file the daemon keeps (written
/// atomically under status.dir, named like the instance lock). Exits 0 when
/// a daemon runs, 3 when none does (like `systemctl status`).
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let hierarchy = args.hierarchy.or(config.hierarchy.clone());
    let root = args.root.unwrap_or(config.root.clone());
    if config.status.dir.as_os_str().is_empty() {
        bail!("status files are off (status.dir is empty in the configuration)");
    }
    let located = crate::sys::locate::locate(hierarchy.as_deref(), false).context("finding the cgroup hierarchy")?;
    let path = status_path(&config.status.dir, &located.hierarchy, &root)
        .with_context(|| format!("cgroup {} in {}", Escaped(&root), located.hierarchy.mount().display()))?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = writeln!(
                io::stdout(),
                "no nsgroup daemon runs for {} in {} (no status file {})",
                Escaped(&root),
                located.hierarchy.mount().display(),
                path.display()
            );
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let s: StatusFile = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let running = alive(s.pid);
    let uptime = unix_now().saturating_sub(s.started_unix);
    let mut out = io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["uptime_s"] = uptime.into();
        v["running"] = running.into();
        serde_json::to_writer_pretty(&mut out, &v).context("writing the status (JSON) to stdout")?;
        writeln!(out).context("writing the status to stdout")?;
        return Ok(if running { ExitCode::SUCCESS } else { ExitCode::from(3) });
    }
    let c = &s.counters;
    let write = |out: &mut dyn Write| -> io::Result<()> {
        let state = if running { "running" } else { "NOT RUNNING (stale status file)" };
        writeln!(out, "nsgroup {} pid {} {state}, up {}s (since {})", s.version, s.pid, uptime, time(s.started_unix))?;
        writeln!(out, "tracking   {} in {} (cgroup {}{})", Escaped(&s.root), s.hierarchy, s.cgroup_version, if s.own_hierarchy { ", nsgroup's own hierarchy" } else { "" })?;
        writeln!(out, "mount      {}", s.mount_options)?;
        writeln!(out, "favordynmods {}", if s.favordynmods { "on" } else { "off" })?;
        writeln!(out, "hooks      {}", s.source)?;
        writeln!(out, "why        {}", s.hooks_why)?;
        for cost in &s.costs {
            writeln!(out, "cost       {cost}")?;
        }
        if s.costs.is_empty() {
            writeln!(out, "cost       no syscall tracepoints, favordynmods on: only unshare/setns/fork/exec/exit pay")?;
        }
        writeln!(out, "nodes      {} live, {} created, {} removed", c.live_nodes, c.nodes_created, c.nodes_removed)?;
        writeln!(out, "events     {} events, {} placements, {} refusals, {} reconciles", c.events, c.placements, c.refusals, c.reconciles)?;
        writeln!(
            out,
            "lost       {} ring drops, moves dropped {} gone / {} reused / {} other writer, {} coalesced away, {} history records dropped",
            c.ring_dropped, c.dropped_gone, c.dropped_reused, c.dropped_other_writer, c.coalesced_entries, c.history_dropped
        )?;
        if let Some(m) = &s.metrics_listen {
            writeln!(out, "metrics    http://{m}/metrics")?;
        }
        if let Some(f) = &s.metrics_file {
            writeln!(out, "metrics    file {f}")?;
        }
        if let Some(h) = &s.history_database {
            writeln!(out, "history    {h}")?;
        }
        writeln!(out, "(counters as of {}, rewritten at most every 5 s after a change)", time(s.written_unix))
    };
    write(&mut out).context("writing the status to stdout")?;
    Ok(if running { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00");
        assert_eq!(super::time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(super::time(951_782_400), "2000-02-29 00:00:00");
    }
}
