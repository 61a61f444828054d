//! The status file `nsgroup status` reads: what the daemon tracks and how,
//! what its hooks cost this machine, its counters. Written at once the
//! first time and at the first change, then at most every [`STATUS_EVERY`]
//! and only after the counters changed: an idle daemon does not wake for it.

use std::path::PathBuf;
use std::time::Duration;

use tracing::warn;

use super::on_change::OnChange;
use crate::sys::clock::unix_now;
use crate::sys::status_file::{write_atomically, Counters, StatusFile};

/// How often at most the status file is rewritten (only after a change).
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The figure docs/benchmarks.md measured for the syscall tracepoints (its
/// getppid row: 112 ns a call without, 155 ns with, 1.38x in total).
const TRACEPOINT_COST: &str =
    "the syscall tracepoints put every task on the slow syscall path: every syscall of every task pays ~43 ns more (a getppid() loop 1.38x as long, docs/benchmarks.md)";
/// What a hierarchy without favordynmods costs.
const NO_FAVORDYNMODS_COST: &str =
    "the hierarchy is mounted without favordynmods: every placement waits for an RCU grace period (milliseconds) in the kernel";

/// The status file, and when it was written.
pub(super) struct Status {
    path: PathBuf,
    file: StatusFile,
    written: OnChange,
    /// Whether the first change since the first file was written out.
    first_change_written: bool,
}

/// What the status says about the hooks: from the source's description
/// and the mount's options.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Hooks {
    tracepoints: bool,
    favordynmods: bool,
    why: &'static str,
    /// What tracking costs the machine, one line each.
    pub(super) costs: Vec<String>,
}

impl Hooks {
    pub(super) fn of(source: &str, mount_options: &str) -> Hooks {
        let tracepoints = source.contains("tracepoint/syscalls");
        let favordynmods = mount_options.split([',', ' ']).any(|o| o == "favordynmods");
        let mut costs = Vec::new();
        if tracepoints {
            costs.push(TRACEPOINT_COST.to_string());
        }
        if !favordynmods {
            costs.push(NO_FAVORDYNMODS_COST.to_string());
        }
        let why = if source.contains("no syscall hook") {
            "hooks = \"no-syscall\": no syscall is hooked; unshare/setns callers are seen at their next fork or exec, or by the next snapshot"
        } else if source.contains("refused") {
            "fentry/fexit on unshare/setns were refused by the kernel; the syscall tracepoints are the fallback"
        } else if tracepoints {
            "fentry/fexit are unavailable here; the syscall tracepoints are the fallback"
        } else if source.contains("proc connector") {
            "BPF is unavailable or source = \"proc\": the netlink proc connector and /proc rescans"
        } else {
            "the preferred hooks loaded"
        };
        Hooks { tracepoints, favordynmods, why, costs }
    }
}

impl Status {
    pub(super) fn new(path: PathBuf, file: StatusFile) -> Status {
        Status { path, file, written: OnChange::default(), first_change_written: false }
    }

    /// Once the source runs: its `hooks`, and whether the hierarchy is nsgroup's own.
    pub(super) fn started(&mut self, source: String, own_hierarchy: bool, hooks: Hooks) {
        let f = &mut self.file;
        (f.source, f.own_hierarchy, f.syscall_tracepoints, f.favordynmods) = (one_line(&source), own_hierarchy, hooks.tracepoints, hooks.favordynmods);
        (f.hooks_why, f.costs) = (hooks.why.into(), hooks.costs);
    }

    /// After a turn: the first file and the first change (a node made
    /// just after start) written at once; after a later change, how long
    /// until the rewrite (unless one is due already).
    pub(super) fn turn(&mut self, counters: &Counters) -> Option<Duration> {
        let first = self.written.never_ran();
        if first || (!self.first_change_written && self.written.changed(counters)) {
            self.first_change_written = !first;
            self.write(counters);
            return None;
        }
        self.written.arm(counters).then_some(STATUS_EVERY)
    }

    /// Writes the file atomically (a temporary file renamed over it): at
    /// once the first time, then when the rewrite's timer comes.
    pub(super) fn write(&mut self, counters: &Counters) {
        self.file.counters.clone_from(counters);
        self.file.written_unix = unix_now();
        self.written.ran(counters);
        let text = serde_json::to_vec_pretty(&self.file).unwrap_or_default();
        if let Err(e) = write_atomically(&self.path, &text, 0o644) {
            warn!(file = %self.path.display(), error = %e, "writing the status file failed");
        }
    }

    /// At exit: no daemon runs, so no status file.
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `text` on one line: a source's description may carry a multi-line
/// message (the verifier's), which the status shows on one line.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_and_costs_follow_the_source_and_the_mount() {
        let preferred = Hooks::of("bpf: fentry/fexit", "rw,relatime rw,name=x,favordynmods");
        assert_eq!((preferred.why, preferred.costs.len(), preferred.favordynmods), ("the preferred hooks loaded", 0, true));
        let fallback = Hooks::of("bpf: tracepoint/syscalls", "rw rw,cpu");
        assert!(fallback.tracepoints && !fallback.favordynmods);
        assert_eq!(fallback.costs, [TRACEPOINT_COST, NO_FAVORDYNMODS_COST]);
        assert!(fallback.why.contains("unavailable"), "{}", fallback.why);
        assert!(Hooks::of("proc connector", "favordynmods").why.starts_with("BPF is unavailable"));
    }

    #[test]
    fn the_hooks_line_is_one_line() {
        let mut s = Status::new(PathBuf::from("/nonexistent/s.json"), StatusFile::default());
        let source = "tp_btf/x (fentry/fexit refused: the kernel refused the BPF program p: EINVAL. The verifier's last 2 lines:\n0: r1 = 0\n\n1: exit\n)";
        s.started(source.into(), false, Hooks::of(source, ""));
        assert!(!s.file.source.contains('\n'), "{}", s.file.source);
        assert!(s.file.source.ends_with("lines: | 0: r1 = 0 | 1: exit | )"), "{}", s.file.source);
    }

    #[test]
    fn the_first_file_is_written_at_once_then_a_rewrite_waits_for_a_change_and_its_timer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.status.json");
        let mut s = Status::new(path.clone(), StatusFile::default());
        let read = || serde_json::from_slice::<StatusFile>(&std::fs::read(&path).unwrap()).unwrap();
        let mut c = Counters::default();
        assert_eq!(s.turn(&c), None);
        assert_eq!(read().counters.placements, 0);
        assert_eq!(s.turn(&c), None, "nothing changed");
        c.placements = 1;
        assert_eq!(s.turn(&c), None, "the first change is written at once");
        assert_eq!(read().counters.placements, 1);
        c.placements = 2;
        assert_eq!(s.turn(&c), Some(STATUS_EVERY));
        c.placements = 3;
        assert_eq!(s.turn(&c), None, "one timer at a time");
        assert_eq!(read().counters.placements, 1);
        s.write(&c);
        assert_eq!(read().counters.placements, 3);
        assert_eq!(s.turn(&c), None);
        s.remove();
        assert!(!path.exists());
    }
}
