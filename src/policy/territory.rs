//! A caller's territory: where it may freeze, thaw, kill and limit the
//! nodes it owns without CAP_SYS_ADMIN (docs/semantics.md §15, §16). Pure:
//! derived from the caller's owner uid, its cgroup and the kind of host,
//! each read by the daemon, never taken from a request.
//!
//! Off systemd it is the caller's cgroup and below. On a systemd host the
//! caller's own tools — a terminal, a script, a desktop's app launcher —
//! run in units of the user's manager or in session scopes, never in an
//! ancestor of the app scope a sandbox runs in; so there the territory also
//! holds the slice systemd gives every user, `/user.slice/user-<uid>.slice`
//! (its `user@<uid>.service` and session scopes), for the caller's owner.
//! That path is made from the owner's number alone: a cgroup a user creates
//! (below its own `user@<uid>.service`, the only place it may) lies deeper
//! and is never taken for a user slice, whatever it is called.

use crate::core::cgpath::within;
use crate::core::escape::Escaped;

/// Whether the tracked hierarchy is systemd's, which lays out a slice per user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// No manager's layout is assumed.
    Plain,
    /// systemd manages the hierarchy ([`crate::sys::delegation::systemd_manages`]).
    Systemd,
}

/// Where a caller may act on its own nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Territory {
    /// At or below the caller's cgroup.
    BelowCaller { cgroup: String },
    /// At or below the caller's cgroup, and in the user slice of its owner.
    UserSlice { cgroup: String, owner: u32, slice: String },
}

/// The slice systemd gives user `uid`: `/user.slice/user-<uid>.slice`.
pub fn user_slice(uid: u32) -> String {
    format!("/user.slice/user-{uid}.slice")
}

impl Territory {
    /// The territory of a caller in `cgroup` whose set `owner` owns, on `host`.
    pub fn of(host: Host, owner: u32, cgroup: &str) -> Territory {
        let cgroup = cgroup.to_string();
        match host {
            Host::Plain => Territory::BelowCaller { cgroup },
            Host::Systemd => Territory::UserSlice { cgroup, owner, slice: user_slice(owner) },
        }
    }

    /// Whether the cgroup `path` lies in the territory.
    pub fn contains(&self, path: &str) -> bool {
        match self {
            Territory::BelowCaller { cgroup } => within(path, cgroup),
            Territory::UserSlice { cgroup, slice, .. } => within(path, cgroup) || within(path, slice),
        }
    }

    /// Why `path` lies outside the territory, for a refusal.
    pub fn outside(&self, path: &str) -> String {
        match self {
            Territory::BelowCaller { cgroup } => format!("{} does not lie below the caller's cgroup {}", Escaped(path), Escaped(cgroup)),
            Territory::UserSlice { cgroup, owner, slice } => format!(
                "{} lies neither below the caller's cgroup {} nor in the user slice of its owner (uid {owner}), {slice}",
                Escaped(path),
                Escaped(cgroup)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: u32 = 1000;
    const ALICES_SHELL: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.service";
    const ALICES_SANDBOX: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-sandbox1.scope/node_42";

    #[test]
    fn off_systemd_it_is_the_callers_cgroup_and_below() {
        let t = Territory::of(Host::Plain, ALICE, ALICES_SHELL);
        assert!(t.contains(ALICES_SHELL));
        assert!(t.contains(&format!("{ALICES_SHELL}/node_5")));
        assert!(!t.contains(ALICES_SANDBOX), "no user slice off systemd");
        assert!(!t.contains(&format!("{ALICES_SHELL}x/node_5")));
        assert_eq!(t.outside("/n"), format!("/n does not lie below the caller's cgroup {ALICES_SHELL}"));
    }

    #[test]
    fn on_systemd_it_adds_the_owners_user_slice() {
        let t = Territory::of(Host::Systemd, ALICE, ALICES_SHELL);
        assert!(t.contains(ALICES_SANDBOX), "another unit of her manager");
        assert!(t.contains("/user.slice/user-1000.slice/session-3.scope/node_9"), "her login session");
        assert!(t.contains("/user.slice/user-1000.slice"));
        // Another user's, root's, the system's.
        for outside in [
            "/user.slice/user-1001.slice/user@1001.service/app.slice/app-x.scope/node_1",
            "/user.slice/user-10000.slice/node_1",
            "/user.slice/user-100.slice/node_1",
            "/user.slice/user-0.slice/session-1.scope/node_1",
            "/user.slice",
            "/user.slice/node_1",
            "/system.slice/docker.service/node_1",
            "/",
        ] {
            assert!(!t.contains(outside), "{outside}");
        }
        // A caller outside its slice keeps its own subtree and gets its slice.
        let svc = Territory::of(Host::Systemd, ALICE, "/system.slice/alice-job.service");
        assert!(svc.contains("/system.slice/alice-job.service/node_3") && svc.contains(ALICES_SANDBOX));
        assert!(!svc.contains("/system.slice/other.service/node_3"));
        assert_eq!(
            t.outside("/n"),
            format!("/n lies neither below the caller's cgroup {ALICES_SHELL} nor in the user slice of its owner (uid 1000), /user.slice/user-1000.slice")
        );
    }

    #[test]
    fn look_alike_cgroups_a_user_creates_give_nothing() {
        // Alice may create cgroups below her own user@1000.service only, and
        // names them as she likes: after root's or another user's slice.
        let base = "/user.slice/user-1000.slice/user@1000.service/app.slice";
        for fake in [
            format!("{base}/user-0.slice"),
            format!("{base}/user.slice/user-0.slice"),
            format!("{base}/user-1001.slice/user@1001.service"),
            format!("{base}/x.scope/user.slice/user-1001.slice"),
        ] {
            let t = Territory::of(Host::Systemd, ALICE, &fake);
            assert_eq!(t, Territory::UserSlice { cgroup: fake.clone(), owner: ALICE, slice: "/user.slice/user-1000.slice".into() });
            for other in ["/user.slice/user-0.slice/session-1.scope/node_1", "/user.slice/user-1001.slice/user@1001.service/node_1"] {
                assert!(!t.contains(other), "{fake} reaches {other}");
            }
        }
        // Only the owner's number picks the slice: a caller whose owner is
        // another user gets that user's, wherever its cgroup is.
        let bob_in_alices_cgroup = Territory::of(Host::Systemd, 1001, ALICES_SHELL);
        assert!(!bob_in_alices_cgroup.contains(ALICES_SANDBOX));
        assert!(bob_in_alices_cgroup.contains("/user.slice/user-1001.slice/session-2.scope/node_1"));
    }
}
