//! A user manager's D-Bus API, peer to peer over its private socket
//! (`/run/user/<uid>/systemd/private`, as `systemctl --user` uses it): no
//! bus daemon in between, and nothing but the manager itself answers.
//!
//! Everything on the way is the user's: her runtime directory, the socket,
//! the process serving it. So the socket is opened without following a
//! symlink anywhere on its path, must be a socket the user owns, is
//! connected through that open file (never by name again), and must be
//! served by a process of hers: root's daemon never talks to another user's
//! manager, nor to the system's, on her behalf. Every step has a deadline;
//! a manager that does not answer costs that much and no more.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use zvariant::Value;

use super::wire::{Conn, ERROR};
use crate::core::unit::{Limits, UnitPlan};

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Why a manager was not asked, or what it answered instead of a job.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("open {}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{} is not a socket of uid {uid}", path.display())]
    NotTheUsers { path: PathBuf, uid: u32 },
    #[error("connect {}: {source}", path.display())]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("{} is served by uid {served_by}, not by uid {uid}'s manager", path.display())]
    NotTheManager { path: PathBuf, uid: u32, served_by: u32 },
    #[error("the manager did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the manager refused: {0}")]
    Refused(String),
    #[error("D-Bus with the manager: {0}")]
    Wire(std::io::Error),
}

impl BusError {
    /// Whether the manager is unreachable or unresponsive (worth backing
    /// off from), rather than refusing one request.
    pub fn unreachable(&self) -> bool {
        !matches!(self, BusError::Refused(_))
    }

    fn wire(e: std::io::Error, timeout: Duration) -> BusError {
        if e.kind() == std::io::ErrorKind::TimedOut { BusError::Timeout(timeout) } else { BusError::Wire(e) }
    }
}

/// The private socket of uid `uid`'s manager, below the user runtime
/// directories at `runtime` (`/run/user`).
pub fn socket_path(runtime: &Path, uid: u32) -> PathBuf {
    runtime.join(uid.to_string()).join("systemd/private")
}

/// A connection to one user's manager.
pub struct ManagerBus {
    conn: Conn,
    timeout: Duration,
}

impl ManagerBus {
    /// Connects to uid `uid`'s manager, each step within `timeout`.
    pub fn connect(runtime: &Path, uid: u32, timeout: Duration) -> Result<ManagerBus, BusError> {
        let path = socket_path(runtime, uid);
        let stream = connect_owned_socket(&path, uid, timeout)?;
        let mut conn = Conn::new(stream, Instant::now() + timeout).map_err(|source| BusError::Connect { path: path.clone(), source })?;
        conn.authenticate().map_err(|e| BusError::wire(e, timeout))?;
        Ok(ManagerBus { conn, timeout })
    }

    /// Asks for the scope `plan` names, holding the sandbox's first task:
    /// delegated, in the origin's slice, stopped with the origin
    /// (`PartOf=`, not `BindsTo=`: the origin may empty and go when its
    /// only task leaves), with the origin's `limits`.
    pub fn start_scope(&mut self, plan: &UnitPlan, limits: &Limits) -> Result<(), BusError> {
        let origin = plan.origin.unit.as_str();
        let mut props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(plan.description())),
            ("PIDs", Value::from(vec![plan.pid])),
            ("Delegate", Value::from(true)),
            ("PartOf", Value::from(vec![origin])),
            ("After", Value::from(vec![origin])),
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        if let Some(slice) = &plan.origin.slice {
            props.push(("Slice", Value::from(slice.as_str())));
        }
        props.extend(limits.properties().into_iter().map(|(name, v)| (name, Value::from(v))));
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        self.call("StartTransientUnit", &(plan.scope.as_str(), "fail", props, aux))
    }

    /// Moves `pids` into `unit` (tasks forked before the scope was made).
    pub fn attach(&mut self, unit: &str, pids: &[u32]) -> Result<(), BusError> {
        self.call("AttachProcessesToUnit", &(unit, "", pids))
    }

    fn call<B>(&mut self, method: &'static str, body: &B) -> Result<(), BusError>
    where
        B: serde::Serialize + zvariant::DynamicType,
    {
        let timeout = self.timeout;
        self.conn.until(Instant::now() + timeout);
        let serial = self.conn.call(DESTINATION, PATH, MANAGER, method, body).map_err(|e| BusError::wire(e, timeout))?;
        let reply = self.conn.reply_to(serial).map_err(|e| BusError::wire(e, timeout))?;
        if reply.kind == ERROR {
            let text = reply.body::<(String,)>().map(|(t,)| t).unwrap_or_default();
            let name = reply.error_name.unwrap_or_default();
            let said: String = format!("{name}: {text}").chars().take(256).collect();
            return Err(BusError::Refused(crate::core::escape::Escaped(&said).to_string()));
        }
        Ok(())
    }
}

/// Opens the socket at `path` (no symlink on the way), checks that `uid`
/// owns it, connects through the open file within `timeout`, and checks
/// that a process of `uid` serves it.
fn connect_owned_socket(path: &Path, uid: u32, timeout: Duration) -> Result<UnixStream, BusError> {
    let flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let open = |e: rustix::io::Errno| BusError::Open { path: path.to_path_buf(), source: e.into() };
    let file = rustix::fs::openat2(CWD, path, flags, Mode::empty(), resolve).map_err(open)?;
    let st = rustix::fs::fstat(&file).map_err(open)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket || st.st_uid != uid {
        return Err(BusError::NotTheUsers { path: path.to_path_buf(), uid });
    }
    let connect = |e: std::io::Error| BusError::Connect { path: path.to_path_buf(), source: e };
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)
        .map_err(|e| connect(e.into()))?;
    // Through the open file: the name could point elsewhere by now.
    let via = SocketAddrUnix::new(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).map_err(|e| connect(e.into()))?;
    let deadline = Instant::now() + timeout;
    loop {
        match rustix::net::connect(&socket, &via) {
            Ok(()) => break,
            // A full backlog: the listener is not accepting.
            Err(rustix::io::Errno::AGAIN) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(rustix::io::Errno::AGAIN) => return Err(BusError::Timeout(timeout)),
            Err(e) => return Err(connect(e.into())),
        }
    }
    let peer = rustix::net::sockopt::socket_peercred(socket.as_fd()).map_err(|e| connect(e.into()))?;
    if peer.uid.as_raw() != uid {
        return Err(BusError::NotTheManager { path: path.to_path_buf(), uid, served_by: peer.uid.as_raw() });
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
mod tests;
