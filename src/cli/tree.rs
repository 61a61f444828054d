//! `nsgroup tree`: the nodes nested, as text, JSON or OpenMetrics.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::ValueEnum;

use nsgroup::core::cgpath::canonical;
use nsgroup::core::escape::Escaped;
use nsgroup::model::{self, Units};
use nsgroup::sys::clock::unix_now;
use nsgroup::render::text::{Column, View, DEFAULT_COLUMNS};
use nsgroup::sys::locate::locate;
use nsgroup::sys::procfs::ProcFs;

use super::{note_unreadable, require_cgroup, At};

/// `nsgroup tree`'s arguments.
#[derive(clap::Args, Debug)]
pub struct TreeArgs {
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
    #[arg(short = 'o', long = "columns", value_name = "LIST", value_enum, value_delimiter = ',', default_values_t = DEFAULT_COLUMNS.map(ColumnArg))]
    columns: Vec<ColumnArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
    Openmetrics,
}

/// [`Column`] as a flag value: its name and help are the library's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ColumnArg(Column);

flag_value!(ColumnArg, Column::ALL);

/// Runs `nsgroup tree`; works whether the daemon runs or not.
pub fn tree(args: TreeArgs) -> anyhow::Result<ExitCode> {
    let output = if args.json { Output::Json } else { args.output };
    let located = locate(args.at.hierarchy.as_deref(), false)?;
    let root = args.root.unwrap_or_else(|| "/".into());
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
    let tree = model::build(&sample, &base, units, args.all).expect("the top is always kept");
    let columns = args.columns.into_iter().map(|c| c.0).collect();
    let view = View { columns, width: terminal_width(), now_unix: unix_now() };
    write_tree(&tree, output, &view).context("writing the tree to stdout")?;
    note_unreadable(tree.unreadable_tasks);
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_is_a_flag_value_by_its_name() {
        for c in Column::ALL {
            assert_eq!(ColumnArg::from_str(c.name(), false), Ok(ColumnArg(c)));
        }
        assert!(ColumnArg::from_str("nonesuch", false).is_err());
    }
}
