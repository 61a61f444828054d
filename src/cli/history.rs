//! `nsgroup history`: every node that existed, from the history database;
//! `nsgroup history NODE|PID`: one node's timeline.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use nsgroup::config::Config;
use nsgroup::core::cgpath::canonical;
use nsgroup::core::escape::Escaped;
use nsgroup::history::{coalesced, open_ro, parse_since, query, timeline, HistoryRow, Query, Timeline, Which};
use nsgroup::sys::locate::locate;
use nsgroup::sys::procfs::ProcFs;
use nsgroup::sys::clock::unix_now;

/// `nsgroup history`: every node that existed, from the history database.
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// One node's timeline: a node's path (`/…`), or a PID (the node it is
    /// in now, else the last node it created).
    #[arg(value_name = "NODE|PID")]
    target: Option<String>,
    /// Nodes that existed at or after T: seconds since the epoch, or a
    /// duration ago (90s, 15m, 2h, 7d).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Only nodes whose creator had this command name.
    #[arg(long, value_name = "COMM")]
    comm: Option<String>,
    /// Print JSON: {"nodes": [...], "coalesced": [...]}.
    #[arg(long)]
    json: bool,
    /// At most this many nodes (the oldest first).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// The database. Default: the configuration's history.database.
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
    /// Configuration file, for history.database (and the hierarchy and
    /// root). Default: /etc/nsgroup/nsgroup.toml if present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The daemon's hierarchy whose nodes to show. Default: as for run.
    #[arg(long, value_name = "PATH", conflicts_with = "all")]
    hierarchy: Option<PathBuf>,
    /// The daemon's root whose nodes to show. Default: the configuration's root, else /.
    #[arg(long, value_name = "CGROUP", value_parser = canonical, conflicts_with = "all")]
    root: Option<String>,
    /// Every daemon's nodes, of every hierarchy and root the database holds.
    #[arg(long)]
    all: bool,
}

/// Unix seconds as a UTC date and time (`2023-11-14 22:13:20`).
pub(super) fn time(unix: u64) -> String {
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
    let s = r.removed_unix.unwrap_or(now).saturating_sub(r.node.created_unix);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

/// Runs `nsgroup history`; works whether the daemon runs or not.
pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let db = args.database.unwrap_or_else(|| config.history.database.clone());
    if db.as_os_str().is_empty() {
        bail!("history is off (history.database is empty in the configuration)");
    }
    if !db.exists() {
        bail!("no history database at {} (the daemon creates it when it runs with history.database set)", db.display());
    }
    let now = unix_now();
    let since = args.since.as_deref().map(|s| parse_since(s, now)).transpose().map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let conn = open_ro(&db).with_context(|| format!("opening {}", db.display()))?;
    if let Some(target) = &args.target {
        let which = which(target)?;
        let Some(t) = timeline::timeline(&conn, &which).with_context(|| format!("reading {}", db.display()))? else {
            bail!("no node {} in the history {}", Escaped(target), db.display());
        };
        return print_timeline(&t, args.json).map(|()| ExitCode::SUCCESS);
    }
    let scope = if args.all {
        None
    } else {
        let located = locate(args.hierarchy.as_deref().or(config.hierarchy.as_deref()), false).context("finding the cgroup hierarchy (--all shows every hierarchy's nodes)")?;
        Some((located.hierarchy.mount().display().to_string(), args.root.unwrap_or(config.root)))
    };
    let rows = {
        let q = Query { since_unix: since, comm: args.comm, limit: args.limit, scope: scope.clone() };
        query(&conn, &q).with_context(|| format!("reading {}", db.display()))?
    };
    let coalesced = coalesced(&conn, since, scope.as_ref()).with_context(|| format!("reading {}", db.display()))?;
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
                time(r.node.created_unix),
                removed,
                lifetime(r, now),
                r.node.creator_pid,
                Escaped(&r.node.creator_comm).to_string(),
                r.node.creator_uid,
                Escaped(&if args.all { format!("{}{}", r.hierarchy.trim_end_matches('/'), r.node.path) } else { r.node.path.clone() })
            )?;
            if let Some(from) = &r.node.restored_from {
                write!(out, "  (restored from {}, cgroup id {}, via {})", Escaped(&from.from_path), from.from_cgroup_id, Escaped(&from.dir))?;
            }
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

/// What `NODE|PID` names: a path, or a process and the cgroups it is in now.
fn which(target: &str) -> anyhow::Result<Which> {
    if target.starts_with('/') {
        return Ok(Which::Path(target.to_string()));
    }
    let pid: u32 = target.parse().map_err(|_| anyhow::anyhow!("{}: want a node's path (/…) or a PID", Escaped(target)))?;
    let cgroups = ProcFs::new("/proc").cgroup_paths(pid)?;
    Ok(Which::Pid { pid, cgroups })
}

/// The timeline's lines: created, what happened, removed (with final usage).
fn timeline_lines(t: &Timeline) -> Vec<(u64, String, String)> {
    let n = &t.node.node;
    let mut lines = vec![(n.created_unix, "created".to_string(), format!("by pid {} ({}) uid {}", n.creator_pid, Escaped(&n.creator_comm), n.creator_uid))];
    for e in &t.events {
        let by = match e.uid {
            Some(uid) => format!("by {} uid {uid}", e.by),
            None => format!("by {}", e.by),
        };
        let detail: Vec<String> = e.detail.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), |s| Escaped(s).to_string()))).collect();
        lines.push((e.at_unix, e.what.clone(), format!("{by} {}", detail.join(" ")).trim_end().to_string()));
    }
    if let Some(at) = t.node.removed_unix {
        let usage: Vec<String> = t.node.usage.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        let how = if t.node.closed_at_start { "while no daemon ran (closed at the next start)".to_string() } else { usage.join(" ") };
        lines.push((at, "removed".to_string(), how));
    }
    lines
}

fn print_timeline(t: &Timeline, json: bool) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, t).context("writing the timeline (JSON) to stdout")?;
        writeln!(out).context("writing the timeline to stdout")?;
        return Ok(());
    }
    let write = |out: &mut io::StdoutLock<'_>| -> io::Result<()> {
        writeln!(out, "{}  (cgroup id {})", Escaped(&t.node.node.path), t.node.node.cgroup_id)?;
        if t.events_dropped > 0 {
            writeln!(out, "({} older events dropped: at most {} are kept per node)", t.events_dropped, timeline::MAX_PER_NODE)?;
        }
        for (at, what, detail) in timeline_lines(t) {
            writeln!(out, "{}  {:<9} {}", time(at), what, detail)?;
        }
        Ok(())
    };
    write(&mut out).context("writing the timeline to stdout")
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
