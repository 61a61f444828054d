//! Part 7, an unprivileged user's storm (issue 8): uid 65534 nests 15,000
//! UTS namespaces in one user namespace while root's probes time their own
//! placement; then how soon the daemon is idle and the attacker's nodes
//! gone once it exits, and how soon SIGTERM stops the daemon mid-attack.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use nsgroup::core::histogram::Histogram;
use nsgroup::ffi::{fork, Forked};

use crate::daemon::{Measured, figure, SETTLE};
use crate::harness::{as_nobody_command, poll_until};
use crate::hierarchy::Bench;
use crate::report::{ms, Report};
use crate::tasks::{time_to_placement, Kids};

/// The attacker of issue 8: an unprivileged user (uid 65534) with user
/// namespaces, 100 threads × 150 nested `unshare(CLONE_NEWUTS)` in one user
/// namespace, every namespace kept alive.
const ATTACK_THREADS: u32 = 100;
const ATTACK_UNSHARES: u32 = 150;
/// Probes: one every 20 ms, during the storm and for 3 s after it.
const PROBE_PERIOD: Duration = Duration::from_millis(20);
const PROBE_AFTER: Duration = Duration::from_secs(3);
/// A probe not placed by then counts as not placed.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// The attacker: `nsgroup-workload userns-storm` as uid 65534, in the bench's
/// cgroup (the tracked root). Killed (by its pid) and reaped if dropped early.
struct Attacker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    line: Vec<u8>,
}

impl Attacker {
    fn spawn(b: &Bench) -> Result<Attacker> {
        let (threads, unshares) = (ATTACK_THREADS.to_string(), ATTACK_UNSHARES.to_string());
        let mut child = as_nobody_command(&b.workload)
            .args(["userns-storm", "--threads", &threads, "--unshares", &unshares])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(b.work.join("attacker.err")).context("the attacker's stderr")?)
            .spawn()
            .context("starting the attacker")?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take().context("the attacker's stdout")?);
        Ok(Attacker { child, stdin, stdout, line: Vec::new() })
    }

    /// The storm's summary line, once every thread is done; `None` while it
    /// runs. Never blocks.
    fn poll_done(&mut self) -> Result<Option<serde_json::Value>> {
        loop {
            if let Some(end) = self.line.iter().position(|&c| c == b'\n') {
                return Ok(Some(serde_json::from_slice(&self.line[..end])?));
            }
            let mut fds = [rustix::event::PollFd::new(&self.stdout, rustix::event::PollFlags::IN)];
            let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
            if rustix::event::poll(&mut fds, Some(&zero))? == 0 {
                return Ok(None);
            }
            let mut buf = [0u8; 4096];
            let n = self.stdout.read(&mut buf)?;
            if n == 0 {
                bail!("the attacker exited before its storm was done: {}", self.child.try_wait()?.map_or("?".into(), |s| s.to_string()));
            }
            self.line.extend_from_slice(&buf[..n]);
        }
    }

    /// Waits for the storm's summary line.
    fn wait_done(&mut self, limit: Duration) -> Result<serde_json::Value> {
        let end = Instant::now() + limit;
        loop {
            if let Some(v) = self.poll_done()? {
                return Ok(v);
            }
            if Instant::now() > end {
                bail!("the attacker's storm was not done within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Tells the attacker to exit (EOF on its stdin) and waits until every
    /// one of its tasks is gone.
    fn exit(mut self) -> Result<()> {
        self.stdin.take();
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stdin.take();
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Root's probes during an attack: every [`PROBE_PERIOD`] a child unshares
/// NEWUTS and times, as the latency part does, until `/proc/self/cgroup`
/// names a node — reading it in a loop for 1 ms, then every 1 ms (the
/// target is 100 ms; a hundred children spinning at once would take the
/// daemon's CPUs).
struct Prober {
    rx: UnixDatagram,
    tx: UnixDatagram,
    /// What `/proc/self/cgroup` shows of a probe in its node.
    markers: [String; 1],
    kids: Kids,
    /// The probes' pids (their nodes are `node_<pid>` below the root).
    pids: HashSet<u32>,
    /// Each probe's phase (0 during the storm, 1 after), by index.
    phases: Vec<usize>,
    placed: [Histogram; 2],
    unplaced: [u32; 2],
}

impl Prober {
    fn new(b: &Bench) -> Result<Prober> {
        let (rx, tx) = UnixDatagram::pair()?;
        rx.set_nonblocking(true)?;
        Ok(Prober {
            rx,
            tx,
            markers: [b.marker()],
            kids: Kids::default(),
            pids: HashSet::new(),
            phases: Vec::new(),
            placed: [Histogram::default(), Histogram::default()],
            unplaced: [0; 2],
        })
    }

    /// Forks one probe.
    fn probe(&mut self, phase: usize) -> Result<()> {
        let index = self.phases.len() as u64;
        self.phases.push(phase);
        let Forked::Parent { child } = fork()? else {
            let us = time_to_placement(&self.markers, PROBE_LIMIT, Duration::from_millis(1)).unwrap_or(u64::MAX);
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(&index.to_ne_bytes());
            msg[8..].copy_from_slice(&us.to_ne_bytes());
            let _ = self.tx.send(&msg);
            std::process::exit(0);
        };
        self.kids.add(child);
        self.pids.insert(child);
        Ok(())
    }

    fn collect(&mut self) {
        self.kids.reap_ready();
        let mut msg = [0u8; 16];
        while let Ok(16) = self.rx.recv(&mut msg) {
            let index = u64::from_ne_bytes(msg[..8].try_into().unwrap()) as usize;
            let us = u64::from_ne_bytes(msg[8..].try_into().unwrap());
            let phase = self.phases[index];
            if us == u64::MAX {
                self.unplaced[phase] += 1;
            } else {
                self.placed[phase].record(us);
            }
        }
    }

    /// Waits for every probe.
    fn finish(&mut self) {
        self.kids.reap_all();
        self.collect();
    }

    /// Whether a node (a path below the root) is a probe's.
    fn owns(&self, b: &Bench, node: &Path) -> bool {
        let top = node.strip_prefix(b.root_dir()).ok().and_then(|p| p.components().next());
        let pid = top.and_then(|c| c.as_os_str().to_str()?.strip_prefix("node_")?.split('~').next()?.parse::<u32>().ok());
        pid.is_some_and(|p| self.pids.contains(&p))
    }

    /// "212 µs / 35.0 ms / 61.0 ms (57 probes)": p50 / p99 / max of one
    /// phase, and its count.
    fn summary(&self, phase: usize) -> String {
        let h = &self.placed[phase];
        let t = |us: u64| if us < 1000 { format!("{us} µs") } else { format!("{:.1} ms", us as f64 / 1000.0) };
        format!("{} / {} / {} ({} probes)", t(h.quantile(0.5)), t(h.quantile(0.99)), t(h.max()), h.count())
    }
}

/// A `key=value` figure summed over the daemon's `entries refused` lines for `uid`.
fn refused_of(log: &str, uid: u32, key: &str) -> u64 {
    let who = format!(" uid={uid} ");
    log.lines().filter(|l| l.contains("entries refused") && l.contains(&who)).filter_map(|l| figure(l, key)).sum()
}

/// The first moment (from `samples` of the daemon's CPU time) from which its
/// CPU time stays the same for `quiet`.
fn idle_from(samples: &[(Duration, u64)], quiet: Duration) -> Option<Duration> {
    samples.iter().enumerate().find_map(|(i, &(t, cpu))| {
        let later = &samples[i..];
        let covered = later.last().is_some_and(|&(last, _)| last >= t + quiet);
        (covered && later.iter().take_while(|&&(u, _)| u <= t + quiet).all(|&(_, c)| c == cpu)).then_some(t)
    })
}

/// Part 7, an unprivileged user's storm (issue 8). Two rounds, each with a
/// fresh daemon: (1) root's probes during the storm and for
/// [`PROBE_AFTER`] after it; then the attacker exits, and the daemon's CPU
/// time (every 100 ms) and the nodes left (every 20 ms) are watched until it
/// is idle and they are gone; (2) SIGTERM the moment the storm is done.
pub fn part(b: &Bench, r: &mut Report) -> Result<()> {
    let storm = format!(
        "uid 65534 (`setpriv`), `nsgroup-workload userns-storm --threads {ATTACK_THREADS} --unshares {ATTACK_UNSHARES}` in the tracked root: one user namespace, {} nested unshare(CLONE_NEWUTS), all kept alive",
        ATTACK_THREADS * ATTACK_UNSHARES
    );
    // Round 1.
    let mut prober = Prober::new(b)?;
    let d = b.start(&[])?;
    std::thread::sleep(SETTLE);
    let (cpu0, _) = d.cpu_and_wakeups();
    let start = Instant::now();
    let mut attacker = Attacker::spawn(b)?;
    let mut done: Option<(Duration, serde_json::Value)> = None;
    let mut next = Instant::now();
    loop {
        if done.is_none() {
            done = attacker.poll_done()?.map(|v| (start.elapsed(), v));
        }
        match &done {
            Some((t, _)) if start.elapsed() >= *t + PROBE_AFTER => break,
            None if start.elapsed() > Duration::from_secs(300) => bail!("the attacker's storm was not done within 300 s"),
            _ => {}
        }
        prober.probe(usize::from(done.is_some()))?;
        prober.collect();
        next += PROBE_PERIOD;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => next = Instant::now(),
        }
    }
    let (took, summary) = done.unwrap();
    prober.finish();
    // The probes' nodes go (their tasks have exited); the attacker's stay.
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || !b.nodes().iter().any(|n| prober.owns(b, n)));
    let got = b.nodes().iter().filter(|n| !prober.owns(b, n)).count();
    let cpu_storm = d.cpu_and_wakeups().0 - cpu0;

    attacker.exit()?;
    let exited = Instant::now();
    // The daemon's CPU time every 100 ms, both ways: (when, run time in ns,
    // utime + stime in ms).
    let (mut cpu, mut removed) = (Vec::<(Duration, u64, u64)>::new(), None);
    let mut next_cpu = exited;
    let quiet = Duration::from_secs(1);
    let (idle, idle_ticks) = loop {
        let now = exited.elapsed();
        if removed.is_none() && b.nodes().is_empty() {
            removed = Some(now);
        }
        if Instant::now() >= next_cpu {
            cpu.push((now, d.run_time_ns(), d.cpu_and_wakeups().0));
            next_cpu += Duration::from_millis(100);
        }
        let idle = idle_from(&cpu.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), quiet);
        let idle_ticks = idle_from(&cpu.iter().map(|s| (s.0, s.2)).collect::<Vec<_>>(), quiet);
        if (removed.is_some() && idle.is_some() && idle_ticks.is_some()) || now > Duration::from_secs(30) {
            break (idle, idle_ticks);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let cpu_until = |t: Duration| ms(Duration::from_nanos(cpu.iter().find(|s| s.0 == t).map_or(0, |s| s.1 - cpu[0].1)));
    // The refusals are reported once per interval: the last report comes at
    // most one interval after the last refusal, which came before the
    // daemon went idle.
    let since_idle = exited.elapsed().saturating_sub(idle.unwrap_or_default());
    std::thread::sleep((Duration::from_secs(10) + Duration::from_millis(500)).saturating_sub(since_idle));
    let log = d.stop()?;
    b.remove_nodes();

    let stat = |key: &str| figure(&log, key).map_or("?".into(), |v| v.to_string());
    let dropped: u64 = ["dropped_gone", "dropped_reused", "dropped_other_writer"].iter().filter_map(|k| figure(&log, k)).sum();
    r.row(
        &format!("attack: {storm}"),
        format!(
            "{} entered in {}{}; the attacker got {got} nodes; entries refused {} (quota {}, rate {}, depth and rules {}); moves dropped {dropped} (gone {}, reused {}, other writer {}); BPF events lost {}; daemon CPU {cpu_storm} ms until 3 s after the storm",
            summary["entered"],
            ms(took),
            summary["error"].as_str().map_or(String::new(), |e| format!(" (error: {e})")),
            stat("refused"),
            refused_of(&log, 65534, "refused_quota"),
            refused_of(&log, 65534, "refused_rate"),
            refused_of(&log, 65534, "refused_other"),
            stat("dropped_gone"),
            stat("dropped_reused"),
            stat("dropped_other_writer"),
            stat("ring_dropped"),
        ),
        "",
        None,
    );
    let unplaced = prober.unplaced[0] + prober.unplaced[1];
    let p99_ok = |phase: usize| prober.placed[phase].count() > 0 && prober.placed[phase].quantile(0.99) <= 100_000;
    r.row(
        &format!(
            "another user's (root's) unshare(CLONE_NEWUTS), one every {} ms, placed after (p50 / p99 / max): during the storm; in the {} s after it",
            PROBE_PERIOD.as_millis(),
            PROBE_AFTER.as_secs()
        ),
        format!(
            "{}; {}{}",
            prober.summary(0),
            prober.summary(1),
            if unplaced > 0 { format!("; **{unplaced} not placed within {} s**", PROBE_LIMIT.as_secs()) } else { String::new() }
        ),
        "p99 ≤ 100 ms",
        Some(p99_ok(0) && p99_ok(1) && unplaced == 0),
    );
    r.row(
        "attacker exited: the daemon idle after (the first moment from which its CPU time stays the same for 1 s, read every 100 ms: run time in ns; utime + stime in 10 ms ticks)",
        match (idle, idle_ticks) {
            (Some(t), Some(ticks)) => format!("{} (CPU {} until then); by utime + stime {}", ms(t), cpu_until(t), ms(ticks)),
            _ => format!("not within 30 s (run time) or {} (utime + stime)", idle_ticks.map_or("not within 30 s".into(), ms)),
        },
        "≤ 5 s",
        Some(idle.is_some_and(|t| t <= Duration::from_secs(5))),
    );
    r.row(
        &format!("attacker exited: all its {got} nodes removed after"),
        removed.map_or("not within 30 s".into(), ms),
        "≤ 5 s",
        Some(removed.is_some_and(|t| t <= Duration::from_secs(5))),
    );

    // Round 2: SIGTERM the moment the storm is done; before it, the same
    // for a daemon with nothing to do (what stopping costs anyway).
    let mut d = b.start(&[])?;
    std::thread::sleep(SETTLE);
    let (unloaded, _) = d.stop_within(Duration::from_secs(10))?;
    let mut d = b.start(&[])?;
    std::thread::sleep(SETTLE);
    let mut attacker = Attacker::spawn(b)?;
    attacker.wait_done(Duration::from_secs(300))?;
    let (stopped, status) = d.stop_within(Duration::from_secs(10))?;
    attacker.exit()?;
    b.remove_nodes();
    r.row(
        &format!(
            "SIGTERM to the daemon the moment the storm is done (the attacker holding its {} namespaces): exited after; the same for a daemon with nothing to do",
            ATTACK_THREADS * ATTACK_UNSHARES
        ),
        format!(
            "{} ({status}); {}",
            stopped.map_or("not within 10 s (killed)".into(), ms),
            unloaded.map_or("not within 10 s (killed)".into(), ms)
        ),
        "≤ 1 s",
        Some(stopped.is_some_and(|t| t <= Duration::from_secs(1))),
    );
    Ok(())
}
