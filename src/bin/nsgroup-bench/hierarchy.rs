//! The suite's private hierarchy `name=nsgroup-bench-<pid>` with the tracked
//! subtree `/b`, which the suite itself and its workloads live in; the
//! daemons it starts there; the nodes and tasks below the root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::harness::{cgroups_below, mount_named_v1, poll_until, DaemonProcess};

/// A binary built next to this one (`nsgroup`, `nsgroup-workload`).
pub fn sibling(name: &str) -> Result<PathBuf> {
    Ok(std::env::current_exe().context("the suite's own path")?.with_file_name(name))
}

/// A private hierarchy `name=nsgroup-bench-<pid>` with the subtree `/b`.
pub struct Bench {
    /// Extra arguments for every `nsgroup run` (`--daemon-arg`).
    pub daemon_args: Vec<String>,
    pub mount: PathBuf,
    /// Scratch space for the daemons' logs and notify sockets.
    pub work: PathBuf,
    pub name: String,
    pub root: String,
    pub nsgroup: PathBuf,
    pub workload: PathBuf,
}

impl Bench {
    pub fn new(daemon_args: Vec<String>) -> Result<Bench> {
        let name = format!("nsgroup-bench-{}", std::process::id());
        let mount = std::env::temp_dir().join(&name);
        let work = std::env::temp_dir().join(format!("{name}.work"));
        std::fs::create_dir_all(&mount).with_context(|| format!("mkdir {}", mount.display()))?;
        std::fs::create_dir_all(&work).with_context(|| format!("mkdir {}", work.display()))?;
        mount_named_v1(&name, &mount, "xattr,favordynmods")?;
        std::fs::create_dir(mount.join("b")).with_context(|| format!("mkdir {}/b", mount.display()))?;
        let (nsgroup, workload) = (sibling("nsgroup")?, sibling("nsgroup-workload")?);
        // The benchmark's own workloads run inside the tracked subtree.
        std::fs::write(mount.join("b/cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving the suite into {}/b", mount.display()))?;
        Ok(Bench { daemon_args, mount, work, name, root: "/b".into(), nsgroup, workload })
    }

    /// A fresh daemon on the root, with `extra` arguments and the suite's
    /// `--daemon-arg`s, once it is ready.
    pub fn start(&self, extra: &[&str]) -> Result<DaemonProcess> {
        self.start_as(DaemonProcess::command(&self.nsgroup, &self.mount, &self.root), extra)
    }

    /// [`Bench::start`] without CAP_SYS_NICE (dropped from the bounding set
    /// by setpriv, which then execs the daemon): where a container or RT
    /// group scheduling refuses SCHED_FIFO and a lower nice value.
    pub fn start_without_sys_nice(&self, extra: &[&str]) -> Result<DaemonProcess> {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--"]).arg(&self.nsgroup);
        cmd.args(["run", "--hierarchy"]).arg(&self.mount).args(["--root", &self.root]);
        self.start_as(cmd, extra)
    }

    fn start_as(&self, mut cmd: Command, extra: &[&str]) -> Result<DaemonProcess> {
        // The bench's daemons keep no history in the host's /var/lib.
        cmd.args(["--history-database", ""]).args(extra).args(&self.daemon_args);
        DaemonProcess::start(cmd, &self.work, Duration::from_secs(120))
    }

    /// `nsgroup SUBCOMMAND --hierarchy … --root …` on the root.
    pub fn nsgroup_on(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.nsgroup);
        cmd.arg(subcommand).arg("--hierarchy").arg(&self.mount).args(["--root", &self.root]);
        cmd
    }

    /// The tracked root's directory.
    pub fn root_dir(&self) -> PathBuf {
        self.mount.join(self.root.trim_start_matches('/'))
    }

    /// What `/proc/self/cgroup` shows of a task in a node below the root.
    pub fn marker(&self) -> String {
        format!(":name={}:{}/node_", self.name, self.root)
    }

    /// Every cgroup below the root, deepest first.
    pub fn nodes(&self) -> Vec<PathBuf> {
        cgroups_below(&self.root_dir())
    }

    pub fn wait_no_nodes(&self, limit: Duration) -> bool {
        poll_until(limit, Duration::from_millis(20), || self.nodes().is_empty())
    }

    pub fn remove_nodes(&self) {
        for d in self.nodes() {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Tasks placed in nodes right now.
    pub fn placed(&self) -> u32 {
        tasks_below(&self.root_dir())
    }

    /// Tasks `nsgroup check` finds misplaced.
    pub fn misplaced(&self) -> Result<usize> {
        let out = self.nsgroup_on("check").arg("--json").output().context("nsgroup check")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("nsgroup check --json")?;
        Ok(v["misplaced"].as_array().map_or(0, Vec::len))
    }
}

/// Threads in the cgroups below `top` (each read from its `tasks`).
pub fn tasks_below(top: &Path) -> u32 {
    cgroups_below(top).iter().map(|d| std::fs::read_to_string(d.join("tasks")).unwrap_or_default().lines().count() as u32).sum()
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.remove_nodes();
        // Leave the hierarchy: move ourselves to its root, then remove /b.
        let _ = std::fs::write(self.mount.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(self.root_dir());
        nsgroup::sys::mounts::destroy_named_v1(&self.name, &self.mount);
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
