//! Part 1, placement latency as the task sees it (and with the control
//! part's mirrors and limit), next to the daemon's own event-to-moved
//! figures and its time on a CPU per node.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::Result;

use nsgroup::core::histogram::Histogram;
use nsgroup::ffi::{fork, Forked};

use crate::mirrored::{under, wait_clean, Control};
use crate::daemon::Measured;
use crate::daemon::latency_figures;
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

/// Part 1 under a fresh daemon (with the control part's mirrors and limit
/// when `ctl` is given).
pub fn round(b: &Bench, ctl: Option<&Control>, samples: u32) -> Result<Latency> {
    let mut markers = vec![b.marker()];
    markers.extend(ctl.map(Control::markers).unwrap_or_default());
    under(ctl, |args| {
        let d = b.start(args)?;
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

/// Part 1: its rows, and its rounds for the API and control parts.
pub fn part(b: &Bench, r: &mut Report, ctl: Option<&Control>, quick: bool) -> Result<Latencies> {
    let samples = samples(quick);
    let plain = round(b, None, samples)?;
    let h = &plain.task;
    r.row(
        &format!("placement latency seen by the task, {} unshares at 1,000/s (p50 / p99 / max)", h.count()),
        format!("{} / {} / {} µs", h.quantile(0.5), h.quantile(0.99), h.max()),
        "p50 ≤ 100 µs, p99 ≤ 500 µs",
        Some(h.quantile(0.5) <= 100 && h.quantile(0.99) <= 500 && h.count() == u64::from(samples)),
    );
    let [p50, p99, max] = plain.daemon;
    r.row("daemon's event-to-moved latency (p50 / p99 / max)", format!("{p50} / {p99} / {max} µs"), "", None);
    let mirrored = ctl.map(|c| round(b, Some(c), samples)).transpose()?;
    Ok(Latencies { samples, plain, mirrored })
}
