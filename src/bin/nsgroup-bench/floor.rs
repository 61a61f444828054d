//! The kernel's floor for what a placement needs, measured in the same run:
//! the unshare() itself, mkdir of a cgroup and another task's move into it
//! (a new node), a move alone (an existing node), on the suite's mount
//! (`favordynmods`) and on one without it; and a pipe wakeup of a task in
//! each scheduling class the daemon may run in. The latency rows are judged
//! as ratios to these.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use rustix::thread::UnshareFlags;

use nsgroup::ffi::{fork, set_scheduling, unshare_namespaces, Forked, Scheduling};

use crate::harness::mount_named_v1;
use crate::hierarchy::Bench;
use crate::report::Report;
use crate::tasks::{now_ns, Held, Kids};

/// Durations of one operation, repeated.
#[derive(Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    fn record(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }

    /// The quantile `q` (0..=1); zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort_unstable();
        let Some(last) = v.len().checked_sub(1) else { return Duration::ZERO };
        Duration::from_nanos(v[((q * v.len() as f64).ceil() as usize).saturating_sub(1).min(last)])
    }

    /// "13 / 41 µs": p50 / p99.
    pub fn p50_p99(&self) -> String {
        format!("{} / {} µs", us(self.quantile(0.5)), us(self.quantile(0.99)))
    }
}

/// Microseconds with one decimal below 10 µs.
pub fn us(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e6;
    if v < 10.0 { format!("{v:.1}") } else { format!("{v:.0}") }
}

/// A cgroup mount's floor: mkdir, the move of another task into the new
/// cgroup, both together, and a move between existing cgroups.
#[derive(Default)]
pub struct MountFloor {
    pub mkdir: Samples,
    pub moved_new: Samples,
    pub new_node: Samples,
    pub move_only: Samples,
}

/// The floors of one run.
pub struct Floors {
    /// unshare(CLONE_NEWUTS) in a fresh child, as the latency part's do.
    pub unshare: Samples,
    /// The suite's own mount (`xattr,favordynmods`), as the daemon's.
    pub favordynmods: MountFloor,
    /// A mount without `favordynmods` (the kernel's default).
    pub plain: MountFloor,
    /// Pipe wakeup latency under SCHED_OTHER.
    pub wake_other: Samples,
    /// Under SCHED_FIFO at priority 1, or why the kernel refused it.
    pub wake_fifo: Result<Samples, String>,
}

/// Measures the floors, `count` samples each.
pub fn measure(b: &Bench, count: u32) -> Result<Floors> {
    let favordynmods = mount_floor(&b.root_dir(), count)?;
    let name = format!("{}-plain", b.name);
    let at = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&at).with_context(|| format!("mkdir {}", at.display()))?;
    let plain = mount_named_v1(&name, &at, "xattr").and_then(|()| mount_floor(&at, count));
    nsgroup::sys::mounts::destroy_named_v1(&name, &at);
    let _ = std::fs::remove_dir(&at);
    let unshare = unshares(count)?;
    Ok(Floors { unshare, favordynmods, plain: plain?, wake_other: wakeups(None, count).map_err(anyhow::Error::msg)?, wake_fifo: wakeups(Some(1), count) })
}

/// mkdir + move of a held task into each of `count` new cgroups below
/// `dir`, then moves between two of them; everything put back and removed.
fn mount_floor(dir: &Path, count: u32) -> Result<MountFloor> {
    let (held, _) = Held::spawn(1)?;
    let pid = held.pids()[0].to_string();
    let mut f = MountFloor::default();
    let made: Vec<_> = (0..count).map(|i| dir.join(format!("floor_{i}"))).collect();
    let into = |cg: &Path| std::fs::write(cg.join("cgroup.procs"), &pid).with_context(|| format!("moving {pid} into {}", cg.display()));
    let result = (|| {
        for cg in &made {
            let t0 = Instant::now();
            std::fs::create_dir(cg).with_context(|| format!("mkdir {}", cg.display()))?;
            let t1 = Instant::now();
            into(cg)?;
            let t2 = Instant::now();
            f.mkdir.record(t1 - t0);
            f.moved_new.record(t2 - t1);
            f.new_node.record(t2 - t0);
        }
        for i in 0..count as usize {
            let t0 = Instant::now();
            into(&made[i % 2])?;
            f.move_only.record(t0.elapsed());
        }
        Ok(())
    })();
    let back = into(dir);
    for cg in made.iter().rev() {
        let _ = std::fs::remove_dir(cg);
    }
    result.and(back)?;
    Ok(f)
}

/// `count` children, one at a time, each timing its unshare(CLONE_NEWUTS).
fn unshares(count: u32) -> Result<Samples> {
    let mut out = Samples::default();
    let mut kids = Kids::default();
    for _ in 0..count {
        let (mut ours, mut theirs) = UnixStream::pair()?;
        let Forked::Parent { child } = fork()? else {
            drop(ours);
            let t0 = Instant::now();
            let ok = unshare_namespaces(UnshareFlags::NEWUTS).is_ok();
            let took = t0.elapsed().as_nanos() as u64;
            std::process::exit(if ok && theirs.write_all(&took.to_ne_bytes()).is_ok() { 0 } else { 1 });
        };
        kids.add(child);
        drop(theirs);
        let mut buf = [0u8; 8];
        ours.read_exact(&mut buf).context("a child's unshare(CLONE_NEWUTS) failed")?;
        out.record(Duration::from_nanos(u64::from_ne_bytes(buf)));
        kids.reap_all();
    }
    Ok(out)
}

/// A child in the scheduling class (SCHED_FIFO at `priority`, or
/// SCHED_OTHER) sleeps on a socket; the suite wakes it `count` times, each
/// after a pause long enough that it sleeps, and it reports how long it took
/// from the write to its read returning.
fn wakeups(priority: Option<u32>, count: u32) -> Result<Samples, String> {
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let mut kids = Kids::default();
    match fork().map_err(|e| format!("fork: {e}"))? {
        Forked::Child => {
            drop(ours);
            std::process::exit(wakee(theirs, priority));
        }
        Forked::Parent { child } => kids.add(child),
    }
    drop(theirs);
    let mut out = Samples::default();
    let mut buf = [0u8; 8];
    // The child's first word: 0 once its class is set, else the errno.
    let started = ours.read_exact(&mut buf).map(|()| u64::from_ne_bytes(buf));
    match started {
        Ok(0) => {}
        Ok(errno) => return Err(std::io::Error::from_raw_os_error(errno as i32).to_string()),
        Err(e) => return Err(format!("the wakee: {e}")),
    }
    for _ in 0..count {
        std::thread::sleep(Duration::from_micros(500));
        ours.write_all(&now_ns().to_ne_bytes()).map_err(|e| format!("waking: {e}"))?;
        ours.read_exact(&mut buf).map_err(|e| format!("the wakee's answer: {e}"))?;
        out.record(Duration::from_nanos(u64::from_ne_bytes(buf)));
    }
    drop(ours);
    kids.reap_all();
    Ok(out)
}

/// The wakee's side of [`wakeups`]: its exit code.
fn wakee(mut s: UnixStream, priority: Option<u32>) -> i32 {
    let class = priority.map_or(Scheduling::Fair { nice: 0, slice_ns: 0 }, Scheduling::Fifo);
    let status = set_scheduling(class).err().and_then(|e| e.raw_os_error()).unwrap_or(0) as u64;
    if s.write_all(&status.to_ne_bytes()).is_err() || status != 0 {
        return 1;
    }
    let mut buf = [0u8; 8];
    while s.read_exact(&mut buf).is_ok() {
        let took = now_ns().saturating_sub(u64::from_ne_bytes(buf));
        if s.write_all(&took.to_ne_bytes()).is_err() {
            return 1;
        }
    }
    0
}

impl Floors {
    /// The floor of a placement into a new node as the task sees it, from
    /// its call to unshare(): the unshare, the daemon's wakeup (SCHED_FIFO
    /// when `realtime`, where the kernel allows it), mkdir and the move, each
    /// at quantile `q`.
    pub fn task_seen(&self, realtime: bool, q: f64) -> Duration {
        let wake = match (&self.wake_fifo, realtime) {
            (Ok(fifo), true) => fifo,
            _ => &self.wake_other,
        };
        self.unshare.quantile(q) + wake.quantile(q) + self.favordynmods.new_node.quantile(q)
    }

    /// The floors' own rows.
    pub fn rows(&self, r: &mut Report, count: u32) {
        for (mount, f) in [("favordynmods, as the daemon's", &self.favordynmods), ("without favordynmods", &self.plain)] {
            r.row(
                &format!("kernel floor, {count} times on a v1 mount ({mount}): mkdir / another task's move into it / both (a new node) / a move between existing cgroups (p50 / p99)"),
                format!("{} · {} · {} · {}", f.mkdir.p50_p99(), f.moved_new.p50_p99(), f.new_node.p50_p99(), f.move_only.p50_p99()),
                "",
                None,
            );
        }
        let fifo = match &self.wake_fifo {
            Ok(s) => s.p50_p99(),
            Err(why) => format!("refused ({why})"),
        };
        r.row(
            &format!("machine floor, {count} pipe wakeups of a sleeping task: SCHED_OTHER / SCHED_FIFO 1 (p50 / p99)"),
            format!("{} · {fifo}", self.wake_other.p50_p99()),
            "",
            None,
        );
        r.row(
            &format!("kernel floor, {count} × unshare(CLONE_NEWUTS) in a fresh child (p50 / p99)"),
            self.unshare.p50_p99(),
            "",
            None,
        );
    }
}

/// `a / b` as "1.23×" ("-" when `b` is zero).
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() { "-".into() } else { format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_of_the_recorded_samples() {
        let mut s = Samples::default();
        assert_eq!(s.quantile(0.5), Duration::ZERO);
        for us in [5, 1, 4, 2, 3] {
            s.record(Duration::from_micros(us));
        }
        assert_eq!(s.quantile(0.5), Duration::from_micros(3));
        assert_eq!(s.quantile(0.99), Duration::from_micros(5));
        assert_eq!(s.quantile(0.0), Duration::from_micros(1));
        assert_eq!(s.p50_p99(), "3.0 / 5.0 µs");
    }
}
