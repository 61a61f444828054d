//! The `top` part: one frame of `nsgroup top` (sample cgroupfs and /proc,
//! build the rows with their rates, sort, render a plain-text frame) on a
//! 10,000-node tree, against the floor of walking that tree alone (every
//! cgroup listed and its members read, nothing else) in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use nsgroup::model::top::{Filter, Sampler, SortKey};
use nsgroup::model::Units;
use nsgroup::render::top::{write_text, Header};
use nsgroup::sys::hierarchy::Hierarchy;
use nsgroup::sys::locate::locate;
use nsgroup::sys::procfs::ProcFs;

use crate::daemon::Measured;
use crate::hierarchy::Bench;
use crate::report::{ms, Report};
use crate::tasks::Held;

/// Lists every cgroup below `rel` and reads its members; the cgroups walked.
fn walk(h: &Hierarchy, rel: &str) -> Result<usize> {
    let mut walked = 1;
    std::hint::black_box(h.members(rel)?);
    for c in h.children(rel)? {
        walked += walk(h, &nsgroup::core::cgpath::join(rel, &c))?;
    }
    Ok(walked)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The part: `count` tasks in sets of their own, placed by a daemon, then
/// frames and walks, alternately.
pub fn part(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    let count = if q { 1000 } else { 10_000 };
    let (held, _) = Held::spawn(count)?;
    let d = b.start(&[])?;
    let located = locate(Some(&b.mount), false).context("the bench's hierarchy")?;
    let h = located.hierarchy;
    let proc = ProcFs::new("/proc");
    let me = std::process::id();
    let base = proc.ns_set(me, me)?.unwrap_or_default();
    let units = Units { clock_ticks: rustix::param::clock_ticks_per_second(), page_size: rustix::param::page_size() as u64 };
    let mut sampler = Sampler::new(h.clone(), b.root.clone(), proc, base, units);
    let started = Instant::now();
    let (mut frames, mut walks, mut nodes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..if q { 3 } else { 7 } {
        let t = Instant::now();
        walk(&h, &b.root)?;
        walks.push(t.elapsed());
        let t = Instant::now();
        let (rows, _) = sampler.sample(started.elapsed().as_secs_f64(), nsgroup::sys::clock::unix_now())?.context("the root vanished")?;
        let view = rows.view(SortKey::Cpu, false, &Filter::default());
        let mut out = Vec::with_capacity(view.len() * 160);
        write_text(&mut out, &Header { sampled: rows.len(), ..Header::default() }, &view, None)?;
        std::hint::black_box(&out);
        frames.push(t.elapsed());
        nodes = view.iter().filter(|r| r.node).count();
    }
    d.stop()?;
    held.release();
    b.wait_no_nodes(Duration::from_secs(60));
    b.remove_nodes();
    let (frame, floor) = (median(frames), median(walks));
    r.row(
        &format!("`nsgroup top`: one frame on {nodes} nodes (sample + model + render, median) / walking the tree alone (list + members)"),
        format!("{} / {} ({:.1}×)", ms(frame), ms(floor), frame.as_secs_f64() / floor.as_secs_f64().max(1e-9)),
        "a frame ≤ 1 s (the default interval: 2 s)",
        Some(frame <= Duration::from_secs(1)),
    );
    Ok(())
}
