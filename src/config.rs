//! `/etc/nsgroup/nsgroup.toml`: every key has a default; unknown keys and bad
//! values are errors that name the key and the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::cgpath::within;
use crate::core::nsset::{NsKind, NsMask};

/// The default configuration file; a missing default file means defaults.
pub const DEFAULT_PATH: &str = "/etc/nsgroup/nsgroup.toml";

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Mount point of the hierarchy to manage; empty: cgroup2 on a pure
    /// cgroup2 host, else nsgroup's own named v1 hierarchy.
    pub hierarchy: Option<PathBuf>,
    /// The subtree whose tasks are tracked and moved.
    pub root: String,
    /// The namespace kinds whose change makes a new set (`/proc/<pid>/ns` names).
    pub namespaces: Vec<String>,
    /// Track only tasks matching every non-empty list here.
    pub include: Filter,
    /// Never track tasks matching any entry here.
    pub exclude: Filter,
    /// Nodes are not nested deeper than this; a task stays in its parent node.
    pub max_depth: u32,
    /// At most this many nodes exist at once.
    pub max_nodes: usize,
    /// What happens to a node whose last task exited.
    pub cleanup: Cleanup,
    /// Seconds an empty node lingers with `cleanup = "linger"`.
    pub linger_seconds: u64,
    /// Size of the BPF ring buffer: a power of two, at least 4096.
    pub ring_buffer_bytes: u32,
    /// How long a task that called setns() may go on calling it before it is
    /// placed (nsenter enters one namespace per call); ended early by its
    /// next fork or execve.
    pub setns_settle_us: u64,
    /// Coalescing under load (µs): above `coalesce_above_per_second`, the
    /// daemon looks at the ring once per window and places an entry once it
    /// is a window old; a task that exits within the window gets no node.
    /// 0: never wait.
    pub batch_window_us: u64,
    /// The rate of entries into new sets (per second, over the latest 64)
    /// above which the daemon coalesces; it stops below nine tenths of it
    /// (over the latest 16).
    pub coalesce_above_per_second: u32,
    /// Where events come from.
    pub source: Source,
    /// Run the daemon under SCHED_FIFO at this priority (1–99) so that a
    /// placement does not wait behind the workload for a CPU; 0 keeps the
    /// normal scheduler.
    pub realtime_priority: u8,
    /// The daemon's nice value (-20–19) when it does not run under SCHED_FIFO.
    pub nice: i8,
}

/// Filters by command name, user id and cgroup path prefix.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// Command names (`comm`, at most 15 bytes), matched exactly.
    pub comm: Vec<String>,
    /// Real user ids.
    pub uid: Vec<u32>,
    /// Cgroup paths inside the hierarchy; a path matches itself and below.
    pub cgroup: Vec<String>,
}

/// What happens to an empty node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cleanup {
    /// Removed within about a second of its last task exiting.
    Remove,
    /// Removed after `linger_seconds`, unless reused meanwhile.
    Linger,
    /// Never removed by nsgroup.
    Keep,
}

/// The event source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// eBPF, falling back to the proc connector where it cannot load.
    Auto,
    /// eBPF only.
    Bpf,
    /// The netlink proc connector and /proc rescans (no eBPF).
    Proc,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hierarchy: None,
            root: "/".into(),
            namespaces: NsKind::ALL.iter().map(|k| k.proc_name().to_string()).collect(),
            include: Filter::default(),
            exclude: Filter::default(),
            max_depth: 32,
            max_nodes: 100_000,
            cleanup: Cleanup::Remove,
            linger_seconds: 10,
            ring_buffer_bytes: 1 << 20,
            setns_settle_us: 2000,
            batch_window_us: 1000,
            coalesce_above_per_second: 1250,
            source: Source::Auto,
            realtime_priority: 1,
            nice: 0,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {}: {source}", path.display())]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("config {}: key `{key}`: {why}", path.display())]
    Value { path: PathBuf, key: &'static str, why: String },
}

impl Config {
    /// Loads `path`. A missing file is an error unless `path` is the default one.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses and checks a configuration text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(e) })?;
        config.check().map_err(|(key, why)| ConfigError::Value { path: path.to_path_buf(), key, why })?;
        Ok(config)
    }

    /// Checks values that the types alone do not.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.root.starts_with('/') {
            return Err(("root", format!("{:?} must be a cgroup path starting with /", self.root)));
        }
        self.mask().map_err(|why| ("namespaces", why))?;
        let rb = self.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return Err(("ring_buffer_bytes", format!("{rb} must be a power of two of at least 4096")));
        }
        if self.realtime_priority > 99 {
            return Err(("realtime_priority", format!("{} is above 99", self.realtime_priority)));
        }
        if !(-20..=19).contains(&self.nice) {
            return Err(("nice", format!("{} is outside -20..19", self.nice)));
        }
        if self.coalesce_above_per_second == 0 {
            return Err(("coalesce_above_per_second", "must be at least 1".into()));
        }
        if self.max_depth == 0 {
            return Err(("max_depth", "must be at least 1".into()));
        }
        for (key, f) in [("include.cgroup", &self.include), ("exclude.cgroup", &self.exclude)] {
            if let Some(bad) = f.cgroup.iter().find(|c| !c.starts_with('/')) {
                return Err((key, format!("{bad:?} must start with /")));
            }
        }
        Ok(())
    }

    /// The namespace kinds that count, as a mask.
    pub fn mask(&self) -> Result<NsMask, String> {
        if self.namespaces.is_empty() {
            return Err("must name at least one namespace kind".into());
        }
        let kinds: Result<Vec<NsKind>, String> = self
            .namespaces
            .iter()
            .map(|n| {
                NsKind::from_proc_name(n).ok_or_else(|| {
                    let names: Vec<_> = NsKind::ALL.iter().map(|k| k.proc_name()).collect();
                    format!("unknown namespace kind {n:?} (known: {})", names.join(", "))
                })
            })
            .collect();
        Ok(NsMask::of(kinds?))
    }
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.comm.is_empty() && self.uid.is_empty() && self.cgroup.is_empty()
    }

    /// Whether a filter needs the task's uid (a /proc read per event).
    pub fn needs_uid(&self) -> bool {
        !self.uid.is_empty()
    }
}

/// What a filter decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub comm: &'a str,
    pub uid: Option<u32>,
    pub cgroup: &'a str,
}

impl Config {
    /// Whether a filter looks at cgroup paths.
    pub fn filters_cgroups(&self) -> bool {
        !self.include.cgroup.is_empty() || !self.exclude.cgroup.is_empty()
    }

    /// Whether a task is tracked at all under the include/exclude filters.
    pub fn admits(&self, s: Subject<'_>) -> bool {
        let inc = &self.include;
        let included = inc.is_empty()
            || ((inc.comm.is_empty() || inc.comm.iter().any(|c| c == s.comm))
                && (inc.uid.is_empty() || s.uid.is_some_and(|u| inc.uid.contains(&u)))
                && (inc.cgroup.is_empty() || inc.cgroup.iter().any(|c| within(s.cgroup, c))));
        let ex = &self.exclude;
        let excluded = ex.comm.iter().any(|c| c == s.comm)
            || s.uid.is_some_and(|u| ex.uid.contains(&u))
            || ex.cgroup.iter().any(|c| within(s.cgroup, c));
        included && !excluded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            r#"
hierarchy = "/sys/fs/cgroup/nsgroup"
root = "/jobs"
namespaces = ["net", "pid", "pid_for_children", "uts"]
max_depth = 4
max_nodes = 10
cleanup = "linger"
linger_seconds = 3
ring_buffer_bytes = 4096
setns_settle_us = 100
batch_window_us = 0
coalesce_above_per_second = 5000
source = "proc"
realtime_priority = 0
[include]
comm = ["unshare"]
[exclude]
uid = [1000]
cgroup = ["/jobs/skip"]
"#,
        )
        .unwrap();
        assert_eq!(c.root, "/jobs");
        assert_eq!(c.cleanup, Cleanup::Linger);
        assert_eq!(c.source, Source::Proc);
        assert!(!c.mask().unwrap().counts(NsKind::Mnt));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_line() {
        let e = parse("root = \"/\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = parse("max_depth = \"deep\"\n").unwrap_err().to_string();
        assert!(e.contains("max_depth") && e.contains("line 1"), "{e}");
        let e = parse("ring_buffer_bytes = 5000\n").unwrap_err().to_string();
        assert!(e.contains("ring_buffer_bytes"), "{e}");
        let e = parse("coalesce_above_per_second = 0\n").unwrap_err().to_string();
        assert!(e.contains("coalesce_above_per_second"), "{e}");
        let e = parse("namespaces = [\"nett\"]\n").unwrap_err().to_string();
        assert!(e.contains("namespaces") && e.contains("nett"), "{e}");
        assert!(parse("root = \"jobs\"").is_err());
        assert!(parse("[exclude]\ncgroup = [\"x\"]").is_err());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        assert!(matches!(Config::load(Some(Path::new("/nonexistent/nsgroup.toml"))), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn filters() {
        let c = parse("[include]\ncomm = [\"unshare\", \"nsenter\"]\n[exclude]\ncgroup = [\"/a/b\"]\nuid = [7]").unwrap();
        let s = |comm, uid, cgroup| Subject { comm, uid, cgroup };
        assert!(c.admits(s("unshare", None, "/a")));
        assert!(!c.admits(s("sleep", None, "/a")));
        assert!(!c.admits(s("unshare", None, "/a/b/c")));
        assert!(c.admits(s("unshare", None, "/a/bc")));
        assert!(!c.admits(s("unshare", Some(7), "/a")));
        assert!(Config::default().admits(s("anything", None, "/")));
    }
}
