//! systemd's single-writer rule for cgroup2: a manager writes only inside
//! subtrees delegated to it. systemd marks the cgroup of a `Delegate=yes`
//! unit with the `trusted.delegate` xattr (`user.delegate` for user
//! managers); everything else belongs to systemd, and a node there would
//! rewrite a service's cgroup behind its manager's back.

use std::collections::HashMap;

use super::hierarchy::Hierarchy;

/// The xattrs systemd sets on delegated cgroups.
const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];
/// How many answers are kept before the cache starts over.
const MAX_CACHED: usize = 4096;

/// Whether a cgroup lies inside a delegated subtree, answered from the
/// xattrs of it and its ancestors (cached per path).
pub struct Delegation {
    hierarchy: Hierarchy,
    cache: HashMap<String, bool>,
}

/// Whether this host's cgroup2 hierarchy is systemd's (systemd runs as the
/// service manager and the hierarchy is mounted where it mounts it).
pub fn systemd_manages(hierarchy: &Hierarchy) -> bool {
    std::path::Path::new("/run/systemd/system").is_dir() && hierarchy.mount() == std::path::Path::new("/sys/fs/cgroup")
}

impl Delegation {
    pub fn new(hierarchy: Hierarchy) -> Delegation {
        Delegation { hierarchy, cache: HashMap::new() }
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
            && (self.marked(rel) || parent.is_some_and(|p| !is_user_manager(p) && self.delegated(p)));
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(rel.to_string(), answer);
        answer
    }
}

/// Whether the cgroup at `rel` is a user manager's: `user@<uid>.service`.
fn is_user_manager(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or("");
    name.strip_prefix("user@")
        .and_then(|n| n.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
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
        let mut d = Delegation::new(h);
        let m = format!("/{manager}");
        assert!(!d.delegated(&m), "the manager's own cgroup is the manager's");
        assert!(!d.delegated(&format!("{m}/init.scope")));
        assert!(!d.delegated(&format!("{m}/app.slice/app-sandbox1.scope")), "an app scope it did not delegate");
        assert!(!d.delegated(&format!("{m}/app.slice/app-sandbox1.scope/inner")));
        assert!(d.delegated(&format!("{m}/app.slice/app-box.scope")), "Delegate=yes in a user unit");
        assert!(d.delegated(&format!("{m}/app.slice/app-box.scope/inner")));
        assert!(is_user_manager("/user@0.service") && !is_user_manager("/user@.service") && !is_user_manager("/user@1x.service"));
    }
}
