//! Finding cgroup hierarchies in `/proc/self/mountinfo`, and mounting nsgroup's own.

use std::path::{Path, PathBuf};

use super::error::IoError;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// The directory of the filesystem mounted there (`/` unless a bind mount).
    pub root: String,
    pub fstype: String,
    pub super_opts: Vec<String>,
    /// The filesystem's device, `major:minor`: the same on two mounts of one superblock.
    pub dev: String,
}

impl Mount {
    /// cgroup (v1) or cgroup2.
    pub fn is_cgroup(&self) -> bool {
        self.fstype == "cgroup" || self.fstype == "cgroup2"
    }

    /// The `name=` option of a named v1 hierarchy.
    pub fn hierarchy_name(&self) -> Option<&str> {
        self.super_opts.iter().find_map(|o| o.strip_prefix("name="))
    }
}

fn unescape(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                root: unescape(l.get(3)?),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                fstype: r.first()?.to_string(),
                super_opts: r.get(2)?.split(',').map(str::to_string).collect(),
                dev: l.get(2)?.to_string(),
            })
        })
        .collect()
}

/// Whether the node `cgroup_id` at `path` of the hierarchy mounted at
/// `hierarchy` is provably gone: that hierarchy is mounted (whole, as a
/// cgroup filesystem, in `mounts`) and `path` there is missing or another
/// cgroup. An unmounted hierarchy proves nothing (a v1 one lives on
/// unmounted while it has cgroups).
pub fn node_gone(mounts: &[Mount], hierarchy: &str, path: &str, cgroup_id: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mounted = mounts.iter().any(|m| m.is_cgroup() && m.root == "/" && m.mount_point == Path::new(hierarchy));
    mounted
        && match std::fs::symlink_metadata(Path::new(hierarchy).join(path.trim_start_matches('/'))) {
            Ok(meta) => !meta.is_dir() || meta.ino() != cgroup_id,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
}

/// Reads and parses a mountinfo file.
pub fn read_mountinfo(path: &Path) -> Result<Vec<Mount>, IoError> {
    let text = std::fs::read_to_string(path).map_err(|e| IoError::new("read", path, e))?;
    Ok(parse_mountinfo(&text))
}

/// Mounts a named v1 hierarchy with xattrs (node records) and, where the
/// kernel accepts it, `favordynmods` (fast moves; stays on until reboot).
/// Returns whether favordynmods took.
pub fn mount_named_v1(name: &str, at: &Path) -> Result<bool, IoError> {
    use rustix::mount::{mount, MountFlags};
    std::fs::create_dir_all(at).map_err(|e| IoError::new("mkdir", at, e))?;
    let opts = |extra: &str| std::ffi::CString::new(format!("none,name={name},xattr{extra}")).expect("no NUL in name");
    match mount("cgroup", at, "cgroup", MountFlags::empty(), opts(",favordynmods").as_c_str()) {
        Ok(()) => Ok(true),
        Err(_) => {
            mount("cgroup", at, "cgroup", MountFlags::empty(), opts("").as_c_str())
                .map_err(|e| IoError::new("mount cgroup", at, e))?;
            Ok(false)
        }
    }
}

/// Unmounts a named v1 hierarchy so that it is destroyed, not merely
/// detached: the kernel keeps a hierarchy alive past umount while any child
/// cgroup, even a dying one, remains, and only a later umount frees it. So:
/// umount, and while `/proc/self/cgroup` still lists the name, remount and
/// umount again. Returns whether it is gone.
pub fn destroy_named_v1(name: &str, at: &Path) -> bool {
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    let alive = || {
        std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default().contains(&format!(":name={name}:"))
    };
    let gone = || {
        (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            !alive()
        })
    };
    // Give removed children an RCU grace period to be released.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let _ = unmount(at, UnmountFlags::empty());
    let opts = std::ffi::CString::new(format!("none,name={name}")).expect("no NUL in name");
    for _ in 0..5 {
        if gone() {
            return true;
        }
        if mount("cgroup", at, "cgroup", MountFlags::empty(), opts.as_c_str()).is_ok() {
            let _ = unmount(at, UnmountFlags::empty());
        }
    }
    !alive()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
35 25 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
40 25 0:35 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw
41 25 0:36 / /tmp/with\\040space rw - cgroup cgroup rw,xattr,favordynmods,name=nsgroup-test-1
42 25 0:37 /sub /mnt/bind rw - ext4 /dev/vda rw
broken line
";

    #[test]
    fn parses_cgroup_mounts() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4);
        assert!(m[0].is_cgroup() && m[1].is_cgroup() && !m[3].is_cgroup());
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[2].mount_point, PathBuf::from("/tmp/with space"));
        assert_eq!(m[2].hierarchy_name(), Some("nsgroup-test-1"));
        assert_eq!(m[3].root, "/sub");
        assert_eq!(m[0].hierarchy_name(), None);
    }
}
