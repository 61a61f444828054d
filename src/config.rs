//! `/etc/nsgroup/nsgroup.toml`: every key has a default; unknown keys and bad
//! values are errors that name the key and the line.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::cgpath::{canonical, within};
use crate::control::limits::Limit;
use crate::sys::subtree::LeafPolicy;
use crate::core::nsset::{NsKind, NsMask};

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

/// A limit rule: which entries it matches, and the values their nodes get.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// The creator's command names (any of them).
    #[serde(default)]
    pub comm: Vec<String>,
    /// The creator's real uids (any of them).
    #[serde(default)]
    pub uid: Vec<u32>,
    /// The cgroups the creator is in (a path matches itself and below).
    #[serde(default)]
    pub cgroup: Vec<String>,
    /// Namespace kinds (`/proc/<pid>/ns` names) of which the entry made at
    /// least one new.
    #[serde(default)]
    pub entered: Vec<String>,
    /// cgroup2 file name → value (`"pids.max" = 64`, `"memory.max" = "512M"`).
    pub set: std::collections::BTreeMap<String, toml::Spanned<LimitValue>>,
    /// `set`, checked.
    #[serde(skip)]
    pub checked: Vec<Limit>,
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

/// What a limit rule looks at, about the entry that makes a node.
#[derive(Clone, Copy, Debug)]
pub struct Creation<'a> {
    pub comm: &'a str,
    pub uid: u32,
    pub cgroup: &'a str,
    /// The kinds in which the new set differs from the one its task came from.
    pub entered: NsMask,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
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
            mirror: Vec::new(),
            controllers: Vec::new(),
            leaf: LeafPolicy::Nodes,
            delegated_only: None,
            limit: Vec::new(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            history: HistoryConfig::default(),
            status: StatusConfig::default(),
        }
    }
}

/// The longest command name the kernel keeps (TASK_COMM_LEN - 1).
const COMM_MAX: usize = 15;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {} is {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("config {}: {source}", path.display())]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("config {}: key `{key}`: {why}", path.display())]
    Value { path: PathBuf, key: &'static str, why: String },
}

impl Config {
    /// Loads `path`. A missing file is an error unless `path` is the default
    /// one. The file must be owned by root (or by the effective uid) and not
    /// writable by group or others.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let euid = rustix::process::geteuid().as_raw();
        if let Err(why) = trust(meta.uid(), meta.mode(), euid) {
            return Err(ConfigError::Untrusted { path, why });
        }
        let mut text = String::new();
        match file.read_to_string(&mut text) {
            Ok(_) => Config::parse(&text, &path),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses and checks a configuration text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(e) })?;
        // Limit values are checked here, where their line is known.
        for rule in &config.limit {
            for (file, value) in &rule.set {
                if let Err(e) = Limit::new(file, &value.get_ref().text()) {
                    let line = text[..value.span().start.min(text.len())].matches('\n').count() + 1;
                    let why = format!("line {line}: {e}");
                    return Err(ConfigError::Value { path: path.to_path_buf(), key: "limit.set", why });
                }
            }
        }
        config.check().map_err(|(key, why)| ConfigError::Value { path: path.to_path_buf(), key, why })?;
        Ok(config)
    }

    /// Checks values that the types alone do not, and puts the cgroup paths
    /// (`root`, `include.cgroup`, `exclude.cgroup`) in canonical form.
    pub fn check(&mut self) -> Result<(), (&'static str, String)> {
        self.root = canonical(&self.root).map_err(|e| ("root", e.to_string()))?;
        for (key, f) in [("include.cgroup", &mut self.include), ("exclude.cgroup", &mut self.exclude)] {
            for c in &mut f.cgroup {
                *c = canonical(c).map_err(|e| (key, e.to_string()))?;
            }
        }
        for (key, f) in [("include.comm", &self.include), ("exclude.comm", &self.exclude)] {
            f.comm.iter().try_for_each(|c| comm_fits(c)).map_err(|why| (key, why))?;
        }
        self.mask().map_err(|why| ("namespaces", why))?;
        self.check_control()?;
        self.api.check()?;
        self.check_operability()?;
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
        let at_least_one = [
            ("coalesce_above_per_second", self.coalesce_above_per_second == 0),
            ("snapshot_interval_ms", self.snapshot_interval_ms == 0),
            ("max_depth", self.max_depth == 0),
            ("max_nodes", self.max_nodes == 0),
            ("max_nodes_per_user", self.max_nodes_per_user == 0),
            ("max_creations_per_second_per_user", self.max_creations_per_second_per_user == 0),
        ];
        if let Some((key, _)) = at_least_one.into_iter().find(|&(_, zero)| zero) {
            return Err((key, "must be at least 1".into()));
        }
        Ok(())
    }

    /// The namespace kinds that count, as a mask.
    pub fn mask(&self) -> Result<NsMask, String> {
        if self.namespaces.is_empty() {
            return Err("must name at least one namespace kind".into());
        }
        NsMask::parse_names(&self.namespaces)
    }
}

/// Whether a config file with owner `uid` and `mode` may be trusted by a
/// process with effective uid `euid`; else what is wrong and how to fix it.
fn trust(uid: u32, mode: u32, euid: u32) -> Result<(), String> {
    if uid != 0 && uid != euid {
        return Err(format!("owned by uid {uid}, not root; chown root it"));
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, true) => "group and others",
        (true, false) => "group",
        (false, true) => "others",
    };
    Err(format!("writable by {who} (mode {:04o}); chmod go-w it", mode & 0o7777))
}

/// Whether a command name can match a task's `comm` at all.
fn comm_fits(comm: &str) -> Result<(), String> {
    if comm.is_empty() {
        return Err("an empty command name matches no task".into());
    }
    if comm.len() > COMM_MAX {
        return Err(format!(
            "{:?} is {} bytes, longer than the {COMM_MAX} the kernel keeps of a command name (TASK_COMM_LEN - 1): it matches no task",
            comm,
            comm.len()
        ));
    }
    Ok(())
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

impl Config {
    /// Checks the mirrors, controllers and limit rules, and fills each rule's `checked`.
    fn check_control(&mut self) -> Result<(), (&'static str, String)> {
        for m in &mut self.mirror {
            if m.controllers.is_empty() || m.controllers.split(',').any(|c| c.is_empty() || c.starts_with("name=")) {
                return Err(("mirror.controllers", format!("{:?} must name v1 controllers (`pids`, `cpu,cpuacct`)", m.controllers)));
            }
            m.root = canonical(&m.root).map_err(|e| ("mirror.root", e.to_string()))?;
        }
        const KNOWN: [&str; 8] = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc"];
        if let Some(bad) = self.controllers.iter().find(|c| !KNOWN.contains(&c.as_str())) {
            return Err(("controllers", format!("unknown cgroup2 controller {bad:?} (known: {})", KNOWN.join(", "))));
        }
        for rule in &mut self.limit {
            rule.comm.iter().try_for_each(|c| comm_fits(c)).map_err(|why| ("limit.comm", why))?;
            for c in &mut rule.cgroup {
                *c = canonical(c).map_err(|e| ("limit.cgroup", e.to_string()))?;
            }
            NsMask::parse_names(&rule.entered).map_err(|why| ("limit.entered", why))?;
            rule.checked = rule
                .set
                .iter()
                .map(|(file, v)| Limit::new(file, &v.get_ref().text()))
                .collect::<Result<_, _>>()
                .map_err(|e| ("limit.set", e.to_string()))?;
        }
        Ok(())
    }

    /// The limits of every rule that matches a creation, in file order (a
    /// later rule's value for a file replaces an earlier one's).
    pub fn limits_for(&self, c: Creation<'_>) -> Vec<Limit> {
        let mut out: Vec<Limit> = Vec::new();
        for rule in self.limit.iter().filter(|r| r.matches(c)) {
            for l in &rule.checked {
                out.retain(|o| o.key != l.key);
                out.push(l.clone());
            }
        }
        out.sort_by_key(|l| l.key);
        out
    }
}

impl LimitRule {
    fn matches(&self, c: Creation<'_>) -> bool {
        let entered = NsMask::parse_names(&self.entered).unwrap_or(NsMask::ALL);
        (self.comm.is_empty() || self.comm.iter().any(|x| x == c.comm))
            && (self.uid.is_empty() || self.uid.contains(&c.uid))
            && (self.cgroup.is_empty() || self.cgroup.iter().any(|x| within(c.cgroup, x)))
            && (self.entered.is_empty() || entered.intersects(c.entered))
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
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig { socket: PathBuf::from(DEFAULT_API_SOCKET), socket_mode: 0o666, socket_group: String::new(), strict: false }
    }
}

impl ApiConfig {
    /// The socket mode must be permission bits only; the path absolute; the
    /// group a name or a number.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.socket_mode & !0o777 != 0 {
            return Err(("api.socket_mode", format!("{:#o} has bits beyond 0o777 (permission bits only)", self.socket_mode)));
        }
        if !self.socket.as_os_str().is_empty() && !self.socket.is_absolute() {
            return Err(("api.socket", format!("{} is not an absolute path", self.socket.display())));
        }
        let g = &self.socket_group;
        if !g.is_empty() && !g.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(("api.socket_group", format!("{g:?} is neither a group name nor a number")));
        }
        Ok(())
    }

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

impl Config {
    fn check_operability(&self) -> Result<(), (&'static str, String)> {
        let m = &self.metrics;
        if !m.listen.is_empty() && m.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(("metrics.listen", format!("{:?} is not an address like 127.0.0.1:9853", m.listen)));
        }
        if m.file_interval_seconds == 0 {
            return Err(("metrics.file_interval_seconds", "must be at least 1".into()));
        }
        for (key, p) in [("metrics.file", &m.file), ("history.database", &self.history.database), ("status.dir", &self.status.dir)] {
            if !p.as_os_str().is_empty() && !p.is_absolute() {
                return Err((key, format!("{} is not an absolute path", p.display())));
            }
        }
        Ok(())
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

    /// The sample installed as /etc/nsgroup/nsgroup.toml.
    const SAMPLE: &str = include_str!("../packaging/nsgroup.toml");

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
    fn unknown_keys_and_bad_values_name_key_and_line() {
        let e = parse("root = \"/\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = parse("max_depth = \"deep\"\n").unwrap_err().to_string();
        assert!(e.contains("max_depth") && e.contains("line 1"), "{e}");
        let e = parse("ring_buffer_bytes = 5000\n").unwrap_err().to_string();
        assert!(e.contains("ring_buffer_bytes"), "{e}");
        let e = parse("coalesce_above_per_second = 0\n").unwrap_err().to_string();
        assert!(e.contains("coalesce_above_per_second"), "{e}");
        let e = parse("hooks = \"kprobe\"\n").unwrap_err().to_string();
        assert!(e.contains("hooks") && e.contains("no-syscall"), "{e}");
        let e = parse("namespaces = [\"nett\"]\n").unwrap_err().to_string();
        assert!(e.contains("namespaces") && e.contains("nett"), "{e}");
        assert!(parse("root = \"jobs\"").is_err());
        assert!(parse("[exclude]\ncgroup = [\"x\"]").is_err());
    }

    #[test]
    fn cgroup_paths_are_canonical() {
        let c = parse("root = \"/jobs//a/\"\n[include]\ncgroup = [\"/x/\"]\n[exclude]\ncgroup = [\"//y\"]").unwrap();
        assert_eq!((c.root.as_str(), c.include.cgroup[0].as_str(), c.exclude.cgroup[0].as_str()), ("/jobs/a", "/x", "/y"));
        let e = parse("root = \"/jobs/../jobs\"").unwrap_err().to_string();
        assert!(e.contains("`root`") && e.contains(".."), "{e}");
        let e = parse("[include]\ncgroup = [\"/a/./b\"]").unwrap_err().to_string();
        assert!(e.contains("include.cgroup") && e.contains("`.`"), "{e}");
    }

    #[test]
    fn impossible_filter_values_are_refused() {
        let e = parse("[include]\ncomm = [\"0123456789abcdef\"]").unwrap_err().to_string();
        assert!(e.contains("include.comm") && e.contains("TASK_COMM_LEN"), "{e}");
        let e = parse("[exclude]\ncomm = [\"\"]").unwrap_err().to_string();
        assert!(e.contains("exclude.comm") && e.contains("empty"), "{e}");
        assert!(parse("[include]\ncomm = [\"0123456789abcde\"]").is_ok());
        for key in ["max_nodes", "max_nodes_per_user", "max_creations_per_second_per_user"] {
            let e = parse(&format!("{key} = 0")).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")) && e.contains("at least 1"), "{e}");
        }
    }

    #[test]
    fn quota_defaults() {
        let c = Config::default();
        assert_eq!((c.max_nodes_per_user, c.max_creations_per_second_per_user), (1024, 100));
        assert_eq!(c.quota_exempt_uids, [0]);
    }

    #[test]
    fn files_writable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nsgroup.toml");
        std::fs::write(&path, "max_depth = 3\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("writable by group and others (mode 0666); chmod go-w"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().max_depth, 3);
    }

    #[test]
    fn trust_wants_root_or_self_and_no_group_or_other_write() {
        assert!(trust(0, 0o100644, 1000).is_ok());
        assert!(trust(1000, 0o100600, 1000).is_ok());
        let e = trust(1000, 0o100644, 0).unwrap_err();
        assert!(e.contains("uid 1000") && e.contains("chown root"), "{e}");
        assert_eq!(trust(0, 0o100664, 0).unwrap_err(), "writable by group (mode 0664); chmod go-w it");
        assert_eq!(trust(0, 0o100646, 0).unwrap_err(), "writable by others (mode 0646); chmod go-w it");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        assert!(matches!(Config::load(Some(Path::new("/nonexistent/nsgroup.toml"))), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn limit_rules_match_creators_and_later_values_win() {
        let c = parse(
            "[[limit]]\nset = { \"pids.max\" = 100, \"cpu.weight\" = 50 }\n\
             [[limit]]\ncomm = [\"bwrap\"]\nentered = [\"net\"]\nset = { \"pids.max\" = \"8\", \"memory.max\" = \"1G\" }\n",
        )
        .unwrap();
        let net = NsMask::of([NsKind::Net]);
        let uts = NsMask::of([NsKind::Uts]);
        let at = |comm, entered| {
            let limits = c.limits_for(Creation { comm, uid: 1000, cgroup: "/a", entered });
            limits.iter().map(|l| l.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(at("bwrap", net), ["memory.max=1073741824", "pids.max=8", "cpu.weight=50"]);
        assert_eq!(at("bwrap", uts), ["pids.max=100", "cpu.weight=50"]);
        assert_eq!(at("sh", net), ["pids.max=100", "cpu.weight=50"]);
        let e = parse("[[limit]]\nset = { \"cpu.max\" = \"0\" }\n").unwrap_err().to_string();
        assert!(e.contains("limit.set") && e.contains("line 2") && e.contains("cpu.max"), "{e}");
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
