//! The command line, in the binary only: clap's types and each subcommand's
//! glue, one module each. Flags are parsed here and turned into the plain
//! values the library takes (a [`Config`](nsgroup::config::Config), an exec
//! spec, a request, a history query); what is printed and the exit codes
//! are decided here too.

/// A library enum with `name()` and `help()` as a clap flag value: the
/// newtype `$wrapper($inner)` over every value of `$all`.
macro_rules! flag_value {
    ($wrapper:ident, $all:expr) => {
        impl clap::ValueEnum for $wrapper {
            fn value_variants<'a>() -> &'a [Self] {
                const ALL: [$wrapper; $all.len()] = {
                    let mut all = [$wrapper($all[0]); $all.len()];
                    let mut i = 0;
                    while i < all.len() {
                        all[i] = $wrapper($all[i]);
                        i += 1;
                    }
                    all
                };
                &ALL
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.0.name()).help(self.0.help()))
            }
        }
    };
}

pub mod assets;
mod api;
mod check;
mod exec;
mod history;
mod run;
mod status;
mod top;
mod tree;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};

use nsgroup::core::escape::Escaped;
use nsgroup::sys::hierarchy::Hierarchy;
use nsgroup::sys::error::IoError;

/// Gives every set of Linux namespaces its own cgroup, automatically.
///
/// Every task that enters a new namespace set (clone/clone3 with CLONE_NEW*,
/// unshare, setns, the first fork after unshare(CLONE_NEWPID)) is moved into
/// a cgroup named node_<pid> under the cgroup it was in, as the kernel's
/// 2007 ns cgroup subsystem did, without its flaws.
#[derive(Parser, Debug)]
#[command(name = "nsgroup", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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

/// Which daemon: its subtree and its configuration (each subcommand says
/// what the subtree means to it).
#[derive(clap::Args, Debug)]
struct Scope {
    /// The daemon's subtree (a cgroup path inside the hierarchy, starting
    /// with /, without . or ..). Default: the configuration's root, else /.
    #[arg(long, value_name = "CGROUP", value_parser = nsgroup::core::cgpath::canonical)]
    root: Option<String>,
    /// Configuration file (TOML). Default: /etc/nsgroup/nsgroup.toml if present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Scope {
    /// The configuration, with `--root` over its root.
    fn load(&self) -> anyhow::Result<nsgroup::config::Config> {
        let mut config = nsgroup::config::Config::load(self.config.as_deref())?;
        if let Some(r) = &self.root {
            config.root.clone_from(r);
        }
        Ok(config)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: track tasks entering namespace sets and place them.
    ///
    /// Needs root. Stops on SIGTERM or SIGINT; nodes stay. Sends READY=1 to
    /// NOTIFY_SOCKET once tracking.
    Run(run::RunArgs),
    /// Show the nodes nested, with the namespaces each differs in, its tasks
    /// and usage.
    ///
    /// Reads cgroupfs and /proc: works whether the daemon runs or not. Tasks
    /// whose /proc entries cannot be read (other users' without root) are
    /// left out and counted on stderr.
    Tree(tree::TreeArgs),
    /// Check the invariant: every task whose namespace set differs from this
    /// command's own is in the node of its set, and every set has one node.
    ///
    /// Exits 0 when it holds, 1 when it does not, 2 when it could not be
    /// checked. Tasks whose /proc entries cannot be read (other users' without
    /// root) are not checked and are counted on stderr.
    Check(check::CheckArgs),
    /// The nodes live, one row each, nested, with CPU, memory, swap, pids,
    /// IO, network, pressure, age, owner and command (like systemd-cgtop).
    ///
    /// Keys sort, filter, and freeze, thaw or kill the selected node through
    /// the API (q quits). Works whether the daemon runs or not; -b prints
    /// plain-text frames, --json JSON lines.
    Top(top::TopArgs),
    /// Run a command in new namespaces, in a fresh node of its own from its
    /// first instruction.
    ///
    /// The node node_<pid> is made first, with its record and limits, below
    /// this command's cgroup; the command is cloned with that pid, on cgroup2
    /// born in the node (CLONE_INTO_CGROUP), on v1 moved in before it runs,
    /// and execs once its mirrors are in place. A running daemon adopts the
    /// node. Exits with the command's status (128 + signal if killed; 127 if
    /// it could not be started). Needs root.
    Exec(exec::ExecArgs),
    /// Every node that existed: path, set, creator, created and removed
    /// times, final usage (from the history database; works whether the
    /// daemon runs or not).
    History(history::HistoryArgs),
    /// What a running daemon tracks and how: hooks and why, what they cost,
    /// the hierarchy's mount options, counters, uptime.
    Status(status::StatusArgs),
    /// The API's verbs: freeze, thaw, kill, limit, attach, create, events, api (docs/api.md).
    #[command(flatten)]
    Api(api::ApiCommand),
}

/// Runs the subcommand; its exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Tree(args) => tree::tree(args),
        Command::Check(args) => check::check(args),
        Command::Top(args) => top::top(args),
        Command::Exec(args) => exec::exec(args),
        Command::History(args) => history::history(args),
        Command::Status(args) => status::status(args),
        Command::Api(cmd) => Ok(ExitCode::from(api::run(cmd))),
    }
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
