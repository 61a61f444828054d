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

    /// Whether `rel` or one of its ancestors is marked delegated.
    pub fn delegated(&mut self, rel: &str) -> bool {
        if let Some(&known) = self.cache.get(rel) {
            return known;
        }
        let answer = self.marked(rel)
            || match rel.rsplit_once('/') {
                Some(("", _)) if rel != "/" => self.delegated("/"),
                Some((parent, _)) if !parent.is_empty() => self.delegated(parent),
                _ => false,
            };
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(rel.to_string(), answer);
        answer
    }
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
}
