//! Who is calling: `SO_PEERCRED` names the process that connected (pid,
//! uid); its capabilities and cgroup are read from /proc of that pid, never
//! from the request.
//!
//! Pid races: the connecting process can exit and its pid be reused. The
//! start time of the pid is taken when the connection is accepted, and every
//! request re-reads it after reading the caller's /proc entries: if it
//! changed, or the pid is gone, the request is refused (`peer.identity`).
//! What remains is the moment between connect(2) and accept: a pid is reused
//! only after the whole pid space went round (`pid_max`), and the start time
//! must also be earlier than the moment the daemon saw the connection.

use std::os::unix::net::UnixStream;

use crate::policy::perm::{peer_gone, Caller, Refusal};
use crate::policy::territory::Host;
use crate::sys::error::IoError;
use crate::sys::procfs::{HierarchyKey, ProcFs};

/// The process at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    /// The effective uid at connect time (SO_PEERCRED).
    pub uid: u32,
    /// Who owns the peer's set at connect time ([`crate::sys::owner`]): the
    /// user its per-user bounds count against. A user's subordinate uids are
    /// that user.
    pub owner: u32,
    pub gid: u32,
    /// The pid's start time (clock ticks after boot) when the connection was accepted.
    pub start_ticks: u64,
}

/// Why a peer could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("SO_PEERCRED: {0}")]
    Cred(std::io::Error),
    #[error("the connecting process has no pid in the daemon's pid namespace")]
    NoPid,
    #[error("the connecting process {0} exited before it was identified")]
    Gone(u32),
    #[error("the connecting process {0} started after the connection was seen: its pid names another process")]
    Reused(u32),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Peer {
    /// Identifies the process at the other end of `stream`. `seen_ticks`
    /// is the boot time (in clock ticks) at which the connection was known
    /// to be pending: a process that started later cannot have made it.
    /// `user_ns` is the inode of the daemon's user namespace.
    pub fn of(stream: &UnixStream, proc: &ProcFs, seen_ticks: Option<u64>, user_ns: u64) -> Result<Peer, PeerError> {
        let cred = rustix::net::sockopt::socket_peercred(stream).map_err(|e| PeerError::Cred(e.into()))?;
        let pid = cred.pid.as_raw_nonzero().get();
        // 0: the peer is in a pid namespace the daemon cannot see into's parent.
        let pid = u32::try_from(pid).map_err(|_| PeerError::NoPid)?;
        let Some(stat) = proc.stat(pid, pid)? else { return Err(PeerError::Gone(pid)) };
        if seen_ticks.is_some_and(|seen| stat.start_ticks > seen) {
            return Err(PeerError::Reused(pid));
        }
        let owner = crate::sys::owner::owner(proc, pid, pid, user_ns)?.ok_or(PeerError::Gone(pid))?;
        let peer = Peer { pid, uid: cred.uid.as_raw(), owner, gid: cred.gid.as_raw(), start_ticks: stat.start_ticks };
        // Checked after the owner was read: it is the connecting process's.
        if !peer.alive(proc)? {
            return Err(PeerError::Gone(pid));
        }
        Ok(peer)
    }

    /// Whether the pid still names the process that connected.
    pub fn alive(&self, proc: &ProcFs) -> Result<bool, IoError> {
        Ok(proc.stat(self.pid, self.pid)?.is_some_and(|s| s.start_ticks == self.start_ticks && !s.is_dead()))
    }

    /// The caller's facts, read now from /proc: its cgroup in the tracked
    /// hierarchy, and CAP_SYS_ADMIN in the user namespace `user_ns`; its
    /// owner is the peer's, and `host` the hierarchy's kind. The start time
    /// is checked after the reads, so that they describe the process that
    /// connected.
    pub fn caller(&self, proc: &ProcFs, key: &HierarchyKey, user_ns: u64, host: Host) -> Result<Result<Caller, Refusal>, IoError> {
        if !self.alive(proc)? {
            return Ok(Err(peer_gone(self.pid)));
        }
        let cgroup = proc.cgroup_path(self.pid, self.pid, key)?;
        let cap_sys_admin = proc.has_sys_admin_in(self.pid, self.pid, user_ns)?;
        let (Some(cgroup), true) = (cgroup, self.alive(proc)?) else { return Ok(Err(peer_gone(self.pid))) };
        Ok(Ok(Caller { pid: self.pid, uid: self.uid, owner: self.owner, cap_sys_admin, cgroup, host }))
    }
}

/// Now, in clock ticks after boot (the unit of a process's start time).
pub fn boot_ticks_now() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    ns / crate::sys::procfs::ns_per_tick()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_its_own_end_and_refuses_a_later_start() {
        let (a, _b) = UnixStream::pair().unwrap();
        let proc = ProcFs::new("/proc");
        let own_ns = proc.ns_inode(std::process::id(), std::process::id(), crate::core::nsset::NsKind::User).unwrap().unwrap();
        let me = Peer::of(&a, &proc, Some(boot_ticks_now()), own_ns).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.uid, rustix::process::geteuid().as_raw());
        assert_eq!(me.owner, rustix::process::getuid().as_raw());
        assert!(me.alive(&proc).unwrap());
        assert!(matches!(Peer::of(&a, &proc, Some(0), own_ns), Err(PeerError::Reused(_))));
        let other = Peer { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(!other.alive(&proc).unwrap());
        let refusal = other.caller(&proc, &HierarchyKey::Unified, 0, Host::Plain).unwrap().unwrap_err();
        assert_eq!(refusal.rule.name(), "peer.identity");
    }
}
