//! `nsgroup exec`: a command in new namespaces, in a fresh node of its own
//! from its first instruction. The node `node_<pid>` is made first (with its
//! record and limits), then the child is cloned with that very pid
//! (`set_tid`): on cgroup2 born in the node (`CLONE_INTO_CGROUP`), on v1
//! moved in while it waits. It execs only once its node, mirrors and record
//! are complete. A running daemon finds the record and adopts the node.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;

use crate::core::limit::Limit;
use crate::control::mirror::Mirror;
use crate::core::cgpath::join;
use crate::core::naming;
use crate::core::node::{Node, NodeRecord};
use crate::core::nsset::{NsKind, NsSet};
use crate::ffi::{clone3_into, Forked};
use crate::sys::clock::unix_now;
use crate::sys::cgroupfs::{CgroupBackend, CgroupWriter, Created};
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::error::IoError;
use crate::sys::procfs::ProcFs;

/// How many pids are tried for the child before giving up (each taken one
/// was allocated to another task between the look and the clone).
const PID_ATTEMPTS: u32 = 64;

/// What `nsgroup exec` runs.
pub struct ExecSpec {
    /// The namespace kinds the command gets new ones of.
    pub unshare: Vec<NsKind>,
    /// Values for the node (cgroup2 files; v1 equivalents in mirrors).
    pub limits: Vec<Limit>,
    /// The command and its arguments.
    pub argv: Vec<OsString>,
}

/// Why the command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("this process is in no cgroup of {0} (is the hierarchy mounted here?)")]
    NoCgroup(String),
    #[error("no free pid for the command's node after {PID_ATTEMPTS} tries")]
    NoPid,
    #[error("{0} cannot be unshared into by exec (use unshare for it)")]
    Kind(&'static str),
    #[error("clone3: {0}")]
    Clone(std::io::Error),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The `CLONE_NEW*` flag of a kind.
fn clone_flag(kind: NsKind) -> Result<u64, ExecError> {
    Ok(match kind {
        NsKind::Cgroup => libc::CLONE_NEWCGROUP,
        NsKind::Ipc => libc::CLONE_NEWIPC,
        NsKind::Mnt => libc::CLONE_NEWNS,
        NsKind::Net => libc::CLONE_NEWNET,
        NsKind::Pid => libc::CLONE_NEWPID,
        NsKind::User => libc::CLONE_NEWUSER,
        NsKind::Uts => libc::CLONE_NEWUTS,
        NsKind::Time => 0x80,
        k => return Err(ExecError::Kind(k.proc_name())),
    } as u64)
}

/// The pid the kernel hands out next, as a first guess.
fn next_pid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").ok().and_then(|t| t.trim().parse::<u32>().ok()).map_or(1000, |p| p + 1)
}

/// Runs the command; returns its exit status (128 + signal when killed).
pub fn exec(spec: ExecSpec, hierarchy: &Hierarchy, mirrors: &mut [Mirror], proc: &ProcFs) -> Result<i32, ExecError> {
    let me = std::process::id();
    let here = proc
        .cgroup_path(me, me, hierarchy.key())?
        .ok_or_else(|| ExecError::NoCgroup(hierarchy.mount().display().to_string()))?;
    let own_set = proc.ns_set(me, me)?.unwrap_or_default();
    let flags = spec.unshare.iter().map(|k| clone_flag(*k)).sum::<Result<u64, _>>()?;
    let new_pid_ns = spec.unshare.contains(&NsKind::Pid);
    let comm = spec.argv.first().and_then(|a| std::path::Path::new(a).file_name()).map(|n| n.to_string_lossy().chars().take(15).collect());
    let mut writer = CgroupWriter::new(hierarchy.clone(), &here);
    let parent = hierarchy.id(&here)?;
    writer.learn(parent, here.clone());
    let (release_read, mut release_write) = std::io::pipe().map_err(|e| IoError::new("pipe", "exec", e))?;

    let mut pid = next_pid();
    for _ in 0..PID_ATTEMPTS {
        pid += 1;
        let name = naming::candidate(pid, 0);
        let Created::New(id) = writer.create(parent, &name)? else { continue };
        // The record first: a daemon seeing the child adopts this node.
        let mut record = NodeRecord {
            set: NsSet::default(),
            parent_set: own_set,
            creator_pid: pid,
            creator_comm: comm.clone().unwrap_or_default(),
            creator_uid: rustix::process::getuid().as_raw(),
            owner: None,
            created_unix: unix_now(),
            mirrors: Vec::new(),
            restored: None,
        };
        writer.store_record(id, &record)?;
        let v2_files: Vec<_> = spec.limits.iter().map(Limit::v2).collect();
        let refused = if hierarchy.version() == Version::V2 { writer.configure(id, &v2_files) } else { Vec::new() };
        for r in refused {
            eprintln!("nsgroup exec: limit not applied: {r}");
        }
        let pids = if new_pid_ns { vec![1, pid] } else { vec![pid] };
        let dir = hierarchy.dir(&join(&here, &name));
        let cgroup_fd = match hierarchy.version() {
            Version::V2 => Some(
                rustix::fs::open(&dir, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
                    .map_err(|e| IoError::new("open", &dir, e))?,
            ),
            Version::V1 => None,
        };
        let forked = match clone3_into(flags, &pids, cgroup_fd.as_ref().map(std::os::fd::AsFd::as_fd)) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                writer.remove(id)?;
                continue;
            }
            Err(e) => {
                writer.remove(id)?;
                return Err(ExecError::Clone(e));
            }
        };
        let child = match forked {
            Forked::Child => {
                drop(release_write);
                let mut go = [0u8; 1];
                let mut release_read = release_read;
                if !matches!(release_read.read(&mut go), Ok(1)) {
                    std::process::exit(127);
                }
                let err = std::process::Command::new(&spec.argv[0]).args(&spec.argv[1..]).exec();
                eprintln!("nsgroup exec: {}: {err}", spec.argv[0].to_string_lossy());
                std::process::exit(127);
            }
            Forked::Parent { child } => child,
        };
        drop(release_read);
        if hierarchy.version() == Version::V1 {
            writer.attach(id, child, child)?;
        }
        record.set = proc.ns_set(child, child)?.unwrap_or_default();
        let mut node = Node { id, parent, name: name.clone(), record: record.clone() };
        for mirror in mirrors.iter_mut() {
            let controllers: Vec<&str> = mirror.controllers().split(',').collect();
            let files: Vec<_> = spec.limits.iter().flat_map(|l| l.v1(&controllers)).collect();
            if let Ok(crate::control::mirror::Mirrored::Created { path, refused }) = mirror.place(proc, &node, child, child, &files) {
                refused.iter().for_each(|r| eprintln!("nsgroup exec: limit not applied in {}: {r}", mirror.controllers()));
                record.mirrors.push(crate::core::node::MirrorPath { controllers: mirror.controllers().to_string(), path });
            }
        }
        node.record = record.clone();
        writer.store_record(id, &node.record)?;
        // Everything is in place: the command may run.
        let _ = release_write.write_all(b"!");
        drop(release_write);
        let status = wait(child);
        // Without a daemon nobody else removes the node; with one, it may have already.
        if writer.remove(id).is_ok_and(|r| r != crate::sys::cgroupfs::Removed::Busy) {
            for mirror in mirrors.iter_mut() {
                let _ = mirror.remove(id);
            }
        }
        return Ok(status);
    }
    Err(ExecError::NoPid)
}

/// Waits for a child; its exit status, or 128 + the signal that killed it.
fn wait(child: u32) -> i32 {
    let pid = rustix::process::Pid::from_raw(child as i32).expect("a child pid is positive");
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return code;
                }
                if let Some(sig) = status.terminating_signal() {
                    return 128 + sig;
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return 127,
        }
    }
}
