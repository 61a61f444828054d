//! Hardening of the command line, end to end: one daemon per hierarchy and
//! root, one strict rule for --root, trusted configuration files, escaped
//! output, and errors said once.

mod common;
use common::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs nsgroup to completion; one that is still running after 10 s is
/// killed and fails the test.
fn nsgroup(args: &[&str]) -> Output {
    let mut child = Command::new(NSGROUP)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("nsgroup {args:?} still running after 10 s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mount(h: &Hier) -> &str {
    h.mount.to_str().unwrap()
}

/// The instance lock file of a root (`/run/nsgroup/<dev>-<ino>.lock`),
/// removed when dropped: the daemon leaves it, as a lock file must.
struct LockFile(PathBuf);

impl LockFile {
    fn of(h: &Hier, root: &str) -> LockFile {
        let dev = std::fs::metadata(&h.mount).unwrap().dev();
        let ino = std::fs::metadata(h.dir(root)).unwrap().ino();
        LockFile(PathBuf::from(format!("/run/nsgroup/{dev}-{ino}.lock")))
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap().trim().to_string()
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A cgroup the test made outside the Hier's root, removed when dropped.
struct Sibling(PathBuf);

impl Drop for Sibling {
    fn drop(&mut self) {
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A daemon on another root of `h`'s hierarchy, once it is tracking; killed
/// when dropped.
struct OtherDaemon {
    child: std::process::Child,
    _log_dir: tempfile::TempDir,
}

impl OtherDaemon {
    fn start(h: &Hier, root: &str) -> OtherDaemon {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("daemon.log");
        let child = Command::new(NSGROUP)
            .args(["run", "--history-database", "", "--hierarchy", mount(h), "--root", root])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = OtherDaemon { child, _log_dir: tmp };
        wait_for("the other daemon tracking", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("the daemon on {root} exited ({status}):\n{text}");
            }
            text.contains("nsgroup is tracking")
        });
        d
    }
}

impl Drop for OtherDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_daemon_per_hierarchy_and_root() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let lock = LockFile::of(&h, &h.root);
    let d = Daemon::start(&h, &[]);
    assert_eq!(lock.pid(), d.pid().to_string());

    // The same root, spelt with a trailing slash: refused at once.
    let started = Instant::now();
    let out = nsgroup(&["run", "--hierarchy", mount(&h), "--root", "/t/"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = stderr(&out);
    let want = format!("another nsgroup (pid {}) already manages {} root /t (lock {})", d.pid(), mount(&h), lock.0.display());
    assert!(err.contains(&want), "{err}");
    assert_eq!(lock.pid(), d.pid().to_string(), "the refused one leaves the pid alone");

    // The first keeps placing.
    let p = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    h.expect_in(p.pid, &h.path(&format!("node_{}", p.pid)));

    // Another root of the same hierarchy has a lock of its own.
    let sibling = Sibling(h.dir("/u"));
    std::fs::create_dir(&sibling.0).unwrap();
    let other_lock = LockFile::of(&h, "/u");
    let other = OtherDaemon::start(&h, "/u");
    assert_eq!(other_lock.pid(), other.child.id().to_string());
    assert_ne!(other_lock.0, lock.0);
}

#[test]
fn a_root_with_a_trailing_slash_is_canonicalised_and_placed_in() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    let _lock = LockFile::of(&h, &h.root);
    h.root = "/t/".into();
    let d = Daemon::start(&h, &[]);
    h.root = "/t".into();
    let p = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    h.expect_in(p.pid, &h.path(&format!("node_{}", p.pid)));
    assert!(!d.log_text().contains("root=/t/"), "{}", d.log_text());
}

#[test]
fn every_subcommand_takes_root_by_one_rule() {
    if !privileged() {
        return;
    }
    let h = Hier::new(Kind::V1);
    for cmd in ["run", "tree", "check"] {
        let out = nsgroup(&[cmd, "--hierarchy", mount(&h), "--root", "/t/../t"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("has a `..` component"), "{cmd}: {}", stderr(&out));
        let out = nsgroup(&[cmd, "--hierarchy", mount(&h), "--root", "t"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("must start with /"), "{cmd}: {}", stderr(&out));
        let out = nsgroup(&[cmd, "--hierarchy", mount(&h), "--root", "/nope"]);
        // check's 1 means "does not hold": its failures to run exit 2.
        let failure = if cmd == "check" { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(failure), "{cmd}: {}", stderr(&out));
        let want = format!("cgroup /nope does not exist in {}", mount(&h));
        assert!(stderr(&out).contains(&want), "{cmd}: {}", stderr(&out));
    }
    let out = nsgroup(&["tree", "--hierarchy", mount(&h), "--root", "//t/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/t  ("), "{}", String::from_utf8_lossy(&out.stdout));
    let out = nsgroup(&["check", "--hierarchy", mount(&h), "--root", "/t/"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn config_files_others_may_write_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nsgroup.toml");
    std::fs::write(&path, "max_depth = 3\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = nsgroup(&["check", "--config", path.to_str().unwrap(), "--hierarchy", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2), "check could not run");
    let want = format!("config {} is writable by group and others (mode 0666); chmod go-w it", path.display());
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn errors_name_their_cause_once() {
    let out = nsgroup(&["run", "--config", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let os = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(err.matches(&os).count(), 1, "{err}");
    assert!(err.contains("/nonexistent.toml"), "{err}");
}

#[test]
fn odd_cgroup_names_are_shown_escaped() {
    if !privileged() {
        return;
    }
    let mut h = Hier::new(Kind::V1);
    // The kernel refuses a newline in a cgroup name; a carriage return and
    // terminal sequences it takes.
    let odd = h.path("x\u{1b}[31my\rz");
    std::fs::create_dir(h.dir(&odd)).unwrap();
    let text = tree(&h, &["--all"]);
    assert!(!text.contains(['\u{1b}', '\r']), "{text:?}");
    assert!(text.contains("x\\x1b[31my\\rz  ("), "{text}");

    // A task in another set, in the odd cgroup, without a daemon: misplaced.
    let p = h.spawn(&["unshare", "--uts", "sleep", "60"]);
    wait_for("unshare to exec sleep", || std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).is_ok_and(|c| c == "sleep\n"));
    std::fs::write(h.dir(&odd).join("tasks"), p.pid.to_string()).unwrap();
    let out = nsgroup(&["check", "--hierarchy", mount(&h), "--root", &h.root]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(['\u{1b}', '\r']), "{text:?}");
    let want = format!("misplaced: {} sleep in /t/x\\x1b[31my\\rz, belongs in", p.pid);
    assert!(text.contains(&want), "{text}");
    h.kill_all();
    std::fs::remove_dir(h.dir(&odd)).unwrap();
}
