//! The control part's setting (issue 11): a daemon that mirrors every node
//! in two v1 controller hierarchies and gives it a limit, for parts 1 and 2
//! to run again under.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::{cgroup_in, cgroups_below, poll_until, remove_cgroup};
use crate::hierarchy::{tasks_below, Bench};

/// The v1 controller hierarchies the control part mirrors every node in.
const MIRRORED: [&str; 2] = ["pids", "freezer"];
/// The control part's limit rule: `pids.max` for every node the suite's
/// workloads make (freezer carries no limit).
pub const PIDS_MAX: u32 = 64;

/// The control part's setting (issue 11): every node mirrored in this
/// machine's v1 `pids` and `freezer` hierarchies, each mirror confined to a
/// private subtree `/<name>` the suite makes there (and removes), and a
/// limit rule. Never the memory hierarchy: this machine's own processes are
/// accounted there.
pub struct Control {
    /// The mirrored hierarchies whose subtree exists.
    mirrors: Vec<MirrorRoot>,
    /// The subtree in each: `/nsgroup-bench-<pid>`.
    root: String,
    /// The daemon's configuration file.
    config: PathBuf,
}

/// One mirrored v1 hierarchy.
struct MirrorRoot {
    controller: &'static str,
    mount: PathBuf,
    /// The suite's own cgroup there, where it goes back to.
    home: String,
}

impl Control {
    pub fn new(b: &Bench) -> Result<Control> {
        if b.daemon_args.iter().any(|a| a.starts_with("--config")) {
            bail!("the control part gives the daemon a configuration of its own: run it without --daemon-arg=--config");
        }
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let comm = std::fs::read_to_string("/proc/self/comm")?.trim().to_string();
        let root = format!("/{}", b.name);
        let mut c = Control { mirrors: Vec::new(), root, config: b.work.join("control.toml") };
        let mut text = String::new();
        for controller in MIRRORED {
            let mount = Path::new("/sys/fs/cgroup").join(controller);
            if !mount.join("tasks").exists() {
                bail!("the control part needs this machine's v1 {controller} hierarchy at {}", mount.display());
            }
            let home = cgroup_in(&own, controller).with_context(|| format!("/proc/self/cgroup names no {controller} cgroup"))?.to_string();
            let dir = mount.join(&b.name);
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            // From here on, Drop removes it.
            c.mirrors.push(MirrorRoot { controller, mount, home });
            text.push_str(&format!("[[mirror]]\ncontrollers = \"{controller}\"\nroot = \"{}\"\n", c.root));
        }
        // The workloads' comm is the suite's (they are its forks).
        text.push_str(&format!("[[limit]]\ncomm = [\"{comm}\"]\nset = {{ \"pids.max\" = {PIDS_MAX} }}\n"));
        std::fs::write(&c.config, text)?;
        std::fs::set_permissions(&c.config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(c)
    }

    fn dir(&self, m: &MirrorRoot) -> PathBuf {
        m.mount.join(self.root.trim_start_matches('/'))
    }

    fn daemon_args(&self) -> Vec<String> {
        vec!["--config".into(), self.config.display().to_string()]
    }

    /// What `/proc/self/cgroup` shows of a task in its node's mirrors.
    pub fn markers(&self) -> Vec<String> {
        self.mirrors.iter().map(|m| format!(":{}:{}/node_", m.controller, self.root)).collect()
    }

    /// Runs `f` with the suite in the subtrees (and so the daemon and every
    /// workload it forks, as `spawn_everywhere` does in tests/control.rs);
    /// then moves the suite back and removes the mirrors left.
    fn inside<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let me = std::process::id().to_string();
        let entered = self.mirrors.iter().try_for_each(|m| {
            let procs = self.dir(m).join("cgroup.procs");
            std::fs::write(&procs, &me).with_context(|| format!("moving the suite into {}", procs.display()))
        });
        let out = entered.and_then(|()| f());
        self.go_home();
        self.remove_mirrors();
        out
    }

    fn go_home(&self) {
        let me = std::process::id().to_string();
        for m in &self.mirrors {
            let procs = m.mount.join(m.home.trim_start_matches('/')).join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, &me) {
                eprintln!("warning: moving the suite back into {}: {e}", procs.display());
            }
        }
    }

    /// Tasks in the mirrors, per mirrored hierarchy.
    pub fn placed(&self) -> Vec<u32> {
        self.mirrors.iter().map(|m| tasks_below(&self.dir(m))).collect()
    }

    /// The mirrors in the pids hierarchy with the rule's `pids.max`, and all of them.
    pub fn limited(&self) -> (usize, usize) {
        let Some(pids) = self.mirrors.iter().find(|m| m.controller == "pids") else { return (0, 0) };
        let all = cgroups_below(&self.dir(pids));
        let want = PIDS_MAX.to_string();
        let limited = all.iter().filter(|d| std::fs::read_to_string(d.join("pids.max")).is_ok_and(|v| v.trim() == want)).count();
        (limited, all.len())
    }

    fn no_mirrors(&self) -> bool {
        self.mirrors.iter().all(|m| cgroups_below(&self.dir(m)).is_empty())
    }

    /// Removes the (empty) mirrors a stopped daemon left.
    fn remove_mirrors(&self) {
        for m in &self.mirrors {
            for d in cgroups_below(&self.dir(m)) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.go_home();
        self.remove_mirrors();
        // Only the suite's own tasks were ever in the subtrees, and it has
        // reaped them all: the removal can only wait for the kernel.
        for m in &self.mirrors {
            let dir = self.dir(m);
            if !remove_cgroup(&dir) {
                let tasks = std::fs::read_to_string(dir.join("tasks")).unwrap_or_default();
                eprintln!("warning: could not remove {} (tasks: {})", dir.display(), tasks.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Runs `f` with the daemon arguments of the control part's setting, inside
/// its subtrees; or plainly, with none.
pub fn under<T>(ctl: Option<&Control>, f: impl FnOnce(&[&str]) -> Result<T>) -> Result<T> {
    match ctl {
        None => f(&[]),
        Some(c) => {
            let args = c.daemon_args();
            c.inside(|| f(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        }
    }
}

/// Waits until the daemon has removed every node (and, with mirrors, every mirror).
pub fn wait_clean(b: &Bench, ctl: Option<&Control>, limit: Duration) {
    let start = Instant::now();
    b.wait_no_nodes(limit);
    if let Some(c) = ctl {
        poll_until(limit.saturating_sub(start.elapsed()), Duration::from_millis(20), || c.no_mirrors());
    }
}
