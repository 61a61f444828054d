//! The service unit and the Debian package, end to end (root): the daemon
//! under the unit's settings places tasks in a private hierarchy; the package
//! built by packaging/build-deb installs with dpkg, its files land and work,
//! and a purge leaves the machine as it was. The package test is skipped,
//! with the reason, where cargo-deb is missing or nsgroup is installed already.

mod common;
use common::*;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The values of a unit file's `key=` lines, in order.
fn settings<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

/// `program args…` with the settings of `unit` that bound what the daemon may
/// do and need no systemd: its capability bounding set and no_new_privs
/// (setpriv) and its ExecStart arguments. (Its resource limits only raise
/// the defaults; its seccomp filters are systemd's own.)
fn as_the_unit(unit: &str, program: &str) -> Command {
    let caps: Vec<String> = settings(unit, "CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|c| format!("+{}", c.strip_prefix("CAP_").expect("capability names start with CAP_").to_lowercase()))
        .collect();
    assert!(caps.len() >= 5, "{caps:?}");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all,{}", caps.join(",")));
    if settings(unit, "NoNewPrivileges") == ["yes"] {
        cmd.arg("--no-new-privs");
    }
    let exec = settings(unit, "ExecStart");
    let mut words = exec.last().expect("an ExecStart").split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/nsgroup"));
    cmd.arg(program).args(words);
    cmd
}

/// The instance lock file of a daemon on `h`'s root, removed when dropped.
struct LockFile(PathBuf);

impl LockFile {
    fn of(h: &Hier) -> LockFile {
        let dev = std::fs::metadata(&h.mount).unwrap().dev();
        let ino = std::fs::metadata(h.dir(&h.root)).unwrap().ino();
        LockFile(PathBuf::from(format!("/run/nsgroup/{dev}-{ino}.lock")))
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A daemon started by `cmd` on `h`, once it sent READY=1; killed when dropped.
struct UnitDaemon {
    child: Option<Child>,
    _tmp: tempfile::TempDir,
    _lock: LockFile,
}

impl UnitDaemon {
    fn start(h: &Hier, mut cmd: Command) -> UnitDaemon {
        let tmp = tempfile::tempdir().unwrap();
        let sock_path = tmp.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut child = cmd
            .args(["--hierarchy", h.mount.to_str().unwrap(), "--root", &h.root])
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lock = LockFile::of(h);
        let end = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 256];
        loop {
            if sock.recv(&mut buf).is_ok_and(|n| buf[..n].windows(7).any(|w| w == b"READY=1")) {
                return UnitDaemon { child: Some(child), _tmp: tmp, _lock: lock };
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut log = String::new();
                child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
                panic!("{cmd:?} exited before READY=1 ({status}):\n{log}");
            }
            assert!(Instant::now() < end, "{cmd:?}: no READY=1 within 60 s");
        }
    }

    /// SIGTERM; whether it exited successfully.
    fn stop(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        signal(child.id(), rustix::process::Signal::TERM);
        child.wait().unwrap().success()
    }
}

impl Drop for UnitDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `program` as `unit` would on a private hierarchy, with each event
/// source, and checks that it places a task of uid 65534 (another user's
/// /proc entries, a record on the node) and stops cleanly.
fn places_under_the_unit(unit: &str, program: &str) {
    for source in ["bpf", "proc"] {
        let mut h = Hier::new(Kind::V1);
        let mut cmd = as_the_unit(unit, program);
        cmd.args(["--source", source]);
        let daemon = UnitDaemon::start(&h, cmd);
        let root = h.root.clone();
        let p = h.spawn_as_nobody(&root, &["unshare", "--user", "--uts", "sleep", "60"]);
        wait_for(&format!("uid 65534's task placed in its node ({source})"), || h.in_own_node(p.pid, &root));
        let node = h.cgroup_of(p.pid).unwrap();
        assert!(h.record(&node).is_some(), "the node {node} has no record ({source})");
        assert!(daemon.stop(), "the daemon did not stop cleanly on SIGTERM ({source})");
    }
}

#[test]
fn the_units_settings_leave_the_daemon_what_it_needs() {
    if !privileged() {
        return;
    }
    let unit = std::fs::read_to_string(Path::new(REPO).join("packaging/nsgroup.service")).unwrap();
    assert_eq!(settings(&unit, "Type"), ["notify"]);
    places_under_the_unit(&unit, NSGROUP);
}

#[test]
fn cargo_install_installs_nsgroup_alone() {
    let root = tempfile::tempdir().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| Path::new(REPO).join("target"), PathBuf::from);
    let out = Command::new(env!("CARGO"))
        .args(["install", "--quiet", "--locked", "--profile", "dist", "--path", REPO, "--target-dir"])
        .arg(&target)
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo install: {}", text(&out.stderr));
    let bins: Vec<String> =
        std::fs::read_dir(root.path().join("bin")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(bins, ["nsgroup"]);
}

/// Runs a command to completion; its output.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The subcommands `nsgroup --help` lists (without `help`).
fn subcommands(nsgroup: &str) -> Vec<String> {
    let help = text(&run(nsgroup, &["--help"]).stdout);
    let commands = help.split("Commands:\n").nth(1).expect("a Commands section");
    commands
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// `dpkg --purge nsgroup` when dropped (also when the test fails).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let out = run("dpkg", &["--purge", "nsgroup"]);
        if !out.status.success() {
            eprintln!("warning: dpkg --purge nsgroup failed: {}", text(&out.stderr));
        }
    }
}

#[test]
fn the_debian_package_installs_works_and_purges() {
    if !privileged() {
        return;
    }
    if run("dpkg-query", &["-W", "nsgroup"]).status.success() {
        eprintln!("skipped: a package nsgroup is installed on this machine; the test installs and purges its own");
        return;
    }
    let cargo = env!("CARGO");
    if !run(cargo, &["deb", "--version"]).status.success() {
        eprintln!("skipped: cargo-deb is not installed (scripts/setup installs it with `cargo install cargo-deb --locked`)");
        return;
    }
    let built = Command::new(Path::new(REPO).join("packaging/build-deb")).env("CARGO", cargo).output().unwrap();
    assert!(built.status.success(), "packaging/build-deb failed:\n{}", text(&built.stderr));
    let deb = text(&built.stdout).trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "no .deb: {deb:?}");

    let out = run("dpkg", &["-i", &deb]);
    let installed = Installed;
    assert!(out.status.success(), "dpkg -i: {}", text(&out.stderr));
    let version = text(&run("/usr/bin/nsgroup", &["--version"]).stdout);
    assert_eq!(version.trim(), format!("nsgroup {}", env!("CARGO_PKG_VERSION")));
    let unit_path = ["/usr/lib/systemd/system/nsgroup.service", "/lib/systemd/system/nsgroup.service"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("the unit is installed");
    let unit = std::fs::read_to_string(unit_path).unwrap();
    assert_eq!(unit, std::fs::read_to_string(Path::new(REPO).join("packaging/nsgroup.service")).unwrap());
    let config = std::fs::read_to_string("/etc/nsgroup/nsgroup.toml").unwrap();
    assert_eq!(config, std::fs::read_to_string(Path::new(REPO).join("packaging/nsgroup.toml")).unwrap());
    let conffiles = text(&run("dpkg-query", &["-W", "-f", "${Conffiles}", "nsgroup"]).stdout);
    assert!(conffiles.contains("/etc/nsgroup/nsgroup.toml"), "{conffiles}");
    let mut files: Vec<String> = vec![
        "/usr/bin/nsgroup".into(),
        "/usr/share/man/man8/nsgroup.8.gz".into(),
        "/usr/share/bash-completion/completions/nsgroup".into(),
        "/usr/share/zsh/vendor-completions/_nsgroup".into(),
        "/usr/share/fish/vendor_completions.d/nsgroup.fish".into(),
        "/usr/share/doc/nsgroup/operations.md".into(),
    ];
    let subcommands = subcommands("/usr/bin/nsgroup");
    assert!(subcommands.len() >= 3, "{subcommands:?}");
    files.extend(subcommands.iter().map(|s| format!("/usr/share/man/man8/nsgroup-{s}.8.gz")));
    for f in &files {
        assert!(Path::new(f).is_file(), "{f} was not installed");
    }
    if Path::new("/usr/bin/man").exists() {
        let page = text(&run("man", &["-P", "cat", "nsgroup-tree"]).stdout);
        assert!(page.contains("--columns"), "man nsgroup-tree: {page}");
    }
    // The unit as far as it goes without systemd as PID 1: systemd's own
    // check of it, and the installed binary under its settings.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let out = run("systemd-analyze", &["verify", unit_path]);
        assert!(out.status.success() && out.stderr.is_empty(), "systemd-analyze verify: {}", text(&out.stderr));
    } else {
        eprintln!("note: no systemd-analyze here, the unit file is not verified");
    }
    places_under_the_unit(&unit, "/usr/bin/nsgroup");

    drop(installed);
    files.extend(["/etc/nsgroup".to_string(), unit_path.to_string()]);
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
    for state in [
        "/etc/systemd/system/nsgroup.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/nsgroup.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-masked/nsgroup.service",
    ] {
        assert!(std::fs::symlink_metadata(state).is_err(), "{state} left after the purge");
    }
    assert!(!run("dpkg-query", &["-W", "nsgroup"]).status.success(), "still known to dpkg");
}
