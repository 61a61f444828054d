//! Part 5, start-up reconcile with tasks already in sets (a first start,
//! next to the kernel alone doing the same work, and a restart), and part
//! 6, reading: `nsgroup tree --json` against `lsns -J` over the same nodes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::Measured;
use crate::hierarchy::Bench;
use crate::report::{ms, Report};
use crate::tasks::Held;

/// The kernel's own cost of what a first start does: a new cgroup per task
/// and the task moved into it, by the plainest loop (mkdir, write
/// `cgroup.procs`), no nsgroup involved. Puts the tasks back afterwards.
fn kernel_floor(held: &Held, b: &Bench) -> Result<Duration> {
    let dir = b.root_dir();
    let start = Instant::now();
    for (i, pid) in held.pids().iter().enumerate() {
        let cg = dir.join(format!("floor_{i}"));
        std::fs::create_dir(&cg).with_context(|| format!("mkdir {}", cg.display()))?;
        std::fs::write(cg.join("cgroup.procs"), pid.to_string()).with_context(|| format!("moving {pid} into {}", cg.display()))?;
    }
    let took = start.elapsed();
    for pid in held.pids() {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).with_context(|| format!("moving {pid} back into the root"))?;
    }
    b.remove_nodes();
    Ok(took)
}

/// Median wall time of `runs` runs of a command, stdout discarded.
fn median_run(cmd: &mut Command, runs: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let st = cmd.stdout(Stdio::null()).status().with_context(|| format!("{cmd:?}"))?;
        if !st.success() {
            bail!("{cmd:?}: {st}");
        }
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[runs / 2])
}

/// Parts 5 and 6, for each number of tasks in sets.
pub fn part(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    let counts = if q { vec![1000, 2000] } else { vec![1000, 2000, 10_000] };
    for count in counts {
        let (held, _) = Held::spawn(count)?;
        let floor = kernel_floor(&held, b)?;
        let d = b.start(&[])?;
        let first = d.figure("adopt_ms").unwrap_or(0) + d.figure("reconcile_ms").unwrap_or(0);
        let created = d.figure("created").unwrap_or(0);
        let rss = d.status_field("VmRSS:");
        d.stop()?;
        let d = b.start(&[])?;
        let again = d.figure("adopt_ms").unwrap_or(0) + d.figure("reconcile_ms").unwrap_or(0);
        let adopted = d.figure("adopted").unwrap_or(0);
        r.row(
            &format!(
                "start-up reconcile, {count} tasks in sets: first start (creates {created} nodes; the kernel alone: mkdir + move per task) / restart (adopts {adopted})"
            ),
            format!("{first} ms (kernel alone {}) / {again} ms", ms(floor)),
            if count == 10_000 { "≤ 200 ms" } else { "" },
            (count == 10_000).then_some(first <= 200 && again <= 200),
        );
        if count == 10_000 || (q && count == 2000) {
            r.row(
                &format!("daemon RSS with {count} nodes"),
                format!("{:.1} MiB", rss as f64 / 1024.0),
                "≤ 64 MiB with 10,000 nodes",
                Some(rss <= 64 * 1024),
            );
        }
        if count == 1000 {
            let runs = if q { 3 } else { 11 };
            let tree = median_run(b.nsgroup_on("tree").arg("--json"), runs)?;
            let lsns = median_run(Command::new("lsns").arg("-J"), runs)?;
            r.row(
                "reading 1,000 nodes: `nsgroup tree --json` / `lsns -J` (median)",
                format!("{} / {}", ms(tree), ms(lsns)),
                "tree faster than lsns",
                Some(tree < lsns),
            );
        }
        d.stop()?;
        held.release();
        b.wait_no_nodes(Duration::from_secs(60));
        // Nodes left by the stopped daemon are empty now: remove them.
        b.remove_nodes();
    }
    Ok(())
}
