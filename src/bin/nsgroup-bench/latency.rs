//! Part 1, placement latency as the task sees it (and with the control
//! part's mirrors and limit), next to the daemon's own event-to-moved
//! figures and its time on a CPU per node.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use nsgroup::core::histogram::Histogram;
use nsgroup::ffi::{fork, Forked};

use crate::mirrored::{under, wait_clean, Control};
use crate::daemon::Measured;
use crate::daemon::latency_figures;
use crate::floor::{self, ratio, us, Floors};
use crate::harness::DaemonProcess;
use crate::hierarchy::Bench;
use crate::report::Report;
use crate::tasks::{time_to_placement, Kids};

/// Latency as the task sees it: from unshare() returning until
/// `/proc/self/cgroup` shows a node (every one of `markers`: the tracked
/// hierarchy's, and the mirrors' where there are mirrors). One child per
/// sample, at `rate` per second.
pub fn latency(markers: &[String], count: u32, rate: u32) -> Result<Histogram> {
    let (rx, tx) = UnixDatagram::pair()?;
    rx.set_nonblocking(true)?;
    let period = Duration::from_secs(1) / rate;
    let mut h = Histogram::default();
    let collect = |h: &mut Histogram| {
        let mut buf = [0u8; 8];
        while let Ok(8) = rx.recv(&mut buf) {
            h.record(u64::from_ne_bytes(buf));
        }
    };
    let mut kids = Kids::default();
    let start = Instant::now();
    for i in 0..count {
        let Forked::Parent { child } = fork()? else {
            // Reading in a loop all the while: no sleep blurs the figure.
            let limit = Duration::from_secs(5);
            let sent = time_to_placement(markers, limit, limit).is_ok_and(|us| tx.send(&us.to_ne_bytes()).is_ok());
            std::process::exit(if sent { 0 } else { 1 });
        };
        kids.add(child);
        kids.reap_ready();
        collect(&mut h);
        let next = start + period * (i + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    kids.reap_all();
    collect(&mut h);
    Ok(h)
}

/// What part 1 measures in one round.
pub struct Latency {
    /// As the tasks see it, in µs.
    pub task: Histogram,
    /// The daemon's own event-to-moved p50, p99 and max (µs, from its log).
    pub daemon: [u64; 3],
    /// The daemon's time on a CPU per sample (its node made, the task
    /// placed, the node removed once the task is gone), from schedstat.
    pub run_per_node: Duration,
}

impl Latency {
    /// The round of `samples` tasks that daemon `d` placed, its run time
    /// `run0` (ns) when they began: waits until it has removed their nodes
    /// (nodes stay when the daemon stops), then stops it.
    pub fn finish(b: &Bench, ctl: Option<&Control>, d: DaemonProcess, run0: u64, task: Histogram, samples: u32) -> Result<Latency> {
        wait_clean(b, ctl, Duration::from_secs(10));
        let run_per_node = Duration::from_nanos((d.run_time_ns() - run0) / u64::from(samples));
        let log = d.stop()?;
        b.remove_nodes();
        Ok(Latency { task, daemon: latency_figures(&log), run_per_node })
    }
}

/// How a round's daemon is started.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// With these arguments too.
    With(&'a [&'a str]),
    /// With these arguments, without CAP_SYS_NICE.
    WithoutSysNice(&'a [&'a str]),
}

/// Part 1 under a fresh daemon (with the control part's mirrors and limit
/// when `ctl` is given), started as `start` says.
pub fn round(b: &Bench, ctl: Option<&Control>, start: Start, samples: u32) -> Result<Latency> {
    let mut markers = vec![b.marker()];
    markers.extend(ctl.map(Control::markers).unwrap_or_default());
    under(ctl, |args| {
        let d = match start {
            Start::With(extra) => b.start(&[args, extra].concat())?,
            Start::WithoutSysNice(extra) => b.start_without_sys_nice(&[args, extra].concat())?,
        };
        let run0 = d.run_time_ns();
        let task = latency(&markers, samples, 1000)?;
        Latency::finish(b, ctl, d, run0, task, samples)
    })
}

/// Part 1's rounds: the plain one, and the control part's when it runs.
pub struct Latencies {
    pub samples: u32,
    pub plain: Latency,
    pub mirrored: Option<Latency>,
}

/// The number of samples of a round of part 1.
pub fn samples(quick: bool) -> u32 {
    if quick { 500 } else { 3000 }
}

/// How many times each floor is measured.
fn floor_samples(quick: bool) -> u32 {
    if quick { 300 } else { 2000 }
}

/// Part 1: the kernel's and the machine's floors, then placement latency
/// side by side under the default scheduling (SCHED_FIFO at priority 1),
/// under `realtime_priority = 0` (with the default short slice, the
/// kernel's slice, and nice -10), and where SCHED_FIFO
/// is refused, each as a ratio to its floor; its default round for the API
/// and control parts.
pub fn part(b: &Bench, r: &mut Report, ctl: Option<&Control>, quick: bool) -> Result<Latencies> {
    let samples = samples(quick);
    let floors = floor::measure(b, floor_samples(quick))?;
    floors.rows(r, floor_samples(quick));
    let plain = round(b, None, Start::With(&[]), samples)?;
    rows(r, &floors, &plain, samples, "the default (realtime_priority = 1)", true);
    let config = |name: &str, text: &str| -> Result<String> {
        let path = b.work.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.display().to_string())
    };
    let rt0 = config("realtime_priority_0.toml", "realtime_priority = 0\n")?;
    let normal = round(b, None, Start::With(&["--config", &rt0]), samples)?;
    rows(r, &floors, &normal, samples, "realtime_priority = 0 (slice_us = 100)", false);
    let long = config("slice_0.toml", "realtime_priority = 0\nslice_us = 0\n")?;
    let long = round(b, None, Start::With(&["--config", &long]), samples)?;
    rows(r, &floors, &long, samples, "realtime_priority = 0, slice_us = 0 (the kernel's slice)", false);
    let niced = config("nice_-10.toml", "realtime_priority = 0\nnice = -10\n")?;
    let niced = round(b, None, Start::With(&["--config", &niced]), samples)?;
    rows(r, &floors, &niced, samples, "realtime_priority = 0, nice = -10", false);
    let refused = round(b, None, Start::WithoutSysNice(&[]), samples)?;
    rows(r, &floors, &refused, samples, "the default without CAP_SYS_NICE (SCHED_FIFO refused)", false);
    let mirrored = ctl.map(|c| round(b, Some(c), Start::With(&[]), samples)).transpose()?;
    Ok(Latencies { samples, plain, mirrored })
}

/// A round's rows: as the task sees it against the floor of a wakeup (in
/// the daemon's class), mkdir and a move; the daemon's event-to-moved
/// against mkdir and a move.
fn rows(r: &mut Report, floors: &Floors, l: &Latency, samples: u32, setting: &str, realtime: bool) {
    let micros = |v: u64| Duration::from_micros(v);
    let h = &l.task;
    let (p50, p99) = (micros(h.quantile(0.5)), micros(h.quantile(0.99)));
    let (f50, f99) = (floors.task_seen(realtime, 0.5), floors.task_seen(realtime, 0.99));
    r.row(
        &format!("{setting}: placement latency seen by the task, {} unshares at 1,000/s (p50 / p99 / max); ratio to the floor (unshare + wakeup + mkdir + move: {} / {} µs)", h.count(), us(f50), us(f99)),
        format!("{} / {} / {} µs; p50 {}, p99 {}", h.quantile(0.5), h.quantile(0.99), h.max(), ratio(p50, f50), ratio(p99, f99)),
        "p50 ≤ 1.5×, p99 ≤ 3× the floor",
        Some(p50.as_secs_f64() <= 1.5 * f50.as_secs_f64() && p99.as_secs_f64() <= 3.0 * f99.as_secs_f64() && h.count() == u64::from(samples)),
    );
    let new_node = &floors.favordynmods.new_node;
    let (n50, n99) = (new_node.quantile(0.5), new_node.quantile(0.99));
    let [d50, d99, max] = l.daemon;
    r.row(
        &format!("{setting}: daemon's event-to-moved latency, new nodes (p50 / p99 / max); ratio to the floor (mkdir + move: {} / {} µs)", us(n50), us(n99)),
        format!("{d50} / {d99} / {max} µs; p50 {}, p99 {}", ratio(micros(d50), n50), ratio(micros(d99), n99)),
        "p50 ≤ 1.5×, p99 ≤ 3× the floor",
        Some(micros(d50).as_secs_f64() <= 1.5 * n50.as_secs_f64() && micros(d99).as_secs_f64() <= 3.0 * n99.as_secs_f64()),
    );
}
