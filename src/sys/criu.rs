//! CRIU, driven through its command line (docs/semantics.md "Checkpoint and
//! restore" says why not its RPC): what it must be for this kernel, the
//! arguments of a dump and a restore, and its failures with the last lines
//! of its own log. The only place that runs `criu`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::core::escape::Escaped;

/// The oldest CRIU nsgroup drives: cgroup2's freezer in `--freeze-cgroup`
/// and `--cgroup-root` on cgroup2 work from 3.15; bookworm ships 3.17.1.
pub const MIN_CRIU: Version = Version(3, 15, 0);

/// How many lines of the log a failure carries, and at most how many bytes.
pub const EXCERPT_LINES: usize = 12;
pub const EXCERPT_BYTES: usize = 4096;

/// A CRIU or kernel version, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// The first `N.N[.N]` in `text` (`Version: 3.17.1`, `6.1.0-57-amd64`).
    pub fn find_in(text: &str) -> Option<Version> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.')).find_map(|word| {
            let mut parts = word.split('.').filter(|p| !p.is_empty()).map(|p| p.parse::<u32>());
            let major = parts.next()?.ok()?;
            let minor = parts.next()?.ok()?;
            let patch = parts.next().and_then(Result::ok).unwrap_or(0);
            Some(Version(major, minor, patch))
        })
    }
}

/// The CRIU a kernel needs: 4.2 from Linux 6.16 on (criu#2707: its
/// restore fails on the kernel's new mm layout), else [`MIN_CRIU`].
pub fn needed_for(kernel: Version) -> Version {
    if kernel >= Version(6, 16, 0) {
        Version(4, 2, 0)
    } else {
        MIN_CRIU
    }
}

/// Why CRIU cannot be used, or what it said when it failed.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu is not installed ({}: {source}); install the `criu` package (docs/semantics.md \"Checkpoint and restore\")", bin.display())]
    Missing { bin: PathBuf, source: std::io::Error },
    #[error("{} --version said no version: \"{}\"", bin.display(), Escaped(said))]
    NoVersion { bin: PathBuf, said: String },
    #[error("criu {found} is too old for Linux {kernel}: it needs criu {needed} or later")]
    TooOld { found: Version, kernel: Version, needed: Version },
    #[error("opening {} to move criu into its cgroup: {source}", path.display())]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("criu {what} failed ({status}); from {}:\n{excerpt}", log.display())]
    Failed { what: &'static str, status: String, log: PathBuf, excerpt: String },
}

/// The CRIU binary and its version.
#[derive(Clone, Debug)]
pub struct Criu {
    pub bin: PathBuf,
    pub version: Version,
}

impl Criu {
    /// Finds `bin` (`criu` on the PATH by default), reads its version and
    /// checks it against the running kernel's needs.
    pub fn detect(bin: &Path) -> Result<Criu, CriuError> {
        let out = Command::new(bin).arg("--version").output().map_err(|source| CriuError::Missing { bin: bin.to_path_buf(), source })?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let version = Version::find_in(&said).ok_or_else(|| CriuError::NoVersion { bin: bin.to_path_buf(), said: said.chars().take(200).collect() })?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let kernel = Version::find_in(&release).unwrap_or(Version(0, 0, 0));
        check(version, kernel)?;
        Ok(Criu { bin: bin.to_path_buf(), version })
    }

    /// Runs `criu` with `args`; a failure carries the end of `log`.
    pub fn run(&self, what: &'static str, args: &[OsString], log: &Path) -> Result<(), CriuError> {
        self.run_in(what, args, log, None)
    }

    /// [`Criu::run`], with CRIU moved first into the cgroup whose attach
    /// file is `procs` (so that every task it forks is born there).
    pub fn run_in(&self, what: &'static str, args: &[OsString], log: &Path, procs: Option<&Path>) -> Result<(), CriuError> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).stdin(std::process::Stdio::null());
        if let Some(procs) = procs {
            let file = std::fs::OpenOptions::new().write(true).open(procs).map_err(|source| CriuError::Cgroup { path: procs.to_path_buf(), source })?;
            crate::ffi::spawn_into_cgroup(&mut cmd, file);
        }
        let status = cmd.status().map_err(|source| CriuError::Missing { bin: self.bin.clone(), source })?;
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|e| format!("(no log: {e})"));
        Err(CriuError::Failed { what, status: status.to_string(), log: log.to_path_buf(), excerpt: excerpt(&text) })
    }
}

/// Whether CRIU `found` can work on `kernel`.
pub fn check(found: Version, kernel: Version) -> Result<(), CriuError> {
    let needed = needed_for(kernel);
    if found < needed {
        return Err(CriuError::TooOld { found, kernel, needed });
    }
    Ok(())
}

/// CRIU's reasons in a log: its `Error (` and `Warn  (` lines (the last
/// line is only "Dumping FAILED."), the latest of them and the log's last
/// lines, [`EXCERPT_LINES`] in all, each escaped, at most [`EXCERPT_BYTES`].
pub fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail_from = lines.len().saturating_sub(3);
    let reasons: Vec<usize> = (0..tail_from).filter(|&i| lines[i].contains("Error (") || lines[i].contains("Warn  (")).collect();
    let keep_reasons = EXCERPT_LINES.saturating_sub(lines.len() - tail_from);
    let mut picked: Vec<usize> = reasons[reasons.len().saturating_sub(keep_reasons)..].to_vec();
    if picked.is_empty() {
        picked = (lines.len().saturating_sub(EXCERPT_LINES)..tail_from).collect();
    }
    picked.extend(tail_from..lines.len());
    let mut out: Vec<String> = Vec::new();
    let mut size = 0;
    for &i in picked.iter().rev() {
        let mut line = format!("  {}", Escaped(lines[i]));
        let mut cut = line.len().min(EXCERPT_BYTES / 4);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        if size + line.len() + 1 > EXCERPT_BYTES {
            break;
        }
        size += line.len() + 1;
        out.push(line);
    }
    out.reverse();
    out.join("\n")
}

/// The cgroup handling of a dump and restore: CRIU records the tasks'
/// cgroups (`soft`), and a restore creates the ones below the root it is
/// given, never writing the properties of one that exists (the new node's
/// limits, written by nsgroup first).
pub const MANAGE_CGROUPS: &str = "--manage-cgroups=soft";

/// What a dump is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// The tree's root: the set's pid-namespace init, as the host sees it.
    pub pid: u32,
    pub dir: PathBuf,
    /// The freezer cgroup's directory (cgroup2: the node's; v1: its freezer mirror).
    pub freezer: PathBuf,
    pub leave_running: bool,
    pub tcp_established: bool,
    /// The tree owns a terminal.
    pub shell_job: bool,
    /// Mount points of the tree's mount namespace that CRIU cannot dump and
    /// that the restore binds back from the same path of the host.
    pub external_mounts: Vec<String>,
}

/// The flags a dump and its restore share: `--tcp-established`,
/// `--shell-job`, and each external mount as `--ext-mount-map` (`map` joins
/// the mount point and its key in the image, `nsgroup-ext-N`, in the order
/// the verb wants).
fn shared_flags(a: &mut Vec<OsString>, tcp: bool, shell_job: bool, mounts: &[String], map: impl Fn(&str, &str) -> String) {
    if tcp {
        a.push("--tcp-established".into());
    }
    if shell_job {
        a.push("--shell-job".into());
    }
    for (i, m) in mounts.iter().enumerate() {
        a.push("--ext-mount-map".into());
        a.push(map(m, &format!("nsgroup-ext-{i}")).into());
    }
}

impl Dump {
    pub const LOG: &'static str = "dump.log";

    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["dump".into(), "-t".into(), self.pid.to_string().into()];
        a.extend(["-D".into(), self.dir.clone().into_os_string(), "-o".into(), Dump::LOG.into(), "-v4".into()]);
        let mut freeze = OsString::from("--freeze-cgroup=");
        freeze.push(&self.freezer);
        a.push(freeze);
        a.push(MANAGE_CGROUPS.into());
        if self.leave_running {
            a.push("--leave-running".into());
        }
        shared_flags(&mut a, self.tcp_established, self.shell_job, &self.external_mounts, |m, key| format!("{m}:{key}"));
        a
    }
}

/// What a restore is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub dir: PathBuf,
    /// Where the root task's cgroup is restored (the new node, relative to
    /// the tracked hierarchy's mount), and per mirror `controller:path`.
    pub cgroup_roots: Vec<String>,
    /// Where CRIU writes the restored root's pid.
    pub pidfile: PathBuf,
    /// The host directory that becomes the tree's root (`--root`).
    pub root: PathBuf,
    pub tcp_established: bool,
    pub shell_job: bool,
    /// The dump's external mounts, bound from the same host paths.
    pub external_mounts: Vec<String>,
}

impl Restore {
    pub const LOG: &'static str = "restore.log";

    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["restore".into(), "-D".into(), self.dir.clone().into_os_string(), "-o".into(), Restore::LOG.into(), "-v4".into()];
        a.extend(["--restore-detached".into(), "--pidfile".into(), self.pidfile.clone().into_os_string()]);
        // Always a root: without one CRIU empties the copy of its own mount
        // namespace the tree is born in, and on a host with tracefs mounted
        // (every systemd host: /sys/kernel/tracing) CRIU 3.17 to 4.1 crash
        // there ("mnt: BUG at criu/mount.c:48", docs/semantics.md §18).
        a.extend(["--root".into(), self.root.clone().into_os_string()]);
        a.push(MANAGE_CGROUPS.into());
        for root in &self.cgroup_roots {
            a.push("--cgroup-root".into());
            a.push(root.into());
        }
        shared_flags(&mut a, self.tcp_established, self.shell_job, &self.external_mounts, |m, key| format!("{key}:{m}"));
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: Vec<OsString>) -> Vec<String> {
        a.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn versions_are_read_from_what_criu_and_uname_say() {
        assert_eq!(Version::find_in("Version: 3.17.1\n"), Some(Version(3, 17, 1)));
        assert_eq!(Version::find_in("Version: 4.2\nGitID: v4.2"), Some(Version(4, 2, 0)));
        assert_eq!(Version::find_in("6.1.0-57-amd64"), Some(Version(6, 1, 0)));
        assert_eq!(Version::find_in("6.18.0"), Some(Version(6, 18, 0)));
        assert_eq!(Version::find_in("no digits here"), None);
        assert_eq!(Version::find_in("7"), None);
    }

    #[test]
    fn new_kernels_need_criu_4_2() {
        assert!(check(Version(3, 17, 1), Version(6, 1, 0)).is_ok());
        assert!(check(Version(4, 1, 1), Version(6, 12, 0)).is_ok());
        let e = check(Version(4, 1, 1), Version(6, 16, 0)).unwrap_err().to_string();
        assert_eq!(e, "criu 4.1.1 is too old for Linux 6.16.0: it needs criu 4.2.0 or later");
        assert!(check(Version(4, 2, 0), Version(6, 18, 0)).is_ok());
        assert!(check(Version(3, 14, 0), Version(5, 10, 0)).is_err());
    }

    #[test]
    fn a_missing_criu_says_so() {
        let e = Criu::detect(Path::new("/nonexistent/criu")).unwrap_err().to_string();
        assert!(e.contains("criu is not installed") && e.contains("/nonexistent/criu"), "{e}");
    }

    #[test]
    fn dump_asks_for_the_freezer_cgroups_and_only_what_was_wanted() {
        let mut d = Dump {
            pid: 4242,
            dir: "/var/lib/img".into(),
            freezer: "/sys/fs/cgroup/t/node_7".into(),
            leave_running: false,
            tcp_established: false,
            shell_job: false,
            external_mounts: vec![],
        };
        assert_eq!(
            strings(d.args()),
            ["dump", "-t", "4242", "-D", "/var/lib/img", "-o", "dump.log", "-v4", "--freeze-cgroup=/sys/fs/cgroup/t/node_7", "--manage-cgroups=soft"]
        );
        d.leave_running = true;
        d.tcp_established = true;
        d.shell_job = true;
        d.external_mounts = vec!["/mnt/share".into()];
        let a = strings(d.args());
        assert_eq!(&a[10..], ["--leave-running", "--tcp-established", "--shell-job", "--ext-mount-map", "/mnt/share:nsgroup-ext-0"]);
    }

    #[test]
    fn restore_goes_below_the_new_node_and_maps_the_same_mounts_back() {
        let r = Restore {
            dir: "/var/lib/img".into(),
            cgroup_roots: vec!["/t/node_9".into(), "pids:/j/node_9".into()],
            pidfile: "/var/lib/img/restored.pid".into(),
            root: "/".into(),
            tcp_established: false,
            shell_job: true,
            external_mounts: vec!["/mnt/share".into()],
        };
        let a = strings(r.args());
        assert_eq!(&a[..6], ["restore", "-D", "/var/lib/img", "-o", "restore.log", "-v4"]);
        let joined = a.join(" ");
        assert!(joined.contains("--restore-detached --pidfile /var/lib/img/restored.pid --root / --manage-cgroups=soft"), "{joined}");
        assert!(joined.contains("--cgroup-root /t/node_9 --cgroup-root pids:/j/node_9"), "{joined}");
        assert!(joined.ends_with("--shell-job --ext-mount-map nsgroup-ext-0:/mnt/share"), "{joined}");
        assert!(!joined.contains("tcp"));
    }

    #[test]
    fn the_excerpt_is_criu_s_reasons_and_the_end_of_its_log_escaped_and_bounded() {
        let log: String = (0..100).map(|i| format!("(00.{i:03}) line {i}\n")).collect();
        let e = excerpt(&log);
        assert_eq!(e.lines().count(), EXCERPT_LINES);
        assert!(e.starts_with("  (00.088) line 88") && e.ends_with("line 99"), "{e}");
        // As CRIU writes it: the reason well before the end.
        let mut dump: String = (0..50).map(|i| format!("(00.{i:03}) mnt: info {i}\n")).collect();
        dump.push_str("(00.050) Error (criu/mount.c:1142): mnt: FS mnt ./work/repo dev 0x27 root / unsupported id 40\n");
        dump.extend((51..90).map(|i| format!("(00.{i:03}) Unseizing {i} into 1\n")));
        dump.push_str("(00.091) Error (criu/cr-dump.c:2053): Dumping FAILED.\n");
        let e = excerpt(&dump);
        assert!(e.lines().next().unwrap().contains("unsupported id 40"), "{e}");
        assert!(e.ends_with("Dumping FAILED."), "{e}");
        assert!(e.lines().count() <= EXCERPT_LINES);
        let hostile = format!("Error (mnt.c:1): \x1b[31mred\r\n{}\n", "x".repeat(10_000));
        let e = excerpt(&hostile);
        assert!(!e.contains('\x1b') && !e.contains('\r') && e.len() <= EXCERPT_BYTES, "{}", e.len());
        assert!(excerpt("").is_empty());
        let failed = CriuError::Failed { what: "dump", status: "exit status: 1".into(), log: "/img/dump.log".into(), excerpt: excerpt("Error (criu/mount.c:1): mnt: unsupported\n") };
        assert_eq!(failed.to_string(), "criu dump failed (exit status: 1); from /img/dump.log:\n  Error (criu/mount.c:1): mnt: unsupported");
    }
}
