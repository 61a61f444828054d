//! systemd hosts (the guest bed): units the tests start, and a delegated
//! scope whose cgroup passes controllers on to a test's subtree.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::harness::{cgroup_in, remove_cgroup};
use super::{cgroup2_mount, random_suffix, wait_for};

/// Why this is not a systemd host on pure cgroup2 (the guest bed), if it is not.
pub fn systemd_unavailable() -> Option<String> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return Some("systemd is not PID 1 here (no /run/systemd/system): the guest bed only (scripts/vm-test)".into());
    }
    match cgroup2_mount() {
        Some(m) if m == std::path::Path::new("/sys/fs/cgroup") => None,
        m => Some(format!("systemd's cgroup hierarchy is not pure cgroup2 at /sys/fs/cgroup here (cgroup2 at {m:?})")),
    }
}

/// A unique name for a unit the test starts (`nsgroup-test-<random>`).
pub fn unit_name() -> String {
    format!("nsgroup-test-{}", random_suffix())
}

/// Runs `systemctl ARGS`; its stderr on failure.
pub fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl").args(args).stdin(Stdio::null()).output().map_err(|e| format!("systemctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("systemctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A transient scope with `Delegate=yes` that the test started
/// (`systemd-run --scope`), its one process (a `sleep`, the test's child)
/// moved into its child cgroup `hold`, so that the scope's own cgroup holds no
/// task and can enable controllers for a test subtree below it
/// ([`Hier::v2_in`]): the test's own scope cannot, it holds the test. Drop
/// kills the sleep by pid; systemd then stops the scope and removes its cgroup.
pub struct DelegatedScope {
    /// The scope's cgroup, e.g. `/system.slice/nsgroup-test-….scope`.
    pub cgroup: String,
    unit: String,
    mount: PathBuf,
    holder: Child,
}

impl DelegatedScope {
    /// Starts the scope and enables `controllers` in its
    /// `cgroup.subtree_control`; `Err` says why it cannot be had here.
    pub fn start(controllers: &[&str]) -> Result<DelegatedScope, String> {
        if let Some(why) = systemd_unavailable() {
            return Err(why);
        }
        let mount = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted")?;
        let offered = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = controllers.iter().copied().filter(|c| !offered.split_whitespace().any(|o| o == *c)).collect();
        if !missing.is_empty() {
            return Err(format!("the cgroup2 hierarchy here has no {} controller", missing.join(", ")));
        }
        let unit = format!("{}.scope", unit_name());
        let holder = Command::new("systemd-run")
            .args(["--scope", "--quiet", "-p", "Delegate=yes", "--unit", &unit, "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("systemd-run: {e}"))?;
        let mut scope = DelegatedScope { cgroup: String::new(), unit, mount, holder };
        let pid = scope.holder.id();
        let suffix = format!("/{}", scope.unit);
        wait_for("the scope's process in its cgroup", || {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let found = cgroup_in(&cg, "").filter(|p| p.ends_with(&suffix)).map(str::to_string);
            found.map(|p| scope.cgroup = p).is_some()
        });
        let dir = scope.mount.join(scope.cgroup.trim_start_matches('/'));
        std::fs::create_dir(dir.join("hold")).map_err(|e| format!("mkdir {}/hold: {e}", dir.display()))?;
        std::fs::write(dir.join("hold/cgroup.procs"), pid.to_string()).map_err(|e| format!("move the scope's sleep into hold: {e}"))?;
        let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
        std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" "))
            .map_err(|e| format!("enable {} in {}: {e}", controllers.join(" "), dir.display()))?;
        Ok(scope)
    }
}

impl Drop for DelegatedScope {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        remove_cgroup(&self.mount.join(self.cgroup.trim_start_matches('/')).join("hold"));
        // Empty, the scope stops by itself; this only makes sure.
        let _ = systemctl(&["stop", "--quiet", &self.unit]);
    }
}
