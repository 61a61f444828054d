//! The `nsgroup` command: `run` the daemon, show the `tree`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use nsgroup::config::{Config, Source};
use nsgroup::core::cgpath::canonical;
use nsgroup::core::escape::Escaped;
use nsgroup::daemon::{self, Setup};
use nsgroup::model::{self, Units};
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

/// Which hierarchy and subtree.
#[derive(clap::Args, Debug)]
struct Where {
    /// Mount point of the cgroup hierarchy (cgroup2, v1 with controllers, or a
    /// named v1 one). Default: cgroup2 on a pure cgroup2 host, else nsgroup's
    /// own name=nsgroup hierarchy at /sys/fs/cgroup/nsgroup.
    #[arg(long, value_name = "PATH")]
    hierarchy: Option<PathBuf>,
    /// The subtree whose tasks are tracked and moved (a cgroup path inside
    /// the hierarchy, starting with /, without . or ..). Nothing outside it
    /// is touched. Default: /.
    #[arg(long, value_name = "CGROUP", value_parser = canonical)]
    root: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: track tasks entering namespace sets and place them.
    ///
    /// Needs root. Stops on SIGTERM or SIGINT; nodes stay. Sends READY=1 to
    /// NOTIFY_SOCKET once tracking.
    Run {
        #[command(flatten)]
        place: Where,
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
    },
    /// Show the nodes nested, with the namespaces each differs in, its tasks
    /// and usage. Reads cgroupfs: works whether the daemon runs or not.
    Tree {
        #[command(flatten)]
        place: Where,
        /// Shorthand for -O json.
        #[arg(long, conflicts_with = "output")]
        json: bool,
        /// Output format.
        #[arg(short = 'O', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Show every cgroup and task of the subtree, not only nodes.
        #[arg(long)]
        all: bool,
    },
    /// Check the invariant: every task whose namespace set differs from this
    /// command's own is in the node of its set, and every set has one node.
    /// Exits 1 when it does not hold.
    Check {
        #[command(flatten)]
        place: Where,
        /// Configuration file, for the namespace kinds that count.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
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
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "nsgroup: {}", describe(&e));
            ExitCode::FAILURE
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

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { place, config, ring_buffer_bytes, source, log_format } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(h) = place.hierarchy {
                config.hierarchy = Some(h);
            }
            if let Some(r) = place.root {
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
            run(config)
        }
        Command::Tree { place, json, output, all } => {
            let output = if json { Output::Json } else { output };
            tree(place, output, all)
        }
        Command::Check { place, config, json } => check(place, config, json),
    }
}

/// Exit status 1 with a message, for a check that does not hold.
#[derive(Debug, thiserror::Error)]
#[error("the invariant does not hold: {0} misplaced tasks, {1} sets with several nodes")]
struct Violated(usize, usize);

fn check(place: Where, config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let mask = config.mask().map_err(anyhow::Error::msg)?;
    let located = locate(place.hierarchy.as_deref().or(config.hierarchy.as_deref()), false)?;
    let root = place.root.unwrap_or(config.root);
    require_cgroup(&located.hierarchy, &root)?;
    let proc = ProcFs::new("/proc");
    let me = std::process::id();
    let base = proc.ns_set(me, me)?.unwrap_or_default();
    let verdict = nsgroup::check::check(&located.hierarchy, &root, &proc, base, mask)?;
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &verdict)?;
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
    out.flush()?;
    if verdict.holds() { Ok(()) } else { Err(Violated(verdict.misplaced.len(), verdict.duplicate_nodes.len()).into()) }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NSGROUP_LOG").unwrap_or_else(|_| "info".into());
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(|| LossyStderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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
    if let Some(favordynmods) = located.mounted {
        tracing::info!(
            mount = %located.hierarchy.mount().display(),
            favordynmods,
            "mounted nsgroup's own hierarchy (favordynmods stays on until reboot)"
        );
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

fn tree(place: Where, output: Output, all: bool) -> anyhow::Result<()> {
    let located = locate(place.hierarchy.as_deref(), false)?;
    let root = place.root.unwrap_or_else(|| "/".into());
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
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match output {
        Output::Text => nsgroup::render::text::write(&mut out, &tree)?,
        Output::Json => nsgroup::render::json::write(&mut out, &tree)?,
        Output::Openmetrics => nsgroup::render::metrics::write(&mut out, &tree)?,
    }
    out.flush()?;
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
