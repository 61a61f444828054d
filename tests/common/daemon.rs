//! The real daemon on a test's hierarchy (the shared [`DaemonProcess`] with
//! the tests' settings and a directory of its own), `nsgroup tree` on it,
//! the daemon with an API socket, and copies of the binaries every user can
//! run.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::harness::{api_config, DaemonProcess};
use super::{cpu_seconds, signal, wait_for, Hier, NSGROUP, WORKLOAD};

/// The real daemon, started with `--hierarchy` and `--root` of a test
/// hierarchy. Killed when dropped; its log is shown then if the test failed.
pub struct Daemon {
    process: DaemonProcess,
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
        let mut cmd = DaemonProcess::command(NSGROUP, mount, root);
        cmd.args(own_history).args(own_api).args(extra).env("NSGROUP_LOG", "nsgroup=debug").stdout(Stdio::null());
        let process = DaemonProcess::start(cmd, tmp.path(), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
        Daemon { process, _tmp: tmp }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The log lines containing `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.process.terminate().unwrap()
    }

    /// SIGTERM, and the exit status if it exits within `limit`; otherwise
    /// `None` (and it is killed).
    pub fn stop_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let (took, status) = self.process.terminate_within(limit).unwrap();
        took.map(|_| status)
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        self.process.kill().unwrap();
    }

    /// Whether the daemon still runs.
    pub fn running(&mut self) -> bool {
        self.process.exit_status().unwrap().is_none()
    }

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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.process.kill();
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log_text());
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

/// A daemon with its own API socket (tests/api.rs, tests/api_capacity.rs).
pub struct Api {
    pub daemon: Daemon,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Api {
    /// Starts the daemon on `h` with `[api] socket` in a directory every user
    /// may traverse, plus `extra` configuration (top-level keys first, then
    /// tables) and `api_extra` (more of `[api]`).
    pub fn start(h: &Hier, extra: &str, api_extra: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755)).unwrap();
        let (config, socket) = api_config(dir.path(), extra, api_extra).unwrap();
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
