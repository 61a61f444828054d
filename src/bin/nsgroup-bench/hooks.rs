//! Part 3b: what each `hooks` setting costs a null syscall (getppid) and
//! the fork/unshare loop, each against no daemon.

use anyhow::{Context, Result};

use crate::cost::{compare, fork_loop, getppid_loop, micros, per_call, unshare_newns};
use crate::daemon::under_daemon;
use crate::hierarchy::Bench;
use crate::report::Report;

/// For each `hooks` setting, the null syscall and the
/// fork/unshare(CLONE_NEWNS)/exit loop without and with the daemon. The
/// label names the hooks the daemon attached (its `source=`).
pub fn part(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    let (pairs, batches, per_batch, forks) = if q { (4, 20, 10_000, 200) } else { (10, 100, 10_000, 2000) };
    for mode in ["auto", "no-syscall"] {
        let config = b.work.join(format!("hooks-{mode}.toml"));
        std::fs::write(&config, format!("hooks = \"{mode}\"\n")).with_context(|| format!("writing {}", config.display()))?;
        let config = config.to_str().context("a UTF-8 temporary directory")?.to_string();
        let extra = ["--config", config.as_str()];
        let (_, log) = under_daemon(b, &extra, |_| Ok(()))?;
        let hooks = syscall_hooks(&log);
        let c = compare(b, &extra, pairs, || Ok(getppid_loop(batches, per_batch)))?;
        r.row(
            &format!("hooks = \"{mode}\" ({hooks}): getppid(), {pairs} pairs of {batches} × {per_batch} calls: without / with"),
            c.summary("call", |d| per_call(d, per_batch)),
            if hooks.starts_with("fentry") || mode == "no-syscall" { "≤ 1.02× (no hook on this syscall)" } else { "(every task takes the slow syscall path)" },
            (hooks.starts_with("fentry") || mode == "no-syscall").then(|| c.ratio() <= 1.02),
        );
        let c = compare(b, &extra, pairs, || fork_loop(forks, unshare_newns))?;
        r.row(
            &format!("hooks = \"{mode}\" ({hooks}): fork/unshare(CLONE_NEWNS)/exit, {pairs} pairs of {forks}-iteration rounds: without / with"),
            c.summary("iteration", micros),
            "≤ 1.2×",
            Some(c.ratio() <= 1.2),
        );
    }
    Ok(())
}

/// What the daemon of `log` hooked unshare()/setns() with, from the
/// `source=` of its start-up line: "fentry+fexit", "syscall tracepoints" or
/// "no syscall hook".
fn syscall_hooks(log: &str) -> &'static str {
    let source = log.lines().find(|l| l.contains("nsgroup is tracking")).and_then(|l| l.split_once(" source=")).map_or("", |(_, s)| s);
    if source.contains("fentry+fexit/") {
        "fentry+fexit"
    } else if source.contains("tracepoint/syscalls/") {
        "syscall tracepoints"
    } else if source.contains("no syscall hook") {
        "no syscall hook"
    } else {
        "unknown hooks"
    }
}
