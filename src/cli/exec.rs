//! `nsgroup exec`: a command in new namespaces, in a node of its own from
//! its first instruction.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use nsgroup::config::Config;
use nsgroup::core::limit::Limit;
use nsgroup::control::{exec, mirror};
use nsgroup::core::nsset::NsKind;
use nsgroup::sys::hierarchy::Version;
use nsgroup::sys::locate::locate;
use nsgroup::sys::procfs::ProcFs;

use super::At;

/// `nsgroup exec`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
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
    command: Vec<OsString>,
}

/// Runs `nsgroup exec`: the command's exit status.
pub fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
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
    let per_process = located.hierarchy.version() == Version::V2;
    let mut mirrors = mirror::open_all(&config, per_process)?;
    let spec = exec::ExecSpec { unshare: kinds, limits, argv: args.command };
    let status = exec::exec(spec, &located.hierarchy, &mut mirrors, &ProcFs::new("/proc"))?;
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}
