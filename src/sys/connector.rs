//! The netlink proc connector: fork, exec and exit of every task, without
//! BPF. Used where BPF cannot be loaded (`--source proc`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{bind, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::error::IoError;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_DONE: u16 = 3;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const CN_MSG_LEN: usize = 20;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// One proc connector event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcEvent {
    Fork { parent_tid: u32, parent_tgid: u32, child_tid: u32, child_tgid: u32 },
    Exec { tid: u32, tgid: u32 },
    Exit { tid: u32, tgid: u32 },
}

/// What a receive brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Events(Vec<ProcEvent>),
    /// Nothing waiting.
    Empty,
    /// The socket buffer overflowed: events were lost.
    Overflow,
}

/// A subscribed proc connector socket.
pub struct Connector {
    fd: OwnedFd,
    buf: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one datagram: netlink messages carrying `cn_msg` + `proc_event`.
/// Unknown or truncated parts are skipped.
pub fn parse(datagram: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(rest, 0).map(|l| l as usize) else { break };
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let msg = &rest[NLMSG_HDRLEN..len];
        // cn_msg: id.idx, id.val, seq, ack, len (u16), flags (u16); then proc_event:
        // what, cpu, timestamp_ns (u64), then the event's fields.
        let ev = CN_MSG_LEN;
        let field = |n: usize| u32_at(msg, ev + 16 + 4 * n);
        if u32_at(msg, 0) == Some(CN_IDX_PROC) {
            let parsed = match u32_at(msg, ev) {
                Some(PROC_EVENT_FORK) => (|| {
                    Some(ProcEvent::Fork { parent_tid: field(0)?, parent_tgid: field(1)?, child_tid: field(2)?, child_tgid: field(3)? })
                })(),
                Some(PROC_EVENT_EXEC) => (|| Some(ProcEvent::Exec { tid: field(0)?, tgid: field(1)? }))(),
                Some(PROC_EVENT_EXIT) => (|| Some(ProcEvent::Exit { tid: field(0)?, tgid: field(1)? }))(),
                _ => None,
            };
            out.extend(parsed);
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    out
}

impl Connector {
    /// Opens the socket and subscribes (needs CAP_NET_ADMIN).
    pub fn open() -> Result<Connector, IoError> {
        let err = |op, e: Errno| IoError::new(op, "netlink proc connector", e);
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(rustix::net::netlink::CONNECTOR),
        )
        .map_err(|e| err("socket", e))?;
        bind(&fd, &SocketAddrNetlink::new(0, CN_IDX_PROC)).map_err(|e| err("bind", e))?;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + CN_MSG_LEN + 4);
        let total = (NLMSG_HDRLEN + CN_MSG_LEN + 4) as u32;
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        for v in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
            msg.extend_from_slice(&v.to_ne_bytes());
        }
        msg.extend_from_slice(&4u16.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        send(&fd, &msg, SendFlags::empty()).map_err(|e| err("subscribe", e))?;
        Ok(Connector { fd, buf: vec![0; 64 * 1024] })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Receives one datagram, without blocking.
    pub fn receive(&mut self) -> Result<Received, IoError> {
        match recv(&self.fd, &mut self.buf[..], RecvFlags::empty()) {
            Ok((_, n)) => Ok(Received::Events(parse(&self.buf[..n.min(self.buf.len())]))),
            Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(Received::Empty),
            Err(Errno::NOBUFS) => Ok(Received::Overflow),
            Err(e) => Err(IoError::new("receive", "netlink proc connector", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, fields: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        for v in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&what.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&0u64.to_ne_bytes());
        for f in fields {
            body.extend_from_slice(&f.to_ne_bytes());
        }
        let mut msg = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&[0; 12]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn parses_fork_exec_exit_and_skips_the_rest() {
        let mut d = message(PROC_EVENT_FORK, &[1, 1, 2, 2]);
        d.extend(message(PROC_EVENT_EXEC, &[2, 2]));
        d.extend(message(PROC_EVENT_EXIT, &[2, 2, 0, 9, 1, 1]));
        d.extend(message(0x40, &[7]));
        assert_eq!(
            parse(&d),
            vec![
                ProcEvent::Fork { parent_tid: 1, parent_tgid: 1, child_tid: 2, child_tgid: 2 },
                ProcEvent::Exec { tid: 2, tgid: 2 },
                ProcEvent::Exit { tid: 2, tgid: 2 },
            ]
        );
        assert_eq!(parse(&d[..10]), vec![]);
        let mut truncated = message(PROC_EVENT_FORK, &[1]);
        truncated[0] = truncated.len() as u8;
        assert_eq!(parse(&truncated), vec![]);
    }
}
