//! One cgroup directory, by its path: the writes the API, the verbs and
//! mirrors make there (mkdir, rmdir, moving a task, a controller value,
//! freezing, killing) and the files the verbs read back. The kernel's file
//! names live here; which membership file a hierarchy uses is
//! [`Version`]'s to say. The pipeline's backend ([`super::cgroupfs`]) keeps
//! open files of its own.

use std::fs;
use std::io::Write;
use std::path::Path;

use rustix::fs::Mode;
use rustix::io::Errno;

use super::error::IoError;
use super::hierarchy::Version;

/// Creates the cgroup directory `dir` (mode 0755); `Ok(false)` when it
/// exists (a parent that is gone is an error that [`IoError::is_vanished`]).
pub fn make(dir: &Path) -> Result<bool, IoError> {
    match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o755)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(IoError::new("mkdir", dir, e)),
    }
}

/// [`make`], where a directory that exists is an error (`mkdir …: File exists`).
pub fn make_new(dir: &Path) -> Result<(), IoError> {
    if make(dir)? {
        Ok(())
    } else {
        Err(IoError::new("mkdir", dir, Errno::EXIST))
    }
}

/// Removes the empty cgroup directory `dir`; `Ok(false)` while it is still
/// populated (tasks, children, or exiting tasks not yet released). A
/// directory already gone counts as removed.
pub fn remove(dir: &Path) -> Result<bool, IoError> {
    match rustix::fs::rmdir(dir) {
        Ok(()) | Err(Errno::NOENT) => Ok(true),
        Err(Errno::BUSY) | Err(Errno::NOTEMPTY) => Ok(false),
        Err(e) => Err(IoError::new("rmdir", dir, e)),
    }
}

/// Moves thread `tid` of process `tgid` into the cgroup directory `dir` of
/// a `version` hierarchy (the whole process where it moves processes): one
/// write of [`Version::attach_id`] to [`Version::attach_file`]. A task or
/// cgroup gone is an error that [`IoError::is_vanished`].
pub fn move_task(dir: &Path, version: Version, tgid: u32, tid: u32) -> Result<(), IoError> {
    let path = dir.join(version.attach_file());
    let line = format!("{}\n", version.attach_id(tgid, tid));
    let written = fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| f.write_all(line.as_bytes()));
    written.map_err(|e| IoError::new("move task into", &path, e))
}

/// Writes `value` to the file `path`.
pub fn write(path: &Path, value: &str) -> Result<(), IoError> {
    fs::write(path, value).map_err(|e| IoError::new("write", path, e))
}

/// Reads the file `path`.
pub fn read(path: &Path) -> Result<String, IoError> {
    fs::read_to_string(path).map_err(|e| IoError::new("read", path, e))
}

/// cgroup2: freezes (`true`) or thaws the cgroup `dir` and its subtree
/// (`cgroup.freeze`; [`events`] says when it is done).
pub fn set_frozen(dir: &Path, frozen: bool) -> Result<(), IoError> {
    write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

/// cgroup v1: sets a freezer cgroup's `freezer.state` (`FROZEN`, `THAWED`).
pub fn set_freezer_state(dir: &Path, state: &str) -> Result<(), IoError> {
    write(&dir.join("freezer.state"), state)
}

/// cgroup v1: a freezer cgroup's `freezer.state` as the kernel reports it.
pub fn freezer_state(dir: &Path) -> Result<String, IoError> {
    read(&dir.join("freezer.state"))
}

/// cgroup2: whether the kernel kills a subtree at once (`cgroup.kill`,
/// Linux 5.14 and later).
pub fn can_kill_all(dir: &Path) -> bool {
    dir.join("cgroup.kill").exists()
}

/// cgroup2: kills every task of the subtree at `dir` (`cgroup.kill`).
pub fn kill_all(dir: &Path) -> Result<(), IoError> {
    write(&dir.join("cgroup.kill"), "1")
}

/// cgroup2: the value of the `key value` line `key` of `cgroup.events`
/// (`populated`, `frozen`).
pub fn events(dir: &Path, key: &str) -> Result<Option<String>, IoError> {
    let text = read(&dir.join("cgroup.events"))?;
    Ok(text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(|v| v.trim().to_string())))
}

/// The ids in [`Version::attach_file`] (v1: threads; cgroup2: processes) of
/// every cgroup at and below `dir`, sorted. A cgroup removed while it is
/// read holds none.
pub fn tasks_below(dir: &Path, version: Version) -> Result<Vec<u32>, IoError> {
    let file = version.attach_file();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        match fs::read_to_string(d.join(file)) {
            Ok(text) => out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            // A cgroup removed while we looked (the whole subtree, once
            // emptied, by the daemon's cleanup) holds no task.
            Err(e) if super::error::vanished(&e) => continue,
            Err(e) => return Err(IoError::new("read", d.join(file), e)),
        }
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_made_once_and_removed_when_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node_5");
        assert!(make(&dir).unwrap());
        assert!(!make(&dir).unwrap(), "it exists");
        assert_eq!(make_new(&dir).unwrap_err().to_string(), format!("mkdir {}: {}", dir.display(), std::io::Error::from(Errno::EXIST)));
        assert!(make(&tmp.path().join("gone/node_6")).unwrap_err().is_vanished());
        fs::write(dir.join("tasks"), "").unwrap();
        assert!(!remove(&dir).unwrap(), "not empty");
        fs::remove_file(dir.join("tasks")).unwrap();
        assert!(remove(&dir).unwrap());
        assert!(remove(&dir).unwrap(), "gone counts as removed");
    }

    #[test]
    fn a_move_writes_the_id_of_the_hierarchys_granularity() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("tasks"), "").unwrap();
        fs::write(tmp.path().join("cgroup.procs"), "").unwrap();
        move_task(tmp.path(), Version::V1, 10, 11).unwrap();
        move_task(tmp.path(), Version::V2, 10, 11).unwrap();
        assert_eq!(fs::read_to_string(tmp.path().join("tasks")).unwrap(), "11\n");
        assert_eq!(fs::read_to_string(tmp.path().join("cgroup.procs")).unwrap(), "10\n");
        let e = move_task(&tmp.path().join("gone"), Version::V1, 10, 11).unwrap_err();
        assert!(e.is_vanished() && e.to_string().starts_with("move task into "), "{e}");
    }

    #[test]
    fn the_verbs_files() {
        let tmp = tempfile::tempdir().unwrap();
        set_frozen(tmp.path(), true).unwrap();
        assert_eq!(fs::read_to_string(tmp.path().join("cgroup.freeze")).unwrap(), "1");
        assert!(!can_kill_all(tmp.path()), "before Linux 5.14");
        fs::write(tmp.path().join("cgroup.kill"), "").unwrap();
        assert!(can_kill_all(tmp.path()));
        kill_all(tmp.path()).unwrap();
        assert_eq!(fs::read_to_string(tmp.path().join("cgroup.kill")).unwrap(), "1");
        set_freezer_state(tmp.path(), "FROZEN").unwrap();
        assert_eq!(freezer_state(tmp.path()).unwrap(), "FROZEN");
        fs::write(tmp.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(events(tmp.path(), "frozen").unwrap().as_deref(), Some("0"));
        assert_eq!(events(tmp.path(), "froze").unwrap(), None, "whole keys only");
        fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        fs::write(tmp.path().join("cgroup.procs"), "7\n5\n").unwrap();
        fs::write(tmp.path().join("a/cgroup.procs"), "").unwrap();
        fs::write(tmp.path().join("a/b/cgroup.procs"), "6\n5\n").unwrap();
        assert_eq!(tasks_below(tmp.path(), Version::V2).unwrap(), vec![5, 6, 7]);
        assert!(tasks_below(&tmp.path().join("gone"), Version::V2).unwrap().is_empty());
    }
}
