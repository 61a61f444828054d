//! The crate's only `unsafe` code: process creation for the workload
//! generators (tests and benchmarks), the daemon's scheduling and memory
//! housekeeping, and the nsfs ioctls that name a user namespace's owner.
#![allow(unsafe_code)]

use std::io;

use rustix::thread::UnshareFlags;

/// Who we are after a fork.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    Parent { child: u32 },
    Child,
}

fn single_threaded() -> io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads == 1 {
        Ok(())
    } else {
        Err(io::Error::other(format!("refusing to fork a process with {threads} threads")))
    }
}

/// Enters new namespaces (`CLONE_NEW*` flags only).
pub fn unshare_namespaces(flags: UnshareFlags) -> io::Result<()> {
    if flags.intersects(UnshareFlags::FILES | UnshareFlags::FS | UnshareFlags::SYSVSEM) {
        return Err(io::Error::other("only namespace flags may be unshared here"));
    }
    // SAFETY: the only hazard of unshare(2) is CLONE_FILES (threads observing
    // fds of another table), excluded above.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// fork(2), refused unless the caller is single-threaded.
pub fn fork() -> io::Result<Forked> {
    single_threaded()?;
    // SAFETY: with one thread, the child is an exact copy with no lock held
    // by another thread, so any code may run in it.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { child: pid as u32 }),
    }
}

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3(2) without CLONE_VM (a fork) with extra `CLONE_NEW*` flags; with
/// `pid`, the child gets that host pid (needs CAP_SYS_ADMIN). Refused unless
/// the caller is single-threaded.
pub fn clone3(ns_flags: u64, pid: Option<u32>) -> io::Result<Forked> {
    clone3_into(ns_flags, pid.as_slice(), None)
}

/// clone3(2) as [`clone3`], with the child's pids chosen per pid namespace
/// (`pids[0]` innermost, as `set_tid`), and with `cgroup`, born in that
/// cgroup2 directory (`CLONE_INTO_CGROUP`): its first instruction runs there.
pub fn clone3_into(ns_flags: u64, pids: &[u32], cgroup: Option<std::os::fd::BorrowedFd<'_>>) -> io::Result<Forked> {
    use std::os::fd::AsRawFd;
    single_threaded()?;
    const NS_FLAGS: u64 = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWCGROUP) as u64;
    if ns_flags & !NS_FLAGS != 0 {
        return Err(io::Error::other("only CLONE_NEW* flags are accepted"));
    }
    let set_tid: Vec<libc::pid_t> = pids.iter().map(|&p| p as libc::pid_t).collect();
    let args = CloneArgs {
        flags: ns_flags | cgroup.map_or(0, |_| CLONE_INTO_CGROUP),
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if set_tid.is_empty() { 0 } else { set_tid.as_ptr() as u64 },
        set_tid_size: set_tid.len() as u64,
        cgroup: cgroup.map_or(0, |fd| fd.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    // SAFETY: without CLONE_VM, clone3 forks: the child gets a copy of the
    // address space, so (single-threaded, as checked) it may run any code;
    // `args` and `set_tid` outlive the call and `args` has the size passed;
    // the cgroup fd is borrowed for the call.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { child: pid as u32 }),
    }
}

/// Returns freed heap memory to the kernel (after the one-off BTF parse at start).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap bookkeeping; it takes no
    // pointers from the caller.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A scheduling class for the calling process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// SCHED_FIFO at this priority (1 = the lowest real-time priority): it
    /// runs as soon as an event wakes it.
    Fifo(u32),
    /// The normal scheduler (SCHED_OTHER) at nice `nice`, asking for a time
    /// slice of `slice_ns` (0: the kernel's default). From Linux 6.12 a
    /// task with a shorter slice than the running one preempts it when it
    /// wakes (EEVDF); earlier kernels ignore the request.
    Fair { nice: i32, slice_ns: u64 },
}

/// `struct sched_attr` (include/uapi/linux/sched/types.h), its first
/// version (48 bytes): the fields every kernel since 3.14 knows.
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Puts the calling thread under `class` (sched_setattr(2)).
pub fn set_scheduling(class: Scheduling) -> io::Result<()> {
    let (policy, nice, priority, runtime) = match class {
        Scheduling::Fifo(p) => (libc::SCHED_FIFO as u32, 0, p, 0),
        Scheduling::Fair { nice, slice_ns } => (libc::SCHED_OTHER as u32, nice, 0, slice_ns),
    };
    let attr = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, policy, flags: 0, nice, priority, runtime, deadline: 0, period: 0 };
    // SAFETY: `attr` is a valid sched_attr of the size it states that
    // outlives the call; pid 0 is the calling thread; flags must be 0.
    match unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `NS_GET_PARENT` and `NS_GET_OWNER_UID` (linux/nsfs.h): `_IO(0xb7, 2)`, `_IO(0xb7, 4)`.
const NS_GET_PARENT: libc::c_ulong = 0xb702;
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;

/// The parent of the user namespace `ns` (an open nsfs descriptor);
/// `EPERM` when the parent lies outside the caller's user namespace.
pub fn user_ns_parent(ns: std::os::fd::BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: NS_GET_PARENT takes no argument and returns a new descriptor
    // (or -1), which nothing else owns.
    match unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_PARENT) } {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        fd => Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
    }
}

/// The uid (in the caller's user namespace) that created the user namespace `ns`.
pub fn user_ns_owner(ns: std::os::fd::BorrowedFd<'_>) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which
    // points at a live local of that type.
    match unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_OWNER_UID, &mut uid as *mut libc::uid_t) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(uid),
    }
}

/// Makes `cmd` move itself into the cgroup whose `cgroup.procs` is `procs`
/// (opened now) between fork and exec: every task it forks is born there.
pub fn spawn_into_cgroup(cmd: &mut std::process::Command, procs: std::fs::File) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls write(2) on a
    // descriptor opened before the fork; no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            use std::io::Write;
            (&procs).write_all(b"0\n")
        });
    }
}
