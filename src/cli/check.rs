//! `nsgroup check`: the invariant's verdict, and its exit code.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context;

use nsgroup::check::{Rules, Verdict};
use nsgroup::core::escape::Escaped;
use nsgroup::sys::locate::locate;
use nsgroup::sys::procfs::ProcFs;

use super::{note_unreadable, require_cgroup, At, Scope};

/// `nsgroup check`'s arguments.
#[derive(clap::Args, Debug)]
#[command(mut_arg("root", |a| a.help("The subtree to check (a cgroup path inside the hierarchy, starting with /, without . or ..). Default: the configuration's root, else /")))]
#[command(mut_arg("config", |a| a.help("Configuration file, for the namespace kinds that count")))]
pub struct CheckArgs {
    #[command(flatten)]
    at: At,
    #[command(flatten)]
    scope: Scope,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
    /// List the tasks `run` leaves where they are by rule (filters,
    /// max_depth, delegation), by rule; without it they are counted.
    #[arg(short, long)]
    verbose: bool,
}

/// Runs `nsgroup check`: 0 when the invariant holds, 1 when it does not.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = args.scope.load()?;
    let mask = config.mask().map_err(anyhow::Error::msg)?;
    let located = locate(args.at.hierarchy.as_deref().or(config.hierarchy.as_deref()), false)?;
    let root = config.root.clone();
    require_cgroup(&located.hierarchy, &root)?;
    let proc = ProcFs::new("/proc");
    let me = std::process::id();
    let base = proc.ns_set(me, me)?.unwrap_or_default();
    let mut rules = Rules::new(&config, mask, &located.hierarchy);
    let verdict = nsgroup::check::check(&located.hierarchy, &root, &proc, base, &mut rules)?;
    write_verdict(&verdict, args.json, args.verbose).context("writing the verdict to stdout")?;
    note_unreadable(verdict.unreadable_tasks as u64);
    if verdict.holds() {
        return Ok(ExitCode::SUCCESS);
    }
    let (misplaced, duplicates) = (verdict.misplaced.len(), verdict.duplicate_nodes.len());
    let _ = writeln!(
        io::stderr(),
        "nsgroup: the invariant does not hold: {misplaced} misplaced tasks, {duplicates} sets with several nodes"
    );
    Ok(ExitCode::from(1))
}

fn write_verdict(verdict: &Verdict, json: bool, verbose: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, verdict)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{} tasks, {} nodes", verdict.tasks, verdict.nodes)?;
        for m in &verdict.misplaced {
            let want = m.expected.as_deref().unwrap_or("(a node of its own, missing)");
            writeln!(out, "misplaced: {} {} in {}, belongs in {}", m.tid, Escaped(&m.comm), Escaped(&m.cgroup), Escaped(want))?;
        }
        for m in &verdict.outside_subtree {
            let node = m.expected.as_deref().unwrap_or_default();
            writeln!(
                out,
                "outside its subtree (left there by the subtree rule): {} {} in {}, its set's node is {}",
                m.tid,
                Escaped(&m.comm),
                Escaped(&m.cgroup),
                Escaped(node)
            )?;
        }
        let by_rule = verdict.left_out_by_rule();
        if !by_rule.is_empty() {
            let counts: Vec<String> = by_rule.iter().map(|(rule, n)| format!("{n} by {}", rule.name())).collect();
            writeln!(out, "left where they are by rule: {}", counts.join(", "))?;
        }
        if verbose {
            let mut listed: Vec<_> = verdict.left_out.iter().collect();
            listed.sort_by_key(|l| l.rule);
            for l in listed {
                let m = &l.task;
                writeln!(out, "left by rule {}: {} {} in {}", l.rule.name(), m.tid, Escaped(&m.comm), Escaped(&m.cgroup))?;
            }
        }
        for d in &verdict.duplicate_nodes {
            let paths: Vec<String> = d.iter().map(|p| Escaped(p).to_string()).collect();
            writeln!(out, "one set, several nodes: {}", paths.join(" "))?;
        }
    }
    out.flush()
}
