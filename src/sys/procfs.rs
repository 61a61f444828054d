//! Reading tasks from procfs, rooted at a path (`/proc`, or a fixture).

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::{or_vanished, IoError};
use crate::core::nsset::{NsKind, NsSet};

/// A procfs mount.
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
}

/// The fields of `/proc/<pid>/task/<tid>/stat` nsgroup uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskStat {
    /// The command, as the kernel has it (any bytes, made printable lossily).
    pub comm: String,
    /// The state letter (`R`, `S`, `Z` for a zombie, …).
    pub state: char,
    pub ppid: u32,
    /// The session's id: its leader's pid, as this /proc sees it.
    pub session: u32,
    /// The controlling terminal's device number (0: none).
    pub tty_nr: u64,
    /// PF_* flags; [`TaskStat::is_kernel_thread`].
    pub flags: u64,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

/// Nanoseconds per clock tick of /proc's times (USER_HZ).
pub fn ns_per_tick() -> u64 {
    static NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS.get_or_init(|| 1_000_000_000 / rustix::param::clock_ticks_per_second().max(1))
}

const PF_KTHREAD: u64 = 0x0020_0000;
const PF_EXITING: u64 = 0x0000_0004;

impl TaskStat {
    /// Kernel threads are never moved.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// An exiting, zombie or dead task: it only waits to be released.
    pub fn is_dead(&self) -> bool {
        self.flags & PF_EXITING != 0 || matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// Whether this is the task that started at `start_ns` (its
    /// `start_boottime`, as the BPF programs read it): a reused tid is not.
    pub fn started_at(&self, start_ns: u64) -> bool {
        self.start_ticks == start_ns / ns_per_tick()
    }

    /// The start time in nanoseconds after boot, to a tick.
    pub fn start_ns(&self) -> u64 {
        self.start_ticks * ns_per_tick()
    }

    /// Parses a stat line; the command may hold spaces and parentheses.
    pub fn parse(line: &[u8]) -> Option<TaskStat> {
        let open = line.iter().position(|&b| b == b'(')?;
        let close = line.iter().rposition(|&b| b == b')')?;
        let comm = String::from_utf8_lossy(line.get(open + 1..close)?).into_owned();
        let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
        // Field 3 (state) is rest[0]; field n is rest[n - 3].
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(TaskStat {
            comm,
            state: f.first()?.chars().next()?,
            ppid: num(4)? as u32,
            session: num(6)? as u32,
            tty_nr: num(7)?,
            flags: num(9)?,
            cpu_ticks: num(14)? + num(15)?,
            start_ticks: num(22)?,
            rss_pages: num(24)?,
        })
    }
}

/// Which line of `/proc/<pid>/cgroup` belongs to a hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HierarchyKey {
    /// The cgroup2 line, `0::<path>`.
    Unified,
    /// A v1 hierarchy by its id, the first field.
    V1(u32),
}

/// Finds a task's cgroup path in one hierarchy in a `/proc/<pid>/cgroup` text.
pub fn cgroup_path_in(text: &str, key: &HierarchyKey) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id: u32 = parts.next()?.parse().ok()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let hit = match key {
            HierarchyKey::Unified => id == 0 && controllers.is_empty(),
            HierarchyKey::V1(want) => id == *want,
        };
        hit.then(|| path.to_string())
    })
}

impl ProcFs {
    /// Procfs at `root`.
    pub fn new(root: impl Into<PathBuf>) -> ProcFs {
        ProcFs { root: root.into() }
    }

    /// Where this procfs is mounted (a tempdir for fixtures).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A procfs file's bytes in one read where they fit a page (`fs::read`
    /// and `read_to_end` ask for the size, which procfs does not know, and
    /// read 32 bytes at first: nine syscalls for a task's stat, where open,
    /// read and close do); `None` when the task is gone. A seq file's read
    /// stops before a record that does not fit, so a read that leaves room
    /// for `longest_record` more bytes ended the file (0 for the files
    /// written as one record: stat, status, cgroup; `usize::MAX` reads on
    /// until a read returns nothing).
    fn read(path: &Path, longest_record: usize) -> Result<Option<Vec<u8>>, IoError> {
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = fs::File::open(path)?;
            let (mut bytes, mut len) = (vec![0u8; 4096], 0);
            // Each read asks for a page at least: a seq file's read into
            // less than its next record returns nothing, as at its end.
            loop {
                if bytes.len() - len < 4096 {
                    bytes.resize((len * 2).max(len + 4096), 0);
                }
                let room = bytes.len() - len;
                let n = file.read(&mut bytes[len..])?;
                len += n;
                if n == 0 || room - n > longest_record {
                    break;
                }
            }
            bytes.truncate(len);
            Ok(bytes)
        };
        or_vanished(read().map_err(|e| IoError::new("read", path, e)))
    }

    /// [`ProcFs::read`] as text: bytes that are not UTF-8 (a cgroup named
    /// so) are an error, as with `fs::read_to_string`, never a lookalike.
    fn read_text(path: &Path, longest_record: usize) -> Result<Option<String>, IoError> {
        let invalid = |e: std::string::FromUtf8Error| IoError::new("read", path, std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        ProcFs::read(path, longest_record)?.map(|b| String::from_utf8(b).map_err(invalid)).transpose()
    }

    fn task_dir(&self, pid: u32, tid: u32) -> PathBuf {
        self.root.join(format!("{pid}/task/{tid}"))
    }

    fn numeric_entries(dir: &Path) -> Result<Vec<u32>, IoError> {
        let mut out: Vec<u32> = fs::read_dir(dir)
            .map_err(|e| IoError::new("list", dir, e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Every process id.
    pub fn pids(&self) -> Result<Vec<u32>, IoError> {
        Self::numeric_entries(&self.root)
    }

    /// The threads of a process; empty when it is gone.
    pub fn tids(&self, pid: u32) -> Result<Vec<u32>, IoError> {
        Ok(or_vanished(Self::numeric_entries(&self.root.join(format!("{pid}/task"))))?.unwrap_or_default())
    }

    /// A thread's namespace set; `None` when it is gone (or already exiting).
    /// A namespace the kernel lacks reads 0.
    pub fn ns_set(&self, pid: u32, tid: u32) -> Result<Option<NsSet>, IoError> {
        let dir = self.task_dir(pid, tid).join("ns");
        let mut inodes = [0u64; 10];
        for (slot, kind) in inodes.iter_mut().zip(NsKind::ALL) {
            let path = dir.join(kind.proc_name());
            match fs::metadata(&path) {
                Ok(m) => *slot = m.ino(),
                Err(e) if super::error::vanished(&e) => {
                    if !dir.exists() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(IoError::new("stat", &path, e)),
            }
        }
        Ok((inodes != [0; 10]).then(|| NsSet::new(inodes)))
    }

    /// A thread's stat fields; `None` when it is gone.
    pub fn stat(&self, pid: u32, tid: u32) -> Result<Option<TaskStat>, IoError> {
        let path = self.task_dir(pid, tid).join("stat");
        let bytes = ProcFs::read(&path, 0)?;
        Ok(bytes.and_then(|b| TaskStat::parse(&b)))
    }

    /// A thread's cgroup path in one hierarchy; `None` when it is gone.
    pub fn cgroup_path(&self, pid: u32, tid: u32, key: &HierarchyKey) -> Result<Option<String>, IoError> {
        let path = self.task_dir(pid, tid).join("cgroup");
        let text = ProcFs::read_text(&path, 0)?;
        Ok(text.and_then(|t| cgroup_path_in(&t, key)))
    }

    /// A process's cgroup paths in every hierarchy it is in (unified first,
    /// then by hierarchy id); empty when it is gone.
    pub fn cgroup_paths(&self, pid: u32) -> Result<Vec<String>, IoError> {
        let path = self.root.join(format!("{pid}/cgroup"));
        let text = or_vanished(fs::read_to_string(&path).map_err(|e| IoError::new("read", &path, e)))?.unwrap_or_default();
        let mut lines: Vec<(u32, String)> = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let id = parts.next()?.parse().ok()?;
                Some((id, parts.nth(1)?.to_string()))
            })
            .collect();
        lines.sort();
        Ok(lines.into_iter().map(|(_, p)| p).collect())
    }

    /// The children a thread forked; empty when it is gone.
    pub fn children(&self, pid: u32, tid: u32) -> Result<Vec<u32>, IoError> {
        let path = self.task_dir(pid, tid).join("children");
        // A record is a pid and a space.
        let text = ProcFs::read_text(&path, "4294967295 ".len())?;
        Ok(text.unwrap_or_default().split_ascii_whitespace().filter_map(|p| p.parse().ok()).collect())
    }

    /// Whether a thread has CAP_SYS_ADMIN in the user namespace whose inode
    /// is `user_ns` (its effective set, and that namespace being its own);
    /// false when it is gone.
    pub fn has_sys_admin_in(&self, pid: u32, tid: u32, user_ns: u64) -> Result<bool, IoError> {
        const CAP_SYS_ADMIN: u64 = 1 << 21;
        let path = self.task_dir(pid, tid).join("status");
        let text = ProcFs::read_text(&path, 0)?;
        let caps = |l: &str| u64::from_str_radix(l.strip_prefix("CapEff:")?.trim(), 16).ok();
        let effective = text.and_then(|t| t.lines().find_map(caps)).unwrap_or(0);
        Ok(effective & CAP_SYS_ADMIN != 0 && self.ns_inode(pid, tid, NsKind::User)? == Some(user_ns))
    }

    /// The inode number of one of a thread's namespaces; `None` when it is gone.
    pub fn ns_inode(&self, pid: u32, tid: u32, kind: NsKind) -> Result<Option<u64>, IoError> {
        let path = self.task_dir(pid, tid).join("ns").join(kind.proc_name());
        or_vanished(fs::metadata(&path).map(|m| m.ino()).map_err(|e| IoError::new("stat", &path, e)))
    }

    /// Opens one of a thread's namespaces: while the descriptor is open, the
    /// namespace, and so its inode number, stays taken. `None` when it is gone.
    pub fn open_ns(&self, pid: u32, tid: u32, kind: NsKind) -> Result<Option<std::os::fd::OwnedFd>, IoError> {
        let path = self.task_dir(pid, tid).join("ns").join(kind.proc_name());
        or_vanished(fs::File::open(&path).map(std::os::fd::OwnedFd::from).map_err(|e| IoError::new("open", &path, e)))
    }

    /// The real user id of a task, from its status file.
    pub fn uid(&self, tid: u32) -> Result<Option<u32>, IoError> {
        self.status_field(tid, "Uid:")
    }

    /// The thread-group id of a task id, from its status file.
    pub fn tgid(&self, tid: u32) -> Result<Option<u32>, IoError> {
        self.status_field(tid, "Tgid:")
    }

    fn status_field(&self, tid: u32, field: &str) -> Result<Option<u32>, IoError> {
        let path = self.root.join(format!("{tid}/status"));
        let text = ProcFs::read_text(&path, 0)?;
        let first = |l: &str| l.strip_prefix(field)?.split_ascii_whitespace().next()?.parse().ok();
        Ok(text.and_then(|t| t.lines().find_map(first)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_odd_command_names() {
        let line = b"42 (a) b) c\n\xff) S 7 1 1 0 -1 2097152 0 0 0 0 10 5 0 0 20 0 1 0 999 1000 12 0";
        let s = TaskStat::parse(line).unwrap();
        assert_eq!(s.comm, "a) b) c\n\u{fffd}");
        assert_eq!((s.ppid, s.cpu_ticks, s.start_ticks, s.rss_pages), (7, 15, 999, 12));
        assert!(s.is_kernel_thread());
        assert!(!s.is_dead());
        let exiting = TaskStat::parse(b"42 (a) R 7 1 1 0 -1 4194308 0 0 0 0 10 5 0 0 20 0 1 0 999 1000 12 0").unwrap();
        assert!(exiting.is_dead());
        assert_eq!(TaskStat::parse(b"garbage"), None);
    }

    #[test]
    fn cgroup_lines_by_hierarchy() {
        let text = "10:name=nsgroup:/a/node_1\n4:memory:/m\n0::/u\n";
        assert_eq!(cgroup_path_in(text, &HierarchyKey::V1(10)).as_deref(), Some("/a/node_1"));
        assert_eq!(cgroup_path_in(text, &HierarchyKey::Unified).as_deref(), Some("/u"));
        assert_eq!(cgroup_path_in(text, &HierarchyKey::V1(3)), None);
    }

    #[test]
    fn files_of_any_size_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0, 1, 4095, 4096, 4097, 8192, 20_000] {
            let path = dir.path().join(format!("f{size}"));
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            fs::write(&path, &bytes).unwrap();
            for longest in [0, 11, usize::MAX] {
                assert_eq!(ProcFs::read(&path, longest).unwrap().as_ref(), Some(&bytes), "{size} bytes");
            }
        }
        assert_eq!(ProcFs::read(&dir.path().join("gone"), 0).unwrap(), None, "a vanished file is not an error");
    }

    #[test]
    fn seq_files_of_many_records_are_read_whole() {
        // A task with more children than fit a page, its list read whole.
        let mut kids: Vec<std::process::Child> = (0..1000).map(|_| std::process::Command::new("sleep").arg("30").spawn().unwrap()).collect();
        let me = std::process::id();
        let list = ProcFs::new("/proc").children(me, crate::sys::procfs::tests::gettid()).unwrap();
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        let forked: Vec<u32> = kids.iter().map(std::process::Child::id).collect();
        assert!(forked.iter().all(|p| list.contains(p)), "{} of {} children listed", list.len(), forked.len());
    }

    fn gettid() -> u32 {
        rustix::thread::gettid().as_raw_nonzero().get() as u32
    }
}
