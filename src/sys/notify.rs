//! systemd readiness notification (`NOTIFY_SOCKET`).

use std::os::unix::net::UnixDatagram;

/// How often the service manager wants `WATCHDOG=1`: half its
/// `WATCHDOG_USEC`, if it watches this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|p| p.parse() == Ok(std::process::id()));
    (for_us && usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
/// Returns whether a message was sent.
pub fn sd_notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}
