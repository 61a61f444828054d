//! Workloads that enter namespaces in ways the util-linux tools do not, for
//! nsgroup's end-to-end tests and benchmarks. Prints one JSON line of pids
//! when set up, then waits (reads stdin: a line means "go on", EOF means exit).

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use nsgroup::ffi::{clone3, fork, unshare_namespaces, Forked};

#[derive(Parser)]
#[command(name = "nsgroup-workload")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// unshare(NEWNET|NEWUTS); on the first stdin line, setns() back to the
    /// original net and uts namespaces.
    SetnsBack,
    /// unshare(NEWUTS), then fork CHILDREN at once (before any daemon can react).
    UnshareFork {
        #[arg(long, default_value_t = 8)]
        children: u32,
    },
    /// A thread unshares NEWUTS; the leader does not.
    ThreadUnshare,
    /// clone3(CLONE_NEWUTS|CLONE_NEWIPC); with --pid, the child gets that pid.
    Clone3 {
        #[arg(long)]
        pid: Option<u32>,
    },
    /// COUNT processes at once, each unsharing NEWUTS and forking CHILDREN
    /// at once; all live HOLD_MS, then exit. Prints a summary when all are gone.
    Storm {
        #[arg(long, default_value_t = 200)]
        count: u32,
        #[arg(long, default_value_t = 2)]
        children: u32,
        #[arg(long, default_value_t = 2000)]
        hold_ms: u64,
        /// Fork without entering namespaces (a plain fork storm).
        #[arg(long)]
        no_namespaces: bool,
    },
}

/// Waits for every child of this process.
fn reap_all() -> u32 {
    let mut n = 0;
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::empty()) {
        n += 1;
    }
    n
}

fn storm_member(children: u32, hold: Duration, namespaces: bool) -> ! {
    let code = (|| -> Result<()> {
        if namespaces {
            unshare_namespaces(UnshareFlags::NEWUTS)?;
        }
        for _ in 0..children {
            if let Forked::Child = fork()? {
                std::thread::sleep(hold);
                std::process::exit(0);
            }
        }
        std::thread::sleep(hold);
        reap_all();
        Ok(())
    })()
    .map_or(1, |()| 0);
    std::process::exit(code)
}

fn say(value: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

/// Waits for a stdin line; false on EOF.
fn wait_line() -> bool {
    let mut line = String::new();
    matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0)
}

/// A child that lives until killed (the tests kill every task of their subtree).
fn linger_child() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn spawn_child() -> Result<u32> {
    match fork()? {
        Forked::Child => linger_child(),
        Forked::Parent { child } => Ok(child),
    }
}

fn main() -> Result<()> {
    let me = std::process::id();
    match Cli::parse().command {
        Cmd::SetnsBack => {
            let net = std::fs::File::open("/proc/self/ns/net").context("open /proc/self/ns/net")?;
            let uts = std::fs::File::open("/proc/self/ns/uts").context("open /proc/self/ns/uts")?;
            unshare_namespaces(UnshareFlags::NEWNET | UnshareFlags::NEWUTS)?;
            say(serde_json::json!({ "pid": me, "state": "entered" }))?;
            if wait_line() {
                rustix::thread::move_into_link_name_space(net.as_fd(), Some(LinkNameSpaceType::Network))?;
                rustix::thread::move_into_link_name_space(uts.as_fd(), Some(LinkNameSpaceType::HostNameAndNISDomainName))?;
                say(serde_json::json!({ "pid": me, "state": "back" }))?;
                wait_line();
            }
        }
        Cmd::UnshareFork { children } => {
            unshare_namespaces(UnshareFlags::NEWUTS)?;
            let pids: Result<Vec<u32>> = (0..children).map(|_| spawn_child()).collect();
            say(serde_json::json!({ "pid": me, "children": pids? }))?;
            wait_line();
        }
        Cmd::ThreadUnshare => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let r = unshare_namespaces(UnshareFlags::NEWUTS).map(|()| rustix::thread::gettid().as_raw_nonzero().get());
                let _ = tx.send(r.map_err(|e| e.to_string()));
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            });
            let tid = rx.recv()?.map_err(anyhow::Error::msg)?;
            say(serde_json::json!({ "pid": me, "thread": tid }))?;
            wait_line();
        }
        Cmd::Storm { count, children, hold_ms, no_namespaces } => {
            let hold = Duration::from_millis(hold_ms);
            for _ in 0..count {
                if let Forked::Child = fork()? {
                    storm_member(children, hold, !no_namespaces);
                }
            }
            let reaped = reap_all();
            say(serde_json::json!({ "pid": me, "members": count, "reaped": reaped }))?;
        }
        Cmd::Clone3 { pid } => match clone3((libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64, pid)? {
            Forked::Child => linger_child(),
            Forked::Parent { child } => {
                if pid.is_some_and(|p| p != child) {
                    bail!("asked for pid {pid:?}, got {child}");
                }
                say(serde_json::json!({ "pid": me, "child": child }))?;
                wait_line();
            }
        },
    }
    Ok(())
}
