//! The `nsgroup` command: `run` the daemon, show the `tree`, `check` the invariant.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use nsgroup::config::{Config, Source};
use nsgroup::core::cgpath::canonical;
use nsgroup::core::escape::Escaped;
use nsgroup::daemon::{self, Setup};
use nsgroup::model::{self, Units};
use nsgroup::render::text::{Column, View, DEFAULT_COLUMNS};
use nsgroup::sys::cgroupfs::Hierarchy;
use nsgroup::sys::error::IoError;
use nsgroup::sys::locate::locate;
use nsgroup::sys::lock::{self, InstanceLock};
use nsgroup::sys::procfs::ProcFs;

/// Gives every set of Linux namespaces its own cgroup, automatically.
///
/// Every task that enters a new namespace set (clone/clone3 with CLONE_NEW*,
/// unshare, setns, the first fork after unshare(CLONE_NEWPID)) is moved into
/// a cgroup named node_<pid> under the cgroup it was in, as the kernel's
/// 2007 ns cgroup subsystem did, without its flaws.
#[derive(Parser, Debug)]
#[command(name = "nsgroup", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which hierarchy.
#[derive(clap::Args, Debug)]
struct At {
    /// Mount point of the cgroup hierarchy (cgroup2, v1 with controllers, or a
    /// named v1 one). Default: cgroup2 on a pure cgroup2 host, else nsgroup's
    /// own name=nsgroup hierarchy at /sys/fs/cgroup/nsgroup.
    #[arg(long, value_name = "PATH")]
    hierarchy: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: track tasks entering namespace sets and place them.
    ///
    /// Needs root. Stops on SIGTERM or SIGINT; nodes stay. Sends READY=1 to
    /// NOTIFY_SOCKET once tracking.
    Run {
        #[command(flatten)]
        at: At,
        /// The subtree whose tasks are tracked and moved (a cgroup path inside
        /// the hierarchy, starting with /, without . or ..). Nothing outside it
        /// is touched. Default: the configuration's root, else /.
        #[arg(long, value_name = "CGROUP", value_parser = canonical)]
        root: Option<String>,
        /// Configuration file (TOML). Default: /etc/nsgroup/nsgroup.toml if present.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Size of the BPF ring buffer in bytes (power of two, >= 4096).
        #[arg(long, value_name = "BYTES")]
        ring_buffer_bytes: Option<u32>,
        /// Where events come from.
        #[arg(long, value_enum)]
        source: Option<Source>,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Strict mode: enforce the API's permission model on direct writes
        /// to the hierarchy too (an LSM BPF program; fails at start, saying
        /// why, where the kernel does not run BPF LSM programs).
        #[arg(long)]
        strict: bool,
        /// The API's socket (api.socket); an empty PATH serves no API.
        #[arg(long, value_name = "PATH")]
        api_socket: Option<std::path::PathBuf>,
        #[command(flatten)]
        metrics: nsgroup::history::cli::MetricsFlags,
    },
    /// Show the nodes nested, with the namespaces each differs in, its tasks
    /// and usage.
    ///
    /// Reads cgroupfs and /proc: works whether the daemon runs or not. Tasks
    /// whose /proc entries cannot be read (other users' without root) are
    /// left out and counted on stderr.
    Tree {
        #[command(flatten)]
        at: At,
        /// The subtree to show: a cgroup path inside the hierarchy, starting
        /// with /, without . or .. (the same rule as for run). Default: /.
        #[arg(long, value_name = "CGROUP", value_parser = canonical)]
        root: Option<String>,
        /// Shorthand for -O json.
        #[arg(long, conflicts_with = "output")]
        json: bool,
        /// Output format.
        #[arg(short = 'O', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Show every cgroup and task of the subtree, not only nodes. Usage
        /// figures cover the tasks listed.
        #[arg(long)]
        all: bool,
        /// The figures on each cgroup line of the text output, comma-separated,
        /// like ps -o (age, creator and uid are the node's, from its record).
        #[arg(short = 'o', long = "columns", value_name = "LIST", value_enum, value_delimiter = ',', default_values_t = DEFAULT_COLUMNS)]
        columns: Vec<Column>,
    },
    /// Check the invariant: every task whose namespace set differs from this
    /// command's own is in the node of its set, and every set has one node.
    ///
    /// Exits 0 when it holds, 1 when it does not, 2 when it could not be
    /// checked. Tasks whose /proc entries cannot be read (other users' without
    /// root) are not checked and are counted on stderr.
    Check {
        #[command(flatten)]
        at: At,
        /// The subtree to check (a cgroup path inside the hierarchy, starting
        /// with /, without . or ..). Default: the configuration's root, else /.
        #[arg(long, value_name = "CGROUP", value_parser = canonical)]
        root: Option<String>,
        /// Configuration file, for the namespace kinds that count.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in new namespaces, in a fresh node of its own from its
    /// first instruction.
    ///
    /// The node node_<pid> is made first, with its record and limits, below
    /// this command's cgroup; the command is cloned with that pid, on cgroup2
    /// born in the node (CLONE_INTO_CGROUP), on v1 moved in before it runs,
    /// and execs once its mirrors are in place. A running daemon adopts the
    /// node. Exits with the command's status (128 + signal if killed; 127 if
    /// it could not be started). Needs root.
    Exec(ExecArgs),
    /// Every node that existed: path, set, creator, created and removed
    /// times, final usage (from the history database; works whether the
    /// daemon runs or not).
    History(nsgroup::history::cli::HistoryArgs),
    /// What a running daemon tracks and how: hooks and why, what they cost,
    /// the hierarchy's mount options, counters, uptime.
    Status(nsgroup::history::cli::StatusArgs),
    /// The API's verbs: freeze, thaw, kill, limit, attach, create, events, api (docs/api.md).
    #[command(flatten)]
    Api(nsgroup::api::cli::ApiCommand),
}

/// `nsgroup exec`'s arguments.
#[derive(clap::Args, Debug)]
struct ExecArgs {
    #[command(flatten)]
    at: At,
    /// The namespace kinds the command gets new ones of (/proc/<pid>/ns
    /// names: cgroup, ipc, mnt, net, pid, time, user, uts).
    #[arg(long, value_name = "KINDS", value_delimiter = ',', default_value = "mnt,uts,ipc,pid")]
    unshare: Vec<String>,
    /// A value for the node, as a cgroup2 file name and value (memory.max,
    /// memory.high, pids.max, cpu.max, cpu.weight, io.max); v1 equivalents go
    /// to the configured mirrors. Repeatable.
    #[arg(long = "limit", value_name = "FILE=VALUE")]
    limits: Vec<String>,
    /// Configuration file, for the mirrors. Default: /etc/nsgroup/nsgroup.toml if present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    command: Vec<std::ffi::OsString>,
}

/// The hidden `generate-assets --out DIR` (for packaging): kept out of `Cli`
/// so that the man pages and completions it writes leave it out.
fn assets_command() -> clap::Command {
    clap::Command::new("generate-assets")
        .hide(true)
        .about("Write the man pages (DIR/man) and shell completions (DIR/completions) of nsgroup")
        .arg(clap::Arg::new("out").long("out").value_name("DIR").required(true).value_parser(clap::value_parser!(PathBuf)))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
    Openmetrics,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let matches = Cli::command().subcommand(assets_command()).get_matches();
    let (result, failure) = match matches.subcommand() {
        Some(("generate-assets", m)) => {
            let out = m.get_one::<PathBuf>("out").expect("--out is required");
            (generate_assets(out).map(|()| ExitCode::SUCCESS), 1)
        }
        _ => {
            let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
            // check's 1 means "does not hold": its failures to run exit 2.
            let failure = if matches!(cli.command, Command::Check { .. }) { 2 } else { 1 };
            (dispatch(cli), failure)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) if e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "nsgroup: {}", describe(&e));
            ExitCode::from(failure)
        }
    }
}

/// An error's message followed by those of its causes that the message does
/// not contain already (many embed their cause), each once.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { at, root, config, ring_buffer_bytes, source, log_format, strict, api_socket, metrics } => {
            let mut config = Config::load(config.as_deref())?;
            config.api.strict |= strict;
            if let Some(socket) = api_socket {
                config.api.socket = socket;
            }
            metrics.apply(&mut config);
            if let Some(h) = at.hierarchy {
                config.hierarchy = Some(h);
            }
            if let Some(r) = root {
                config.root = r;
            }
            if let Some(rb) = ring_buffer_bytes {
                config.ring_buffer_bytes = rb;
            }
            if let Some(s) = source {
                config.source = s;
            }
            config.check().map_err(|(key, why)| anyhow::anyhow!("--{}: {why}", key.replace('_', "-")))?;
            init_logging(log_format);
            run(config)?;
        }
        Command::Tree { at, root, json, output, all, columns } => {
            let output = if json { Output::Json } else { output };
            tree(at, root, output, all, columns)?;
        }
        Command::Check { at, root, config, json } => return check(at, root, config, json),
        Command::Exec(args) => return exec(args),
        Command::History(args) => return nsgroup::history::cli::history(args),
        Command::Status(args) => return nsgroup::history::cli::status(args),
        Command::Api(cmd) => return Ok(ExitCode::from(nsgroup::api::cli::run(cmd))),
    }
    Ok(ExitCode::SUCCESS)
}

fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    use nsgroup::control::{exec, limits::Limit, mirror};
    use nsgroup::core::nsset::NsKind;
    let kinds = args
        .unshare
        .iter()
        .map(|n| NsKind::from_proc_name(n).ok_or_else(|| anyhow::anyhow!("--unshare: unknown namespace kind {n:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let limits = args
        .limits
        .iter()
        .map(|l| {
            let (file, value) = l.split_once('=').ok_or_else(|| anyhow::anyhow!("--limit {l:?}: expected FILE=VALUE"))?;
            Limit::new(file, value).map_err(|e| anyhow::anyhow!("--limit: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !rustix::process::geteuid().is_root() {
        bail!("nsgroup exec needs root: it creates a cgroup and clones into it");
    }
    let config = Config::load(args.config.as_deref())?;
    let located = locate(args.at.hierarchy.as_deref().or(config.hierarchy.as_deref()), true)?;
    let per_process = located.hierarchy.version() == nsgroup::sys::cgroupfs::Version::V2;
    let mut mirrors = mirror::open_all(&config, per_process)?;
    let spec = exec::ExecSpec { unshare: kinds, limits, argv: args.command };
    let status = exec::exec(spec, &located.hierarchy, &mut mirrors, &ProcFs::new("/proc"))?;
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

/// Says on stderr how many tasks were left out because their /proc entries
/// could not be read, and that root sees more.
fn note_unreadable(count: u64) {
    if count == 0 {
        return;
    }
    let s = if count == 1 { "" } else { "s" };
    let hint = if rustix::process::geteuid().is_root() { "" } else { "; root is needed for a full view" };
    let _ = writeln!(io::stderr(), "nsgroup: left out {count} task{s} whose /proc entries could not be read (permission denied){hint}");
}

fn check(at: At, root: Option<String>, config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config.as_deref())?;
    let mask = config.mask().map_err(anyhow::Error::msg)?;
    let located = locate(at.hierarchy.as_deref().or(config.hierarchy.as_deref()), false)?;
    let root = root.unwrap_or(config.root);
    require_cgroup(&located.hierarchy, &root)?;
    let proc = ProcFs::new("/proc");
    let me = std::process::id();
    let base = proc.ns_set(me, me)?.unwrap_or_default();
    let verdict = nsgroup::check::check(&located.hierarchy, &root, &proc, base, mask)?;
    write_verdict(&verdict, json).context("writing the verdict to stdout")?;
    note_unreadable(verdict.unreadable_tasks as u64);
    if verdict.holds() {
        return Ok(ExitCode::SUCCESS);
    }
    let (misplaced, duplicates) = (verdict.misplaced.len(), verdict.duplicate_nodes.len());
    let _ = writeln!(
        io::stderr(),
        "nsgroup: the invariant does not hold: {misplaced} misplaced tasks, {duplicates} sets with several nodes"
    );
    Ok(ExitCode::from(1))
}

fn write_verdict(verdict: &nsgroup::check::Verdict, json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, verdict)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{} tasks, {} nodes", verdict.tasks, verdict.nodes)?;
        for m in &verdict.misplaced {
            let want = m.expected.as_deref().unwrap_or("(a node of its own, missing)");
            writeln!(out, "misplaced: {} {} in {}, belongs in {}", m.tid, Escaped(&m.comm), Escaped(&m.cgroup), Escaped(want))?;
        }
        for m in &verdict.outside_subtree {
            let node = m.expected.as_deref().unwrap_or_default();
            writeln!(
                out,
                "outside its subtree (left there by the subtree rule): {} {} in {}, its set's node is {}",
                m.tid,
                Escaped(&m.comm),
                Escaped(&m.cgroup),
                Escaped(node)
            )?;
        }
        for d in &verdict.duplicate_nodes {
            let paths: Vec<String> = d.iter().map(|p| Escaped(p).to_string()).collect();
            writeln!(out, "one set, several nodes: {}", paths.join(" "))?;
        }
    }
    out.flush()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::new(log_filter(std::env::var("NSGROUP_LOG").ok().as_deref()));
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(|| LossyStderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The log filter: `NSGROUP_LOG` (EnvFilter syntax), default
/// `warn,nsgroup=info`; the BPF loader (aya) stays at `warn` unless the
/// filter names it, so that `NSGROUP_LOG=debug` is nsgroup's debug log.
fn log_filter(env: Option<&str>) -> String {
    match env.map(str::trim).filter(|e| !e.is_empty()) {
        None => "warn,nsgroup=info".into(),
        Some(f) if f.contains("aya") => f.into(),
        Some(f) => format!("{f},aya=warn,aya_obj=warn"),
    }
}

/// stderr that drops what it cannot write: a full log disk must not stop
/// the daemon (the fmt layer would report the failure on stderr, and panic).
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("nsgroup run needs root: it creates cgroups, moves other users' tasks and loads BPF programs");
    }
    let located = locate(config.hierarchy.as_deref(), true).context("finding the cgroup hierarchy")?;
    match located.mounted {
        Some(true) => tracing::info!(
            mount = %located.hierarchy.mount().display(),
            favordynmods = true,
            "mounted nsgroup's own hierarchy (favordynmods stays on until reboot)"
        ),
        Some(false) => tracing::warn!(
            mount = %located.hierarchy.mount().display(),
            favordynmods = false,
            "mounted nsgroup's own hierarchy without favordynmods: the kernel refused it (a Linux 6.0 option); every move waits for an RCU grace period"
        ),
        None => {}
    }
    require_cgroup(&located.hierarchy, &config.root)?;
    let lock = InstanceLock::acquire(Path::new(lock::DEFAULT_DIR), &located.hierarchy, &config.root)?;
    tracing::debug!(lock = %lock.path().display(), "holding the instance lock");
    let setup = Setup { config, hierarchy: located.hierarchy, own_hierarchy: located.own, proc: ProcFs::new("/proc") };
    daemon::run(setup)?;
    drop(lock);
    Ok(())
}

/// Fails unless `root` is a cgroup (a directory) of `hierarchy`.
fn require_cgroup(hierarchy: &Hierarchy, root: &str) -> anyhow::Result<()> {
    let dir = hierarchy.dir(root);
    let mount = hierarchy.mount().display();
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} in {mount} is no cgroup (not a directory)", Escaped(root)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("cgroup {} does not exist in {mount}", Escaped(root)),
        Err(e) => Err(IoError::new("stat", &dir, e).into()),
    }
}

fn tree(at: At, root: Option<String>, output: Output, all: bool, columns: Vec<Column>) -> anyhow::Result<()> {
    let located = locate(at.hierarchy.as_deref(), false)?;
    let root = root.unwrap_or_else(|| "/".into());
    require_cgroup(&located.hierarchy, &root)?;
    let proc = ProcFs::new("/proc");
    let Some(sample) = model::sample::sample(&located.hierarchy, &root, &proc)? else {
        bail!("cgroup {} vanished while being read in {}", Escaped(&root), located.hierarchy.mount().display());
    };
    let me = std::process::id();
    let base = proc.ns_set(me, me)?.unwrap_or_default();
    let units = Units {
        clock_ticks: rustix::param::clock_ticks_per_second(),
        page_size: rustix::param::page_size() as u64,
    };
    let tree = model::build(&sample, &base, units, all).expect("the top is always kept");
    let view = View { columns, width: terminal_width(), now_unix: unix_now() };
    write_tree(&tree, output, &view).context("writing the tree to stdout")?;
    note_unreadable(tree.unreadable_tasks);
    Ok(())
}

fn write_tree(tree: &model::TreeNode, output: Output, view: &View) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match output {
        Output::Text => nsgroup::render::text::write(&mut out, tree, view)?,
        Output::Json => nsgroup::render::json::write(&mut out, tree)?,
        Output::Openmetrics => nsgroup::render::metrics::write(&mut out, tree)?,
    }
    out.flush()
}

/// The terminal's width when stdout is one ($COLUMNS first, as ps and
/// systemd-cgls read it); lines are not cut into a pipe or a file.
fn terminal_width() -> Option<usize> {
    let stdout = io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
    columns.or_else(|| rustix::termios::tcgetwinsize(&stdout).ok().map(|w| usize::from(w.ws_col))).filter(|&w| w > 0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes nsgroup(8) and nsgroup-<subcommand>(8) to `out`/man, and the bash,
/// zsh and fish completions to `out`/completions.
fn generate_assets(out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man).map_err(|e| IoError::new("create", &man, e))?;
    let source = format!("nsgroup {}", env!("CARGO_PKG_VERSION"));
    // `help` is no page of its own: the pages are the help.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let pages = std::iter::once(cli.clone()).chain(cli.get_subcommands().cloned());
    for page in pages {
        let name = page.get_display_name().unwrap_or_else(|| page.get_name()).to_string();
        let path = man.join(format!("{name}.8"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page).title(name.to_uppercase()).section("8").source(&source).render(&mut text)?;
        std::fs::write(&path, text).map_err(|e| IoError::new("write", &path, e))?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions).map_err(|e| IoError::new("create", &completions, e))?;
    let mut cli = Cli::command();
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "nsgroup", &completions)
            .with_context(|| format!("writing the {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = io::Error::from(io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(IoError::new("read", "/x", io)).context("loading");
        assert_eq!(describe(&e), format!("loading: read /x: {text}"));
        assert_eq!(describe(&anyhow::anyhow!("a").context("b")), "b: a");
    }
}
