//! `/etc/nsgroup/nsgroup.toml`: the schema, every key with its default.
//! Unknown keys and bad values are errors that name the key and the line:
//! `load` reads a file (and decides whether to trust it), `validate` checks
//! what the types alone do not, `matching` says which tasks are tracked and
//! which limits a new node gets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::limit::Limit;
use crate::core::nsset::NsKind;
use crate::sys::subtree::LeafPolicy;

/// A rule table (`[[limit]]`, `[[pressure]]`) with the match keys they share
/// before its own fields: one declaration of the keys (serde's `flatten`
/// does not go with `deny_unknown_fields`, nor with the spans of `set`).
macro_rules! rule_with_match_keys {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            /// The creator's command names (any of them).
            #[serde(default)]
            pub comm: Vec<String>,
            /// The node owner's uids (any of them; a user's subordinate uids are hers).
            #[serde(default)]
            pub uid: Vec<u32>,
            /// The cgroups the node is made in (a path matches itself and below).
            #[serde(default)]
            pub cgroup: Vec<String>,
            /// Namespace kinds (`/proc/<pid>/ns` names) of which the node's
            /// set has at least one of its own.
            #[serde(default)]
            pub entered: Vec<String>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// Whether the rule matches a node's creation: every non-empty
            /// list of keys does.
            pub fn matches(&self, c: $crate::config::Creation<'_>) -> bool {
                $crate::config::matching::keys_match(&self.comm, &self.uid, &self.cgroup, &self.entered, c)
            }

            /// Checks the match keys (command names that fit, cgroup paths
            /// made canonical, known kinds); errors name `names`' key.
            fn check_match_keys(&mut self, names: [&'static str; 3]) -> Result<(), (&'static str, String)> {
                let [comm, cgroup, entered] = names;
                self.comm.iter().try_for_each(|c| $crate::config::validate::comm_fits(c)).map_err(|why| (comm, why))?;
                for c in &mut self.cgroup {
                    *c = $crate::core::cgpath::canonical(c).map_err(|e| (cgroup, e.to_string()))?;
                }
                $crate::core::nsset::NsMask::parse_names(&self.entered).map_err(|why| (entered, why))?;
                Ok(())
            }
        }
    };
}

mod load;
mod matching;
pub mod pressure;
mod validate;

pub use load::ConfigError;
pub use matching::{Creation, Subject};

/// The default configuration file; a missing default file means defaults.
pub const DEFAULT_PATH: &str = "/etc/nsgroup/nsgroup.toml";

/// The daemon's configuration (every key is in packaging/nsgroup.toml).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
    /// At most this many live nodes whose creator had one uid (at least 1).
    pub max_nodes_per_user: usize,
    /// Node creations per second per creator uid, with a burst of twice as
    /// many (at least 1).
    pub max_creations_per_second_per_user: u32,
    /// Uids the two per-user bounds do not apply to; `max_nodes` still does.
    pub quota_exempt_uids: Vec<u32>,
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
    /// How the BPF source sees unshare() and setns() callers.
    pub hooks: Hooks,
    /// `hooks = "no-syscall"`: milliseconds between task snapshots, which
    /// find the callers that changed set and did not fork or exec since.
    pub snapshot_interval_ms: u64,
    /// Run the daemon under SCHED_FIFO at this priority (1–99) so that a
    /// placement does not wait behind the workload for a CPU; 0 keeps the
    /// normal scheduler.
    pub realtime_priority: u8,
    /// The daemon's nice value (-20–19) when it does not run under SCHED_FIFO.
    pub nice: i8,
    /// The time slice (µs) the daemon asks for when it does not run under
    /// SCHED_FIFO: from Linux 6.12 a woken task with a shorter slice than
    /// the running one preempts it, so that placements do not wait behind
    /// the workload; 0 keeps the kernel's default (100–100,000 otherwise).
    pub slice_us: u32,
    /// cgroup v1 controller hierarchies that carry a mirror of every node
    /// (`[[mirror]]` tables): controllers for nodes on hybrid and v1 hosts.
    pub mirror: Vec<MirrorConfig>,
    /// cgroup2: the controllers every node gets (`memory`, `pids`, `cpu`,
    /// `io`, …), enabled in its parent's `cgroup.subtree_control` where the
    /// parent allows it.
    pub controllers: Vec<String>,
    /// cgroup2: whose tasks may move into a child `leaf` so that
    /// `controllers` can be enabled for the nodes made below them: `nodes`
    /// (default: only nodes, which nsgroup owns), `everywhere` (any cgroup in
    /// the tracked subtree: for subtrees delegated to nsgroup) or `never`.
    /// A node that cannot get them is made without, and the log says so.
    pub leaf: LeafPolicy,
    /// Nodes only inside cgroups delegated to nsgroup (systemd's
    /// `Delegate=yes` units, marked with the `trusted.delegate` xattr).
    /// Unset: on when systemd manages the cgroup2 hierarchy at /sys/fs/cgroup.
    pub delegated_only: Option<bool>,
    /// Where that rule applies: a sandbox started in an undelegated scope of
    /// a user's manager becomes a scope of its own, which her manager makes
    /// (delegated, bound to the scope it came from), and gets its node there.
    /// Off: it stays where it was, counted.
    pub user_units: bool,
    /// Limit rules (`[[limit]]` tables): the controller values a new node
    /// gets when its creator matches, written before its first task moves in.
    pub limit: Vec<LimitRule>,
    /// The local API (`[api]`: socket, its mode and group, strict mode; docs/api.md).
    pub api: ApiConfig,
    /// The metrics endpoint and textfile (`[metrics]`; docs/operations.md).
    pub metrics: MetricsConfig,
    /// The history database (`[history]`; docs/operations.md).
    pub history: HistoryConfig,
    /// The status file and periodic counters (`[status]`; `nsgroup status`).
    pub status: StatusConfig,
    /// What the kernel does to nodes: OOM kills (`[watch]`; docs/semantics.md).
    pub watch: WatchConfig,
    /// Pressure rules (`[[pressure]]` tables): a PSI trigger on every node
    /// whose creation matches, and what is done to it when it fires (cgroup2).
    pub pressure: Vec<pressure::PressureRule>,
}

/// One mirrored v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The hierarchy's controllers, as `/proc/self/cgroup` lists them
    /// (`pids`, `freezer`, `cpu,cpuacct`).
    pub controllers: String,
    /// The subtree of that hierarchy that is mirrored; tasks outside it are
    /// placed in the tracked hierarchy only.
    #[serde(default = "slash")]
    pub root: String,
}

fn slash() -> String {
    "/".into()
}

rule_with_match_keys! {
    /// A limit rule: which entries it matches, and the values their nodes get.
    #[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct LimitRule {
        /// cgroup2 file name → value (`"pids.max" = 64`, `"memory.max" = "512M"`).
        pub set: std::collections::BTreeMap<String, toml::Spanned<LimitValue>>,
        /// `set`, checked.
        #[serde(skip)]
        pub checked: Vec<Limit>,
    }
}

/// A limit value as written in TOML: a number or a string.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LimitValue {
    Number(u64),
    Text(String),
}

impl LimitValue {
    fn text(&self) -> String {
        match self {
            LimitValue::Number(n) => n.to_string(),
            LimitValue::Text(t) => t.clone(),
        }
    }
}

/// Filters by command name, user id and cgroup path prefix.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// eBPF, falling back to the proc connector where it cannot load.
    Auto,
    /// eBPF only.
    Bpf,
    /// The netlink proc connector and /proc rescans (no eBPF).
    Proc,
}

/// How the BPF source sees unshare() and setns() callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hooks {
    /// fentry/fexit where the kernel allows them, else the syscall tracepoints.
    Auto,
    /// fentry/fexit on the syscalls' kernel functions, or fail.
    Fentry,
    /// The `syscalls:sys_{enter,exit}_{unshare,setns}` tracepoints (every
    /// syscall of every task then takes the kernel's slow path).
    Tracepoints,
    /// No syscall hook: a caller is seen at its next fork or exec, or by the
    /// next snapshot (every `snapshot_interval_ms`).
    NoSyscall,
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
            max_nodes_per_user: 1024,
            max_creations_per_second_per_user: 100,
            quota_exempt_uids: vec![0],
            cleanup: Cleanup::Remove,
            linger_seconds: 10,
            ring_buffer_bytes: 1 << 20,
            setns_settle_us: 2000,
            batch_window_us: 1000,
            coalesce_above_per_second: 1250,
            source: Source::Auto,
            hooks: Hooks::Auto,
            snapshot_interval_ms: 2000,
            realtime_priority: 1,
            nice: 0,
            slice_us: 100,
            mirror: Vec::new(),
            controllers: Vec::new(),
            leaf: LeafPolicy::Nodes,
            delegated_only: None,
            user_units: true,
            limit: Vec::new(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            history: HistoryConfig::default(),
            status: StatusConfig::default(),
            watch: WatchConfig::default(),
            pressure: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// The local API (`[api]`): its socket and strict mode. docs/api.md.
// ---------------------------------------------------------------------------

/// The default API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/nsgroup/api.sock";

/// `[api]`: where the daemon listens, who may connect, and strict mode.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The Unix socket (`/run/nsgroup/api.sock`). An empty path turns the API
    /// off. When the default path is served by another daemon already, this
    /// one runs without the API (and says so); a path set here must be free.
    pub socket: PathBuf,
    /// The socket's permission bits (default `0o666`: every user may connect,
    /// and every request is authorised by the permission model). `0o660`
    /// with `socket_group` admits one group, `0o600` root only.
    pub socket_mode: u32,
    /// The group owning the socket (a name from /etc/group, or a number);
    /// empty: root's group.
    pub socket_group: String,
    /// Strict mode (`nsgroup run --strict`): an LSM BPF program enforces the
    /// permission model on direct writes to the hierarchy's `cgroup.procs`,
    /// `tasks` and `mkdir`s too. Needs `bpf` among the kernel's LSMs; the
    /// daemon refuses to start, saying why, where it cannot load.
    pub strict: bool,
    /// The CRIU that `checkpoint` and `restore` run (default `criu`, found
    /// on the daemon's PATH; docs/semantics.md §18).
    pub criu: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig { socket: PathBuf::from(DEFAULT_API_SOCKET), socket_mode: 0o666, socket_group: String::new(), strict: false, criu: PathBuf::from("criu") }
    }
}

impl ApiConfig {
    /// Whether the socket path is the default one (another daemon may hold it).
    pub fn default_socket(&self) -> bool {
        self.socket == Path::new(DEFAULT_API_SOCKET)
    }
}

// ---------------------------------------------------------------------------
// Operability (`[metrics]`, `[history]`, `[status]`): docs/operations.md.
// ---------------------------------------------------------------------------

/// `[metrics]`: the Prometheus/OpenMetrics endpoint and textfile.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address (`127.0.0.1:9853`) whose `/metrics` serves the daemon's
    /// metrics; empty: off (`nsgroup run --metrics ADDR` sets it).
    pub listen: String,
    /// A file written atomically (rename) for node_exporter's textfile
    /// collector; empty: off (`nsgroup run --metrics-file PATH` sets it).
    pub file: PathBuf,
    /// Seconds between writes of `file` (at least 1).
    pub file_interval_seconds: u64,
    /// At most this many per-node series; the rest are counted in
    /// `nsgroup_node_series_cut`.
    pub max_node_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig { listen: String::new(), file: PathBuf::new(), file_interval_seconds: 15, max_node_series: 500 }
    }
}

/// The default history database.
pub const DEFAULT_HISTORY_DB: &str = "/var/lib/nsgroup/history.sqlite";

/// `[history]`: every node that existed, in SQLite (`nsgroup history`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// The SQLite database; empty: no history.
    pub database: PathBuf,
    /// Removed nodes older than this many days are deleted; 0: no age limit.
    pub retention_days: u64,
    /// At most this many nodes are kept (the oldest removed go first); 0: no limit.
    pub retention_rows: u64,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig { database: PathBuf::from(DEFAULT_HISTORY_DB), retention_days: 30, retention_rows: 1_000_000 }
    }
}

/// `[watch]`: the kernel's notifications about nodes.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Watch nodes' memory events for OOM kills (cgroup2: the node's
    /// `memory.events`; v1: its memory mirror's `memory.oom_control`).
    pub oom: bool,
    /// At most this many nodes are watched; the rest are counted
    /// (`nsgroup_watches_skipped`), not watched.
    pub max_watches: usize,
    /// Name the victim of an OOM kill from the kernel's log (`/dev/kmsg`,
    /// read only after a kill, at most 512 records at a time).
    pub kmsg: bool,
    /// At most this many PSI triggers (`[[pressure]]`) in all; the rest
    /// are counted (`nsgroup_triggers_skipped`), not written.
    pub max_pressure_triggers: usize,
}

impl Default for WatchConfig {
    fn default() -> WatchConfig {
        WatchConfig { oom: true, max_watches: 4096, kmsg: true, max_pressure_triggers: 256 }
    }
}

/// `[status]`: what `nsgroup status` reads, and counters in the log.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// The directory of the status files (one per hierarchy and root, named
    /// like the lock file); empty: none written.
    pub dir: PathBuf,
    /// Log the counters at most this often (seconds), and only after they
    /// changed (an idle daemon does not wake for it); 0: only at exit.
    pub log_counters_seconds: u64,
}

impl Default for StatusConfig {
    fn default() -> StatusConfig {
        StatusConfig { dir: PathBuf::from("/run/nsgroup"), log_counters_seconds: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration text, parsed and checked.
    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    /// The sample installed as /etc/nsgroup/nsgroup.toml.
    const SAMPLE: &str = include_str!("../../packaging/nsgroup.toml");

    /// The leaves of `value` (a serialized config) with their dotted keys.
    fn leaves(value: &serde_json::Value, prefix: &str, out: &mut Vec<(String, serde_json::Value)>) {
        for (key, v) in value.as_object().expect("a table") {
            let key = format!("{prefix}{key}");
            match v {
                serde_json::Value::Object(_) => leaves(v, &format!("{key}."), out),
                _ => out.push((key, v.clone())),
            }
        }
    }

    #[test]
    fn the_sample_config_shows_every_key_with_its_default_and_a_comment() {
        assert_eq!(parse(SAMPLE).unwrap(), Config::default());
        // The line of each key (`key = …`, or `[[key]]` for an array of
        // tables), dotted with its table: whether it is commented out, and
        // whether a comment line explains it.
        let mut table = String::new();
        let mut after_comment = false;
        let mut lines = std::collections::HashMap::new();
        for line in SAMPLE.lines() {
            let commented = line.starts_with("# ");
            let text = line.strip_prefix("# ").unwrap_or(line);
            let is_key = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let key = if let Some(name) = text.strip_prefix("[[").and_then(|t| t.strip_suffix("]]")) {
                table = format!("{name}.");
                Some(name.to_string())
            } else if let Some(name) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                table = format!("{name}.");
                after_comment = false;
                continue;
            } else {
                text.split_once(" = ").map(|(k, _)| k).filter(|k| is_key(k)).map(|k| format!("{table}{k}"))
            };
            match key {
                Some(key) => {
                    lines.insert(key, (commented, after_comment));
                    after_comment = false;
                }
                None => after_comment = commented,
            }
        }
        let mut all = Vec::new();
        leaves(&serde_json::to_value(Config::default()).unwrap(), "", &mut all);
        assert!(all.len() >= 28, "{all:?}");
        for (key, default) in all {
            let Some(&(commented, explained)) = lines.get(&key) else { panic!("packaging/nsgroup.toml lacks `{key}`") };
            let nothing_to_show = default.is_null() || default.as_array().is_some_and(Vec::is_empty);
            assert!(!commented || nothing_to_show, "`{key}`: the sample must set its default, {default}");
            assert!(explained, "`{key}`: a comment line must explain it");
        }
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
max_nodes_per_user = 3
max_creations_per_second_per_user = 7
quota_exempt_uids = [0, 42]
cleanup = "linger"
linger_seconds = 3
ring_buffer_bytes = 4096
setns_settle_us = 100
batch_window_us = 0
coalesce_above_per_second = 5000
source = "proc"
hooks = "no-syscall"
snapshot_interval_ms = 500
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
        assert_eq!((c.max_nodes_per_user, c.max_creations_per_second_per_user), (3, 7));
        assert_eq!(c.quota_exempt_uids, [0, 42]);
        assert_eq!(c.cleanup, Cleanup::Linger);
        assert_eq!(c.source, Source::Proc);
        assert_eq!((c.hooks, c.snapshot_interval_ms), (Hooks::NoSyscall, 500));
        assert!(!c.mask().unwrap().counts(NsKind::Mnt));
    }

    #[test]
    fn quota_defaults() {
        let c = Config::default();
        assert_eq!((c.max_nodes_per_user, c.max_creations_per_second_per_user), (1024, 100));
        assert_eq!(c.quota_exempt_uids, [0]);
    }
}
