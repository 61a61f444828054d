//! `nsgroup status`: what a running daemon tracks and how, from the status
//! file it keeps.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use nsgroup::core::escape::Escaped;
use nsgroup::sys::clock::unix_now;
use nsgroup::sys::locate::locate;
use nsgroup::sys::status_file::{status_path, StatusFile};

use super::history::time;
use super::Scope;

/// `nsgroup status`: what a running daemon tracks and how, what it costs, its counters.
#[derive(clap::Args, Debug)]
#[command(mut_arg("root", |a| a.help("The daemon's root. Default: the configuration's root, else /")))]
#[command(mut_arg("config", |a| a.help("Configuration file, for status.dir. Default: /etc/nsgroup/nsgroup.toml if present")))]
pub struct StatusArgs {
    /// Mount point of the daemon's hierarchy. Default: as for run.
    #[arg(long, value_name = "PATH")]
    hierarchy: Option<PathBuf>,
    #[command(flatten)]
    scope: Scope,
    /// Print the status file's JSON, with uptime_s and running added.
    #[arg(long)]
    json: bool,
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `nsgroup status`: reads the status file the daemon keeps (written
/// atomically under status.dir, named like the instance lock). Exits 0 when
/// a daemon runs, 3 when none does (like `systemctl status`).
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = args.scope.load()?;
    let hierarchy = args.hierarchy.or(config.hierarchy.clone());
    let root = config.root.clone();
    if config.status.dir.as_os_str().is_empty() {
        bail!("status files are off (status.dir is empty in the configuration)");
    }
    let located = locate(hierarchy.as_deref(), false).context("finding the cgroup hierarchy")?;
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
        writeln!(out, "hooks      {}", Escaped(&s.source))?;
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
        if !c.user_scopes.is_empty() {
            let n = |k: &str| c.user_scopes.get(k).copied().unwrap_or(0);
            writeln!(out, "units      {} sandboxes got a scope of their own from their user's manager, {} stayed in their unit", n("started"), n("stayed"))?;
        }
        if let Some(m) = &s.metrics_listen {
            writeln!(out, "metrics    http://{m}/metrics")?;
        }
        if let Some(f) = &s.metrics_file {
            writeln!(out, "metrics    file {f}")?;
        }
        if let Some(h) = &s.history_database {
            writeln!(out, "history    {h}")?;
        }
        writeln!(out, "(counters as of {}, written at the first change, then at most every 5 s after one)", time(s.written_unix))
    };
    write(&mut out).context("writing the status to stdout")?;
    Ok(if running { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
