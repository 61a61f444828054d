//! Strict mode: loads `bpf/lsm.bpf.c` (compiled by build.rs) with aya and
//! attaches its LSM programs, which enforce the permission model on direct
//! writes to the tracked hierarchy's `cgroup.procs`/`tasks`/`cgroup.threads`
//! and on `mkdir`s there (the programs, their rules and counters:
//! [`crate::policy::strict`]).
//!
//! It needs Linux 6.0 or later built with `CONFIG_BPF_LSM=y` and
//! `CONFIG_DEBUG_INFO_BTF=y`, booted with `bpf` among its LSMs (`lsm=…,bpf`
//! on the command line, or `CONFIG_LSM` containing it), and a kernel that
//! lets BPF LSM programs load and their trampolines attach. [`Strict::load`]
//! checks each of these in turn and says which one fails.

use std::path::Path;

use aya::maps::{Array, MapData};
use aya::programs::{Lsm, ProgramError};
use aya::util::KernelVersion;
use aya::{Btf, Ebpf};
use tracing::info;

use crate::bpf::{verifier_tail, Subtree};
use crate::policy::strict::{Hook, HOOKS};
use crate::sys::hierarchy::Hierarchy;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lsm.bpf.o"));

/// Where the active LSMs are listed (securityfs).
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// The counters, by index (`strict_stats` in bpf/lsm.bpf.c).
pub use crate::policy::strict::COUNTERS;

/// What the programs need to know.
#[derive(Clone, Copy, Debug)]
pub struct StrictScope {
    pub subtree: Subtree,
    pub daemon_tgid: u32,
    pub own_user_ns: u32,
}

impl StrictScope {
    /// The scope of a daemon tracking `root` of `hierarchy`, in user namespace `user_ns`.
    pub fn of(hierarchy: &Hierarchy, root: &str, user_ns: u64) -> Result<StrictScope, String> {
        let root_cgroup_id = hierarchy.id(root).map_err(|e| e.to_string())?;
        Ok(StrictScope {
            subtree: Subtree::at(hierarchy, root, root_cgroup_id),
            daemon_tgid: std::process::id(),
            own_user_ns: u32::try_from(user_ns).map_err(|_| format!("user namespace inode {user_ns} does not fit 32 bits"))?,
        })
    }
}

/// Why strict mode cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    #[error("strict mode is for x86_64 only (its LSM program reads x86_64 syscall arguments)")]
    Arch,
    #[error("cannot tell whether BPF LSM programs run: reading {LSM_LIST} failed ({0}); mount securityfs there")]
    LsmList(String),
    #[error("strict mode needs Linux {MIN_KERNEL} or later (its LSM program reads struct cgroup's `ancestors`, new in 6.0, and calls bpf_task_pt_regs, new in 5.15); this kernel is {0}")]
    TooOld(String),
    #[error("BPF LSM programs do not run on this kernel: `bpf` is not among the active LSMs ({LSM_LIST}: {0}); boot with lsm=<the list>,bpf on a kernel built with CONFIG_BPF_LSM=y")]
    NotActive(String),
    #[error("reading kernel BTF from /sys/kernel/btf/vmlinux (strict mode needs CONFIG_DEBUG_INFO_BTF=y): {0}")]
    Btf(#[from] aya::BtfError),
    #[error("loading the LSM object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel refused to load the LSM program for {hook} before verifying it ({source}); LSM programs are refused on this kernel")]
    Refused { hook: &'static str, source: std::io::Error },
    #[error("the kernel's verifier rejected the LSM program for {hook} ({source}), a bug in bpf/lsm.bpf.c for this kernel; the verifier's last lines:\n{log}")]
    Verifier { hook: &'static str, source: std::io::Error, log: String },
    #[error("attaching the LSM program to {hook} failed: {source}; LSM programs are refused on this kernel (they attach through a BPF trampoline)")]
    Attach { hook: &'static str, source: ProgramError },
    #[error("preparing the LSM program for {hook}: {source}")]
    Program { hook: &'static str, source: ProgramError },
    #[error("the LSM object lacks {0}")]
    Missing(&'static str),
}

/// The oldest kernel strict mode runs on.
const MIN_KERNEL: KernelVersion = KernelVersion::new(6, 0, 0);

/// How many of the verifier's last lines a refusal quotes.
const VERIFIER_LINES: usize = 12;

/// A failed `Lsm::load`, by what it says about the kernel: refused before
/// the verifier ran (no log), or rejected by the verifier.
fn load_error(hook: &'static str, error: ProgramError) -> StrictError {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => match verifier_tail(hook, &verifier_log, VERIFIER_LINES) {
            log if log.trim().is_empty() => StrictError::Refused { hook, source: io_error },
            log => StrictError::Verifier { hook, source: io_error, log },
        },
        source => StrictError::Program { hook, source },
    }
}

/// The running kernel's release (`uname -r`).
fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|e| format!("unknown ({e})"), |r| r.trim().to_string())
}

/// The loaded, attached programs; detached when dropped.
pub struct Strict {
    ebpf: Ebpf,
}

/// The active LSMs, from `LSM_LIST` (where securityfs is not mounted, it is
/// mounted for the read and unmounted again).
pub fn active_lsms() -> Result<String, StrictError> {
    let path = Path::new(LSM_LIST);
    let mounted = !path.exists()
        && rustix::mount::mount("securityfs", "/sys/kernel/security", "securityfs", rustix::mount::MountFlags::empty(), None).is_ok();
    let text = std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| StrictError::LsmList(e.to_string()));
    if mounted {
        let _ = rustix::mount::unmount("/sys/kernel/security", rustix::mount::UnmountFlags::empty());
    }
    text
}

impl Strict {
    /// Checks that BPF LSM programs can run, then loads and attaches them.
    pub fn load(scope: StrictScope) -> Result<Strict, StrictError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(StrictError::Arch);
        }
        match KernelVersion::current() {
            Ok(v) if v < MIN_KERNEL => return Err(StrictError::TooOld(release())),
            // Unparsable versions are left to the loader to judge.
            _ => {}
        }
        let lsms = active_lsms()?;
        if !lsms.split(',').any(|l| l == "bpf") {
            return Err(StrictError::NotActive(lsms));
        }
        let btf = Btf::from_sys_fs()?;
        let mut ebpf = scope
            .subtree
            .loader(&btf)
            .override_global("daemon_tgid", &scope.daemon_tgid, true)
            .override_global("own_user_ns", &scope.own_user_ns, true)
            .load(OBJECT)?;
        for Hook { program: name, hook, .. } in HOOKS {
            let program = ebpf.program_mut(name).ok_or(StrictError::Missing(name))?;
            let lsm: &mut Lsm = program.try_into().map_err(|source| StrictError::Program { hook, source })?;
            lsm.load(hook, &btf).map_err(|e| load_error(hook, e))?;
            lsm.attach().map_err(|source| StrictError::Attach { hook, source })?;
        }
        Ok(Strict { ebpf })
    }

    /// The hooks attached.
    pub fn describe(&self) -> String {
        HOOKS.iter().map(|h| format!("lsm/{}", h.hook)).collect::<Vec<_>>().join(", ")
    }

    /// The counters so far: passes, refusals by rule, unreadable writes.
    pub fn counters(&mut self) -> Vec<(&'static str, u64)> {
        let Some(map) = self.ebpf.map_mut("strict_stats") else { return Vec::new() };
        let Ok(array) = Array::<&mut MapData, u64>::try_from(map) else { return Vec::new() };
        COUNTERS.iter().enumerate().map(|(i, name)| (*name, array.get(&(i as u32), 0).unwrap_or(0))).collect()
    }
}

impl Drop for Strict {
    /// Logs the counters as the programs are detached.
    fn drop(&mut self) {
        let c: Vec<u64> = self.counters().into_iter().map(|(_, n)| n).collect();
        if let [passed, other_cap, other_below, empty, child, create_cap, create_below, unreadable] = c[..] {
            info!(
                passed,
                attach.other_needs_cap_sys_admin = other_cap,
                attach.other_below_mover = other_below,
                attach.empty_only = empty,
                attach.child_only = child,
                create.needs_cap_sys_admin = create_cap,
                create.below_creator = create_below,
                unreadable_write = unreadable,
                "strict mode: detached; direct writes passed and refused by rule"
            );
        }
    }
}
