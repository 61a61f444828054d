//! `api-hold`: connections held (or polling) against the API socket.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{say, wait_line};

/// `api-hold`: opens the connections, sorts them into held and refused by
/// their first answer, then holds (or polls) the held ones until stdin's EOF.
pub(crate) fn run(socket: &std::path::Path, connections: u32, subscribe: bool, poll: bool) -> Result<()> {
    use std::os::unix::net::UnixStream;
    let probe: &[u8] = if subscribe { b"{\"version\":1,\"type\":\"subscribe\"}\n" } else { b"{\"version\":1,\"type\":\"hold\"}\n" };
    let mut streams = Vec::new();
    for _ in 0..connections {
        streams.push(UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?);
    }
    for s in &mut streams {
        // A refused connection may be closed already: its answer says so.
        let _ = s.write_all(probe);
    }
    let (mut held, mut refusal) = (Vec::new(), None);
    for s in streams {
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let first = first_line(&s);
        let answer: serde_json::Value = serde_json::from_slice(&first).unwrap_or_default();
        if answer["error"]["code"] == "busy" || first.is_empty() {
            refusal = refusal.or_else(|| answer["error"]["message"].as_str().map(str::to_string));
        } else {
            held.push(s);
        }
    }
    say(serde_json::json!({
        "pid": std::process::id(),
        "uid": rustix::process::getuid().as_raw(),
        "held": held.len(),
        "refused": connections as usize - held.len(),
        "refusal": refusal,
    }))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll.then(|| {
        let stop = stop.clone();
        let streams: Vec<UnixStream> = held.iter().map(|s| s.try_clone().expect("a socket clones")).collect();
        std::thread::spawn(move || poll_lists(&streams, &stop))
    });
    while wait_line() {}
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = poller {
        let _ = p.join();
    }
    drop(held);
    Ok(())
}

/// The first line on `s`, read byte by byte so that nothing after it is
/// taken off the socket; empty at EOF, on an error or a timeout.
fn first_line(mut s: &std::os::unix::net::UnixStream) -> Vec<u8> {
    use std::io::Read;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while matches!(s.read(&mut b), Ok(1)) {
        if b[0] == b'\n' {
            return line;
        }
        line.push(b[0]);
    }
    Vec::new()
}

/// Asks for the node list on every stream, again as soon as each answer
/// is in, until `stop`.
fn poll_lists(streams: &[std::os::unix::net::UnixStream], stop: &std::sync::atomic::AtomicBool) {
    use rustix::event::{PollFd, PollFlags};
    use std::io::Read;
    const LIST: &[u8] = b"{\"version\":1,\"type\":\"list\"}\n";
    let mut open: Vec<bool> = streams.iter().map(|mut s| s.set_nonblocking(true).is_ok() && s.write_all(LIST).is_ok()).collect();
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && open.iter().any(|o| *o) {
        let mut fds: Vec<PollFd> = streams.iter().map(|s| PollFd::new(s, PollFlags::IN)).collect();
        let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
        if rustix::event::poll(&mut fds, Some(&timeout)).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        for (i, mut s) in streams.iter().enumerate() {
            if !ready[i] || !open[i] {
                continue;
            }
            match s.read(&mut buf) {
                Ok(0) => open[i] = false,
                // One request at a time: the answer ends with the newline.
                Ok(n) if buf[n - 1] == b'\n' => open[i] = s.write_all(LIST).is_ok(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => open[i] = false,
            }
        }
    }
}
