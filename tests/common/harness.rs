//! What the end-to-end tests (tests/common) and the benchmark suite
//! (src/bin/nsgroup-bench, which includes this file with `#[path]`) both
//! need to run the real daemon: a private named v1 hierarchy, the daemon
//! started on it and waited for until READY=1, stopped or killed, its
//! log; the cgroups below a root, a task's cgroup, a process's CPU time;
//! polling with a deadline; the unprivileged attacker (uid 65534) and the
//! check that it can attack here. Not in the library: it runs the built
//! binaries, mounts hierarchies and polls, for the tests and the
//! benchmarks only. Errors are anyhow's: the suite passes them on, the
//! tests panic with them.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Calls `cond` every `period` until it holds (`true`) or `limit` has passed
/// (`false`).
pub fn poll_until(limit: Duration, period: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(period);
    }
}

/// Mounts a private named v1 hierarchy `name=NAME` (no controller, with
/// `OPTIONS`, e.g. `xattr`) at `at`.
pub fn mount_named_v1(name: &str, at: &Path, options: &str) -> Result<()> {
    let opts = format!("none,name={name},{options}");
    let out = Command::new("mount")
        .args(["-t", "cgroup", "-o", &opts, "cgroup"])
        .arg(at)
        .output()
        .with_context(|| format!("running mount -t cgroup -o {opts} at {}", at.display()))?;
    if !out.status.success() {
        bail!("mount -t cgroup -o {opts}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Every cgroup (directory) below `top`, deepest first.
pub fn cgroups_below(top: &Path) -> Vec<PathBuf> {
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

/// Removes an empty cgroup, waiting up to 2 s for the kernel to let go of
/// tasks that have just left it; whether it is gone.
pub fn remove_cgroup(dir: &Path) -> bool {
    poll_until(Duration::from_secs(2), Duration::from_millis(10), || std::fs::remove_dir(dir).is_ok() || !dir.exists())
}

/// A task's path in one hierarchy, from the text of its `/proc/…/cgroup`:
/// `hierarchy` is the line's middle field, its controllers (`pids`,
/// `name=…`), empty for cgroup2.
pub fn cgroup_in<'a>(proc_cgroup: &'a str, hierarchy: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_id, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        (ctrl == hierarchy).then_some(path)
    })
}

/// A process's user plus system CPU time so far, in clock ticks (fields 14
/// and 15 of `/proc/<pid>/stat`); `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold anything; fields[0] is field 3.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Writes `dir/api.toml` for `--config`: `top` (top-level keys, then any
/// tables), then `[api]` with the socket `dir/api.sock` and `api` (more of
/// its keys, then any tables). Returns the file and the socket.
pub fn api_config(dir: &Path, top: &str, api: &str) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let socket = dir.join("api.sock");
    let config = dir.join("api.toml");
    std::fs::write(&config, format!("{top}\n[api]\nsocket = \"{}\"\n{api}\n", socket.display()))
        .with_context(|| format!("writing {}", config.display()))?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod 0644 {}", config.display()))?;
    Ok((config, socket))
}

/// `setpriv` to uid and gid 65534 without supplementary groups: the
/// unprivileged attacker, with the program and its arguments to follow.
pub const AS_NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

/// `program` run as uid 65534 ([`AS_NOBODY`]).
pub fn as_nobody_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(AS_NOBODY[0]);
    cmd.args(&AS_NOBODY[1..]).arg(program);
    cmd
}

/// Fails, saying what is missing, unless uid 65534 can run `workload` (the
/// binary readable and reachable by every user) and create user (and UTS)
/// namespaces here.
pub fn nobody_can_attack(workload: &Path) -> Result<()> {
    let mut help = as_nobody_command(workload);
    help.arg("--help");
    let mut userns = as_nobody_command("unshare");
    userns.args(["--user", "--uts", "true"]);
    for cmd in [&mut help, &mut userns] {
        let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!("uid 65534 cannot run {cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(())
}

/// The real daemon, `nsgroup run` on a hierarchy, its stderr in a log
/// file; started once it said READY=1 on its notify socket. Killed if
/// dropped while it runs.
pub struct DaemonProcess {
    child: Child,
    /// How it exited, once it has and was reaped.
    status: Option<ExitStatus>,
    /// Its stderr.
    log: PathBuf,
}

impl DaemonProcess {
    /// `NSGROUP run --hierarchy MOUNT --root ROOT`, for the caller's further
    /// arguments and settings.
    pub fn command(nsgroup: impl AsRef<OsStr>, mount: &Path, root: &str) -> Command {
        let mut cmd = Command::new(nsgroup);
        cmd.args(["run", "--hierarchy"]).arg(mount).args(["--root", root]);
        cmd
    }

    /// Starts `cmd` (from [`DaemonProcess::command`]) with its notify socket
    /// and its log (`daemon.log`) in `dir`, and waits up to `limit` for its
    /// READY=1.
    pub fn start(mut cmd: Command, dir: &Path, limit: Duration) -> Result<DaemonProcess> {
        let notify = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify);
        let sock = UnixDatagram::bind(&notify).with_context(|| format!("binding {}", notify.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(100))).context("SO_RCVTIMEO on the notify socket")?;
        let log = dir.join("daemon.log");
        let stderr = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .env("NOTIFY_SOCKET", &notify)
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        // From here on, Drop kills it if it does not get ready.
        let mut d = DaemonProcess { child, status: None, log };
        let end = Instant::now() + limit;
        let mut buf = [0u8; 256];
        loop {
            if sock.recv(&mut buf).is_ok_and(|n| buf[..n].windows(7).any(|w| w == b"READY=1")) {
                return Ok(d);
            }
            if let Some(status) = d.exit_status()? {
                bail!("the daemon exited before READY=1 ({status}):\n{}", d.log_text());
            }
            if Instant::now() > end {
                bail!("the daemon was not ready within {limit:?}:\n{}", d.log_text());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How the daemon exited; `None` while it runs.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().with_context(|| format!("waiting for the daemon {}", self.pid()))?;
        }
        Ok(self.status)
    }

    fn wait(&mut self) -> Result<ExitStatus> {
        match self.status {
            Some(status) => Ok(status),
            None => {
                let status = self.child.wait().with_context(|| format!("waiting for the daemon {}", self.pid()))?;
                Ok(*self.status.insert(status))
            }
        }
    }

    /// SIGTERM, unless it has exited.
    fn send_term(&mut self) -> Result<()> {
        if self.exit_status()?.is_none() {
            let pid = rustix::process::Pid::from_raw(self.pid() as i32).context("the daemon's pid")?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .with_context(|| format!("SIGTERM to the daemon {}", self.pid()))?;
        }
        Ok(())
    }

    /// SIGTERM, then waits until the daemon has exited.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.send_term()?;
        self.wait()
    }

    /// SIGTERM, and how long the daemon took to exit: `None` if it did not
    /// within `limit`, when it is killed.
    pub fn terminate_within(&mut self, limit: Duration) -> Result<(Option<Duration>, ExitStatus)> {
        let start = Instant::now();
        self.send_term()?;
        while start.elapsed() < limit {
            if let Some(status) = self.exit_status()? {
                return Ok((Some(start.elapsed()), status));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok((None, self.kill()?))
    }

    /// SIGKILL (while it runs: a crash), then waits until it has exited.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if self.exit_status()?.is_none() {
            self.child.kill().with_context(|| format!("SIGKILL to the daemon {}", self.pid()))?;
        }
        self.wait()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
