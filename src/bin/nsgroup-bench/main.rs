//! nsgroup's benchmark suite: placement latency, throughput (also with
//! mirrors and a limit), cost to the traced workload, idle cost, start-up
//! reconcile and reading, and an unprivileged user's storm, side by side on
//! this machine, in a private named v1 hierarchy. Writes a Markdown table.
//!
//!     sudo target/release/nsgroup-bench --write docs/benchmarks.md
//!
//! One module per part; [`hierarchy`] and [`daemon`] are the suite's bed,
//! [`harness`] what it shares with the end-to-end tests.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

#[path = "../../../tests/common/harness.rs"]
mod harness;

mod api;
mod attack;
mod control;
mod mirrored;
mod cost;
mod daemon;
mod floor;
mod hierarchy;
mod hooks;
mod idle;
mod latency;
mod reconcile;
mod report;
mod storm;
mod tasks;
mod top;

use mirrored::Control;
use hierarchy::{sibling, Bench};
use report::Report;

#[derive(Parser)]
#[command(name = "nsgroup-bench", about = "Benchmarks nsgroup on this machine (needs root)")]
struct Args {
    /// Fewer iterations and a 10 s idle period (a smoke run, not for the record).
    #[arg(long)]
    quick: bool,
    /// Write the report (Markdown) here as well as to stdout.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Run only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Extra arguments for every `nsgroup run` (e.g. `--daemon-arg=--config=FILE`).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
}

/// The parts of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Latency,
    Storm,
    /// Latency and storm again with two mirrors (pids, freezer) and a limit
    /// rule, as ratios to the plain rows of the same run (which it runs too).
    Control,
    Cost,
    Idle,
    Reconcile,
    Attack,
    /// Part 1 again while 100 clients poll the API's node list.
    Api,
    /// The API's capacity (issue 16): root's `list` while one owner holds
    /// every connection it may, against an idle server; the daemon's RSS
    /// with 1,000 stalled subscribers under a 10,000-node churn, against
    /// its idle RSS and the same churn without them.
    ApiCapacity,
    /// What each `hooks` setting costs a null syscall (getppid) and the
    /// fork/unshare loop: the default (fentry where the kernel allows it,
    /// else the syscall tracepoints) and "no-syscall", each against no
    /// daemon. Small enough to run in the guest (`--only hooks --quick`).
    Hooks,
    /// One frame of `nsgroup top` on a 10,000-node tree against walking the tree alone.
    Top,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("nsgroup-bench needs root (it mounts a private cgroup hierarchy and runs the daemon)");
    }
    let q = args.quick;
    let run = |p: Part| args.only.is_empty() || args.only.contains(&p);
    if run(Part::Attack) {
        harness::nobody_can_attack(&sibling("nsgroup-workload")?)
            .context("the attack part needs uid 65534 to run the workload (user namespaces allowed, the binary readable by all)")?;
    }
    let b = Bench::new(args.daemon_args.clone())?;
    let mut r = Report::default();

    // The control part (issue 11) runs parts 1 and 2 again, each right after
    // its plain run (which it needs for its ratios), under a daemon with two
    // mirrors and a limit rule.
    let control = if run(Part::Control) { Some(Control::new(&b)?) } else { None };
    let ctl = control.as_ref();
    let latencies = (run(Part::Latency) || ctl.is_some()).then(|| latency::part(&b, &mut r, ctl, q)).transpose()?;
    if run(Part::Api) {
        api::clients(&b, &mut r, latencies.as_ref(), q)?;
    }
    if run(Part::ApiCapacity) {
        api::capacity(&b, &mut r, q)?;
    }
    let storms = (run(Part::Storm) || ctl.is_some()).then(|| storm::part(&b, &mut r, ctl, q)).transpose()?;
    control::rows(&mut r, latencies.as_ref(), storms.as_ref());
    drop(control);
    if run(Part::Cost) {
        cost::part(&b, &mut r, q)?;
    }
    if run(Part::Hooks) {
        hooks::part(&b, &mut r, q)?;
    }
    if run(Part::Idle) {
        idle::part(&b, &mut r, q)?;
    }
    if run(Part::Reconcile) {
        reconcile::part(&b, &mut r, q)?;
    }
    if run(Part::Top) {
        top::part(&b, &mut r, q)?;
    }
    if run(Part::Attack) {
        attack::part(&b, &mut r)?;
    }
    r.print(args.write.as_deref())
}
