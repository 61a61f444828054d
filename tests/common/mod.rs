//! End-to-end harness: a private cgroup hierarchy (or cgroup2 subtree) per
//! test, the real daemon binary, and processes the test starts itself.
//! Everything created is removed in Drop, also when the test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const NSGROUP: &str = env!("CARGO_BIN_EXE_nsgroup");
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_nsgroup-workload");

/// Whether the end-to-end tests can run here (root); they say so when skipped.
pub fn privileged() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: end-to-end tests need root (real cgroups, namespaces and BPF)");
    }
    root
}

fn random_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}-{n}-{nanos:x}", std::process::id())
}

/// Polls `cond` every 10 ms for up to 30 s; the deadline only bounds a hang.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A private named v1 hierarchy `name=nsgroup-test-<random>`.
    V1,
    /// A fresh subtree of the cgroup2 hierarchy (see [`cgroup2_base`]).
    V2,
}

/// Where the cgroup2 (unified) hierarchy is mounted, from /proc/self/mountinfo:
/// `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure cgroup2
/// hosts; only a mount of the hierarchy's root counts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = nsgroup::sys::mounts::read_mountinfo(std::path::Path::new("/proc/self/mountinfo")).ok()?;
    let mut found: Vec<PathBuf> =
        mounts.into_iter().filter(|m| m.fstype == "cgroup2" && m.root == "/").map(|m| m.mount_point).collect();
    // The usual places first, in case the hierarchy is mounted more than once.
    found.sort_by_key(|p| !p.starts_with("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// This process's cgroup in the cgroup2 hierarchy (`0::/path`).
pub fn own_cgroup2() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end().to_string())
}

/// Whether a cgroup2 directory was delegated by its manager: systemd marks
/// units with `Delegate=yes` with the `trusted.delegate` xattr (`user.delegate`
/// where it cannot write `trusted.*`).
fn delegated(dir: &std::path::Path) -> bool {
    let mut buf = [0u8; 16];
    ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|name| rustix::fs::getxattr(dir, *name, &mut buf[..]).is_ok_and(|n| &buf[..n] == b"1"))
}

/// The cgroup2 mount and the cgroup below which the tests may make their
/// subtrees without fighting the hierarchy's manager: the test's own cgroup
/// when it is the root (a host where no manager uses cgroup2, like the hybrid
/// development machine) or delegated to it (`systemd-run --scope -p
/// Delegate=yes`, a service with `Delegate=yes`); `Err` says why not.
/// The tests' processes stay inside that cgroup: none is moved out of its unit.
pub fn cgroup2_base() -> Result<(PathBuf, String), String> {
    let mount = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted")?;
    let own = own_cgroup2().ok_or("this process has no cgroup2 cgroup (/proc/self/cgroup has no 0:: line)")?;
    if own == "/" {
        return Ok((mount, String::new()));
    }
    let dir = mount.join(own.trim_start_matches('/'));
    if delegated(&dir) {
        return Ok((mount, own));
    }
    Err(format!(
        "this test's cgroup2 cgroup {own} is not delegated to it (no trusted.delegate xattr), and making cgroups \
         there would fight its manager: run the tests under `systemd-run --scope -p Delegate=yes` (as scripts/vm-test does)"
    ))
}

/// Why a named v1 hierarchy cannot be mounted here, if it cannot.
pub fn v1_unavailable() -> Option<String> {
    static CACHE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if !fs.lines().any(|l| l.split_whitespace().last() == Some("cgroup")) {
                return Some("the kernel has no cgroup v1 (no `cgroup` in /proc/filesystems: CONFIG_CGROUP_V1=n)".into());
            }
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            // `cgroup_no_v1=` takes a list of controllers, `all` (controllers
            // only) and `named`.
            if let Some(arg) = cmdline
                .split_whitespace()
                .find(|a| a.strip_prefix("cgroup_no_v1=").is_some_and(|l| l.split(',').any(|x| x == "named")))
            {
                return Some(format!("the kernel was booted with {arg}: named v1 hierarchies cannot be mounted"));
            }
            None
        })
        .clone()
}

/// The test's name (its thread's, under the libtest harness).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

/// Says on stderr what the current test skips and why (visible with
/// `cargo test -- --show-output`; scripts/vm-test lists them).
pub fn skip(why: &str) {
    eprintln!("skipped: {}: {why}", test_name());
}

/// A private hierarchy or subtree, with the test's processes in it.
pub struct Hier {
    pub kind: Kind,
    pub mount: PathBuf,
    /// The v1 hierarchy's name.
    pub name: String,
    /// The cgroup the test's cgroups go below: empty (the hierarchy's root)
    /// for a private v1 hierarchy and on a cgroup2 hierarchy no manager uses;
    /// the test's own delegated cgroup on a systemd host.
    pub base: String,
    /// The tracked subtree, e.g. `/t`, or `<base>/nsgroup-test-<random>` on cgroup2.
    pub root: String,
    children: Vec<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl Hier {
    /// A hierarchy of `kind`; panics where there can be none (tests that
    /// should skip there use [`Hier::try_new`]).
    pub fn new(kind: Kind) -> Hier {
        Hier::create(kind).unwrap_or_else(|why| panic!("no {kind:?} hierarchy for this test: {why}"))
    }

    /// A hierarchy of `kind`, or `None` after saying why the test skips.
    pub fn try_new(kind: Kind) -> Option<Hier> {
        Hier::create(kind).map_err(|why| skip(&why)).ok()
    }

    fn create(kind: Kind) -> Result<Hier, String> {
        let name = format!("nsgroup-test-{}", random_suffix());
        match kind {
            Kind::V1 => {
                if let Some(why) = v1_unavailable() {
                    return Err(why);
                }
                let tmp = tempfile::Builder::new().prefix("nsgroup-test-").tempdir().unwrap();
                let opts = format!("none,name={name},xattr");
                let out = Command::new("mount").args(["-t", "cgroup", "-o", &opts, "cgroup"]).arg(tmp.path()).output().unwrap();
                if !out.status.success() {
                    return Err(format!(
                        "a named cgroup v1 hierarchy cannot be mounted here: mount -t cgroup -o {opts}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                std::fs::create_dir(tmp.path().join("t")).unwrap();
                Ok(Hier {
                    kind,
                    mount: tmp.path().to_path_buf(),
                    name,
                    base: String::new(),
                    root: "/t".into(),
                    children: vec![],
                    _tmp: Some(tmp),
                })
            }
            Kind::V2 => {
                let (mount, base) = cgroup2_base()?;
                Ok(Hier::v2_below(mount, base, name))
            }
        }
    }

    /// A cgroup2 subtree below `base`, a cgroup the test may write in (e.g.
    /// a [`DelegatedScope`]'s).
    pub fn v2_in(base: &str) -> Hier {
        let mount = cgroup2_mount().expect("a cgroup2 hierarchy is mounted");
        Hier::v2_below(mount, base.to_string(), format!("nsgroup-test-{}", random_suffix()))
    }

    fn v2_below(mount: PathBuf, base: String, name: String) -> Hier {
        let root = format!("{base}/{name}");
        std::fs::create_dir(mount.join(root.trim_start_matches('/'))).unwrap();
        Hier { kind: Kind::V2, mount, name, base, root, children: vec![], _tmp: None }
    }

    /// A cgroup's directory.
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.mount.join(rel.trim_start_matches('/'))
    }

    /// `root` joined with a relative path like `node_5/node_6`.
    pub fn path(&self, below: &str) -> String {
        if below.is_empty() { self.root.clone() } else { format!("{}/{below}", self.root) }
    }

    /// Starts `args` inside the tracked root (the shell moves itself there
    /// first, then execs), with stdin and stdout piped.
    pub fn spawn(&mut self, args: &[&str]) -> Proc {
        self.spawn_in(&self.root.clone(), args)
    }

    /// Starts `args` inside cgroup `rel`.
    pub fn spawn_in(&mut self, rel: &str, args: &[&str]) -> Proc {
        let procs = self.dir(rel).join("cgroup.procs");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(&procs)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        self.children.push(child);
        // Wait until the shell is in place (its exec follows at once).
        wait_for("the spawned shell to join its cgroup", || self.cgroup_of(pid).is_some_and(|c| c.starts_with(rel)));
        Proc { pid, stdin, stdout }
    }

    /// Waits for a direct child of the test to exit (reaps it).
    pub fn reap(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let _ = self.children.remove(i).wait();
        }
    }

    /// A task's cgroup path in this hierarchy.
    pub fn cgroup_of(&self, tid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{tid}/task/{tid}/cgroup"))
            .or_else(|_| std::fs::read_to_string(format!("/proc/{tid}/cgroup")))
            .ok()?;
        text.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_id, ctrl, path) = (p.next()?, p.next()?, p.next()?);
            match self.kind {
                Kind::V1 => (ctrl == format!("name={}", self.name)).then(|| path.to_string()),
                Kind::V2 => (ctrl.is_empty()).then(|| path.to_string()),
            }
        })
    }

    /// Waits until a task is in `rel`.
    pub fn expect_in(&self, tid: u32, rel: &str) {
        wait_for(&format!("task {tid} in {rel}"), || self.cgroup_of(tid).as_deref() == Some(rel));
    }

    /// Every cgroup of the subtree, parents first.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut stack = vec![self.dir(&self.root)];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
            out.push(d);
        }
        out
    }

    /// The names of the cgroups below the root, as paths relative to the root.
    pub fn node_paths(&self) -> Vec<String> {
        let base = self.dir(&self.root);
        let mut v: Vec<String> = self
            .cgroups()
            .iter()
            .filter(|p| **p != base)
            .map(|p| p.strip_prefix(&base).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    /// Process ids of every process in the subtree (only ever the test's own).
    pub fn processes(&self) -> Vec<u32> {
        self.cgroups()
            .iter()
            .flat_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect::<Vec<u32>>())
            .collect()
    }

    /// Kills every process of the subtree (all started by this test).
    pub fn kill_all(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.processes();
            if pids.is_empty() || Instant::now() > end {
                break;
            }
            for pid in pids {
                let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::KILL);
            }
            for c in &mut self.children {
                let _ = c.try_wait();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Hier {
    fn drop(&mut self) {
        self.kill_all();
        let mut dirs = self.cgroups();
        dirs.reverse();
        for d in dirs {
            for _ in 0..200 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if self.kind == Kind::V1 && !nsgroup::sys::mounts::destroy_named_v1(&self.name, &self.mount) {
            eprintln!("warning: hierarchy {} outlived its umount", self.name);
        }
    }
}

/// A process the test started.
pub struct Proc {
    pub pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Reads one JSON line the process printed.
    pub fn read_json(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.as_mut().unwrap().read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Sends one line to the process.
    pub fn poke(&mut self) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(b"\n").unwrap();
        s.flush().unwrap();
    }

    /// The pids of a process's children.
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid)
    }
}

pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The real daemon, started with `--hierarchy` and `--root` of a test hierarchy.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon and waits for its READY=1.
    pub fn start(h: &Hier, extra: &[&str]) -> Daemon {
        Daemon::start_at(&h.mount, &h.root, extra)
    }

    /// Starts the daemon on the hierarchy at `mount` with the tracked root
    /// `root` (a cgroup the test owns, e.g. its own systemd slice), and waits
    /// for its READY=1.
    pub fn start_at(mount: &std::path::Path, root: &str, extra: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let sock_path = tmp.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let log = tmp.path().join("daemon.log");
        // The history goes with the test, not into /var/lib/nsgroup.
        let history = tmp.path().join("history.sqlite");
        let config = extra.iter().position(|a| *a == "--config").and_then(|i| extra.get(i + 1));
        let configured = config.is_some_and(|c| std::fs::read_to_string(c).is_ok_and(|t| t.contains("[history]")));
        let own_history: &[&std::ffi::OsStr] = if configured || extra.contains(&"--history-database") {
            &[]
        } else {
            &["--history-database".as_ref(), history.as_os_str()]
        };
        // So does the API's socket, unless the test configures one.
        let api = tmp.path().join("api.sock");
        let api_configured = config.is_some_and(|c| std::fs::read_to_string(c).is_ok_and(|t| t.contains("[api]")));
        let own_api: &[&std::ffi::OsStr] = if api_configured || extra.contains(&"--api-socket") {
            &[]
        } else {
            &["--api-socket".as_ref(), api.as_os_str()]
        };
        let mut child = Command::new(NSGROUP)
            .args(["run", "--hierarchy"])
            .arg(mount)
            .args(["--root", root])
            .args(own_history)
            .args(own_api)
            .args(extra)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("NSGROUP_LOG", "nsgroup=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                if buf[..n].windows(7).any(|w| w == b"READY=1") {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("daemon exited before READY ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < end, "daemon not ready:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        Daemon { child: Some(child), log, _tmp: tmp }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        child.wait().unwrap()
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// Runs `nsgroup tree` on the test hierarchy.
pub fn tree(h: &Hier, extra: &[&str]) -> String {
    let out = Command::new(NSGROUP)
        .args(["tree", "--hierarchy"])
        .arg(&h.mount)
        .args(["--root", &h.root])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A namespace inode of a task.
pub fn ns_inode(tid: u32, kind: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{tid}/task/{tid}/ns/{kind}")).unwrap().ino()
}

// ---------------------------------------------------------------------------
// Helpers for the attack tests (tests/attack.rs): unprivileged attackers,
// a paused daemon, its CPU time, node records, cgroups outside the root.
// ---------------------------------------------------------------------------

/// The unprivileged attacker's uid and gid.
pub const NOBODY: u32 = 65534;

/// `args` run as uid and gid 65534 without supplementary groups.
pub fn as_nobody<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    v.extend_from_slice(args);
    v
}

/// Panics with a clear message unless uid 65534 can run the workload binary
/// and create user (and UTS) namespaces here.
pub fn assert_nobody_can_attack() {
    let run = |args: &[&str]| {
        let v = as_nobody(args);
        let out = Command::new(v[0]).args(&v[1..]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "uid 65534 cannot run {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[WORKLOAD, "--help"]);
    run(&["unshare", "--user", "--uts", "true"]);
}

/// A namespace inode of a task, `None` once it is gone.
pub fn ns_inode_of(tid: u32, kind: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{tid}/task/{tid}/ns/{kind}")).ok().map(|m| m.ino())
}

/// The test's own namespace set in the text form of node records
/// (`cgroup:…,ipc:…,…,uts:…`, ten kinds in order; 0 for a kind the kernel lacks).
pub fn own_set_text() -> String {
    use std::os::unix::fs::MetadataExt;
    const KINDS: [&str; 10] =
        ["cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "time_for_children", "user", "uts"];
    KINDS
        .iter()
        .map(|k| {
            let ino = std::fs::metadata(format!("/proc/thread-self/ns/{k}")).map_or(0, |m| m.ino());
            format!("{k}:{ino}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// User plus system CPU time of a process so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); fields[0] is field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// Sends a signal to a process the test started.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig).unwrap();
}

/// A configuration file for `--config`; keep the directory while it is used.
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nsgroup.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.display().to_string();
    (dir, p)
}

/// A cgroup of a test hierarchy outside the tracked root (e.g. `/elsewhere`
/// next to `/t`). Drop kills the processes in it (only ever the test's own)
/// and removes it; declare it after its `Hier` so that it goes first.
pub struct Outside {
    pub rel: String,
    dir: PathBuf,
}

impl Drop for Outside {
    fn drop(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<u32> = std::fs::read_to_string(self.dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect();
            if pids.is_empty() || Instant::now() > end {
                break;
            }
            for pid in pids {
                let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..200 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Hier {
    /// Starts `args` as uid 65534 inside cgroup `rel` (root's shell moves
    /// itself there, then setpriv drops to uid 65534 and execs).
    pub fn spawn_as_nobody(&mut self, rel: &str, args: &[&str]) -> Proc {
        self.spawn_in(rel, &as_nobody(args))
    }

    /// Creates cgroup `rel` (a full path inside the hierarchy).
    pub fn mkdir(&self, rel: &str) {
        std::fs::create_dir(self.dir(rel)).unwrap();
    }

    /// A cgroup outside the tracked root, `<base>/<name>`, removed in its Drop.
    pub fn outside(&self, name: &str) -> Outside {
        let rel = format!("{}/{name}", self.base);
        assert!(!rel.starts_with(&format!("{}/", self.root)) && rel != self.root);
        self.mkdir(&rel);
        Outside { dir: self.dir(&rel), rel }
    }

    /// Hands cgroup `rel` (directory, `tasks`, `cgroup.procs`) to `uid`, as
    /// delegation does.
    pub fn chown_cgroup(&self, rel: &str, uid: u32) {
        let dir = self.dir(rel);
        for p in [dir.clone(), dir.join("tasks"), dir.join("cgroup.procs")] {
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            }
        }
    }

    /// Moves one task (v1: `tasks`) or its process (v2) into cgroup `rel`,
    /// as another cgroup writer would.
    pub fn move_task(&self, tid: u32, rel: &str) {
        let file = if self.kind == Kind::V1 { "tasks" } else { "cgroup.procs" };
        std::fs::write(self.dir(rel).join(file), tid.to_string()).unwrap();
    }

    /// The parsed `trusted.nsgroup` record of cgroup `rel`, if any.
    pub fn record(&self, rel: &str) -> Option<serde_json::Value> {
        let mut buf = vec![0u8; 65536];
        let n = rustix::fs::getxattr(self.dir(rel), "trusted.nsgroup", &mut buf[..]).ok()?;
        serde_json::from_slice(&buf[..n]).ok()
    }

    /// The nodes below the root (cgroups named `node_*`), as paths relative
    /// to the root.
    pub fn nodes(&self) -> Vec<String> {
        self.node_paths()
            .into_iter()
            .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with("node_")))
            .collect()
    }

    /// How many levels below the root the deepest node lies (0: none).
    pub fn deepest_node(&self) -> usize {
        self.nodes().iter().map(|p| p.split('/').count()).max().unwrap_or(0)
    }

    /// Whether task `tid` is in its own node `node_<tid>` (or `node_<tid>~N`)
    /// directly below `parent`.
    pub fn in_own_node(&self, tid: u32, parent: &str) -> bool {
        let node = format!("{parent}/node_{tid}");
        self.cgroup_of(tid).is_some_and(|c| c == node || c.starts_with(&format!("{node}~")))
    }

    /// A root `unshare --uts sleep 60` in the root, waited for until it has
    /// its node: a positive sign that the daemon has handled every earlier
    /// event (events are handled in order).
    pub fn marker(&mut self) -> Proc {
        let p = self.spawn(&["unshare", "--uts", "sleep", "60"]);
        let root = self.root.clone();
        wait_for(&format!("the marker {} placed in its node", p.pid), || self.in_own_node(p.pid, &root));
        p
    }

    /// SIGKILLs one process the test started and reaps it if it is a direct child.
    pub fn kill(&mut self, pid: u32) {
        let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::KILL);
        self.reap(pid);
    }
}

impl Proc {
    /// Closes the process's stdin: EOF (the workloads exit).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

impl Daemon {
    /// SIGSTOP: events queue up while it is stopped.
    pub fn pause(&self) {
        signal(self.pid(), rustix::process::Signal::STOP);
        wait_for("the daemon stopped", || {
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
                .is_ok_and(|s| s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('T'))
        });
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid(), rustix::process::Signal::CONT);
    }

    /// The daemon's user plus system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Whether the daemon still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM, and the exit status if it exits within `limit`; otherwise
    /// `None` (and it is killed).
    pub fn stop_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().unwrap();
        signal(child.id(), rustix::process::Signal::TERM);
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The log lines containing `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }
}

impl Hier {
    /// Waits until the cgroups below the root stay the same for `quiet`
    /// (after a marker: the daemon has worked off what it had queued).
    pub fn wait_unchanged(&self, quiet: Duration) {
        let mut last = self.node_paths();
        let mut since = Instant::now();
        wait_for("the cgroups below the root to stop changing", || {
            let now = self.node_paths();
            if now != last {
                last = now;
                since = Instant::now();
            }
            since.elapsed() >= quiet
        });
    }
}

/// Samples the nodes below a root from a thread of its own, as often as it
/// can, and keeps the most seen at once and the deepest: bounds that must
/// hold at every moment, not only once the daemon has removed what emptied.
pub struct NodeWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl NodeWatch {
    /// Starts watching the cgroups named `node_*` below `root_dir`.
    pub fn start(root_dir: PathBuf) -> NodeWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut most, mut deepest) = (0, 0);
            loop {
                let last = flag.load(std::sync::atomic::Ordering::Relaxed);
                let (n, d) = count_nodes(&root_dir);
                most = most.max(n);
                deepest = deepest.max(d);
                if last {
                    return (most, deepest);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        NodeWatch { stop, thread: Some(thread) }
    }

    /// Stops (after one more sample) and returns the most nodes seen at
    /// once and the deepest level seen.
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many cgroups named `node_*` lie below `dir`, and the deepest level.
pub fn count_nodes(dir: &std::path::Path) -> (usize, usize) {
    let (mut n, mut deepest) = (0, 0);
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, level)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy().starts_with("node_") {
                    n += 1;
                    deepest = deepest.max(level + 1);
                }
                stack.push((e.path(), level + 1));
            }
        }
    }
    (n, deepest)
}

// ---------------------------------------------------------------------------
// systemd hosts (the guest bed): units the tests start, and a delegated scope
// whose cgroup passes controllers on to a test's subtree.
// ---------------------------------------------------------------------------

/// Why this is not a systemd host on pure cgroup2 (the guest bed), if it is not.
pub fn systemd_unavailable() -> Option<String> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return Some("systemd is not PID 1 here (no /run/systemd/system): the guest bed only (scripts/vm-test)".into());
    }
    match cgroup2_mount() {
        Some(m) if m == std::path::Path::new("/sys/fs/cgroup") => None,
        m => Some(format!("systemd's cgroup hierarchy is not pure cgroup2 at /sys/fs/cgroup here (cgroup2 at {m:?})")),
    }
}

/// A unique name for a unit the test starts (`nsgroup-test-<random>`).
pub fn unit_name() -> String {
    format!("nsgroup-test-{}", random_suffix())
}

/// Runs `systemctl ARGS`; its stderr on failure.
pub fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl").args(args).stdin(Stdio::null()).output().map_err(|e| format!("systemctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("systemctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A transient scope with `Delegate=yes` that the test started
/// (`systemd-run --scope`), its one process (a `sleep`, the test's child)
/// moved into its child cgroup `hold`, so that the scope's own cgroup holds no
/// task and can enable controllers for a test subtree below it
/// ([`Hier::v2_in`]): the test's own scope cannot, it holds the test. Drop
/// kills the sleep by pid; systemd then stops the scope and removes its cgroup.
pub struct DelegatedScope {
    /// The scope's cgroup, e.g. `/system.slice/nsgroup-test-….scope`.
    pub cgroup: String,
    unit: String,
    mount: PathBuf,
    holder: Child,
}

impl DelegatedScope {
    /// Starts the scope and enables `controllers` in its
    /// `cgroup.subtree_control`; `Err` says why it cannot be had here.
    pub fn start(controllers: &[&str]) -> Result<DelegatedScope, String> {
        if let Some(why) = systemd_unavailable() {
            return Err(why);
        }
        let mount = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted")?;
        let offered = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = controllers.iter().copied().filter(|c| !offered.split_whitespace().any(|o| o == *c)).collect();
        if !missing.is_empty() {
            return Err(format!("the cgroup2 hierarchy here has no {} controller", missing.join(", ")));
        }
        let unit = format!("{}.scope", unit_name());
        let holder = Command::new("systemd-run")
            .args(["--scope", "--quiet", "-p", "Delegate=yes", "--unit", &unit, "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("systemd-run: {e}"))?;
        let mut scope = DelegatedScope { cgroup: String::new(), unit, mount, holder };
        let pid = scope.holder.id();
        let suffix = format!("/{}", scope.unit);
        wait_for("the scope's process in its cgroup", || {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let found = cg.lines().find_map(|l| l.strip_prefix("0::")).filter(|p| p.ends_with(&suffix)).map(str::to_string);
            found.map(|p| scope.cgroup = p).is_some()
        });
        let dir = scope.mount.join(scope.cgroup.trim_start_matches('/'));
        std::fs::create_dir(dir.join("hold")).map_err(|e| format!("mkdir {}/hold: {e}", dir.display()))?;
        std::fs::write(dir.join("hold/cgroup.procs"), pid.to_string()).map_err(|e| format!("move the scope's sleep into hold: {e}"))?;
        let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
        std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" "))
            .map_err(|e| format!("enable {} in {}: {e}", controllers.join(" "), dir.display()))?;
        Ok(scope)
    }
}

impl Drop for DelegatedScope {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let dir = self.mount.join(self.cgroup.trim_start_matches('/'));
        for _ in 0..200 {
            if std::fs::remove_dir(dir.join("hold")).is_ok() || !dir.join("hold").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Empty, the scope stops by itself; this only makes sure.
        let _ = systemctl(&["stop", "--quiet", &self.unit]);
    }
}

/// Every directory below `base` (cgroups below a cgroup), relative to it, sorted.
pub fn subdirs(base: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![base.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path().strip_prefix(base).unwrap().display().to_string());
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// The API harness (tests/api.rs, tests/api_capacity.rs).
// ---------------------------------------------------------------------------

/// A daemon with its own API socket.
pub struct Api {
    pub daemon: Daemon,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Api {
    /// Starts the daemon on `h` with `[api] socket` in a directory every user
    /// may traverse, plus `extra` configuration (top-level keys first, then tables).
    pub fn start(h: &Hier, extra: &str, api_extra: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755)).unwrap();
        let socket = dir.path().join("api.sock");
        let config = dir.path().join("nsgroup.toml");
        std::fs::write(&config, format!("{extra}\n[api]\nsocket = \"{}\"\n{api_extra}\n", socket.display())).unwrap();
        std::fs::set_permissions(&config, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644)).unwrap();
        let daemon = Daemon::start(h, &["--config", config.to_str().unwrap()]);
        wait_for("the API socket", || socket.exists());
        Api { daemon, socket, _dir: dir }
    }

    pub fn sock(&self) -> &str {
        self.socket.to_str().unwrap()
    }
}

/// Copies of the binaries that every user may run, also from inside a user
/// namespace, where the build's own directory may not be reachable (a
/// checkout in a 0700 directory; the guest's 9p share of the build).
/// Removed when dropped.
pub struct Runnable {
    dir: tempfile::TempDir,
}

impl Runnable {
    pub fn new() -> Runnable {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (from, name) in [(NSGROUP, "nsgroup"), (WORKLOAD, "nsgroup-workload")] {
            std::fs::copy(from, dir.path().join(name)).unwrap();
        }
        Runnable { dir }
    }

    /// The copy of `nsgroup`.
    pub fn nsgroup(&self) -> String {
        self.dir.path().join("nsgroup").display().to_string()
    }

    /// The copy of `nsgroup-workload`.
    pub fn workload(&self) -> String {
        self.dir.path().join("nsgroup-workload").display().to_string()
    }
}
