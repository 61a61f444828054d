//! What the host offers the tests: the kinds of hierarchy they run on,
//! where cgroup2 is mounted and which cgroup of it they may use, whether
//! named v1 hierarchies can be mounted.

use std::path::PathBuf;

use super::harness::cgroup_in;

/// The kind of hierarchy a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A private named v1 hierarchy `name=nsgroup-test-<random>`.
    V1,
    /// A fresh subtree of the cgroup2 hierarchy (see [`cgroup2_base`]).
    V2,
}

/// Where the cgroup2 (unified) hierarchy is mounted, from /proc/self/mountinfo:
/// `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure cgroup2
/// hosts; only a mount of the hierarchy's root counts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = nsgroup::sys::mounts::read_mountinfo(std::path::Path::new("/proc/self/mountinfo")).ok()?;
    let mut found: Vec<PathBuf> =
        mounts.into_iter().filter(|m| m.fstype == "cgroup2" && m.root == "/").map(|m| m.mount_point).collect();
    // The usual places first, in case the hierarchy is mounted more than once.
    found.sort_by_key(|p| !p.starts_with("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// This process's cgroup in the cgroup2 hierarchy (`0::/path`).
pub fn own_cgroup2() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_in(&text, "").map(|p| p.trim_end().to_string())
}

/// Whether a cgroup2 directory was delegated by its manager: systemd marks
/// units with `Delegate=yes` with the `trusted.delegate` xattr (`user.delegate`
/// where it cannot write `trusted.*`).
fn delegated(dir: &std::path::Path) -> bool {
    let mut buf = [0u8; 16];
    ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|name| rustix::fs::getxattr(dir, *name, &mut buf[..]).is_ok_and(|n| &buf[..n] == b"1"))
}

/// The cgroup2 mount and the cgroup below which the tests may make their
/// subtrees without fighting the hierarchy's manager: the test's own cgroup
/// when it is the root (a host where no manager uses cgroup2, like the hybrid
/// development machine) or delegated to it (`systemd-run --scope -p
/// Delegate=yes`, a service with `Delegate=yes`); `Err` says why not.
/// The tests' processes stay inside that cgroup: none is moved out of its unit.
pub fn cgroup2_base() -> Result<(PathBuf, String), String> {
    let mount = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted")?;
    let own = own_cgroup2().ok_or("this process has no cgroup2 cgroup (/proc/self/cgroup has no 0:: line)")?;
    if own == "/" {
        return Ok((mount, String::new()));
    }
    let dir = mount.join(own.trim_start_matches('/'));
    if delegated(&dir) {
        return Ok((mount, own));
    }
    Err(format!(
        "this test's cgroup2 cgroup {own} is not delegated to it (no trusted.delegate xattr), and making cgroups \
         there would fight its manager: run the tests under `systemd-run --scope -p Delegate=yes` (as scripts/vm-test does)"
    ))
}

/// Why a named v1 hierarchy cannot be mounted here, if it cannot.
pub fn v1_unavailable() -> Option<String> {
    static CACHE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if !fs.lines().any(|l| l.split_whitespace().last() == Some("cgroup")) {
                return Some("the kernel has no cgroup v1 (no `cgroup` in /proc/filesystems: CONFIG_CGROUP_V1=n)".into());
            }
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            // `cgroup_no_v1=` takes a list of controllers, `all` (controllers
            // only) and `named`.
            if let Some(arg) = cmdline
                .split_whitespace()
                .find(|a| a.strip_prefix("cgroup_no_v1=").is_some_and(|l| l.split(',').any(|x| x == "named")))
            {
                return Some(format!("the kernel was booted with {arg}: named v1 hierarchies cannot be mounted"));
            }
            None
        })
        .clone()
}
