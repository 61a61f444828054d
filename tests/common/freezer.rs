//! A private subtree of this machine's v1 freezer hierarchy for a test's
//! freezer mirror (tests/api.rs, tests/top.rs), thawed and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{skip, Hier};

/// A private subtree of this machine's v1 freezer hierarchy, removed on drop.
pub struct FreezerRoot {
    pub dir: PathBuf,
    /// Its path in the freezer hierarchy: the mirror's root.
    pub root: String,
}

impl FreezerRoot {
    pub fn new(h: &Hier) -> Option<FreezerRoot> {
        let mount = PathBuf::from("/sys/fs/cgroup/freezer");
        if !mount.join("tasks").exists() {
            skip("no v1 freezer hierarchy at /sys/fs/cgroup/freezer");
            return None;
        }
        let dir = mount.join(&h.name);
        std::fs::create_dir(&dir).unwrap();
        Some(FreezerRoot { dir, root: format!("/{}", h.name) })
    }
}

impl Drop for FreezerRoot {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        let mut dirs = vec![self.dir.clone()];
        let mut i = 0;
        while i < dirs.len() {
            for e in std::fs::read_dir(&dirs[i]).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::write(e.path().join("freezer.state"), "THAWED");
                    dirs.push(e.path());
                }
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            for tid in std::fs::read_to_string(d.join("tasks")).unwrap_or_default().lines().filter_map(|l| l.parse::<i32>().ok()) {
                // Only the test's own tasks are ever in this private subtree.
                let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(tid).unwrap(), rustix::process::Signal::KILL);
            }
            for _ in 0..200 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A configuration with the freezer mirror (through the [[mirror]] table),
/// an API socket every user may reach in its directory, and `extra` tables.
pub fn freezer_config(f: &FreezerRoot, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (socket, config) = (dir.path().join("api.sock"), dir.path().join("nsgroup.toml"));
    let text = format!("[[mirror]]\ncontrollers = \"freezer\"\nroot = \"{}\"\n\n[api]\nsocket = \"{}\"\n{extra}", f.root, socket.display());
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

/// Starts `cmd` in the tracked root and in the freezer root.
pub fn spawn_frozen_able(h: &Hier, f: &FreezerRoot, cmd: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > '{}' && echo $$ > '{}' && exec {cmd}", h.dir(&h.root).join("tasks").display(), f.dir.join("tasks").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}
