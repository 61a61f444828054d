//! The kernel side: loads `bpf/nsgroup.bpf.c` (compiled by build.rs) with aya,
//! attaches its hooks and hands out decoded events.

pub mod event;

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::{BtfTracePoint, FEntry, FExit, Iter, TracePoint};
use std::io::Read;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::sys::hierarchy::Hierarchy;

pub use event::{Event, EventKind, TaskRecord};
pub use crate::config::Hooks;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nsgroup.bpf.o"));

/// The tracked subtree as every BPF object of ours sees it: its
/// `hierarchy_id`, `root_cgroup_id` and `root_level` globals.
#[derive(Clone, Copy, Debug)]
pub struct Subtree {
    /// The tracked hierarchy's id (0: cgroup2).
    pub hierarchy_id: u32,
    /// The tracked subtree's root cgroup id and depth.
    pub root_cgroup_id: u64,
    pub root_level: u32,
}

impl Subtree {
    /// The subtree `root` of `hierarchy`, whose cgroup id is `root_cgroup_id`.
    pub fn at(hierarchy: &Hierarchy, root: &str, root_cgroup_id: u64) -> Subtree {
        Subtree {
            hierarchy_id: hierarchy.hierarchy_id(),
            root_cgroup_id,
            root_level: root.split('/').filter(|c| !c.is_empty()).count() as u32,
        }
    }

    /// A loader for an object of ours: kernel BTF given, the subtree's
    /// globals set.
    pub fn loader<'a>(&'a self, btf: &'a Btf) -> EbpfLoader<'a> {
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(btf))
            .override_global("hierarchy_id", &self.hierarchy_id, true)
            .override_global("root_cgroup_id", &self.root_cgroup_id, true)
            .override_global("root_level", &self.root_level, true);
        loader
    }
}

/// Where the daemon's BPF programs look, and how.
#[derive(Clone, Copy, Debug)]
pub struct Scope {
    pub subtree: Subtree,
    /// The ring buffer's size: a power of two, at least the page size.
    pub ring_buffer_bytes: u32,
    /// The daemon's user namespace (inode): a set's owner is the owner of
    /// its outermost user namespace below this one.
    pub base_user_ns: u64,
    /// How unshare() and setns() callers are seen.
    pub hooks: Hooks,
    /// With [`Hooks::NoSyscall`]: the time between snapshots.
    pub snapshot_interval: Duration,
}

/// Why the BPF side could not start.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the BPF object failed (needs root or CAP_BPF+CAP_PERFMON, and a kernel with BTF): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("reading kernel BTF from /sys/kernel/btf/vmlinux: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("the BPF program {name} did not load or attach: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("the kernel refused the BPF program {name}: {error}. The verifier's last {VERIFIER_TAIL} lines (all of it at debug level):\n{tail}")]
    Verifier { name: &'static str, error: std::io::Error, tail: String },
    #[error("BPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("ring_buffer_bytes must be a power of two of at least 4096, got {0}")]
    RingSize(u32),
    #[error("creating the task iterator: {0}")]
    Iter(aya::programs::links::LinkError),
    #[error("reading the task iterator: {0}")]
    Read(std::io::Error),
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed: {0}")]
    Tracefs(rustix::io::Errno),
}

/// How many of the verifier's last lines a refused program's error keeps.
const VERIFIER_TAIL: usize = 30;

/// `source` as a [`BpfError`]: a verifier log is cut to its last
/// [`VERIFIER_TAIL`] lines in the error (see [`verifier_tail`]).
fn program_error(name: &'static str, source: aya::programs::ProgramError) -> BpfError {
    match source {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            BpfError::Verifier { name, error: io_error, tail: verifier_tail(name, &verifier_log, VERIFIER_TAIL) }
        }
        source => BpfError::Program { name, source },
    }
}

/// The last `lines` lines of the verifier's log of the refused `program`
/// (empty when the kernel refused it before verifying); the whole log goes
/// to the debug level.
pub fn verifier_tail(program: &str, log: &impl std::fmt::Display, lines: usize) -> String {
    let log = log.to_string();
    tracing::debug!(program, verifier_log = %log, "the kernel refused a BPF program");
    last_lines(log.trim_start(), lines).to_string()
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> &str {
    let text = text.trim_end();
    match text.rmatch_indices('\n').nth(n.saturating_sub(1)) {
        Some((at, _)) if n > 0 => &text[at + 1..],
        _ if n == 0 => "",
        _ => text,
    }
}

/// Where syscall tracepoints are found.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs where the kernel documents it, if nothing is mounted there.
fn ensure_tracefs() -> Result<(), BpfError> {
    let path = std::path::Path::new(TRACEFS);
    if path.join("events").exists() || std::path::Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    rustix::mount::mount("nodev", path, "tracefs", rustix::mount::MountFlags::empty(), None).map_err(BpfError::Tracefs)
}

/// `bpf_ringbuf_submit()`'s flag for "do not wake the reader".
const BPF_RB_NO_WAKEUP: u64 = 1;

/// The BTF tracepoints, by program name and tracepoint.
const BTF_HOOKS: [(&str, &str); 3] = [
    ("on_fork", "sched_process_fork"),
    ("on_exec", "sched_process_exec"),
    ("on_exit", "sched_process_exit"),
];
/// The unshare()/setns() hooks preferred: fentry and fexit programs by name,
/// and the kernel function they attach to.
const SYSCALL_FUNCTIONS: [(&str, &str, &str); 2] = [
    ("on_unshare_fentry", "on_unshare_fexit", "ksys_unshare"),
    ("on_setns_fentry", "on_setns_fexit", "__x64_sys_setns"),
];
/// The fallback: the syscall tracepoints, by program name and event.
const SYSCALL_HOOKS: [(&str, &str); 4] = [
    ("on_unshare_enter", "sys_enter_unshare"),
    ("on_unshare_exit", "sys_exit_unshare"),
    ("on_setns_enter", "sys_enter_setns"),
    ("on_setns_exit", "sys_exit_setns"),
];

/// Entries of the `seen` map with no syscall hook: tasks in scope whose set
/// is compared at fork and exec (64 bytes each; beyond, the least recently
/// used wait for the next snapshot).
const SEEN_ENTRIES: u32 = 65536;

/// The loaded, attached programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    stats: Array<MapData, u64>,
    ring_flags: Array<MapData, u64>,
    pending: BpfHashMap<MapData, u32, u8>,
    tracked: BpfHashMap<MapData, u32, u8>,
    hooks: Vec<String>,
    /// With [`Hooks::NoSyscall`]: the time between snapshots.
    snapshots: Option<Duration>,
}

impl Probe {
    /// Loads and attaches every hook.
    pub fn load(scope: Scope) -> Result<Probe, BpfError> {
        let size = scope.ring_buffer_bytes;
        if !size.is_power_of_two() || size < 4096 {
            return Err(BpfError::RingSize(size));
        }
        let btf = Btf::from_sys_fs()?;
        let watching = scope.hooks == Hooks::NoSyscall;
        let mut ebpf = scope
            .subtree
            .loader(&btf)
            .override_global("watch_sets", &u32::from(watching), true)
            .override_global("base_userns", &(scope.base_user_ns as u32), true)
            .map_max_entries("events", size)
            .map_max_entries("seen", if watching { SEEN_ENTRIES } else { 1 })
            .load(OBJECT)?;
        let mut hooks = Vec::new();
        for (name, tp) in BTF_HOOKS {
            let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
            prog.load(tp, &btf).map_err(|source| program_error(name, source))?;
            prog.attach().map_err(|source| program_error(name, source))?;
            hooks.push(format!("tp_btf/{tp}"));
        }
        match scope.hooks {
            Hooks::Auto => match attach_syscall_functions(&mut ebpf, &btf) {
                Ok(attached) => hooks.extend(attached),
                Err(refused) => {
                    hooks.extend(attach_syscall_tracepoints(&mut ebpf)?);
                    hooks.push(format!("(fentry/fexit refused: {refused})"));
                }
            },
            Hooks::Fentry => hooks.extend(attach_syscall_functions(&mut ebpf, &btf)?),
            Hooks::Tracepoints => hooks.extend(attach_syscall_tracepoints(&mut ebpf)?),
            Hooks::NoSyscall => hooks.push(format!(
                "(no syscall hook: sets compared at fork and exec, snapshots every {} ms)",
                scope.snapshot_interval.as_millis()
            )),
        }
        let snapshot: &mut Iter = program(&mut ebpf, "snapshot")?;
        snapshot.load("task", &btf).map_err(|source| program_error("snapshot", source))?;
        hooks.push("iter/task".to_string());
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(BpfError::Map(name, aya::maps::MapError::InvalidName { name: name.into() }))
        };
        let ring = RingBuf::try_from(map(&mut ebpf, "events")?).map_err(|e| BpfError::Map("events", e))?;
        let stats = Array::try_from(map(&mut ebpf, "stats")?).map_err(|e| BpfError::Map("stats", e))?;
        let ring_flags = Array::try_from(map(&mut ebpf, "ring_flags")?).map_err(|e| BpfError::Map("ring_flags", e))?;
        let pending = BpfHashMap::try_from(map(&mut ebpf, "pending")?).map_err(|e| BpfError::Map("pending", e))?;
        let tracked = BpfHashMap::try_from(map(&mut ebpf, "tracked")?).map_err(|e| BpfError::Map("tracked", e))?;
        let snapshots = watching.then_some(scope.snapshot_interval);
        Ok(Probe { ebpf, ring, stats, ring_flags, pending, tracked, hooks, snapshots })
    }

    /// Every task in scope right now, read by the `iter/task` program.
    pub fn snapshot(&mut self) -> Result<Vec<TaskRecord>, BpfError> {
        let name = "snapshot";
        let prog: &mut Iter = program(&mut self.ebpf, name)?;
        let link_id = prog.attach().map_err(|source| program_error(name, source))?;
        let link = prog.take_link(link_id).map_err(|source| program_error(name, source))?;
        let mut file = link.into_file().map_err(BpfError::Iter)?;
        let mut bytes = Vec::with_capacity(1 << 20);
        file.read_to_end(&mut bytes).map_err(BpfError::Read)?;
        Ok(TaskRecord::decode_all(&bytes))
    }

    /// With no syscall hook: how often a snapshot must find the callers
    /// that did not fork or exec since they changed set.
    pub fn snapshot_interval(&self) -> Option<Duration> {
        self.snapshots
    }

    /// The attached hooks, for the start-up log.
    pub fn hooks(&self) -> &[String] {
        &self.hooks
    }

    /// The ring buffer's fd, readable when events wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// Takes up to `max` waiting events; undecodable records are counted in
    /// the second result, never fatal.
    pub fn drain(&mut self, max: usize, out: &mut Vec<Event>) -> usize {
        let mut bad = 0;
        for _ in 0..max {
            let Some(item) = self.ring.next() else { break };
            match Event::decode(&item) {
                Ok(e) => out.push(e),
                Err(_) => bad += 1,
            }
        }
        bad
    }

    /// Whether the programs wake the reader of the ring (the default), or
    /// leave it to look on its own schedule.
    pub fn set_wakeups(&mut self, on: bool) -> Result<(), BpfError> {
        let flags = if on { 0 } else { BPF_RB_NO_WAKEUP };
        self.ring_flags.set(0, flags, 0).map_err(|e| BpfError::Map("ring_flags", e))
    }

    /// Events the kernel could not queue (ring buffer full) since load.
    pub fn dropped(&self) -> u64 {
        self.stats.get(&0, 0).unwrap_or(0)
    }

    /// Events the kernel queued since load.
    pub fn emitted(&self) -> u64 {
        self.stats.get(&1, 0).unwrap_or(0)
    }

    /// The daemon placed `tid`: its children are no longer reported for its sake.
    pub fn settled(&mut self, tid: u32) {
        let _ = self.pending.remove(&tid);
    }

    /// Report `tid`'s exit (it lives in a node).
    pub fn track(&mut self, tid: u32) {
        let _ = self.tracked.insert(tid, 1, 0);
    }
}

/// Attaches fentry/fexit to the unshare() and setns() kernel functions: all
/// or none (what did attach is unloaded again).
fn attach_syscall_functions(ebpf: &mut Ebpf, btf: &Btf) -> Result<Vec<String>, BpfError> {
    let mut hooks = Vec::new();
    let mut attach = |ebpf: &mut Ebpf| -> Result<(), BpfError> {
        for (entry, exit, function) in SYSCALL_FUNCTIONS {
            let prog: &mut FEntry = program(ebpf, entry)?;
            prog.load(function, btf).map_err(|source| program_error(entry, source))?;
            prog.attach().map_err(|source| program_error(entry, source))?;
            let prog: &mut FExit = program(ebpf, exit)?;
            prog.load(function, btf).map_err(|source| program_error(exit, source))?;
            prog.attach().map_err(|source| program_error(exit, source))?;
            hooks.push(format!("fentry+fexit/{function}"));
        }
        Ok(())
    };
    match attach(ebpf) {
        Ok(()) => Ok(hooks),
        Err(e) => {
            for (entry, exit, _) in SYSCALL_FUNCTIONS {
                if let Ok(prog) = program::<FEntry>(ebpf, entry) {
                    let _ = prog.unload();
                }
                if let Ok(prog) = program::<FExit>(ebpf, exit) {
                    let _ = prog.unload();
                }
            }
            Err(e)
        }
    }
}

/// Attaches the syscall tracepoints (every task then takes the slow syscall
/// path while they are enabled).
fn attach_syscall_tracepoints(ebpf: &mut Ebpf) -> Result<Vec<String>, BpfError> {
    ensure_tracefs()?;
    let mut hooks = Vec::new();
    for (name, tp) in SYSCALL_HOOKS {
        let prog: &mut TracePoint = program(ebpf, name)?;
        prog.load().map_err(|source| program_error(name, source))?;
        prog.attach("syscalls", tp).map_err(|source| program_error(name, source))?;
        hooks.push(format!("tracepoint/syscalls/{tp}"));
    }
    Ok(hooks)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(BpfError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into().map_err(|source| program_error(name, source))
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn a_verifier_log_is_cut_to_its_last_lines() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let tail = last_lines(&log, 30);
        assert_eq!(tail.lines().count(), 30);
        assert!(tail.starts_with("line 71\n") && tail.ends_with("line 100"), "{tail}");
        assert_eq!(last_lines("one\ntwo", 30), "one\ntwo");
        assert_eq!(last_lines("one\ntwo\n", 1), "two");
        assert_eq!(last_lines("one", 0), "");
    }
}
