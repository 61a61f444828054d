//! `nsgroup run`: the flags over the configuration file, the log, then the
//! daemon.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::ValueEnum;

use nsgroup::config::{Config, Source};
use nsgroup::daemon::{self, Setup};
use nsgroup::sys::locate::locate;
use nsgroup::sys::lock::{self, InstanceLock};
use nsgroup::sys::procfs::ProcFs;

use super::{require_cgroup, At, Scope};

/// `nsgroup run`'s arguments.
#[derive(clap::Args, Debug)]
#[command(mut_arg("root", |a| a.help("The subtree whose tasks are tracked and moved (a cgroup path inside the hierarchy, starting with /, without . or ..). Nothing outside it is touched. Default: the configuration's root, else /")))]
pub struct RunArgs {
    #[command(flatten)]
    at: At,
    #[command(flatten)]
    scope: Scope,
    /// Size of the BPF ring buffer in bytes (power of two, >= 4096).
    #[arg(long, value_name = "BYTES")]
    ring_buffer_bytes: Option<u32>,
    /// Where events come from.
    #[arg(long, value_enum)]
    source: Option<SourceArg>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Strict mode: enforce the API's permission model on direct writes
    /// to the hierarchy too (an LSM BPF program; fails at start, saying
    /// why, where the kernel does not run BPF LSM programs).
    #[arg(long)]
    strict: bool,
    /// The API's socket (api.socket); an empty PATH serves no API.
    #[arg(long, value_name = "PATH", value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from))]
    api_socket: Option<PathBuf>,
    #[command(flatten)]
    metrics: MetricsFlags,
}

/// `nsgroup run`'s metrics flags.
#[derive(clap::Args, Debug)]
struct MetricsFlags {
    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9853; port 0 picks one, shown by `nsgroup status`). Off by
    /// default (metrics.listen).
    #[arg(long = "metrics", value_name = "ADDR")]
    listen: Option<String>,
    /// Write the metrics to PATH for node_exporter's textfile collector,
    /// atomically every metrics.file_interval_seconds.
    #[arg(long = "metrics-file", value_name = "PATH")]
    file: Option<PathBuf>,
    /// The history database (history.database); an empty PATH keeps none.
    #[arg(long = "history-database", value_name = "PATH")]
    history: Option<String>,
}

/// [`Source`] as a flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SourceArg {
    /// eBPF, falling back to the proc connector where it cannot load.
    Auto,
    /// eBPF only.
    Bpf,
    /// The netlink proc connector and /proc rescans (no eBPF).
    Proc,
}

impl SourceArg {
    fn source(self) -> Source {
        match self {
            SourceArg::Auto => Source::Auto,
            SourceArg::Bpf => Source::Bpf,
            SourceArg::Proc => Source::Proc,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl RunArgs {
    /// The configuration file with the flags over it, checked (a bad flag
    /// value is named as the flag).
    fn config(self) -> anyhow::Result<Config> {
        let mut config = self.scope.load()?;
        config.api.strict |= self.strict;
        if let Some(socket) = self.api_socket {
            config.api.socket = socket;
        }
        let metrics = self.metrics;
        if let Some(l) = metrics.listen {
            config.metrics.listen = l;
        }
        if let Some(f) = metrics.file {
            config.metrics.file = f;
        }
        if let Some(h) = metrics.history {
            config.history.database = PathBuf::from(h);
        }
        if let Some(h) = self.at.hierarchy {
            config.hierarchy = Some(h);
        }
        if let Some(rb) = self.ring_buffer_bytes {
            config.ring_buffer_bytes = rb;
        }
        if let Some(s) = self.source {
            config.source = s.source();
        }
        config.check().map_err(|(key, why)| anyhow::anyhow!("--{}: {why}", key.replace('_', "-")))?;
        Ok(config)
    }
}

/// Runs `nsgroup run` until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let log_format = args.log_format;
    let config = args.config()?;
    init_logging(log_format);
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
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_flags_are_spelled_as_in_the_configuration() {
        for arg in SourceArg::value_variants() {
            let flag = arg.to_possible_value().unwrap();
            assert_eq!(serde_json::to_value(arg.source()).unwrap(), flag.get_name(), "{arg:?}");
        }
    }

    #[test]
    fn an_empty_api_socket_serves_no_api() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nsgroup.toml");
        std::fs::write(&config, "").unwrap();
        let args = ["nsgroup", "run", "--api-socket", "", "--config", config.to_str().unwrap()];
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        let crate::cli::Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.config().unwrap().api.socket, PathBuf::new());
    }
}
