//! The kernel's notifications about nodes, as one file descriptor for the
//! daemon's loop: an epoll set holding an inotify instance (cgroup2
//! `memory.events.local`, else `memory.events`: the kernel notifies changes
//! through kernfs, as IN_MODIFY), one eventfd per v1 node
//! (`memory.oom_control`, registered through `cgroup.event_control`), and
//! the PSI triggers (cgroup2: `some 150000 1000000` written into the node's
//! `<resource>.pressure`, the file kept open, POLLPRI when it fires). The
//! triggers are polled by the loop itself ([`Watcher::triggers`]), not
//! through the epoll set: the kernel hands a trigger's event to the first
//! poll that asks, and a poll of the epoll set would take it. At most `max`
//! nodes are watched and `max_triggers` triggers written; the rest are
//! counted, not watched.
//!
//! Also what the notifications are about: the counts (`oom`, `oom_kill`,
//! `oom_group_kill`), the limit in force, and the victims the kernel logs
//! (`/dev/kmsg`'s `oom-kill:` records, read only after a count rose, at
//! most [`KMSG_RECORDS`] a time, the latest [`KMSG_KEPT`] kept).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::event::epoll;
use rustix::fs::inotify;

use super::error::{or_vanished, IoError};
use crate::core::node::CgroupId;

/// The most epoll events taken per call.
const READY_BATCH: usize = 64;
/// kmsg records read per look, at most.
pub const KMSG_RECORDS: usize = 512;
/// `oom-kill:` records kept for matching, at most (the latest).
pub const KMSG_KEPT: usize = 32;
/// The longest kmsg record kept (longer ones are cut).
const KMSG_RECORD_BYTES: usize = 2048;
/// epoll's token for the inotify instance (eventfds count from 1).
const INOTIFY: u64 = 0;

/// A node's memory event counts (cgroup2 `memory.events`, v1 `memory.oom_control`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemCounts {
    /// Times the node hit its limit and the OOM killer ran (cgroup2 only).
    pub oom: u64,
    /// Tasks the OOM killer killed.
    pub oom_kill: u64,
    /// Times the whole node was killed (`memory.oom.group`; cgroup2 only).
    pub oom_group_kill: u64,
}

impl MemCounts {
    /// Parses `key value` lines; unknown keys are skipped, missing ones read 0.
    pub fn parse(text: &str) -> MemCounts {
        let mut c = MemCounts::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(Ok(v))) = (parts.next(), parts.next().map(str::parse::<u64>)) else { continue };
            match key {
                "oom" => c.oom = v,
                "oom_kill" => c.oom_kill = v,
                "oom_group_kill" => c.oom_group_kill = v,
                _ => {}
            }
        }
        c
    }

    /// Whether a kill count rose since `before`.
    pub fn killed_since(&self, before: &MemCounts) -> bool {
        self.oom_kill > before.oom_kill || self.oom_group_kill > before.oom_group_kill
    }
}

/// A task the kernel logged as OOM-killed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Victim {
    pub pid: u32,
    pub comm: String,
}

/// The victim in a kmsg `oom-kill:` record whose task was in the cgroup at
/// `path` (as the kernel prints it: from the hierarchy's root), if it is one.
pub fn victim_in(record: &str, path: &str) -> Option<Victim> {
    let key = format!(",task_memcg={path},task=");
    let rest = &record[record.find(&key)? + key.len()..];
    let at = rest.rfind(",pid=")?;
    let pid = rest[at + 5..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some(Victim { pid, comm: rest[..at].to_string() })
}

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fired {
    /// The node's memory events changed.
    Memory,
    /// The node's trigger of pressure rule `n` fired.
    Pressure(usize),
}

/// Whether the kernel accounts pressure (PSI): Debian's kernels, among
/// others, keep it off unless booted with `psi=1`.
pub fn psi_enabled() -> bool {
    Path::new("/proc/pressure/memory").exists()
}

/// A node's memory files, as watched.
struct Watched {
    /// What to read: `memory.events(.local)` or `memory.oom_control`.
    events: PathBuf,
    /// The limit in force: `memory.max` or `memory.limit_in_bytes`.
    limit: PathBuf,
    /// The inotify watch, or the v1 eventfd and its epoll token.
    how: How,
}

enum How {
    Inotify(i32),
    EventFd { token: u64, fd: OwnedFd },
}

/// What arming a node's watch came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Armed {
    Yes,
    /// The node has no memory controller (no file to watch).
    NoMemory,
    /// Beyond the bound: counted, not watched.
    Skipped,
}

/// The watches, behind one file descriptor.
pub struct Watcher {
    epoll: OwnedFd,
    inotify: OwnedFd,
    max: usize,
    nodes: HashMap<CgroupId, Watched>,
    by_wd: HashMap<i32, CgroupId>,
    by_token: HashMap<u64, (CgroupId, Fired)>,
    next_token: u64,
    skipped: u64,
    max_triggers: usize,
    /// Each node's triggers: their epoll tokens and open pressure files.
    triggers: HashMap<CgroupId, Vec<(u64, OwnedFd)>>,
    trigger_count: usize,
    triggers_skipped: u64,
}

fn io(op: &'static str, what: impl AsRef<Path>) -> impl FnOnce(rustix::io::Errno) -> IoError {
    move |e| IoError::new(op, what, std::io::Error::from(e))
}

impl Watcher {
    /// An empty watcher for at most `max` nodes and `max_triggers` PSI triggers.
    pub fn new(max: usize, max_triggers: usize) -> Result<Watcher, IoError> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io("epoll_create", "the watches"))?;
        let inotify = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).map_err(io("inotify_init", "the watches"))?;
        epoll::add(&epoll, &inotify, epoll::EventData::new_u64(INOTIFY), epoll::EventFlags::IN).map_err(io("epoll_ctl", "the watches"))?;
        Ok(Watcher {
            epoll,
            inotify,
            max,
            nodes: HashMap::new(),
            by_wd: HashMap::new(),
            by_token: HashMap::new(),
            next_token: 1,
            skipped: 0,
            max_triggers,
            triggers: HashMap::new(),
            trigger_count: 0,
            triggers_skipped: 0,
        })
    }

    /// What the loop polls (readable: call [`Watcher::ready`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Nodes not watched because of the bound.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Nodes watched now.
    pub fn watched(&self) -> usize {
        self.nodes.len()
    }

    /// Triggers not written because of the bound.
    pub fn triggers_skipped(&self) -> u64 {
        self.triggers_skipped
    }

    /// A token for epoll, for what it tells about `node`.
    fn token(&mut self, node: CgroupId, fired: Fired) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.by_token.insert(token, (node, fired));
        token
    }

    /// Writes the PSI trigger `trigger` (`some 150000 1000000`) into
    /// `dir/<resource>.pressure` for pressure rule `rule` of `node`.
    pub fn add_trigger(&mut self, node: CgroupId, dir: &Path, resource: &str, trigger: &str, rule: usize) -> Result<Armed, IoError> {
        let file = dir.join(format!("{resource}.pressure"));
        if !file.exists() {
            return Ok(Armed::NoMemory);
        }
        if self.trigger_count >= self.max_triggers {
            self.triggers_skipped += 1;
            return Ok(Armed::Skipped);
        }
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&file)
            .map_err(|e| IoError::new("open", &file, e))?;
        // One write, the trigger's text and its terminating NUL as the kernel's example does.
        rustix::io::write(&f, format!("{trigger}\0").as_bytes()).map_err(io("write a PSI trigger to", &file))?;
        let token = self.token(node, Fired::Pressure(rule));
        self.triggers.entry(node).or_default().push((token, OwnedFd::from(f)));
        self.trigger_count += 1;
        Ok(Armed::Yes)
    }

    /// Watches the memory events of `node`, whose memory controller's
    /// directory is `dir` (the node itself on cgroup2, its memory mirror on v1).
    pub fn watch_memory(&mut self, node: CgroupId, dir: &Path, v2: bool) -> Result<Armed, IoError> {
        if self.nodes.contains_key(&node) {
            return Ok(Armed::Yes);
        }
        let (events, limit) = if v2 {
            let local = dir.join("memory.events.local");
            (if local.exists() { local } else { dir.join("memory.events") }, dir.join("memory.max"))
        } else {
            (dir.join("memory.oom_control"), dir.join("memory.limit_in_bytes"))
        };
        if !events.exists() {
            return Ok(Armed::NoMemory);
        }
        if self.nodes.len() >= self.max {
            self.skipped += 1;
            return Ok(Armed::Skipped);
        }
        let how = if v2 {
            let wd = inotify::add_watch(&self.inotify, &events, inotify::WatchFlags::MODIFY).map_err(io("inotify_add_watch", &events))?;
            self.by_wd.insert(wd, node);
            How::Inotify(wd)
        } else {
            let fd = self.register_oom_eventfd(dir, &events)?;
            let token = self.token(node, Fired::Memory);
            if let Err(e) = epoll::add(&self.epoll, &fd, epoll::EventData::new_u64(token), epoll::EventFlags::IN) {
                self.by_token.remove(&token);
                return Err(io("epoll_ctl", &events)(e));
            }
            How::EventFd { token, fd }
        };
        self.nodes.insert(node, Watched { events, limit, how });
        Ok(Armed::Yes)
    }

    /// v1: an eventfd the kernel signals on each OOM of the cgroup at `dir`.
    fn register_oom_eventfd(&self, dir: &Path, oom_control: &Path) -> Result<OwnedFd, IoError> {
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)
            .map_err(io("eventfd", oom_control))?;
        let control = std::fs::File::open(oom_control).map_err(|e| IoError::new("open", oom_control, e))?;
        let ctl = dir.join("cgroup.event_control");
        // The kernel keeps the eventfd; the registration ends when it is closed.
        std::fs::write(&ctl, format!("{} {}", efd.as_raw_fd(), control.as_raw_fd())).map_err(|e| IoError::new("write", &ctl, e))?;
        Ok(efd)
    }

    /// Stops watching `node` (removed, or gone).
    pub fn forget(&mut self, node: CgroupId) {
        for (token, _fd) in self.triggers.remove(&node).unwrap_or_default() {
            self.by_token.remove(&token);
            self.trigger_count -= 1;
        }
        let Some(w) = self.nodes.remove(&node) else { return };
        match w.how {
            How::Inotify(wd) => {
                self.by_wd.remove(&wd);
                // Already gone with its file when the node was removed.
                let _ = inotify::remove_watch(&self.inotify, wd);
            }
            How::EventFd { token, .. } => {
                self.by_token.remove(&token);
            }
        }
    }

    /// The nodes whose files changed or triggers fired since the last call
    /// (each once, at most [`READY_BATCH`] notifications a call); never blocks.
    pub fn ready(&mut self, out: &mut Vec<(CgroupId, Fired)>) -> Result<(), IoError> {
        let mut events = Vec::with_capacity(READY_BATCH);
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&zero)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io("epoll_wait", "the watches")(e)),
        }
        for ev in events.iter().copied() {
            let token = ev.data.u64();
            if token == INOTIFY {
                self.read_inotify(out)?;
                continue;
            }
            let Some(&(node, fired)) = self.by_token.get(&token) else { continue };
            match fired {
                Fired::Memory => {
                    if let Some(Watched { how: How::EventFd { fd, .. }, .. }) = self.nodes.get(&node) {
                        let mut count = [0u8; 8];
                        let _ = rustix::io::read(fd, &mut count);
                    }
                    out.push((node, fired));
                }
                Fired::Pressure(_) => {}
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(())
    }

    /// The triggers, for the loop to poll for POLLPRI: their tokens and fds.
    pub fn triggers(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>)> {
        self.triggers.values().flatten().map(|(token, fd)| (*token, fd.as_fd()))
    }

    /// The loop's poll of trigger `token` said `revents`: a firing is
    /// queued for [`Watcher::ready`]; a trigger whose cgroup went (POLLERR)
    /// is dropped.
    pub fn trigger_polled(&mut self, token: u64, revents: rustix::event::PollFlags, out: &mut Vec<(CgroupId, Fired)>) {
        use rustix::event::PollFlags;
        let Some(&(node, fired)) = self.by_token.get(&token) else { return };
        if revents.intersects(PollFlags::ERR | PollFlags::NVAL) {
            self.drop_trigger(node, token);
        } else if revents.contains(PollFlags::PRI) {
            out.push((node, fired));
        }
    }

    fn drop_trigger(&mut self, node: CgroupId, token: u64) {
        self.by_token.remove(&token);
        if let Some(list) = self.triggers.get_mut(&node) {
            let before = list.len();
            list.retain(|(t, _)| *t != token);
            self.trigger_count -= before - list.len();
        }
    }

    fn read_inotify(&mut self, out: &mut Vec<(CgroupId, Fired)>) -> Result<(), IoError> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buf);
        loop {
            match reader.next() {
                Ok(ev) => {
                    if let Some(&node) = self.by_wd.get(&ev.wd()) {
                        out.push((node, Fired::Memory));
                    }
                }
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return Ok(()),
                Err(e) => return Err(io("read", "the inotify watches")(e)),
            }
            if reader.is_buffer_empty() && out.len() >= READY_BATCH {
                return Ok(());
            }
        }
    }

    /// `node`'s memory event counts now; `None` when it is gone or not watched.
    pub fn counts(&self, node: CgroupId) -> Result<Option<MemCounts>, IoError> {
        let Some(w) = self.nodes.get(&node) else { return Ok(None) };
        let text = or_vanished(std::fs::read_to_string(&w.events).map_err(|e| IoError::new("read", &w.events, e)))?;
        Ok(text.map(|t| MemCounts::parse(&t)))
    }

    /// `node`'s memory limit in force (`max`, or bytes), if readable.
    pub fn limit(&self, node: CgroupId) -> Option<String> {
        let w = self.nodes.get(&node)?;
        std::fs::read_to_string(&w.limit).ok().map(|s| s.trim().to_string())
    }
}

/// The kernel's log, read from its end on: the `oom-kill:` records only.
pub struct Kmsg {
    file: Option<std::fs::File>,
    recent: VecDeque<String>,
}

impl Kmsg {
    /// `/dev/kmsg` from its end (no file: no victims are told; `path` is for tests).
    pub fn open(path: &Path) -> Kmsg {
        use std::io::Seek;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok().and_then(|mut f| {
            f.seek(std::io::SeekFrom::End(0)).ok()?;
            Some(f)
        });
        Kmsg { file, recent: VecDeque::new() }
    }

    /// Whether the kernel's log can be read.
    pub fn readable(&self) -> bool {
        self.file.is_some()
    }

    /// Reads what was logged since, at most [`KMSG_RECORDS`] records.
    fn read_new(&mut self) {
        let Some(f) = &mut self.file else { return };
        let mut buf = vec![0u8; 8192];
        for _ in 0..KMSG_RECORDS {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n.min(KMSG_RECORD_BYTES)]);
                    if text.contains(";oom-kill:") {
                        if self.recent.len() == KMSG_KEPT {
                            self.recent.pop_front();
                        }
                        self.recent.push_back(text.into_owned());
                    }
                }
                // Records overwritten before they were read: go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => break,
                Err(_) => break,
            }
        }
    }

    /// The newest victim logged for the cgroup at `path`, taken (not told twice).
    pub fn victim(&mut self, path: &str) -> Option<Victim> {
        self.read_new();
        let at = self.recent.iter().rposition(|r| victim_in(r, path).is_some())?;
        self.recent.remove(at).and_then(|r| victim_in(&r, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn memory_events_and_oom_control_parse() {
        let v2 = "low 0\nhigh 12\nmax 40\noom 3\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(MemCounts::parse(v2), MemCounts { oom: 3, oom_kill: 2, oom_group_kill: 1 });
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(MemCounts::parse(v1), MemCounts { oom: 0, oom_kill: 5, oom_group_kill: 0 });
        // Garbage and kernels without the keys read 0.
        assert_eq!(MemCounts::parse("oom_kill x\n\noom\n"), MemCounts::default());
        let before = MemCounts { oom: 1, oom_kill: 1, oom_group_kill: 0 };
        assert!(!MemCounts { oom: 2, ..before }.killed_since(&before), "a limit hit without a kill");
        assert!(MemCounts { oom_group_kill: 1, ..before }.killed_since(&before));
    }

    #[test]
    fn a_victim_is_matched_to_its_cgroup_exactly() {
        let r = "3,1234,5678,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/t/node_5,task_memcg=/t/node_5/node_9,task=hog,pid=4242,uid=0\n";
        assert_eq!(victim_in(r, "/t/node_5/node_9"), Some(Victim { pid: 4242, comm: "hog".into() }));
        assert_eq!(victim_in(r, "/t/node_5"), None, "the OOM cgroup is not the victim's");
        assert_eq!(victim_in(r, "/t/node_5/node"), None);
        // A command name with the separators in it.
        let hostile = "3,1,2,-;oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/n,task=a,pid=1,uid=0,pid=77,uid=1000\n";
        assert_eq!(victim_in(hostile, "/n"), Some(Victim { pid: 77, comm: "a,pid=1,uid=0".into() }));
    }

    #[test]
    fn kmsg_keeps_only_recent_oom_records_and_tells_a_victim_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("kmsg");
        std::fs::write(&log, "6,1,1,-;before the daemon: oom-kill:task_memcg=/n,task=old,pid=1,uid=0\n").unwrap();
        let mut k = Kmsg::open(&log);
        assert!(k.readable());
        // A regular file reads as one record; the real kmsg gives one per read.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "3,2,2,-;oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/n,task=hog,pid=9,uid=0").unwrap();
        assert_eq!(k.victim("/n"), Some(Victim { pid: 9, comm: "hog".into() }));
        assert_eq!(k.victim("/n"), None, "told once");
        assert!(!Kmsg::open(&dir.path().join("none")).readable());
    }

    #[test]
    fn watches_are_bounded_and_a_node_without_memory_is_not_watched() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watcher::new(1, 1).unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(a.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        std::fs::write(b.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        assert_eq!(w.watch_memory(1, &c, true).unwrap(), Armed::NoMemory);
        assert_eq!(w.watch_memory(1, &a, true).unwrap(), Armed::Yes);
        assert_eq!(w.watch_memory(2, &b, true).unwrap(), Armed::Skipped);
        assert_eq!((w.watched(), w.skipped()), (1, 1));
        // inotify tells a change (a regular file here, kernfs on a host).
        std::fs::write(a.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        let mut out = Vec::new();
        w.ready(&mut out).unwrap();
        assert_eq!(out, [(1, Fired::Memory)]);
        assert_eq!(w.counts(1).unwrap(), Some(MemCounts { oom: 1, oom_kill: 1, oom_group_kill: 0 }));
        w.forget(1);
        assert_eq!(w.counts(1).unwrap(), None);
        assert_eq!(w.watch_memory(2, &b, true).unwrap(), Armed::Yes, "room again");
    }

    #[test]
    fn triggers_are_bounded_and_go_with_their_node() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO stands in for the kernel's pressure file: it can be polled, and tells what was written.
        let file = dir.path().join("memory.pressure");
        rustix::fs::mknodat(rustix::fs::CWD, &file, rustix::fs::FileType::Fifo, rustix::fs::Mode::RWXU, 0).unwrap();
        let mut w = Watcher::new(4, 1).unwrap();
        assert_eq!(w.add_trigger(1, dir.path(), "io", "some 1 500000", 0).unwrap(), Armed::NoMemory, "no io.pressure");
        assert_eq!(w.add_trigger(1, dir.path(), "memory", "some 150000 1000000", 3).unwrap(), Armed::Yes);
        let mut written = [0u8; 64];
        let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&file).unwrap();
        let n = rustix::io::read(&reader, &mut written).unwrap();
        assert_eq!(&written[..n], b"some 150000 1000000\0");
        assert_eq!(w.add_trigger(2, dir.path(), "memory", "some 1 500000", 0).unwrap(), Armed::Skipped);
        assert_eq!(w.triggers_skipped(), 1);
        let mut out = Vec::new();
        w.ready(&mut out).unwrap();
        assert!(out.is_empty(), "nothing fired: {out:?}");
        let triggers: Vec<u64> = w.triggers().map(|(t, _)| t).collect();
        assert_eq!(triggers.len(), 1);
        use rustix::event::PollFlags;
        w.trigger_polled(triggers[0], PollFlags::PRI, &mut out);
        assert_eq!(out, [(1, Fired::Pressure(3))]);
        w.trigger_polled(triggers[0], PollFlags::ERR, &mut out);
        assert_eq!(w.triggers().count(), 0, "a trigger whose cgroup went is dropped");
        w.forget(1);
        assert_eq!(w.add_trigger(2, dir.path(), "memory", "some 1 500000", 0).unwrap(), Armed::Yes, "room again");
    }

}
