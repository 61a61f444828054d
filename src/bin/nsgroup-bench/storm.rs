//! Part 2, throughput: a storm of tasks forked as fast as the machine
//! allows, each entering a new UTS namespace and staying, until all are
//! placed (and, with the control part's mirrors, mirrored).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::mirrored::{under, wait_clean, Control};
use crate::daemon::Measured;
use crate::daemon::figure;
use crate::harness::poll_until;
use crate::hierarchy::Bench;
use crate::report::{ms, Report};
use crate::tasks::Held;

/// What part 2 measures in one storm.
pub struct Storm {
    pub count: u32,
    pub fork_rate: f64,
    /// Until every task is placed (with mirrors: in them too).
    pub converged: Duration,
    /// The daemon's CPU time meanwhile.
    pub cpu_ms: u64,
    pub misplaced: usize,
    pub lost: u64,
    /// Tasks placed outside a mirror's root, per mirror (the daemon's `not_mirrored=`).
    pub not_mirrored: String,
    /// With mirrors: (mirrors with the rule's `pids.max`, mirrors in pids).
    pub limited: Option<(usize, usize)>,
}

impl Storm {
    pub fn placements_per_s(&self) -> f64 {
        f64::from(self.count) / self.converged.as_secs_f64()
    }

    pub fn cpu_us_per_node(&self) -> f64 {
        self.cpu_ms as f64 * 1000.0 / f64::from(self.count)
    }
}

/// Part 2 under a fresh daemon (with the control part's mirrors and limit
/// when `ctl` is given): `count` children forked as fast as possible, each
/// entering a new UTS namespace and staying, until all are placed.
fn round(b: &Bench, ctl: Option<&Control>, count: u32) -> Result<Storm> {
    under(ctl, |args| {
        let d = b.start(args)?;
        let (cpu0, _) = d.cpu_and_wakeups();
        let start = Instant::now();
        let (held, fork_rate) = Held::spawn(count)?;
        // The mirrors follow their node: looked at once every node is full.
        let all_placed = || b.placed() >= count && ctl.is_none_or(|c| c.placed().iter().all(|&n| n >= count));
        poll_until(Duration::from_secs(60).saturating_sub(start.elapsed()), Duration::from_millis(5), all_placed);
        let converged = start.elapsed();
        let (cpu1, _) = d.cpu_and_wakeups();
        let misplaced = b.misplaced()?;
        let limited = ctl.map(Control::limited);
        held.release();
        wait_clean(b, ctl, Duration::from_secs(30));
        let log = d.stop()?;
        b.remove_nodes();
        let not_mirrored = log.lines().rev().find_map(|l| l.split(" not_mirrored=").nth(1)?.split(' ').next().map(str::to_string));
        Ok(Storm {
            count,
            fork_rate,
            converged,
            cpu_ms: cpu1 - cpu0,
            misplaced,
            lost: figure(&log, "ring_dropped").unwrap_or(0),
            not_mirrored: not_mirrored.map_or("?".into(), |n| n.replace(',', ", ")),
            limited,
        })
    })
}

/// Part 2's storms: the plain one, and the control part's when it runs.
pub struct Storms {
    pub plain: Storm,
    pub mirrored: Option<Storm>,
}

/// Part 2: its rows, and its storms for the control part.
pub fn part(b: &Bench, r: &mut Report, ctl: Option<&Control>, quick: bool) -> Result<Storms> {
    let count = if quick { 1000 } else { 5000 };
    let s = round(b, None, count)?;
    r.row(
        &format!("fork+unshare storm: {count} tasks forked at {:.0}/s, all placed after", s.fork_rate),
        format!("{} ({:.0} placements/s), daemon CPU {} ms", ms(s.converged), s.placements_per_s(), s.cpu_ms),
        "",
        None,
    );
    r.row(
        "tasks misplaced at quiescence; BPF events lost",
        format!("{}; {}", s.misplaced, s.lost),
        "0 misplaced, losses reconciled",
        Some(s.misplaced == 0),
    );
    let mirrored = ctl.map(|c| round(b, Some(c), count)).transpose()?;
    Ok(Storms { plain: s, mirrored })
}
