//! systemd's single-writer rule for cgroup2: a manager writes only inside
//! subtrees delegated to it. systemd marks the cgroup of a `Delegate=yes`
//! unit with the `trusted.delegate` xattr (`user.delegate` in later
//! versions); everything else belongs to systemd, and a node there would
//! rewrite a service's cgroup behind its manager's back. A user manager
//! (systemd 252 at least) marks none of its units: for them its own record
//! of a transient unit counts, the unit file it writes to
//! `/run/user/<uid>/systemd/transient/<unit>` (`Delegate=yes`).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::hierarchy::Hierarchy;
use crate::core::unit::{is_user_manager, user_manager_above};

/// The xattrs systemd sets on delegated cgroups.
const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];
/// How many answers are kept before the cache starts over.
const MAX_CACHED: usize = 4096;
/// Where user managers keep their runtime state (`<uid>/systemd/transient`).
const USER_RUNTIME: &str = "/run/user";
/// How much of a transient unit file is read.
const MAX_UNIT_FILE: u64 = 64 * 1024;

/// Whether a cgroup lies inside a delegated subtree, answered from the
/// xattrs of it and its ancestors (cached per path).
pub struct Delegation {
    hierarchy: Hierarchy,
    /// Where user managers keep their runtime state ([`USER_RUNTIME`]; a fixture's in tests).
    user_runtime: PathBuf,
    cache: HashMap<String, bool>,
}

/// Whether this host's cgroup2 hierarchy is systemd's (systemd runs as the
/// service manager and the hierarchy is mounted where it mounts it).
pub fn systemd_manages(hierarchy: &Hierarchy) -> bool {
    std::path::Path::new("/run/systemd/system").is_dir() && hierarchy.mount() == std::path::Path::new("/sys/fs/cgroup")
}

impl Delegation {
    pub fn new(hierarchy: Hierarchy) -> Delegation {
        Delegation { hierarchy, user_runtime: PathBuf::from(USER_RUNTIME), cache: HashMap::new() }
    }

    /// The same, with user managers' runtime state at `dir`.
    pub fn with_user_runtime(self, dir: PathBuf) -> Delegation {
        Delegation { user_runtime: dir, ..self }
    }

    /// Whether `rel` is the cgroup of a unit of a user manager (a service or
    /// scope, directly or through slices below `user@<uid>.service`) that
    /// its manager started with `Delegate=` on, by the transient unit file it
    /// wrote. The file lies in the user's runtime directory, which she may
    /// write: what she can claim there is delegation of her own units, whose
    /// cgroups are hers anyway.
    fn user_unit_delegated(&self, rel: &str) -> bool {
        let Some((uid, below)) = user_manager_above(rel) else { return false };
        let mut parts: Vec<&str> = below.split('/').filter(|p| !p.is_empty()).collect();
        let Some(unit) = parts.pop() else { return false };
        // The manager's own scope is never delegated.
        let own = parts.is_empty() && unit == "init.scope";
        if own || !(unit.ends_with(".service") || unit.ends_with(".scope")) || !parts.iter().all(|p| p.ends_with(".slice")) {
            return false;
        }
        let path = self.user_runtime.join(uid.to_string()).join("systemd/transient").join(unit);
        let Ok(file) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path) else {
            return false;
        };
        let mut text = String::new();
        if file.take(MAX_UNIT_FILE).read_to_string(&mut text).is_err() {
            return false;
        }
        delegates(&text)
    }

    fn marked(&self, rel: &str) -> bool {
        let dir = self.hierarchy.dir(rel);
        let mut buf = [0u8; 8];
        DELEGATE_XATTRS.iter().any(|x| rustix::fs::getxattr(&dir, *x, &mut buf).is_ok_and(|n| n > 0 && buf[0] == b'1'))
    }

    /// Whether `rel` or one of its ancestors is marked delegated. Inside a
    /// user manager's cgroup (`user@<uid>.service`, which the system manager
    /// delegated to that manager, not to nsgroup), only the marks the user
    /// manager set on its own units below it count: the manager's cgroup
    /// itself and its undelegated units are its own.
    pub fn delegated(&mut self, rel: &str) -> bool {
        if let Some(&known) = self.cache.get(rel) {
            return known;
        }
        let parent = match rel.rsplit_once('/') {
            Some(("", _)) if rel != "/" => Some("/"),
            Some((parent, _)) if !parent.is_empty() => Some(parent),
            _ => None,
        };
        let answer = !is_user_manager(rel)
            && (self.marked(rel) || self.user_unit_delegated(rel) || parent.is_some_and(|p| !is_user_manager(p) && self.delegated(p)));
        // A user manager's units come and go by name: their answers are read afresh.
        if user_manager_above(rel).is_none() {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            self.cache.insert(rel.to_string(), answer);
        }
        answer
    }
}

/// Whether a unit file's text turns `Delegate=` on (the last assignment
/// counts; `yes` or a list of controllers).
fn delegates(unit_file: &str) -> bool {
    let value = unit_file.lines().rev().find_map(|l| l.trim().strip_prefix("Delegate="));
    value.is_some_and(|v| !matches!(v.trim(), "" | "no" | "false" | "0" | "off"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::hierarchy::Version;
    use crate::sys::procfs::HierarchyKey;

    #[test]
    fn only_marked_subtrees_are_delegated() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("system.slice/app.service/payload")).unwrap();
        std::fs::create_dir_all(tmp.path().join("system.slice/udev.service")).unwrap();
        let marked = tmp.path().join("system.slice/app.service");
        // tmpfs takes user.* xattrs; where it does not, there is nothing to test.
        if rustix::fs::setxattr(&marked, "user.delegate", b"1", rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("skipped: no user xattrs on {}", tmp.path().display());
            return;
        }
        let h = Hierarchy::new(tmp.path().to_path_buf(), Version::V2, HierarchyKey::Unified);
        let mut d = Delegation::new(h);
        assert!(d.delegated("/system.slice/app.service"));
        assert!(d.delegated("/system.slice/app.service/payload"));
        assert!(!d.delegated("/system.slice/udev.service"));
        assert!(!d.delegated("/system.slice"));
        assert!(!d.delegated("/"));
    }

    #[test]
    fn inside_a_user_manager_only_its_own_marks_count() {
        let tmp = tempfile::tempdir().unwrap();
        let manager = "user.slice/user-1000.slice/user@1000.service";
        for unit in ["app.slice/app-sandbox1.scope/inner", "app.slice/app-box.scope/inner", "init.scope"] {
            std::fs::create_dir_all(tmp.path().join(manager).join(unit)).unwrap();
        }
        let set = |rel: &str| rustix::fs::setxattr(tmp.path().join(rel), "user.delegate", b"1", rustix::fs::XattrFlags::empty());
        // systemd marks user@.service delegated (to the user manager).
        if set(manager).is_err() {
            eprintln!("skipped: no user xattrs on {}", tmp.path().display());
            return;
        }
        set(&format!("{manager}/app.slice/app-box.scope")).unwrap();
        let h = Hierarchy::new(tmp.path().to_path_buf(), Version::V2, HierarchyKey::Unified);
        let mut d = Delegation::new(h).with_user_runtime(tmp.path().join("no-runtime"));
        let m = format!("/{manager}");
        assert!(!d.delegated(&m), "the manager's own cgroup is the manager's");
        assert!(!d.delegated(&format!("{m}/init.scope")));
        assert!(!d.delegated(&format!("{m}/app.slice/app-sandbox1.scope")), "an app scope it did not delegate");
        assert!(!d.delegated(&format!("{m}/app.slice/app-sandbox1.scope/inner")));
        assert!(d.delegated(&format!("{m}/app.slice/app-box.scope")), "Delegate=yes in a user unit");
        assert!(d.delegated(&format!("{m}/app.slice/app-box.scope/inner")));
    }

    #[test]
    fn a_user_managers_transient_unit_with_delegate_on_is_delegated() {
        let tmp = tempfile::tempdir().unwrap();
        let manager = "user.slice/user-1000.slice/user@1000.service";
        for unit in ["app.slice/app-box.scope/inner", "app.slice/app-plain.scope", "app.slice/run-u7.service", "init.scope"] {
            std::fs::create_dir_all(tmp.path().join("cg").join(manager).join(unit)).unwrap();
        }
        let transient = tmp.path().join("run/1000/systemd/transient");
        std::fs::create_dir_all(&transient).unwrap();
        std::fs::write(transient.join("app-box.scope"), "# transient\n[Scope]\nDelegate=yes\n").unwrap();
        std::fs::write(transient.join("app-plain.scope"), "[Scope]\nDelegate=yes\nDelegate=no\n").unwrap();
        std::fs::write(transient.join("run-u7.service"), "[Service]\nDelegate=memory pids\n").unwrap();
        // The manager's own scope is never delegated, whatever the file says.
        std::fs::write(transient.join("init.scope"), "Delegate=yes\n").unwrap();
        let h = Hierarchy::new(tmp.path().join("cg"), Version::V2, HierarchyKey::Unified);
        let mut d = Delegation::new(h).with_user_runtime(tmp.path().join("run"));
        let m = format!("/{manager}");
        assert!(d.delegated(&format!("{m}/app.slice/app-box.scope")));
        assert!(d.delegated(&format!("{m}/app.slice/app-box.scope/inner")), "below the unit");
        assert!(!d.delegated(&format!("{m}/app.slice/app-plain.scope")), "the last assignment counts");
        assert!(d.delegated(&format!("{m}/app.slice/run-u7.service")), "a list of controllers");
        assert!(!d.delegated(&format!("{m}/init.scope")));
        assert!(!d.delegated(&format!("{m}/app.slice")), "a slice is never delegated");
        assert!(!d.delegated(&m));
    }
}
