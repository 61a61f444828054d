//! nsgroup's benchmark suite: placement latency, throughput (also with
//! mirrors and a limit), cost to the traced workload, idle cost, start-up
//! reconcile and reading, and an unprivileged user's storm, side by side on
//! this machine, in a private named v1 hierarchy. Writes a Markdown table.
//!
//!     sudo target/release/nsgroup-bench --write docs/benchmarks.md

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rustix::thread::UnshareFlags;

use nsgroup::core::histogram::Histogram;
use nsgroup::ffi::{fork, unshare_namespaces, Forked};

#[derive(Parser)]
#[command(name = "nsgroup-bench", about = "Benchmarks nsgroup on this machine (needs root)")]
struct Args {
    /// Fewer iterations and a 10 s idle period (a smoke run, not for the record).
    #[arg(long)]
    quick: bool,
    /// Write the report (Markdown) here as well as to stdout.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Run only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Extra arguments for every `nsgroup run` (e.g. `--daemon-arg=--config=FILE`).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
}

/// The parts of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Latency,
    Storm,
    /// Latency and storm again with two mirrors (pids, freezer) and a limit
    /// rule, as ratios to the plain rows of the same run (which it runs too).
    Control,
    Cost,
    Idle,
    Reconcile,
    Attack,
    /// Part 1 again while 100 clients poll the API's node list.
    Api,
    /// The API's capacity (issue 16): root's `list` while one owner holds
    /// every connection it may, against an idle server; the daemon's RSS
    /// with 1,000 stalled subscribers under a 10,000-node churn, against
    /// its idle RSS and the same churn without them.
    ApiCapacity,
    /// What each `hooks` setting costs a null syscall (getppid) and the
    /// fork/unshare loop: the default (fentry where the kernel allows it,
    /// else the syscall tracepoints) and "no-syscall", each against no
    /// daemon. Small enough to run in the guest (`--only hooks --quick`).
    Hooks,
}

/// A private hierarchy `name=nsgroup-bench-<pid>` with the subtree `/b`.
struct Bench {
    daemon_args: Vec<String>,
    mount: PathBuf,
    /// Scratch space for the daemons' logs and notify sockets.
    work: PathBuf,
    name: String,
    root: String,
    nsgroup: PathBuf,
    workload: PathBuf,
}

fn sh(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?}: {st}");
    }
    Ok(())
}

impl Bench {
    fn new() -> Result<Bench> {
        let name = format!("nsgroup-bench-{}", std::process::id());
        let mount = std::env::temp_dir().join(&name);
        let work = std::env::temp_dir().join(format!("{name}.work"));
        std::fs::create_dir_all(&mount)?;
        std::fs::create_dir_all(&work)?;
        let opts = format!("none,name={name},xattr,favordynmods");
        sh(Command::new("mount").args(["-t", "cgroup", "-o", &opts, "cgroup"]).arg(&mount))?;
        std::fs::create_dir(mount.join("b"))?;
        let nsgroup = std::env::current_exe()?.with_file_name("nsgroup");
        let workload = std::env::current_exe()?.with_file_name("nsgroup-workload");
        // The benchmark's own workloads run inside the tracked subtree.
        std::fs::write(mount.join("b/cgroup.procs"), std::process::id().to_string())?;
        Ok(Bench { daemon_args: Vec::new(), mount, work, name, root: "/b".into(), nsgroup, workload })
    }

    fn start(&self, extra: &[&str]) -> Result<Daemon> {
        Daemon::start(self, extra)
    }

    /// Every cgroup below the root, deepest first.
    fn nodes(&self) -> Vec<PathBuf> {
        cgroups_below(&self.mount.join("b"))
    }

    fn wait_no_nodes(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.nodes().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn remove_nodes(&self) {
        for d in self.nodes() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Every cgroup below `top`, deepest first.
fn cgroups_below(top: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
                out.push(e.path());
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Threads in the cgroups below `top` (each read from its `tasks`).
fn tasks_below(top: &Path) -> u32 {
    cgroups_below(top).iter().map(|d| std::fs::read_to_string(d.join("tasks")).unwrap_or_default().lines().count() as u32).sum()
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.remove_nodes();
        // Leave the hierarchy: move ourselves to its root, then remove /b.
        let _ = std::fs::write(self.mount.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(self.mount.join("b"));
        nsgroup::sys::mounts::destroy_named_v1(&self.name, &self.mount);
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// The daemon under test.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(b: &Bench, extra: &[&str]) -> Result<Daemon> {
        let sock_path = b.work.join("notify");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let log = b.work.join("daemon.log");
        let child = Command::new(&b.nsgroup)
            .args(["run", "--hierarchy"])
            .arg(&b.mount)
            .args(["--root", &b.root])
            // The bench's daemons keep no history in the host's /var/lib.
            .args(["--history-database", ""])
            .args(extra)
            .args(&b.daemon_args)
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut d = Daemon { child: Some(child), log };
        let end = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 64];
        loop {
            if matches!(sock.recv(&mut buf), Ok(n) if buf[..n].starts_with(b"READY=1")) {
                return Ok(d);
            }
            if Instant::now() > end || d.child.as_mut().unwrap().try_wait()?.is_some() {
                bail!("daemon did not start:\n{}", d.log_text());
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `key=value` figure from the last log line that has it.
    fn figure(&self, key: &str) -> Option<u64> {
        figure(&self.log_text(), key)
    }

    /// User + system CPU time in ms, and (voluntary + involuntary) context switches.
    fn cpu_and_wakeups(&self) -> (u64, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
        let ticks = rustix::param::clock_ticks_per_second();
        let cpu_ms = (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 1000 / ticks;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0);
        (cpu_ms, field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"))
    }

    /// Time on a CPU so far, in ns, summed over the daemon's threads
    /// (`/proc/<pid>/task/*/schedstat`; exact, where utime + stime count
    /// in clock ticks).
    fn run_time_ns(&self) -> u64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).into_iter().flatten().flatten();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    }

    /// SIGTERM; how long the daemon took to exit (`None`: not within
    /// `limit`, then killed) and how it exited.
    fn stop_within(&mut self, limit: Duration) -> Result<(Option<Duration>, String)> {
        // Left in place until it has exited: on an error, Drop stops it.
        let child = self.child.as_mut().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let start = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let mut took = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                took = Some(start.elapsed());
                break status;
            }
            if start.elapsed() >= limit {
                child.kill()?;
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.child = None;
        Ok((took, status.to_string()))
    }

    fn stop(mut self) -> Result<String> {
        let child = self.child.take().unwrap();
        stop_child(child)?;
        Ok(self.log_text())
    }
}

/// A ` key=value` figure from the last line of a daemon log that has it.
fn figure(log: &str, key: &str) -> Option<u64> {
    let pat = format!(" {key}=");
    log.lines().rev().find_map(|l| l.split(&pat).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

fn stop_child(mut child: Child) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    child.wait()?;
    Ok(())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = stop_child(c);
        }
    }
}

fn now_ns() -> u64 {
    nsgroup::source::monotonic_ns()
}

/// The children this process forked (the daemon is a child too: never wait for "any").
#[derive(Default)]
struct Kids(Vec<u32>);

impl Kids {
    fn add(&mut self, pid: u32) {
        self.0.push(pid);
    }

    fn wait(pid: u32, options: rustix::process::WaitOptions) -> bool {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child pid is positive");
        !matches!(rustix::process::waitpid(Some(pid), options), Ok(None))
    }

    /// Reaps the children that have exited.
    fn reap_ready(&mut self) {
        self.0.retain(|&p| !Kids::wait(p, rustix::process::WaitOptions::NOHANG));
    }

    /// Waits for every child.
    fn reap_all(&mut self) {
        for p in self.0.drain(..) {
            Kids::wait(p, rustix::process::WaitOptions::empty());
        }
    }
}

/// Part 1, latency as the task sees it: from unshare() returning until
/// `/proc/self/cgroup` shows a node (every one of `markers`: the tracked
/// hierarchy's, and the mirrors' where there are mirrors). One child per
/// sample, at `rate` per second.
fn latency(markers: &[String], count: u32, rate: u32) -> Result<Histogram> {
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
            let code = (|| -> Result<()> {
                unshare_namespaces(UnshareFlags::NEWUTS)?;
                let t0 = now_ns();
                // One read takes it all (a mirror's line comes near the end
                // on a machine with many hierarchies).
                let mut buf = [0u8; 16384];
                loop {
                    let mut f = std::fs::File::open("/proc/self/cgroup")?;
                    let n = f.read(&mut buf)?;
                    if std::str::from_utf8(&buf[..n]).is_ok_and(|t| markers.iter().all(|m| t.contains(m))) {
                        break;
                    }
                    if now_ns() - t0 > 5_000_000_000 {
                        bail!("not placed within 5 s");
                    }
                }
                let us = (now_ns() - t0) / 1000;
                tx.send(&us.to_ne_bytes())?;
                Ok(())
            })()
            .map_or(1, |()| 0);
            std::process::exit(code);
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

/// Children that entered a new set each and wait for the release (EOF).
struct Held {
    release: Option<UnixStream>,
    kids: Kids,
}

impl Held {
    /// Forks `count` children as fast as possible; each unshares NEWUTS and
    /// blocks until released. Returns them and the fork rate.
    fn spawn(count: u32) -> Result<(Held, f64)> {
        let (hold, release) = UnixStream::pair()?;
        let mut kids = Kids::default();
        let start = Instant::now();
        for _ in 0..count {
            match fork()? {
                Forked::Child => {
                    drop(release);
                    let _ = unshare_namespaces(UnshareFlags::NEWUTS);
                    let mut byte = [0u8];
                    let _ = (&hold).read(&mut byte);
                    std::process::exit(0);
                }
                Forked::Parent { child } => kids.add(child),
            }
        }
        let rate = f64::from(count) / start.elapsed().as_secs_f64();
        drop(hold);
        Ok((Held { release: Some(release), kids }, rate))
    }

    fn release(self) {}

    /// The kernel's own cost of what a first start does: a new cgroup per
    /// task and the task moved into it, by the plainest loop (mkdir, write
    /// `cgroup.procs`), no nsgroup involved. Puts the tasks back afterwards.
    fn kernel_floor(&self, b: &Bench) -> Result<Duration> {
        let dir = b.mount.join("b");
        let start = Instant::now();
        for (i, pid) in self.kids.0.iter().enumerate() {
            let cg = dir.join(format!("floor_{i}"));
            std::fs::create_dir(&cg)?;
            std::fs::write(cg.join("cgroup.procs"), pid.to_string())?;
        }
        let took = start.elapsed();
        for pid in &self.kids.0 {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        b.remove_nodes();
        Ok(took)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release.take();
        self.kids.reap_all();
    }
}

/// Tasks placed in nodes right now.
fn placed(b: &Bench) -> u32 {
    tasks_below(&b.mount.join("b"))
}

fn misplaced(b: &Bench) -> Result<usize> {
    let out = Command::new(&b.nsgroup).args(["check", "--json", "--hierarchy"]).arg(&b.mount).args(["--root", &b.root]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["misplaced"].as_array().map_or(0, Vec::len))
}

/// The v1 controller hierarchies the control part mirrors every node in.
const MIRRORED: [&str; 2] = ["pids", "freezer"];
/// The control part's limit rule: `pids.max` for every node the suite's
/// workloads make (freezer carries no limit).
const PIDS_MAX: u32 = 64;

/// The control part's setting (issue 11): every node mirrored in this
/// machine's v1 `pids` and `freezer` hierarchies, each mirror confined to a
/// private subtree `/<name>` the suite makes there (and removes), and a
/// limit rule. Never the memory hierarchy: this machine's own processes are
/// accounted there.
struct Control {
    /// The mirrored hierarchies whose subtree exists.
    mirrors: Vec<MirrorRoot>,
    /// The subtree in each: `/nsgroup-bench-<pid>`.
    root: String,
    /// The daemon's configuration file.
    config: PathBuf,
}

/// One mirrored v1 hierarchy.
struct MirrorRoot {
    controller: &'static str,
    mount: PathBuf,
    /// The suite's own cgroup there, where it goes back to.
    home: String,
}

impl Control {
    fn new(b: &Bench) -> Result<Control> {
        if b.daemon_args.iter().any(|a| a.starts_with("--config")) {
            bail!("the control part gives the daemon a configuration of its own: run it without --daemon-arg=--config");
        }
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let comm = std::fs::read_to_string("/proc/self/comm")?.trim().to_string();
        let root = format!("/{}", b.name);
        let mut c = Control { mirrors: Vec::new(), root, config: b.work.join("control.toml") };
        let mut text = String::new();
        for controller in MIRRORED {
            let mount = Path::new("/sys/fs/cgroup").join(controller);
            if !mount.join("tasks").exists() {
                bail!("the control part needs this machine's v1 {controller} hierarchy at {}", mount.display());
            }
            let home = own
                .lines()
                .find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                    (ctrl == controller).then(|| path.to_string())
                })
                .with_context(|| format!("/proc/self/cgroup names no {controller} cgroup"))?;
            let dir = mount.join(&b.name);
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            // From here on, Drop removes it.
            c.mirrors.push(MirrorRoot { controller, mount, home });
            text.push_str(&format!("[[mirror]]\ncontrollers = \"{controller}\"\nroot = \"{}\"\n", c.root));
        }
        // The workloads' comm is the suite's (they are its forks).
        text.push_str(&format!("[[limit]]\ncomm = [\"{comm}\"]\nset = {{ \"pids.max\" = {PIDS_MAX} }}\n"));
        std::fs::write(&c.config, text)?;
        std::fs::set_permissions(&c.config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(c)
    }

    fn dir(&self, m: &MirrorRoot) -> PathBuf {
        m.mount.join(self.root.trim_start_matches('/'))
    }

    fn daemon_args(&self) -> Vec<String> {
        vec!["--config".into(), self.config.display().to_string()]
    }

    /// What `/proc/self/cgroup` shows of a task in its node's mirrors.
    fn markers(&self) -> Vec<String> {
        self.mirrors.iter().map(|m| format!(":{}:{}/node_", m.controller, self.root)).collect()
    }

    /// Runs `f` with the suite in the subtrees (and so the daemon and every
    /// workload it forks, as `spawn_everywhere` does in tests/control.rs);
    /// then moves the suite back and removes the mirrors left.
    fn inside<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let me = std::process::id().to_string();
        let entered = self.mirrors.iter().try_for_each(|m| {
            let procs = self.dir(m).join("cgroup.procs");
            std::fs::write(&procs, &me).with_context(|| format!("moving the suite into {}", procs.display()))
        });
        let out = entered.and_then(|()| f());
        self.go_home();
        self.remove_mirrors();
        out
    }

    fn go_home(&self) {
        let me = std::process::id().to_string();
        for m in &self.mirrors {
            let procs = m.mount.join(m.home.trim_start_matches('/')).join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, &me) {
                eprintln!("warning: moving the suite back into {}: {e}", procs.display());
            }
        }
    }

    /// Tasks in the mirrors, per mirrored hierarchy.
    fn placed(&self) -> Vec<u32> {
        self.mirrors.iter().map(|m| tasks_below(&self.dir(m))).collect()
    }

    /// The mirrors in the pids hierarchy with the rule's `pids.max`, and all of them.
    fn limited(&self) -> (usize, usize) {
        let Some(pids) = self.mirrors.iter().find(|m| m.controller == "pids") else { return (0, 0) };
        let all = cgroups_below(&self.dir(pids));
        let want = PIDS_MAX.to_string();
        let limited = all.iter().filter(|d| std::fs::read_to_string(d.join("pids.max")).is_ok_and(|v| v.trim() == want)).count();
        (limited, all.len())
    }

    fn no_mirrors(&self) -> bool {
        self.mirrors.iter().all(|m| cgroups_below(&self.dir(m)).is_empty())
    }

    /// Removes the (empty) mirrors a stopped daemon left.
    fn remove_mirrors(&self) {
        for m in &self.mirrors {
            for d in cgroups_below(&self.dir(m)) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.go_home();
        self.remove_mirrors();
        // Only the suite's own tasks were ever in the subtrees, and it has
        // reaped them all: the removal can only wait for the kernel.
        for m in &self.mirrors {
            let dir = self.dir(m);
            let removed = (0..200).any(|_| {
                let gone = std::fs::remove_dir(&dir).is_ok() || !dir.exists();
                if !gone {
                    std::thread::sleep(Duration::from_millis(10));
                }
                gone
            });
            if !removed {
                let tasks = std::fs::read_to_string(dir.join("tasks")).unwrap_or_default();
                eprintln!("warning: could not remove {} (tasks: {})", dir.display(), tasks.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Runs `f` with the daemon arguments of the control part's setting, inside
/// its subtrees; or plainly, with none.
fn under<T>(ctl: Option<&Control>, f: impl FnOnce(&[&str]) -> Result<T>) -> Result<T> {
    match ctl {
        None => f(&[]),
        Some(c) => {
            let args = c.daemon_args();
            c.inside(|| f(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        }
    }
}

/// Waits until the daemon has removed every node (and, with mirrors, every mirror).
fn wait_clean(b: &Bench, ctl: Option<&Control>, limit: Duration) {
    let end = Instant::now() + limit;
    b.wait_no_nodes(limit);
    while ctl.is_some_and(|c| !c.no_mirrors()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What part 1 measures in one round.
struct Latency {
    /// As the tasks see it, in µs.
    task: Histogram,
    /// The daemon's own event-to-moved p50, p99 and max (µs, from its log).
    daemon: [u64; 3],
    /// The daemon's time on a CPU per sample (its node made, the task
    /// placed, the node removed once the task is gone), from schedstat.
    run_per_node: Duration,
}

/// Part 1 under a fresh daemon (with the control part's mirrors and limit
/// when `ctl` is given).
fn latency_round(b: &Bench, ctl: Option<&Control>, samples: u32) -> Result<Latency> {
    let mut markers = vec![format!(":name={}:{}/node_", b.name, b.root)];
    markers.extend(ctl.map(Control::markers).unwrap_or_default());
    under(ctl, |args| {
        let d = b.start(args)?;
        let run0 = d.run_time_ns();
        let task = latency(&markers, samples, 1000)?;
        // Nodes stay when the daemon stops: let it remove them first.
        wait_clean(b, ctl, Duration::from_secs(10));
        let run_per_node = Duration::from_nanos((d.run_time_ns() - run0) / u64::from(samples));
        let log = d.stop()?;
        b.remove_nodes();
        let daemon = ["latency_p50_us", "latency_p99_us", "latency_max_us"].map(|k| figure(&log, k).unwrap_or(0));
        Ok(Latency { task, daemon, run_per_node })
    })
}

/// How many API clients poll the node list in the API part.
const API_CLIENTS: u32 = 100;

/// Part 1 under a fresh daemon whose API socket [`API_CLIENTS`] clients
/// hammer with `list` requests meanwhile (from another process: the
/// latency part forks, and forks only single-threaded). Returns the round
/// and how many answers the clients read.
fn latency_with_clients(b: &Bench, samples: u32) -> Result<(Latency, u64)> {
    let socket = b.work.join("api.sock");
    let config = b.work.join("api.toml");
    std::fs::write(&config, format!("[api]\nsocket = \"{}\"\n", socket.display()))?;
    let d = b.start(&["--config", config.to_str().context("a UTF-8 path")?])?;
    let workload = std::env::current_exe()?.with_file_name("nsgroup-workload");
    let mut clients = Command::new(workload)
        .args(["api-clients", "--clients", &API_CLIENTS.to_string(), "--socket"])
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(clients.stdout.take().context("piped")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    if !line.contains("ready") {
        bail!("the API clients did not connect: {line}");
    }
    let markers = vec![format!(":name={}:{}/node_", b.name, b.root)];
    let run0 = d.run_time_ns();
    let task = latency(&markers, samples, 1000)?;
    drop(clients.stdin.take());
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    clients.wait()?;
    let requests = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["requests"].as_u64()).unwrap_or(0);
    wait_clean(b, None, Duration::from_secs(10));
    let run_per_node = Duration::from_nanos((d.run_time_ns() - run0) / u64::from(samples));
    let log = d.stop()?;
    b.remove_nodes();
    let daemon = ["latency_p50_us", "latency_p99_us", "latency_max_us"].map(|k| figure(&log, k).unwrap_or(0));
    Ok((Latency { task, daemon, run_per_node }, requests))
}

/// The API capacity part's load: subordinate uids of one owner, each trying
/// to hold [`HOLD_PER_UID`] connections; [`STALLED`] stalled subscribers,
/// [`STALLED_PER_OWNER`] from each of [`STALLED_OWNERS`] owners (all that
/// users may hold together) and the rest root's; nodes made and removed
/// under them.
const HOLD_UIDS: u32 = 12;
const HOLD_PER_UID: u32 = 128;
const STALLED: u32 = 1000;
const STALLED_OWNERS: u32 = 8;
const STALLED_PER_OWNER: u32 = 120;
const CHURN: u32 = 10_000;

/// A fresh daemon serving an API socket in the bench's work directory.
fn api_daemon(b: &Bench) -> Result<(Daemon, PathBuf)> {
    let socket = b.work.join("api.sock");
    let config = b.work.join("api.toml");
    std::fs::write(&config, format!("[api]\nsocket = \"{}\"\n", socket.display()))?;
    let d = b.start(&["--config", config.to_str().context("a UTF-8 path")?])?;
    Ok((d, socket))
}

/// `nsgroup-workload api-hold ARGS` as each subordinate uid 1..=`uids` of
/// `owner` (as root without one); they hold their connections until dropped.
struct Holders {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Connections held and refused, over all the uids.
    held: u64,
    refused: u64,
}

impl Holders {
    fn spawn(b: &Bench, socket: &Path, owner: Option<(u32, u32)>, args: &[&str]) -> Result<Holders> {
        let mut cmd = Command::new(&b.workload);
        if let Some((owner, uids)) = owner {
            let base = (300_000 + 1000 * (owner - 60_000)).to_string();
            cmd.args(["subuids", "--owner", &owner.to_string(), "--base", &base, "--uids", &uids.to_string(), "--"]).arg(&b.workload);
        }
        let mut child = cmd
            .args(["api-hold", "--socket"])
            .arg(socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut out = std::io::BufReader::new(child.stdout.take().context("piped")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line)?;
        let report: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("the holders' report: {line:?}"))?;
        let lines = match report["lines"].as_array() {
            Some(lines) => lines.clone(),
            None => vec![report],
        };
        let sum = |k: &str| lines.iter().filter_map(|l| l[k].as_u64()).sum();
        Ok(Holders { held: sum("held"), refused: sum("refused"), child, stdin })
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// Root's `list`, each on a connection of its own, `samples` times: the
/// time from connect to the answer.
fn root_lists(socket: &Path, samples: u32) -> Result<Vec<Duration>> {
    use nsgroup::api::{client::Client, proto::Request};
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            let answer = Client::connect(socket)?.call(&Request::List { all: false })?;
            if answer["type"] != "ok" {
                bail!("root's list was not answered ok: {answer}");
            }
            Ok(t.elapsed())
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `count` nodes made and removed, 1,000 at a time (tasks that unshare
/// NEWUTS and wait, then are released); the nodes there already stay.
fn churn(b: &Bench, count: u32) -> Result<()> {
    let others = b.nodes().len();
    for _ in 0..count.div_ceil(1000) {
        let (held, _) = Held::spawn(1000)?;
        let end = Instant::now() + Duration::from_secs(60);
        while b.nodes().len() < others + 1000 {
            if Instant::now() > end {
                bail!("1,000 tasks not placed within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        held.release();
        let end = Instant::now() + Duration::from_secs(60);
        while b.nodes().len() > others {
            if Instant::now() > end {
                bail!("the churn's nodes not removed within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// KiB of a line of the daemon's /proc status (`VmRSS:`, `VmHWM:`).
fn status_kib(d: &Daemon, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// The API capacity part (issue 16).
fn api_capacity(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    let samples = if q { 50 } else { 200 };
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    // Root's latency: idle, then while one owner's subordinate uids hold
    // every connection it may and keep asking for the list on all of them.
    let (d, socket) = api_daemon(b)?;
    std::thread::sleep(SETTLE);
    let idle = median(root_lists(&socket, samples)?);
    let per_uid = HOLD_PER_UID.to_string();
    let holders = Holders::spawn(b, &socket, Some((60_000, HOLD_UIDS)), &["--connections", &per_uid])?;
    let held = median(root_lists(&socket, samples)?);
    drop(holders);
    let holders = Holders::spawn(b, &socket, Some((60_000, HOLD_UIDS)), &["--connections", &per_uid, "--poll"])?;
    let polling = median(root_lists(&socket, samples)?);
    let (owner_held, owner_refused) = (holders.held, holders.refused);
    drop(holders);
    let log = d.stop()?;
    wait_clean(b, None, Duration::from_secs(10));
    b.remove_nodes();
    let x = |d: Duration| format!("{:.2}×", d.as_secs_f64() / idle.as_secs_f64());
    r.row(
        &format!(
            "API: root's `list` (connect to answer, {samples} in a row, median): on an idle server / while one owner's {HOLD_UIDS} subordinate uids, each trying {HOLD_PER_UID} connections, hold {owner_held} ({owner_refused} refused) / while they also ask for the list on all of them again and again ({} of their requests waited for a slot); as ratios to the idle server",
            figure(&log, "deferred_requests").unwrap_or(0)
        ),
        format!("{} / {} / {}; {}, {}", us(idle), us(held), us(polling), x(held), x(polling)),
        "answered ok every time",
        Some(owner_held <= nsgroup::api::capacity::CONNECTIONS_PER_OWNER as u64),
    );
    // RSS: the churn without subscribers, then with 1,000 stalled ones, each
    // under a fresh daemon.
    let churned = if q { 2000 } else { CHURN };
    let (d, _) = api_daemon(b)?;
    std::thread::sleep(SETTLE);
    let idle_plain = status_kib(&d, "VmRSS:");
    churn(b, churned)?;
    let peak_plain = status_kib(&d, "VmHWM:");
    d.stop()?;
    b.remove_nodes();
    let (d, socket) = api_daemon(b)?;
    std::thread::sleep(SETTLE);
    let idle = status_kib(&d, "VmRSS:");
    let (per_owner, roots) = (STALLED_PER_OWNER.to_string(), (STALLED - STALLED_OWNERS * STALLED_PER_OWNER).to_string());
    let mut stalled: Vec<Holders> = (0..STALLED_OWNERS)
        .map(|i| Holders::spawn(b, &socket, Some((61_000 + i, 1)), &["--connections", &per_owner, "--subscribe"]))
        .collect::<Result<_>>()?;
    stalled.push(Holders::spawn(b, &socket, None, &["--connections", &roots, "--subscribe"])?);
    let subscribed: u64 = stalled.iter().map(|h| h.held).sum();
    churn(b, churned)?;
    let peak = status_kib(&d, "VmHWM:");
    drop(stalled);
    let log = d.stop()?;
    wait_clean(b, None, Duration::from_secs(10));
    b.remove_nodes();
    let dropped = figure(&log, "dropped_slow_subscribers").unwrap_or(0);
    r.row(
        &format!(
            "API: the daemon's RSS, a {churned}-node churn (1,000 nodes at a time made and removed): idle, then the peak (VmHWM) without subscribers / with {subscribed} subscribers that never read ({} from {STALLED_OWNERS} users, the rest root's; {dropped} of them dropped as too slow)",
            STALLED_OWNERS * STALLED_PER_OWNER
        ),
        format!(
            "without: {} idle, {} peak (+{}); with: {} idle, {} peak (+{}, {:.2}× idle)",
            mib(idle_plain),
            mib(peak_plain),
            mib(peak_plain.saturating_sub(idle_plain)),
            mib(idle),
            mib(peak),
            mib(peak.saturating_sub(idle)),
            peak as f64 / idle.max(1) as f64
        ),
        "peak ≤ idle + 64 MiB",
        Some(peak <= idle + 64 * 1024 && subscribed == u64::from(STALLED)),
    );
    Ok(())
}

/// What part 2 measures in one storm.
struct Storm {
    count: u32,
    fork_rate: f64,
    /// Until every task is placed (with mirrors: in them too).
    converged: Duration,
    /// The daemon's CPU time meanwhile.
    cpu_ms: u64,
    misplaced: usize,
    lost: u64,
    /// Tasks placed outside a mirror's root, per mirror (the daemon's `not_mirrored=`).
    not_mirrored: String,
    /// With mirrors: (mirrors with the rule's `pids.max`, mirrors in pids).
    limited: Option<(usize, usize)>,
}

impl Storm {
    fn placements_per_s(&self) -> f64 {
        f64::from(self.count) / self.converged.as_secs_f64()
    }

    fn cpu_us_per_node(&self) -> f64 {
        self.cpu_ms as f64 * 1000.0 / f64::from(self.count)
    }
}

/// Part 2 under a fresh daemon (with the control part's mirrors and limit
/// when `ctl` is given): `count` children forked as fast as possible, each
/// entering a new UTS namespace and staying, until all are placed.
fn storm_round(b: &Bench, ctl: Option<&Control>, count: u32) -> Result<Storm> {
    under(ctl, |args| {
        let d = b.start(args)?;
        let (cpu0, _) = d.cpu_and_wakeups();
        let start = Instant::now();
        let (held, fork_rate) = Held::spawn(count)?;
        // The mirrors follow their node: looked at once every node is full.
        let all_placed = || placed(b) >= count && ctl.is_none_or(|c| c.placed().iter().all(|&n| n >= count));
        while !all_placed() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let converged = start.elapsed();
        let (cpu1, _) = d.cpu_and_wakeups();
        let misplaced = misplaced(b)?;
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

/// Times `iterations` runs of `body` in forked children (fork, body, exit,
/// wait), one sample per iteration.
fn fork_loop(iterations: u32, body: fn()) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let start = Instant::now();
        match fork()? {
            Forked::Child => {
                body();
                std::process::exit(0);
            }
            Forked::Parent { child } => Kids(vec![child]).reap_all(),
        }
        samples.push(start.elapsed());
    }
    Ok(samples)
}

fn unshare_newns() {
    let _ = unshare_namespaces(UnshareFlags::NEWNS);
}

fn exec_true() {
    let err = std::os::unix::process::CommandExt::exec(&mut Command::new("/bin/true"));
    eprintln!("exec /bin/true: {err}");
}

/// `batches` × `per_batch` calls of getppid(), one sample per batch.
fn getppid_loop(batches: u32, per_batch: u32) -> Vec<Duration> {
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
struct Cost {
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
    fn ratio(&self) -> f64 {
        if self.wakeups > 0 {
            self.total.median()
        } else {
            self.best_ratio()
        }
    }

    fn summary(&self, per: &str, scale: impl Fn(Duration) -> String) -> String {
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

/// How long the machine is left alone before each timed round (deferred
/// kernel work of the previous round: namespace and cgroup teardown, BPF
/// program release).
const SETTLE: Duration = Duration::from_millis(300);

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
fn compare(b: &Bench, extra: &[&str], pairs: u32, mut f: impl FnMut() -> Result<Vec<Duration>>) -> Result<Cost> {
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

/// Runs `f` under a fresh daemon, left alone for [`SETTLE`] after it is
/// ready; stops it and removes the nodes it leaves. `f`'s result and the log.
fn under_daemon<T>(b: &Bench, extra: &[&str], f: impl FnOnce(&Daemon) -> Result<T>) -> Result<(T, String)> {
    let d = b.start(extra)?;
    std::thread::sleep(SETTLE);
    let out = f(&d)?;
    let log = d.stop()?;
    b.wait_no_nodes(Duration::from_secs(10));
    b.remove_nodes();
    Ok((out, log))
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

/// Part 3b: for each `hooks` setting, the null syscall and the
/// fork/unshare(CLONE_NEWNS)/exit loop without and with the daemon. The
/// label names the hooks the daemon attached (its `source=`).
fn hooks_cost(b: &Bench, r: &mut Report, q: bool) -> Result<()> {
    let (pairs, batches, per_batch, forks) = if q { (4, 20, 10_000, 200) } else { (10, 100, 10_000, 2000) };
    let per_call = |d: Duration| format!("{:.0} ns", d.as_nanos() as f64 / f64::from(per_batch));
    let micros = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    for mode in ["auto", "no-syscall"] {
        let config = b.work.join(format!("hooks-{mode}.toml"));
        std::fs::write(&config, format!("hooks = \"{mode}\"\n"))?;
        let config = config.to_str().context("a UTF-8 temporary directory")?.to_string();
        let extra = ["--config", config.as_str()];
        let (_, log) = under_daemon(b, &extra, |_| Ok(()))?;
        let hooks = syscall_hooks(&log);
        let c = compare(b, &extra, pairs, || Ok(getppid_loop(batches, per_batch)))?;
        r.row(
            &format!("hooks = \"{mode}\" ({hooks}): getppid(), {pairs} pairs of {batches} × {per_batch} calls: without / with"),
            c.summary("call", per_call),
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

/// Median wall time of `runs` runs of a command, stdout discarded.
fn median_run(cmd: &mut Command, runs: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let st = cmd.stdout(Stdio::null()).status()?;
        if !st.success() {
            bail!("{cmd:?}: {st}");
        }
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[runs / 2])
}

/// The attacker of issue 8: an unprivileged user (uid 65534) with user
/// namespaces, 100 threads × 150 nested `unshare(CLONE_NEWUTS)` in one user
/// namespace, every namespace kept alive.
const ATTACK_THREADS: u32 = 100;
const ATTACK_UNSHARES: u32 = 150;
const NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
/// Probes: one every 20 ms, during the storm and for 3 s after it.
const PROBE_PERIOD: Duration = Duration::from_millis(20);
const PROBE_AFTER: Duration = Duration::from_secs(3);
/// A probe not placed by then counts as not placed.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Fails early, with a clear message, unless uid 65534 can run the workload
/// binary and create user and UTS namespaces here.
fn check_nobody_can_attack(workload: &Path) -> Result<()> {
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "the attack part needs uid 65534 to run {cmd:?} (user namespaces allowed, the binary readable by all): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    run(Command::new(NOBODY[0]).args(&NOBODY[1..]).arg(workload).arg("--help"))?;
    run(Command::new(NOBODY[0]).args(&NOBODY[1..]).args(["unshare", "--user", "--uts", "true"]))
}

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
        let mut child = Command::new(NOBODY[0])
            .args(&NOBODY[1..])
            .arg(&b.workload)
            .args(["userns-storm", "--threads", &threads, "--unshares", &unshares])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(b.work.join("attacker.err"))?)
            .spawn()?;
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
    marker: String,
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
            marker: format!(":name={}:{}/node_", b.name, b.root),
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
            let us = (|| -> Result<u64> {
                unshare_namespaces(UnshareFlags::NEWUTS)?;
                let t0 = now_ns();
                let mut buf = [0u8; 4096];
                loop {
                    let mut f = std::fs::File::open("/proc/self/cgroup")?;
                    let n = f.read(&mut buf)?;
                    if std::str::from_utf8(&buf[..n]).is_ok_and(|t| t.contains(&self.marker)) {
                        return Ok((now_ns() - t0) / 1000);
                    }
                    let waited = now_ns() - t0;
                    if waited > PROBE_LIMIT.as_nanos() as u64 {
                        bail!("not placed");
                    }
                    if waited > 1_000_000 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })()
            .unwrap_or(u64::MAX);
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
        let top = node.strip_prefix(b.mount.join("b")).ok().and_then(|p| p.components().next());
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
fn attack(b: &Bench, r: &mut Report) -> Result<()> {
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
    let end = Instant::now() + Duration::from_secs(10);
    while b.nodes().iter().any(|n| prober.owns(b, n)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
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

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|s| s.trim().to_string()))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} × {cpu}, {} GiB, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem / 1024 / 1024,
        kernel.trim()
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Report {
    rows: Vec<[String; 4]>,
}

impl Report {
    fn row(&mut self, what: &str, value: String, target: &str, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        eprintln!("{what}: {value} ({target}) {verdict}");
        self.rows.push([what.into(), value, target.into(), verdict.into()]);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("nsgroup-bench needs root (it mounts a private cgroup hierarchy and runs the daemon)");
    }
    let q = args.quick;
    let run = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let workload = std::env::current_exe()?.with_file_name("nsgroup-workload");
    if run(Part::Attack) {
        check_nobody_can_attack(&workload)?;
    }
    let mut b = Bench::new()?;
    b.daemon_args = args.daemon_args.clone();
    let mut r = Report { rows: Vec::new() };

    // The control part (issue 11) runs parts 1 and 2 again, each right after
    // its plain run (which it needs for its ratios), under a daemon with two
    // mirrors and a limit rule.
    let control = if run(Part::Control) { Some(Control::new(&b)?) } else { None };
    let ctl = control.as_ref();
    let setting = format!("with mirrors (pids, freezer) and a limit (pids.max = {PIDS_MAX})");

    // 1. Latency.
    let latencies = if run(Part::Latency) || ctl.is_some() {
        let samples = if q { 500 } else { 3000 };
        let plain = latency_round(&b, None, samples)?;
        let h = &plain.task;
        r.row(
            &format!("placement latency seen by the task, {} unshares at 1,000/s (p50 / p99 / max)", h.count()),
            format!("{} / {} / {} µs", h.quantile(0.5), h.quantile(0.99), h.max()),
            "p50 ≤ 100 µs, p99 ≤ 500 µs",
            Some(h.quantile(0.5) <= 100 && h.quantile(0.99) <= 500 && h.count() == u64::from(samples)),
        );
        let [p50, p99, max] = plain.daemon;
        r.row("daemon's event-to-moved latency (p50 / p99 / max)", format!("{p50} / {p99} / {max} µs"), "", None);
        let mirrored = ctl.map(|c| latency_round(&b, Some(c), samples)).transpose()?;
        Some((samples, plain, mirrored))
    } else {
        None
    };

    // The API part: the same round with clients hammering the socket, next
    // to a plain round of the same run.
    if run(Part::Api) {
        let samples = if q { 500 } else { 3000 };
        let plain = match &latencies {
            Some((n, plain, _)) if *n == samples => plain.task.clone(),
            _ => latency_round(&b, None, samples)?.task,
        };
        let (with, requests) = latency_with_clients(&b, samples)?;
        let h = &with.task;
        r.row(
            &format!(
                "placement latency seen by the task, {samples} unshares at 1,000/s, without / with {API_CLIENTS} API clients polling the node list ({requests} answers meanwhile) (p50 / p99)"
            ),
            format!("{} / {} µs without; {} / {} µs with", plain.quantile(0.5), plain.quantile(0.99), h.quantile(0.5), h.quantile(0.99)),
            "p99 with clients ≤ 500 µs",
            Some(h.quantile(0.99) <= 500 && h.count() == u64::from(samples)),
        );
    }

    if run(Part::ApiCapacity) {
        api_capacity(&b, &mut r, q)?;
    }

    // 2. Throughput.
    let storms = if run(Part::Storm) || ctl.is_some() {
        let count = if q { 1000 } else { 5000 };
        let s = storm_round(&b, None, count)?;
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
        let mirrored = ctl.map(|c| storm_round(&b, Some(c), count)).transpose()?;
        Some((s, mirrored))
    } else {
        None
    };

    // The control part's rows: the extra cost per node as ratios to the
    // plain rows above.
    if let Some((samples, plain, Some(with))) = &latencies {
        let x = |with: u64, without: u64| format!("{:.2}×", with as f64 / without.max(1) as f64);
        let (h, daemon, plain_daemon) = (&with.task, &with.daemon, &plain.daemon);
        r.row(
            &format!(
                "{setting}: placement latency seen by the task (in its node and both mirrors), {} unshares at 1,000/s (p50 / p99 / max); as a ratio to the plain row",
                h.count()
            ),
            format!(
                "{} / {} / {} µs; p50 {}, p99 {}",
                h.quantile(0.5),
                h.quantile(0.99),
                h.max(),
                x(h.quantile(0.5), plain.task.quantile(0.5)),
                x(h.quantile(0.99), plain.task.quantile(0.99))
            ),
            "",
            (h.count() != u64::from(*samples)).then_some(false),
        );
        r.row(
            &format!("{setting}: daemon's event-to-moved latency (to the move in the tracked hierarchy, before the mirrors) (p50 / p99 / max); as a ratio to the plain row"),
            format!("{} / {} / {} µs; p50 {}, p99 {}", daemon[0], daemon[1], daemon[2], x(daemon[0], plain_daemon[0]), x(daemon[1], plain_daemon[1])),
            "",
            None,
        );
        let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        r.row(
            &format!("daemon's time on a CPU per node in part 1 (made, placed, removed; schedstat): plain / {setting}"),
            format!(
                "{} / {} = {:.2}×",
                us(plain.run_per_node),
                us(with.run_per_node),
                with.run_per_node.as_secs_f64() / plain.run_per_node.as_secs_f64().max(f64::MIN_POSITIVE)
            ),
            "",
            None,
        );
    }
    if let Some((plain, Some(s))) = &storms {
        r.row(
            &format!(
                "{setting}: fork+unshare storm: {} tasks forked at {:.0}/s, all placed (node and both mirrors) after; as a ratio to the plain row",
                s.count, s.fork_rate
            ),
            format!(
                "{} ({:.0} placements/s), daemon CPU {} ms ({:.0} µs per node); time {:.2}×, placements/s {:.2}×, daemon CPU per node {:.2}×",
                ms(s.converged),
                s.placements_per_s(),
                s.cpu_ms,
                s.cpu_us_per_node(),
                s.converged.as_secs_f64() / plain.converged.as_secs_f64(),
                s.placements_per_s() / plain.placements_per_s(),
                s.cpu_us_per_node() / plain.cpu_us_per_node().max(f64::MIN_POSITIVE)
            ),
            "",
            None,
        );
        let (limited, mirrors) = s.limited.unwrap_or_default();
        r.row(
            &format!("{setting}: tasks misplaced at quiescence; BPF events lost; tasks not mirrored (pids, freezer); pids mirrors with pids.max = {PIDS_MAX}"),
            format!("{}; {}; {}; {limited} of {mirrors}", s.misplaced, s.lost, s.not_mirrored),
            "0 misplaced, every node mirrored with its limit",
            Some(s.misplaced == 0 && s.not_mirrored.split(", ").all(|n| n == "0") && limited == s.count as usize && mirrors == s.count as usize),
        );
    }
    drop(control);

    // 3. Cost to the traced workload.
    if run(Part::Cost) {
    let micros = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    for (what, body, pairs, n, limit) in [
        ("fork/unshare(CLONE_NEWNS)/exit", unshare_newns as fn(), 10, 2000, 1.2),
        ("fork/exec(/bin/true)/exit", exec_true, 50, 200, 1.02),
    ] {
        let (pairs, n) = if q { (2, n / 4) } else { (pairs, n) };
        let c = compare(&b, &[], pairs, || fork_loop(n, body))?;
        r.row(
            &format!("{what}, {pairs} pairs of {n}-iteration rounds: without / with the daemon"),
            c.summary("iteration", micros),
            &format!("≤ {limit}×"),
            Some(c.ratio() <= limit),
        );
    }
    let pairs = if q { 2 } else { 10 };
    let (batches, per_batch) = (if q { 20 } else { 100 }, 10_000);
    let c = compare(&b, &[], pairs, || Ok(getppid_loop(batches, per_batch)))?;
    let per_call = |d: Duration| format!("{:.0} ns", d.as_nanos() as f64 / f64::from(per_batch));
    r.row(
        &format!("getppid(), {pairs} pairs of {batches} × {per_batch} calls: without / with"),
        c.summary("call", per_call),
        "(syscall tracepoints: every task takes the slow syscall path)",
        None,
    );
    }

    // 3b. Each way of hooking unshare()/setns().
    if run(Part::Hooks) {
        hooks_cost(&b, &mut r, q)?;
    }

    // 4. Idle.
    if run(Part::Idle) {
    let d = b.start(&[])?;
    let idle = Duration::from_secs(if q { 10 } else { 60 });
    let (_, w0) = d.cpu_and_wakeups();
    std::thread::sleep(idle);
    let (_, w1) = d.cpu_and_wakeups();
    let rss = d.rss_kib();
    d.stop()?;
    r.row(
        &format!("idle for {} s: daemon wakeups; RSS", idle.as_secs()),
        format!("{} ({:.2}/s); {:.1} MiB", w1 - w0, (w1 - w0) as f64 / idle.as_secs_f64(), rss as f64 / 1024.0),
        "no periodic wakeups, RSS ≤ 16 MiB",
        Some(w1 - w0 <= 1 && rss <= 16 * 1024),
    );
    }

    // 5. Start-up reconcile, then 6. reading, with tasks already in sets.
    let counts = if !run(Part::Reconcile) { vec![] } else if q { vec![1000, 2000] } else { vec![1000, 2000, 10_000] };
    for count in counts {
        let (held, _) = Held::spawn(count)?;
        let floor = held.kernel_floor(&b)?;
        let d = b.start(&[])?;
        let first = d.figure("adopt_ms").unwrap_or(0) + d.figure("reconcile_ms").unwrap_or(0);
        let created = d.figure("created").unwrap_or(0);
        let rss = d.rss_kib();
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
            let tree = median_run(
                Command::new(&b.nsgroup).args(["tree", "--json", "--hierarchy"]).arg(&b.mount).args(["--root", &b.root]),
                runs,
            )?;
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

    // 7. An unprivileged user's storm.
    if run(Part::Attack) {
        attack(&b, &mut r)?;
    }

    let command: Vec<String> = std::env::args().collect();
    let mut md = String::new();
    md.push_str(&format!("Machine: {}.\nCommand: `{}`.\n\n| measure | result | target | |\n| --- | --- | --- | --- |\n", machine(), command.join(" ")));
    for row in &r.rows {
        md.push_str(&format!("| {} | {} | {} | {} |\n", row[0], row[1], row[2], row[3]));
    }
    println!("{md}");
    if let Some(path) = args.write {
        write_report(&path, &md)?;
    }
    Ok(())
}

/// Replaces the generated table between the markers of the report file.
fn write_report(path: &Path, table: &str) -> Result<()> {
    const BEGIN: &str = "<!-- nsgroup-bench:begin -->";
    const END: &str = "<!-- nsgroup-bench:end -->";
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| format!("# Benchmarks\n\n{BEGIN}\n{END}\n"));
    let (Some(a), Some(z)) = (old.find(BEGIN), old.find(END)) else {
        bail!("{} has no {BEGIN} … {END} markers", path.display());
    };
    let new = format!("{}{BEGIN}\n{table}{}", &old[..a], &old[z..]);
    std::fs::write(path, new)?;
    Ok(())
}
