//! Which hierarchy nsgroup manages when none is named, and mounting its own.

use std::path::{Path, PathBuf};

use super::hierarchy::{Hierarchy, HierarchyError};
use super::error::IoError;
use super::mounts::{mount_named_v1, read_mountinfo, Mount};

/// The name of nsgroup's own v1 hierarchy on hybrid and v1 hosts.
pub const OWN_NAME: &str = "nsgroup";
/// Where nsgroup mounts it when it is not mounted yet.
pub const OWN_MOUNT_POINT: &str = "/sys/fs/cgroup/nsgroup";

/// A located hierarchy.
#[derive(Debug)]
pub struct Located {
    pub hierarchy: Hierarchy,
    /// A named v1 hierarchy of nsgroup's own (`name=nsgroup…`): nobody else writes there.
    pub own: bool,
    /// Set when this call mounted it; whether `favordynmods` took.
    pub mounted: Option<bool>,
}

/// Finding or mounting the hierarchy failed.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(transparent)]
    Hierarchy(#[from] HierarchyError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("no cgroup hierarchy is mounted; `nsgroup run` mounts nsgroup's own (name={OWN_NAME} at {OWN_MOUNT_POINT}), or pass --hierarchy PATH")]
    NotMounted,
    #[error(
        "nsgroup's own hierarchy (name={OWN_NAME}), the default on a hybrid or v1 host, is not mounted: `nsgroup run` mounts it at {OWN_MOUNT_POINT}, or pass --hierarchy PATH for another{}",
        other.as_ref().map(|p| format!(" (cgroup2 is at {})", p.display())).unwrap_or_default()
    )]
    OwnNotMounted {
        /// The cgroup2 mount, if any: the likeliest other choice.
        other: Option<PathBuf>,
    },
}

fn own(mount: &Mount) -> bool {
    mount.fstype == "cgroup" && mount.hierarchy_name().is_some_and(|n| n.starts_with(OWN_NAME))
}

fn open(path: &Path, proc_root: &Path) -> Result<Located, LocateError> {
    let mounts = read_mountinfo(&proc_root.join("self/mountinfo"))?;
    let self_cgroup_path = proc_root.join("self/cgroup");
    let self_cgroup =
        std::fs::read_to_string(&self_cgroup_path).map_err(|e| IoError::new("read", &self_cgroup_path, e))?;
    let hierarchy = Hierarchy::at(path, &mounts, &self_cgroup)?;
    let own = mounts.iter().rev().find(|m| m.mount_point == hierarchy.mount()).is_some_and(own);
    Ok(Located { hierarchy, own, mounted: None })
}

/// The hierarchy at `explicit`, or the default: cgroup2 on a pure cgroup2
/// host, else the `name=nsgroup` hierarchy, mounted when `may_mount`.
pub fn locate(explicit: Option<&Path>, may_mount: bool) -> Result<Located, LocateError> {
    let proc_root = Path::new("/proc");
    if let Some(path) = explicit {
        return open(path, proc_root);
    }
    let mounts = read_mountinfo(&proc_root.join("self/mountinfo"))?;
    let at = |p: &str| mounts.iter().rev().find(|m| m.mount_point == Path::new(p));
    if at("/sys/fs/cgroup").is_some_and(|m| m.fstype == "cgroup2") {
        return open(Path::new("/sys/fs/cgroup"), proc_root);
    }
    if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup" && m.hierarchy_name() == Some(OWN_NAME)) {
        return open(&m.mount_point.clone(), proc_root);
    }
    if !may_mount {
        if !mounts.iter().any(Mount::is_cgroup) {
            return Err(LocateError::NotMounted);
        }
        let other = mounts.iter().find(|m| m.fstype == "cgroup2").map(|m| m.mount_point.clone());
        return Err(LocateError::OwnNotMounted { other });
    }
    let point = PathBuf::from(OWN_MOUNT_POINT);
    let favordynmods = mount_named_v1(OWN_NAME, &point)?;
    let mut located = open(&point, proc_root)?;
    located.mounted = Some(favordynmods);
    Ok(located)
}
