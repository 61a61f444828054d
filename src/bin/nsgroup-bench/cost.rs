//! Part 3, the cost to the traced workload: loops timed in pairs of rounds
//! without and with a fresh daemon (ABBA, pinned to one CPU), the ratios of
//! the pairs, and the time in nsgroup's BPF programs from one more round.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::thread::UnshareFlags;

use nsgroup::ffi::{fork, unshare_namespaces, Forked};

use crate::daemon::{Measured, figure, under_daemon, SETTLE};
use crate::hierarchy::Bench;
use crate::report::{ms, Report};
use crate::tasks::Kids;

/// Times `iterations` runs of `body` in forked children (fork, body, exit,
/// wait), one sample per iteration.
pub fn fork_loop(iterations: u32, body: fn()) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let start = Instant::now();
        match fork()? {
            Forked::Child => {
                body();
                std::process::exit(0);
            }
            Forked::Parent { child } => {
                let mut kid = Kids::default();
                kid.add(child);
                kid.reap_all();
            }
        }
        samples.push(start.elapsed());
    }
    Ok(samples)
}

pub fn unshare_newns() {
    let _ = unshare_namespaces(UnshareFlags::NEWNS);
}

fn exec_true() {
    let err = std::os::unix::process::CommandExt::exec(&mut Command::new("/bin/true"));
    eprintln!("exec /bin/true: {err}");
}

/// `batches` × `per_batch` calls of getppid(), one sample per batch.
pub fn getppid_loop(batches: u32, per_batch: u32) -> Vec<Duration> {
    (0..batches)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                std::hint::black_box(rustix::process::getppid());
            }
            start.elapsed()
        })
        .collect()
}

/// One timed round: its total and its median sample (the typical iteration,
/// untouched by the bursts in which the rest of the machine takes the CPU).
#[derive(Clone, Copy)]
struct Round {
    total: Duration,
    typical: Duration,
}

impl Round {
    fn of(mut samples: Vec<Duration>) -> Round {
        samples.sort();
        Round { total: samples.iter().sum(), typical: samples[samples.len() / 2] }
    }
}

/// Sorted ratios of pairs of rounds, with / without.
struct Ratios(Vec<f64>);

impl Ratios {
    fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }

    /// "1.012× (interquartile 0.990–1.030×)".
    fn summary(&self) -> String {
        let n = self.0.len();
        format!("{:.3}× (interquartile {:.3}–{:.3}×)", self.median(), self.0[n / 4], self.0[(3 * n) / 4])
    }
}

/// The cost of the daemon to one workload, from pairs of rounds without and
/// with it.
pub struct Cost {
    /// The median round without and with the daemon.
    without: Round,
    with: Round,
    /// Ratios of the pairs' totals and of their typical iterations.
    total: Ratios,
    typical: Ratios,
    /// The fastest typical iteration of any round without and with the daemon.
    best: (Duration, Duration),
    /// Times the daemon woke up during its rounds, and tasks it placed.
    wakeups: u64,
    placed: u64,
    /// Time in the BPF programs per sample, from one more round with the
    /// kernel's run-time statistics on.
    bpf_per_sample: Duration,
}

impl Cost {
    fn best_ratio(&self) -> f64 {
        self.best.1.as_secs_f64() / self.best.0.as_secs_f64()
    }

    /// The ratio the target is judged on. While the daemon works during the
    /// loop its cost falls on some iterations only, and only the totals show
    /// it: the median of the pairs' ratios. If it never woke up, what it adds
    /// (BPF programs, the slow syscall path) is in every iteration of every
    /// round, the fastest included, while the machine's noise only ever slows
    /// rounds down: the ratio of the fastest rounds' typical iterations.
    pub fn ratio(&self) -> f64 {
        if self.wakeups > 0 {
            self.total.median()
        } else {
            self.best_ratio()
        }
    }

    pub fn summary(&self, per: &str, scale: impl Fn(Duration) -> String) -> String {
        format!(
            "total {} / {} = {}; typical {per} {} / {} = {}, fastest rounds {} / {} = {:.3}×; daemon woke {} times, placed {}; BPF programs {} per {per}",
            ms(self.without.total),
            ms(self.with.total),
            self.total.summary(),
            scale(self.without.typical),
            scale(self.with.typical),
            self.typical.summary(),
            scale(self.best.0),
            scale(self.best.1),
            self.best_ratio(),
            self.wakeups,
            self.placed,
            scale(self.bpf_per_sample)
        )
    }
}

/// Runs `f` pinned to one CPU (the last this process may use), so that the
/// workload's fork, exec and wait never migrate: without it, rounds on this
/// two-CPU machine vary by ±15 %. The daemon, started before, is not pinned.
fn pinned<T>(f: impl FnOnce() -> T) -> Result<T> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let all = sched_getaffinity(None)?;
    let last = (0..CpuSet::MAX_CPU).rev().find(|&c| all.is_set(c)).context("no CPU to run on")?;
    let mut one = CpuSet::new();
    one.set(last);
    sched_setaffinity(None, &one)?;
    let out = f();
    sched_setaffinity(None, &all)?;
    Ok(out)
}

/// Times `f` in `pairs` pairs of rounds, one without and one with the daemon,
/// alternating which comes first (ABBA: drift of the machine cancels out).
/// `extra`: arguments for the daemon's `nsgroup run`.
pub fn compare(b: &Bench, extra: &[&str], pairs: u32, mut f: impl FnMut() -> Result<Vec<Duration>>) -> Result<Cost> {
    let (mut wakeups, mut placed) = (0, 0);
    let mut round = |traced: bool| -> Result<Round> {
        if !traced {
            std::thread::sleep(SETTLE);
            return Ok(Round::of(pinned(&mut f)??));
        }
        let ((samples, woke), log) = under_daemon(b, extra, |d| {
            let before = d.cpu_and_wakeups().1;
            let samples = pinned(&mut f)??;
            Ok((samples, d.cpu_and_wakeups().1 - before))
        })?;
        wakeups += woke;
        placed += figure(&log, "moved").unwrap_or(0);
        Ok(Round::of(samples))
    };
    let mut rounds = vec![];
    for pair in 0..pairs {
        rounds.push(if pair % 2 == 0 {
            let a = round(false)?;
            (a, round(true)?)
        } else {
            let t = round(true)?;
            (round(false)?, t)
        });
    }
    // One more round with the kernel's BPF run-time statistics on (they cost
    // a clock read per program run, so not in the timed pairs).
    let (bpf_per_sample, _) = under_daemon(b, extra, |_| {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
        let before = bpf_run_time();
        let samples = pinned(&mut f)??;
        Ok(bpf_run_time().saturating_sub(before) / samples.len() as u32)
    })?;
    let ratios = |key: fn(&Round) -> Duration| {
        let mut r: Vec<f64> = rounds.iter().map(|(a, t)| key(t).as_secs_f64() / key(a).as_secs_f64()).collect();
        r.sort_by(f64::total_cmp);
        Ratios(r)
    };
    let median = |pick: fn(&(Round, Round)) -> Round| {
        let mut v: Vec<Round> = rounds.iter().map(pick).collect();
        v.sort_by_key(|r| r.total);
        v[v.len() / 2]
    };
    Ok(Cost {
        without: median(|p| p.0),
        with: median(|p| p.1),
        total: ratios(|r| r.total),
        typical: ratios(|r| r.typical),
        best: (
            rounds.iter().map(|p| p.0.typical).min().unwrap_or_default(),
            rounds.iter().map(|p| p.1.typical).min().unwrap_or_default(),
        ),
        wakeups,
        placed,
        bpf_per_sample,
    })
}

/// Time spent so far in the daemon's BPF programs (all named `on_…`; the
/// suite runs one daemon at a time), while run-time statistics are on.
fn bpf_run_time() -> Duration {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("on_")))
        .map(|p| p.run_time())
        .sum()
}

/// "284 µs": a duration in whole µs.
pub fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// "112 ns": a batch's duration per call, in whole ns.
pub fn per_call(batch: Duration, per_batch: u32) -> String {
    format!("{:.0} ns", batch.as_nanos() as f64 / f64::from(per_batch))
}

/// Part 3: the fork/unshare and fork/exec loops and the null syscall, each
/// without and with the daemon.
pub fn part(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    for (what, body, pairs, n, limit) in [
        ("fork/unshare(CLONE_NEWNS)/exit", unshare_newns as fn(), 10, 2000, 1.2),
        ("fork/exec(/bin/true)/exit", exec_true, 50, 200, 1.02),
    ] {
        let (pairs, n) = if q { (2, n / 4) } else { (pairs, n) };
        let c = compare(b, &[], pairs, || fork_loop(n, body))?;
        r.row(
            &format!("{what}, {pairs} pairs of {n}-iteration rounds: without / with the daemon"),
            c.summary("iteration", micros),
            &format!("≤ {limit}×"),
            Some(c.ratio() <= limit),
        );
    }
    let pairs = if q { 2 } else { 10 };
    let (batches, per_batch) = (if q { 20 } else { 100 }, 10_000);
    let c = compare(b, &[], pairs, || Ok(getppid_loop(batches, per_batch)))?;
    r.row(
        &format!("getppid(), {pairs} pairs of {batches} × {per_batch} calls: without / with"),
        c.summary("call", |d| per_call(d, per_batch)),
        "(syscall tracepoints: every task takes the slow syscall path)",
        None,
    );
    Ok(())
}
