//! A test's own hierarchy (a private named v1 hierarchy or a cgroup2
//! subtree), the processes it starts in it, the cgroups it makes there, and
//! their removal in Drop.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::{cgroup_in, cgroups_below, mount_named_v1, remove_cgroup};
use super::{as_nobody, cgroup2_base, cgroup2_mount, random_suffix, sigkill, skip, v1_unavailable, wait_for, Kind};

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

    /// A fresh hierarchy of `kind`, or `None` (the test skips, saying why)
    /// without root or where the kernel cannot give one.
    pub fn try_new(kind: Kind) -> Option<Hier> {
        if !super::privileged() {
            return None;
        }
        Hier::create(kind).map_err(|why| skip(&why)).ok()
    }

    fn create(kind: Kind) -> Result<Hier, String> {
        let name = format!("nsgroup-test-{}", random_suffix());
        match kind {
            Kind::V1 => {
                if let Some(why) = v1_unavailable() {
                    return Err(why);
                }
                static SWEPT: std::sync::Once = std::sync::Once::new();
                SWEPT.call_once(sweep_dead_runs_hierarchies);
                let tmp = tempfile::Builder::new().prefix("nsgroup-test-").tempdir().unwrap();
                mount_named_v1(&name, tmp.path(), "xattr")
                    .map_err(|e| format!("a named cgroup v1 hierarchy cannot be mounted here: {e:#}"))?;
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
        let hierarchy = match self.kind {
            Kind::V1 => format!("name={}", self.name),
            Kind::V2 => String::new(),
        };
        cgroup_in(&text, &hierarchy).map(str::to_string)
    }

    /// Waits until a task is in `rel`.
    pub fn expect_in(&self, tid: u32, rel: &str) {
        wait_for(&format!("task {tid} in {rel}"), || self.cgroup_of(tid).as_deref() == Some(rel));
    }

    /// Every cgroup of the subtree, parents first.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let root = self.dir(&self.root);
        let mut out = cgroups_below(&root);
        out.push(root);
        out.reverse();
        out
    }

    /// The names of the cgroups below the root, as paths relative to the root.
    pub fn node_paths(&self) -> Vec<String> {
        subdirs(&self.dir(&self.root))
    }

    /// Process ids of every process in the subtree (only ever the test's own).
    pub fn processes(&self) -> Vec<u32> {
        self.cgroups().iter().flat_map(|d| processes_in(d)).collect()
    }

    /// Kills every process of the subtree (all started by this test).
    pub fn kill_all(&mut self) {
        kill_until_gone(|| {
            for c in &mut self.children {
                let _ = c.try_wait();
            }
            self.processes()
        });
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Unmounts the empty test hierarchies of test processes that are gone
/// (`name=nsgroup-test-<pid in hex>-…`): a run killed before its drops ran
/// left them. A live process's, or one still holding tasks, stays.
fn sweep_dead_runs_hierarchies() {
    let mounts = nsgroup::sys::mounts::read_mountinfo(std::path::Path::new("/proc/self/mountinfo")).unwrap_or_default();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
        let Some(name) = m.super_opts.iter().find_map(|o| o.strip_prefix("name=")).filter(|n| n.starts_with("nsgroup-test-")) else { continue };
        let Some(pid) = name.split('-').nth(2).and_then(|p| u32::from_str_radix(p, 16).ok()) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dirs = super::harness::cgroups_below(&m.mount_point);
        if dirs.iter().all(|d| super::harness::remove_cgroup(d)) && nsgroup::sys::mounts::destroy_named_v1(name, &m.mount_point) {
            let _ = std::fs::remove_dir(&m.mount_point);
            eprintln!("removed the hierarchy {name} a killed test run left at {}", m.mount_point.display());
        }
    }
}

impl Drop for Hier {
    fn drop(&mut self) {
        self.kill_all();
        let mut dirs = self.cgroups();
        dirs.reverse();
        for d in dirs {
            remove_cgroup(&d);
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

    /// Closes the process's stdin: EOF (the workloads exit).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
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

/// A cgroup of a test hierarchy outside the tracked root (e.g. `/elsewhere`
/// next to `/t`). Drop kills the processes in it (only ever the test's own)
/// and removes it; declare it after its `Hier` so that it goes first.
pub struct Outside {
    pub rel: String,
    dir: PathBuf,
}

impl Drop for Outside {
    fn drop(&mut self) {
        kill_until_gone(|| processes_in(&self.dir));
        remove_cgroup(&self.dir);
    }
}

/// The processes in one cgroup.
fn processes_in(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
}

/// SIGKILLs the processes `pids` lists (only ever the test's own) until it
/// lists none, for up to 10 s.
fn kill_until_gone(mut pids: impl FnMut() -> Vec<u32>) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = pids();
        if now.is_empty() || Instant::now() > end {
            break;
        }
        for pid in now {
            sigkill(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
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
        sigkill(pid);
        self.reap(pid);
    }

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

/// Every directory below `base` (cgroups below a cgroup), relative to it, sorted.
pub fn subdirs(base: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = cgroups_below(base).iter().map(|p| p.strip_prefix(base).unwrap().display().to_string()).collect();
    out.sort();
    out
}
