//! The verbs on a node's subtree — freeze, thaw, kill — and controller
//! values (`limit`), through cgroupfs paths only ([`crate::sys::cgroup_dir`]
//! reads and writes them), so that every step is testable on a tempdir
//! fixture without root.
//!
//! - cgroup2: `cgroup.freeze` (then `cgroup.events` says `frozen 1`),
//!   `cgroup.kill` (then `populated 0`); before Linux 5.14 (no
//!   `cgroup.kill`), kill takes freeze/signal/thaw rounds as on v1, and says so.
//! - cgroup v1: the node's `freezer` mirror (`freezer.state`); kill freezes
//!   first so that a forking task cannot escape, signals every task of the
//!   subtree, thaws, and repeats until the subtree is empty. Without a
//!   freezer, kill repeats signal rounds and says what it cannot guarantee.
//!
//! Signals go through [`Signaller`]: the real one ([`PidfdSignaller`]) opens
//! a pidfd, checks that the task is still inside the subtree, and signals the
//! pidfd, so a tid that was reused meanwhile is never hit.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::core::cgpath::within;
use crate::core::escape::Escaped;
use crate::core::limit;
use crate::core::node::MirrorPath;
use crate::sys::cgroup_dir;
use crate::sys::error::IoError;
use crate::sys::hierarchy::Version;
use crate::sys::mounts::Mount;
use crate::sys::procfs::{HierarchyKey, ProcFs};

/// A node's subtree, as the verbs see it.
#[derive(Clone, Debug)]
pub struct Subtree {
    /// The node's directory in the tracked hierarchy.
    pub dir: PathBuf,
    pub version: Version,
    /// cgroup v1: the directory of the node's freezer mirror, if it has one.
    pub freezer: Option<PathBuf>,
}

/// How often to look, and for how long at most.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub poll: Duration,
    pub timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing { poll: Duration::from_millis(2), timeout: Duration::from_secs(10) }
    }
}

/// Why a verb failed.
#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    #[error("{} has no freezer: the tracked hierarchy is cgroup v1 and the node has no `freezer` mirror (add \"freezer\" to the mirrored controllers)", .0.display())]
    NoFreezer(PathBuf),
    #[error("writing \"{value}\" to {}: {source}", path.display())]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{what} within {}s ({})", timeout.as_secs(), Escaped(detail))]
    Timeout { what: &'static str, timeout: Duration, detail: String },
    #[error("\"{}\" is not a controller value nsgroup writes: {why}", Escaped(file))]
    NotALimit { file: String, why: String },
    #[error("value \"{}\" for {file}: {why}", Escaped(value))]
    BadValue { file: String, value: String, why: &'static str },
}

/// What a verb did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// How it was done: `cgroup.freeze`, `cgroup.kill`, `freezer.state`, `signals`.
    pub method: &'static str,
    /// Kill: signal rounds.
    pub rounds: u32,
    /// Kill: tasks signalled.
    pub signalled: u32,
    /// What could not be guaranteed (kill without a freezer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Sends SIGKILL to the process of a task of the subtree.
pub trait Signaller {
    /// Signals task `tid`'s process if the task is still inside the subtree;
    /// `Ok(false)` when it is gone or no longer there.
    fn kill(&mut self, tid: u32) -> io::Result<bool>;
}

/// The real signaller: pidfd of the task's process, a check that the task is
/// still inside the subtree (its cgroup read from /proc after the pidfd was
/// opened), then `pidfd_send_signal`. A process with one thread inside is
/// killed whole: a signal cannot kill one thread.
pub struct PidfdSignaller {
    pub proc: ProcFs,
    pub key: HierarchyKey,
    /// The subtree's cgroup path in the tracked hierarchy.
    pub subtree: String,
}

impl Signaller for PidfdSignaller {
    fn kill(&mut self, tid: u32) -> io::Result<bool> {
        use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
        let Ok(Some(tgid)) = self.proc.tgid(tid) else { return Ok(false) };
        let Some(pid) = Pid::from_raw(tgid as i32) else { return Ok(false) };
        let fd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        // The pidfd names one process for good; it is the one we checked
        // only if it still lives once the check is done.
        match self.proc.cgroup_path(tgid, tid, &self.key) {
            Ok(Some(path)) if within(&path, &self.subtree) => {}
            _ => return Ok(false),
        }
        match pidfd_send_signal(&fd, Signal::KILL) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A write the kernel refused, with the value written.
fn wrote(value: &str) -> impl FnOnce(IoError) -> VerbError + '_ {
    move |e| VerbError::Write { path: e.path, value: value.trim().to_string(), source: e.source }
}

/// A read that failed.
fn unread(e: IoError) -> VerbError {
    VerbError::Read { path: e.path, source: e.source }
}

/// Polls `cond` until it holds or the timeout passes; the last detail names what was seen.
fn wait_until(what: &'static str, timing: Timing, mut cond: impl FnMut() -> Result<(bool, String), VerbError>) -> Result<(), VerbError> {
    let end = Instant::now() + timing.timeout;
    loop {
        let (done, detail) = cond()?;
        if done {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(VerbError::Timeout { what, timeout: timing.timeout, detail });
        }
        std::thread::sleep(timing.poll);
    }
}

/// Freezes every task of the subtree and waits until the kernel says it is frozen.
pub fn freeze(s: &Subtree, timing: Timing) -> Result<Outcome, VerbError> {
    set_frozen(s, true, timing)
}

/// Thaws the subtree and waits until the kernel says it runs.
pub fn thaw(s: &Subtree, timing: Timing) -> Result<Outcome, VerbError> {
    set_frozen(s, false, timing)
}

fn set_frozen(s: &Subtree, frozen: bool, timing: Timing) -> Result<Outcome, VerbError> {
    match s.version {
        Version::V2 => {
            let want = if frozen { "1" } else { "0" };
            cgroup_dir::set_frozen(&s.dir, frozen).map_err(wrote(want))?;
            let what = if frozen { "the subtree did not freeze" } else { "the subtree did not thaw" };
            wait_until(what, timing, || {
                let seen = cgroup_dir::events(&s.dir, "frozen").map_err(unread)?;
                Ok((seen.as_deref() == Some(want), format!("cgroup.events says frozen {}", seen.unwrap_or_default())))
            })?;
            Ok(Outcome { method: "cgroup.freeze", ..Outcome::default() })
        }
        Version::V1 => {
            let Some(dir) = &s.freezer else { return Err(VerbError::NoFreezer(s.dir.clone())) };
            let want = if frozen { "FROZEN" } else { "THAWED" };
            cgroup_dir::set_freezer_state(dir, want).map_err(wrote(want))?;
            let what = if frozen { "the subtree did not freeze" } else { "the subtree did not thaw" };
            wait_until(what, timing, || {
                let seen = cgroup_dir::freezer_state(dir).map_err(unread)?;
                Ok((seen.trim() == want, format!("freezer.state says {}", seen.trim())))
            })?;
            Ok(Outcome { method: "freezer.state", ..Outcome::default() })
        }
    }
}

/// The task ids (v1: threads; cgroup2: processes) of every cgroup at and
/// below `dir`.
pub fn tasks(dir: &Path, version: Version) -> Result<Vec<u32>, VerbError> {
    cgroup_dir::tasks_below(dir, version).map_err(unread)
}

/// One round: signals every task of the subtree; how many were signalled.
fn signal_all(s: &Subtree, signaller: &mut dyn Signaller) -> Result<u32, VerbError> {
    let mut n = 0;
    for tid in tasks(&s.dir, s.version)? {
        match signaller.kill(tid) {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(source) => return Err(VerbError::Write { path: PathBuf::from(format!("/proc/{tid}")), value: "SIGKILL".into(), source }),
        }
    }
    Ok(n)
}

/// What kill cannot promise without a freezer.
pub const NO_FREEZER_WARNING: &str = "no freezer for this node: a task that forks between the read of the task list and its signal can outlive a round, so rounds repeat until the subtree is empty; a task that forks faster than the rounds can keep it from ever emptying (add \"freezer\" to the mirrored controllers for a guarantee)";

/// Why a cgroup2 kill took rounds of signals.
pub const NO_CGROUP_KILL_WARNING: &str = "this kernel has no cgroup.kill (Linux 5.14 and later): the node was frozen, its tasks signalled and thawed, in rounds until it was empty";

/// Kills every task of the subtree and waits until it is empty: with
/// `cgroup.kill` on cgroup2 (Linux 5.14+), else in rounds of freeze,
/// SIGKILL and thaw (a v1 node without freezer: rounds of SIGKILL).
pub fn kill(s: &Subtree, signaller: &mut dyn Signaller, timing: Timing) -> Result<Outcome, VerbError> {
    if s.version == Version::V2 && cgroup_dir::can_kill_all(&s.dir) {
        cgroup_dir::kill_all(&s.dir).map_err(wrote("1"))?;
        wait_until("the subtree did not empty", timing, || {
            if !s.dir.exists() {
                // Emptied, and removed by the daemon's cleanup already.
                return Ok((true, String::new()));
            }
            // Gone meanwhile (its files go with it): emptied and removed.
            let gone = |e: &VerbError| matches!(e, VerbError::Read { source, .. } if crate::sys::error::vanished(source));
            let seen = cgroup_dir::events(&s.dir, "populated").map_err(unread).or_else(|e| if gone(&e) || !s.dir.exists() { Ok(Some("0".into())) } else { Err(e) })?;
            Ok((seen.as_deref() == Some("0"), format!("cgroup.events says populated {}", seen.unwrap_or_default())))
        })?;
        return Ok(Outcome { method: "cgroup.kill", rounds: 1, ..Outcome::default() });
    }
    let can_freeze = s.version == Version::V2 || s.freezer.is_some();
    let warning = match (s.version, can_freeze) {
        (Version::V2, _) => Some(NO_CGROUP_KILL_WARNING),
        (Version::V1, false) => Some(NO_FREEZER_WARNING),
        (Version::V1, true) => None,
    };
    let mut outcome = Outcome {
        method: if can_freeze { "freeze, signals, thaw" } else { "signals" },
        warning: warning.map(str::to_string),
        ..Outcome::default()
    };
    let end = Instant::now() + timing.timeout;
    loop {
        if left(s)? == 0 {
            return Ok(outcome);
        }
        if Instant::now() >= end {
            let left = left(s)?;
            if can_freeze {
                let _ = set_frozen(s, false, timing);
            }
            return Err(VerbError::Timeout {
                what: "the subtree did not empty",
                timeout: timing.timeout,
                detail: format!("{left} tasks left after {} rounds", outcome.rounds),
            });
        }
        outcome.rounds += 1;
        match kill_round(s, signaller, can_freeze, timing, &mut outcome.signalled) {
            Ok(()) => {}
            // Emptied and removed by the daemon's cleanup meanwhile: its
            // files went with it.
            Err(_) if !s.dir.exists() => return Ok(outcome),
            Err(e) => return Err(e),
        }
        // Let the killed tasks leave before looking again.
        let settle = Instant::now() + Duration::from_millis(200).min(timing.timeout);
        while Instant::now() < settle && left(s)? > 0 {
            std::thread::sleep(timing.poll);
        }
    }
}

/// One round of a kill without `cgroup.kill`: freeze (where it can), SIGKILL
/// every task, thaw; counts the tasks signalled into `signalled`.
fn kill_round(s: &Subtree, signaller: &mut dyn Signaller, can_freeze: bool, timing: Timing, signalled: &mut u32) -> Result<(), VerbError> {
    if !can_freeze {
        *signalled += signal_all(s, signaller)?;
        return Ok(());
    }
    set_frozen(s, true, timing)?;
    let result = signal_all(s, signaller);
    // Thawed whatever happened: frozen tasks with SIGKILL pending die now.
    set_frozen(s, false, timing)?;
    *signalled += result?;
    Ok(())
}

/// The tasks left in the subtree; none once it is gone (emptied and removed
/// by the daemon's cleanup).
fn left(s: &Subtree) -> Result<usize, VerbError> {
    match tasks(&s.dir, s.version) {
        Err(_) if !s.dir.exists() => Ok(0),
        r => r.map(|t| t.len()),
    }
}

/// The controller a limit file belongs to (`pids` for `pids.max`), or why
/// it is refused: only the files of [`crate::core::limit::FILES`].
pub fn limit_controller(file: &str) -> Result<&str, VerbError> {
    limit::controller_of(file).ok_or_else(|| {
        let known: Vec<&str> = limit::FILES.iter().map(|(f, _)| *f).collect();
        VerbError::NotALimit { file: file.to_string(), why: format!("known limits: {}", known.join(", ")) }
    })
}

/// Checks a value: printable ASCII, at most 256 bytes, one line ([`limit::value_problem`]).
pub fn check_value(file: &str, value: &str) -> Result<(), VerbError> {
    match limit::value_problem(value) {
        None => Ok(()),
        Some(why) => Err(VerbError::BadValue { file: file.to_string(), value: value.to_string(), why }),
    }
}

/// Writes `value` to `file` in `dir` (checked with [`limit_controller`] and
/// [`check_value`] first); returns the file written.
pub fn write_limit(dir: &Path, file: &str, value: &str) -> Result<PathBuf, VerbError> {
    limit_controller(file)?;
    check_value(file, value)?;
    let path = dir.join(file);
    if !path.exists() {
        return Err(VerbError::Write {
            path: path.clone(),
            value: value.to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file: the controller is not enabled on this node, or not mounted"),
        });
    }
    cgroup_dir::write(&path, value).map_err(wrote(value))?;
    Ok(path)
}

/// Where a node's mirror lives: the v1 cgroup mount holding every one of
/// its controllers, and the mirror's path inside it.
pub fn mirror_dir(mounts: &[Mount], mirror: &MirrorPath) -> Option<PathBuf> {
    let wanted: Vec<&str> = mirror.controllers.split(',').filter(|c| !c.is_empty()).collect();
    let m = mounts.iter().rev().find(|m| {
        m.fstype == "cgroup" && m.root == "/" && !wanted.is_empty() && wanted.iter().all(|c| m.super_opts.iter().any(|o| o == c))
    })?;
    Some(m.mount_point.join(mirror.path.trim_start_matches('/')))
}

/// The directory of the node's mirror whose controllers include `controller`.
pub fn mirror_with(mounts: &[Mount], mirrors: &[MirrorPath], controller: &str) -> Option<PathBuf> {
    mirrors.iter().filter(|m| m.controllers.split(',').any(|c| c == controller)).find_map(|m| mirror_dir(mounts, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::fs;

    /// A fake kernel: killing a tid removes it from every `tasks`/`cgroup.procs` file below.
    struct FakeSignals {
        root: PathBuf,
        file: &'static str,
        killed: HashSet<u32>,
        /// Each kill of this tid makes a new task appear (a forking task), this many times.
        forks: u32,
    }

    impl Signaller for FakeSignals {
        fn kill(&mut self, tid: u32) -> io::Result<bool> {
            self.killed.insert(tid);
            for d in walk(&self.root) {
                let f = d.join(self.file);
                let text = fs::read_to_string(&f)?;
                let mut left: Vec<String> = text.lines().filter(|l| l.trim() != tid.to_string()).map(str::to_string).collect();
                if self.forks > 0 && d == self.root {
                    self.forks -= 1;
                    left.push((tid + 1000).to_string());
                }
                fs::write(&f, left.join("\n"))?;
            }
            Ok(true)
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![dir.to_path_buf()];
        for e in fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }

    fn quick() -> Timing {
        Timing { poll: Duration::from_millis(1), timeout: Duration::from_millis(300) }
    }

    #[test]
    fn cgroup2_freeze_writes_and_waits_for_events() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node_5");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("cgroup.freeze"), "0").unwrap();
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        let s = Subtree { dir: dir.clone(), version: Version::V2, freezer: None };
        assert_eq!(freeze(&s, quick()).unwrap().method, "cgroup.freeze");
        assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "1");
        // The kernel never says thawed: a timeout naming what it saw.
        let e = thaw(&s, quick()).unwrap_err().to_string();
        assert!(e.contains("did not thaw") && e.contains("frozen 1"), "{e}");
    }

    #[test]
    fn cgroup2_kill_uses_cgroup_kill() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::write(dir.join("cgroup.kill"), "").unwrap();
        fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        let s = Subtree { dir: dir.clone(), version: Version::V2, freezer: None };
        let mut sig = FakeSignals { root: dir.clone(), file: "cgroup.procs", killed: HashSet::new(), forks: 0 };
        assert_eq!(kill(&s, &mut sig, quick()).unwrap().method, "cgroup.kill");
        assert_eq!(fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
    }

    #[test]
    fn v1_kill_freezes_signals_every_task_below_and_thaws() {
        let tmp = tempfile::tempdir().unwrap();
        let node = tmp.path().join("t/node_5");
        fs::create_dir_all(node.join("node_6")).unwrap();
        fs::write(node.join("tasks"), "5\n7\n").unwrap();
        fs::write(node.join("node_6/tasks"), "6\n").unwrap();
        let freezer = tmp.path().join("freezer/node_5");
        fs::create_dir_all(&freezer).unwrap();
        fs::write(freezer.join("freezer.state"), "THAWED\n").unwrap();
        let s = Subtree { dir: node.clone(), version: Version::V1, freezer: Some(freezer.clone()) };
        // A fake freezer answers at once: the state file holds what was written.
        let mut sig = FakeSignals { root: node.clone(), file: "tasks", killed: HashSet::new(), forks: 1 };
        let out = kill(&s, &mut sig, quick()).unwrap();
        assert_eq!(out.method, "freeze, signals, thaw");
        assert!(out.warning.is_none());
        assert_eq!(sig.killed, HashSet::from([5, 6, 7, 1005]), "the task forked during round one is killed in round two");
        assert_eq!(out.rounds, 2);
        assert_eq!(fs::read_to_string(freezer.join("freezer.state")).unwrap(), "THAWED");
        assert!(tasks(&node, Version::V1).unwrap().is_empty());
    }

    #[test]
    fn v1_without_freezer_kills_and_says_what_it_cannot_guarantee() {
        let tmp = tempfile::tempdir().unwrap();
        let node = tmp.path().to_path_buf();
        fs::write(node.join("tasks"), "5\n").unwrap();
        let s = Subtree { dir: node.clone(), version: Version::V1, freezer: None };
        let mut sig = FakeSignals { root: node.clone(), file: "tasks", killed: HashSet::new(), forks: 0 };
        let out = kill(&s, &mut sig, quick()).unwrap();
        assert_eq!(out.method, "signals");
        assert!(out.warning.unwrap().contains("no freezer"));
        let e = freeze(&s, quick()).unwrap_err().to_string();
        assert!(e.contains("has no freezer") && e.contains("\"freezer\""), "{e}");
    }

    #[test]
    fn a_subtree_removed_meanwhile_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("node_5");
        assert!(tasks(&gone, Version::V1).unwrap().is_empty());
        let s = Subtree { dir: gone.clone(), version: Version::V2, freezer: None };
        fs::create_dir(&gone).unwrap();
        fs::write(gone.join("cgroup.kill"), "").unwrap();
        // The kernel empties it and the daemon removes it before kill looks.
        let remover = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            fs::remove_dir_all(&gone).unwrap();
        });
        let mut sig = FakeSignals { root: tmp.path().to_path_buf(), file: "cgroup.procs", killed: HashSet::new(), forks: 0 };
        fs::write(tmp.path().join("cgroup.procs"), "").unwrap();
        let _ = fs::write(s.dir.join("cgroup.events"), "populated 1\n");
        assert_eq!(kill(&s, &mut sig, quick()).unwrap().method, "cgroup.kill");
        remover.join().unwrap();
    }

    #[test]
    fn a_subtree_removed_during_a_round_is_killed() {
        // cgroup2 before 5.14: rounds. The daemon removes the node once the
        // signal emptied it, before the round's thaw.
        let tmp = tempfile::tempdir().unwrap();
        let node = tmp.path().join("node_5");
        fs::create_dir(&node).unwrap();
        fs::write(node.join("cgroup.procs"), "5\n").unwrap();
        fs::write(node.join("cgroup.freeze"), "0").unwrap();
        fs::write(node.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        struct Cleanup(PathBuf);
        impl Signaller for Cleanup {
            fn kill(&mut self, _: u32) -> io::Result<bool> {
                fs::remove_dir_all(&self.0)?;
                Ok(true)
            }
        }
        let s = Subtree { dir: node.clone(), version: Version::V2, freezer: None };
        let out = kill(&s, &mut Cleanup(node), quick()).unwrap();
        assert_eq!((out.method, out.rounds), ("freeze, signals, thaw", 1));
    }

    #[test]
    fn kill_gives_up_after_the_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let node = tmp.path().to_path_buf();
        fs::write(node.join("tasks"), "5\n").unwrap();
        let s = Subtree { dir: node.clone(), version: Version::V1, freezer: None };
        struct Immortal;
        impl Signaller for Immortal {
            fn kill(&mut self, _: u32) -> io::Result<bool> {
                Ok(false)
            }
        }
        let e = kill(&s, &mut Immortal, quick()).unwrap_err().to_string();
        assert!(e.contains("did not empty") && e.contains("1 tasks left"), "{e}");
    }

    #[test]
    fn limits_are_an_allowlist() {
        assert_eq!(limit_controller("pids.max").unwrap(), "pids");
        assert_eq!(limit_controller("cpu.cfs_quota_us").unwrap(), "cpu");
        assert_eq!(limit_controller("hugetlb.2MB.max").unwrap(), "hugetlb");
        for f in ["cgroup.procs", "tasks", "release_agent", "notify_on_release", "cgroup.subtree_control", "../x", "pids.max/../x", "hugetlb..max", "memory.max.x"] {
            assert!(limit_controller(f).is_err(), "{f}");
        }
        assert!(check_value("pids.max", "8").is_ok());
        assert!(check_value("pids.max", "8\n9").is_err());
        assert!(check_value("pids.max", "").is_err());
        assert!(check_value("pids.max", &"9".repeat(300)).is_err());
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("pids.max"), "max").unwrap();
        assert_eq!(write_limit(tmp.path(), "pids.max", "8").unwrap(), tmp.path().join("pids.max"));
        assert_eq!(fs::read_to_string(tmp.path().join("pids.max")).unwrap(), "8");
        let e = write_limit(tmp.path(), "memory.max", "1G").unwrap_err().to_string();
        assert!(e.contains("not enabled"), "{e}");
    }

    #[test]
    fn mirrors_are_found_by_controllers() {
        let mounts = crate::sys::mounts::parse_mountinfo(
            "1 0 0:1 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n2 0 0:2 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        let m = |c: &str, p: &str| MirrorPath { controllers: c.into(), path: p.into() };
        assert_eq!(mirror_dir(&mounts, &m("freezer", "/j/node_5")), Some(PathBuf::from("/sys/fs/cgroup/freezer/j/node_5")));
        let mirrors = [m("cpu,cpuacct", "/a/node_5"), m("freezer", "/b/node_5")];
        assert_eq!(mirror_with(&mounts, &mirrors, "cpu"), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a/node_5")));
        assert_eq!(mirror_with(&mounts, &mirrors, "freezer"), Some(PathBuf::from("/sys/fs/cgroup/freezer/b/node_5")));
        assert_eq!(mirror_with(&mounts, &mirrors, "pids"), None);
    }
}
