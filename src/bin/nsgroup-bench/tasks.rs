//! The tasks the suite forks: its children (reaped one by one, never "any":
//! the daemon is a child too), children held in sets of their own until
//! released, and the timing a forked child does of its own placement.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rustix::thread::UnshareFlags;

use nsgroup::ffi::{fork, unshare_namespaces, Forked};

pub fn now_ns() -> u64 {
    nsgroup::source::monotonic_ns()
}

/// The children this process forked (the daemon is a child too: never wait for "any").
#[derive(Default)]
pub struct Kids(Vec<u32>);

impl Kids {
    pub fn add(&mut self, pid: u32) {
        self.0.push(pid);
    }

    fn wait(pid: u32, options: rustix::process::WaitOptions) -> bool {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child pid is positive");
        !matches!(rustix::process::waitpid(Some(pid), options), Ok(None))
    }

    /// Reaps the children that have exited.
    pub fn reap_ready(&mut self) {
        self.0.retain(|&p| !Kids::wait(p, rustix::process::WaitOptions::NOHANG));
    }

    /// Waits for every child.
    pub fn reap_all(&mut self) {
        for p in self.0.drain(..) {
            Kids::wait(p, rustix::process::WaitOptions::empty());
        }
    }
}

/// In a forked child: unshares NEWUTS, then times (in µs, from the call to
/// unshare(): a real-time daemon woken by its exit runs before the task
/// does) until `/proc/self/cgroup` names every one of `markers` (the node's
/// path in the tracked hierarchy, and in the mirrors where there are
/// mirrors), reading it in a loop for `spin`, then every 1 ms; fails after
/// `limit`.
pub fn time_to_placement(markers: &[String], limit: Duration, spin: Duration) -> Result<u64> {
    let t0 = now_ns();
    unshare_namespaces(UnshareFlags::NEWUTS)?;
    // One read takes it all (a mirror's line comes near the end on a
    // machine with many hierarchies).
    let mut buf = [0u8; 16384];
    loop {
        let mut f = std::fs::File::open("/proc/self/cgroup")?;
        let n = f.read(&mut buf)?;
        if std::str::from_utf8(&buf[..n]).is_ok_and(|t| markers.iter().all(|m| t.contains(m))) {
            return Ok((now_ns() - t0) / 1000);
        }
        let waited = Duration::from_nanos(now_ns() - t0);
        if waited > limit {
            bail!("not placed within {limit:?}");
        }
        if waited > spin {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Children that entered a new set each and wait for the release (EOF).
pub struct Held {
    release: Option<UnixStream>,
    kids: Kids,
}

impl Held {
    /// Forks `count` children as fast as possible; each unshares NEWUTS and
    /// blocks until released. Returns them and the fork rate.
    pub fn spawn(count: u32) -> Result<(Held, f64)> {
        let (hold, release) = UnixStream::pair()?;
        let mut kids = Kids::default();
        let start = Instant::now();
        for _ in 0..count {
            match fork()? {
                Forked::Child => {
                    drop(release);
                    let _ = unshare_namespaces(UnshareFlags::NEWUTS);
                    let mut byte = [0u8];
                    let _ = (&hold).read(&mut byte);
                    std::process::exit(0);
                }
                Forked::Parent { child } => kids.add(child),
            }
        }
        let rate = f64::from(count) / start.elapsed().as_secs_f64();
        drop(hold);
        Ok((Held { release: Some(release), kids }, rate))
    }

    /// The children's pids.
    pub fn pids(&self) -> &[u32] {
        &self.kids.0
    }

    pub fn release(self) {}
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release.take();
        self.kids.reap_all();
    }
}
