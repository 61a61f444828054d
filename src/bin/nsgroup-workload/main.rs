//! Workloads that enter namespaces in ways the util-linux tools do not, for
//! nsgroup's end-to-end tests and benchmarks. Prints one JSON line of pids
//! when set up, then waits (reads stdin: a line means "go on", EOF means exit).

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

mod api_hold;
mod subuids;

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
    /// at once; all live HOLD_MS (or until stdin's EOF with --until-eof), then
    /// exit. Prints a summary when all are gone.
    Storm {
        #[arg(long, default_value_t = 200)]
        count: u32,
        #[arg(long, default_value_t = 2)]
        children: u32,
        #[arg(long, default_value_t = 2000)]
        hold_ms: u64,
        /// Every member and child lives until stdin reaches EOF instead of HOLD_MS.
        #[arg(long)]
        until_eof: bool,
        /// Fork without entering namespaces (a plain fork storm).
        #[arg(long)]
        no_namespaces: bool,
    },
    /// An unprivileged storm: unshare(NEWUSER) first (single-threaded, no
    /// mapping needed: the creator holds every capability in it), then
    /// THREADS threads, each doing UNSHARES unshare(NEWUTS) in a row, each new
    /// namespace nested in the daemon's sense (entered from the previous one)
    /// and kept alive by an open fd of /proc/thread-self/ns/uts. Prints one
    /// JSON line when every thread is done; the threads live on until stdin
    /// gives a line or EOF, then the process exits.
    UsernsStorm {
        #[arg(long, default_value_t = 100)]
        threads: u32,
        #[arg(long, default_value_t = 150)]
        unshares: u32,
        /// Do not keep the namespaces alive (each one dies at the next unshare).
        #[arg(long)]
        no_keep: bool,
        /// Skip unshare(NEWUSER) (for root).
        #[arg(long)]
        no_userns: bool,
    },
    /// A plain child (no new namespace) with host pid PID (clone3 set_tid),
    /// in the cgroup this process is in; it lives until killed.
    SpawnAtPid {
        #[arg(long)]
        pid: u32,
    },
    /// unshare(NEWUTS), then fork a child that unshares NEWUTS again and lives
    /// until killed; prints both uts inode numbers. On stdin EOF or a line
    /// the parent exits, so that its first uts namespace dies (its inode
    /// number is free for the next namespace).
    NestChild,
    /// A workload for limits: unshare(NEWUTS) (unless --outside) and wait
    /// until placed (its /proc/self/cgroup names its node), then fork up to FORKS
    /// children that linger, then spin for SPIN_MS of wall time, then fill
    /// HOG_MB MiB of memory and keep it; prints `{pid, forked, cpu_ms,
    /// hogged_mb}` and waits.
    Contained {
        #[arg(long, default_value_t = 0)]
        forks: u32,
        #[arg(long, default_value_t = 0)]
        spin_ms: u64,
        #[arg(long, default_value_t = 0)]
        hog_mb: usize,
        /// Stay in the cgroup it was started in (the comparison).
        #[arg(long)]
        outside: bool,
    },
    /// CLIENTS connections to the daemon's API socket, each asking for the
    /// node list again as soon as it has the answer; prints `{ready}` once
    /// all are connected, and `{requests}` (answers read) at stdin EOF.
    ApiClients {
        #[arg(long)]
        socket: std::path::PathBuf,
        #[arg(long, default_value_t = 100)]
        clients: u32,
    },
    /// Sets the command name (prctl PR_SET_NAME, truncated to 15 bytes) to
    /// NAME, by default one with a line break and a terminal sequence
    /// (`a\nFAKE\x1b[31mX`); optionally unshares NEWUSER; then NEWUTS;
    /// prints, waits.
    OddComm {
        #[arg(long)]
        name: Option<String>,
        /// Unshare NEWUSER first (needed without privileges).
        #[arg(long)]
        userns: bool,
    },
    /// What `newuidmap` sets up for a user with a subordinate range (run as
    /// root): a process of uid OWNER unshares NEWUSER; root maps its inner
    /// uid 0 to OWNER and inner uids 1..=UIDS to BASE.. (and the same gids;
    /// with --range-root, inner uids 0..=UIDS to BASE..).
    /// Then every inner uid k runs COMMAND as uid k (no capabilities), its
    /// stdout read back. Prints `{pid, user_ns, children, lines}` (each
    /// child's first line) once all have answered; the children share stdin
    /// (EOF ends them), and the process exits once they have.
    Subuids {
        #[arg(long, default_value_t = 65534)]
        owner: u32,
        #[arg(long, default_value_t = 200_000)]
        base: u32,
        #[arg(long, default_value_t = 10)]
        uids: u32,
        /// Map inner uid 0 into the range too (`0 BASE UIDS+1`), as an
        /// unprivileged container that root starts does.
        #[arg(long)]
        range_root: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// CONNECTIONS connections to the API socket, opened at once, each
    /// sending one line — `subscribe` with --subscribe, else a request the
    /// server answers itself (an unknown type) — and reading its answer; a
    /// connection answered `busy` or closed counts as refused. Prints
    /// `{pid, uid, held, refused, refusal}` (the first refusal's message),
    /// then holds the others until stdin's EOF without reading them (stalled
    /// subscribers), or with --poll asks for the node list again on each as
    /// soon as it has the answer (one thread, all of them at once).
    ApiHold {
        #[arg(long)]
        socket: std::path::PathBuf,
        #[arg(long, default_value_t = 128)]
        connections: u32,
        #[arg(long, conflicts_with = "poll")]
        subscribe: bool,
        #[arg(long)]
        poll: bool,
    },
}

/// The default forged command name: a line that would start with "FAKE",
/// and a terminal colour sequence.
const ODD_COMM: &[u8] = b"a\nFAKE\x1b[31mX";

/// The inode number of one of a task's namespaces.
fn ns_inode(path: &str) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path).with_context(|| format!("stat {path}"))?.ino())
}

/// One storm thread: UNSHARES nested unshare(NEWUTS), keeping each
/// namespace alive unless told not to. Returns its tid, how many succeeded
/// and the first error.
fn storm_thread(unshares: u32, keep: bool) -> (u32, u32, Option<String>, Vec<std::fs::File>) {
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let mut held = Vec::with_capacity(if keep { unshares as usize } else { 0 });
    let mut done = 0;
    for _ in 0..unshares {
        if let Err(e) = unshare_namespaces(UnshareFlags::NEWUTS) {
            return (tid, done, Some(format!("unshare: {e}")), held);
        }
        done += 1;
        if keep {
            match std::fs::File::open("/proc/thread-self/ns/uts") {
                Ok(f) => held.push(f),
                Err(e) => return (tid, done, Some(format!("open /proc/thread-self/ns/uts: {e}")), held),
            }
        }
    }
    (tid, done, None, held)
}

/// Waits for every child of this process.
fn reap_all() -> u32 {
    let mut n = 0;
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::empty()) {
        n += 1;
    }
    n
}

/// How long a storm's members and their children live.
#[derive(Clone, Copy)]
enum Hold {
    For(Duration),
    /// Until stdin (shared by all of them) reaches EOF.
    UntilEof,
}

impl Hold {
    fn wait(self) {
        match self {
            Hold::For(d) => std::thread::sleep(d),
            Hold::UntilEof => while wait_line() {},
        }
    }
}

fn storm_member(children: u32, hold: Hold, namespaces: bool) -> ! {
    let code = (|| -> Result<()> {
        if namespaces {
            unshare_namespaces(UnshareFlags::NEWUTS)?;
        }
        for _ in 0..children {
            if let Forked::Child = fork()? {
                hold.wait();
                std::process::exit(0);
            }
        }
        hold.wait();
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

/// Raises the open-files soft limit to the hard one: the storms hold one
/// descriptor per namespace (15,000), more than a service's default 1,024.
fn raise_nofile() -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum })
            .context("setrlimit(RLIMIT_NOFILE) to the hard limit")?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let me = std::process::id();
    raise_nofile()?;
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
        Cmd::Storm { count, children, hold_ms, until_eof, no_namespaces } => {
            let hold = if until_eof { Hold::UntilEof } else { Hold::For(Duration::from_millis(hold_ms)) };
            for _ in 0..count {
                if let Forked::Child = fork()? {
                    storm_member(children, hold, !no_namespaces);
                }
            }
            let reaped = reap_all();
            say(serde_json::json!({ "pid": me, "members": count, "reaped": reaped }))?;
        }
        Cmd::UsernsStorm { threads, unshares, no_keep, no_userns } => {
            if !no_userns {
                unshare_namespaces(UnshareFlags::NEWUSER).context("unshare(CLONE_NEWUSER)")?;
            }
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..threads {
                let tx = tx.clone();
                std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                    let (tid, done, error, held) = storm_thread(unshares, !no_keep);
                    let _ = tx.send((tid, done, error));
                    // Lives on in its last namespace, holding the earlier
                    // ones, until the process exits.
                    let _held = held;
                    loop {
                        std::thread::park();
                    }
                })?;
            }
            drop(tx);
            let (mut tids, mut entered, mut first_error) = (vec![], 0u64, None);
            for (tid, done, error) in rx.iter().take(threads as usize) {
                tids.push(tid);
                entered += u64::from(done);
                first_error = first_error.or(error);
            }
            say(serde_json::json!({
                "pid": me,
                "user_ns": ns_inode("/proc/self/ns/user")?,
                "tids": tids,
                "entered": entered,
                "error": first_error,
            }))?;
            wait_line();
            // The threads never return: leave without joining them.
            std::process::exit(0);
        }
        Cmd::SpawnAtPid { pid } => match clone3(0, Some(pid))? {
            Forked::Child => linger_child(),
            Forked::Parent { child } => {
                if child != pid {
                    bail!("asked for pid {pid}, got {child}");
                }
                say(serde_json::json!({ "pid": me, "child": child }))?;
                wait_line();
            }
        },
        Cmd::NestChild => {
            unshare_namespaces(UnshareFlags::NEWUTS)?;
            let first = ns_inode("/proc/self/ns/uts")?;
            let child = match fork()? {
                Forked::Child => {
                    if unshare_namespaces(UnshareFlags::NEWUTS).is_err() {
                        std::process::exit(1);
                    }
                    linger_child()
                }
                Forked::Parent { child } => child,
            };
            let path = format!("/proc/{child}/ns/uts");
            let end = std::time::Instant::now() + Duration::from_secs(10);
            let child_uts = loop {
                let inode = ns_inode(&path)?;
                if inode != first {
                    break inode;
                }
                if std::time::Instant::now() > end {
                    bail!("the child {child} did not unshare");
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            say(serde_json::json!({ "pid": me, "child": child, "first_uts": first, "child_uts": child_uts }))?;
            wait_line();
        }
        Cmd::ApiClients { socket, clients } => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let answers = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut threads = Vec::new();
            for _ in 0..clients {
                let stream = std::os::unix::net::UnixStream::connect(&socket).with_context(|| format!("connect {}", socket.display()))?;
                let (stop, answers) = (stop.clone(), answers.clone());
                threads.push(std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().expect("a socket clones"));
                    let mut writer = stream;
                    let mut line = String::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        line.clear();
                        if writer.write_all(b"{\"version\":1,\"type\":\"list\"}\n").is_err() || !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                            break;
                        }
                        answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }));
            }
            say(serde_json::json!({ "pid": me, "ready": clients }))?;
            wait_line();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for t in threads {
                let _ = t.join();
            }
            say(serde_json::json!({ "pid": me, "requests": answers.load(std::sync::atomic::Ordering::Relaxed) }))?;
        }
        Cmd::Contained { forks, spin_ms, hog_mb, outside } => {
            if !outside {
                // In its own node, not on the way there (a leaf, on cgroup2).
                unshare_namespaces(UnshareFlags::NEWUTS)?;
                let placed_by = std::time::Instant::now() + Duration::from_secs(30);
                let (node, renamed) = (format!("/node_{me}"), format!("/node_{me}~"));
                let placed = |text: String| text.lines().any(|l| l.ends_with(&node) || l.contains(&renamed));
                while !placed(std::fs::read_to_string("/proc/self/cgroup")?) {
                    if std::time::Instant::now() > placed_by {
                        bail!("not placed within 30 s");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let forked = (0..forks).map_while(|_| match fork() {
                Ok(Forked::Child) => linger_child(),
                Ok(Forked::Parent { .. }) => Some(()),
                Err(_) => None,
            });
            let forked = forked.count();
            let cpu = || {
                let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
                Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
            };
            let (start, cpu0) = (std::time::Instant::now(), cpu());
            while start.elapsed() < Duration::from_millis(spin_ms) {
                std::hint::black_box(0u64.wrapping_add(1));
            }
            let cpu_ms = (cpu() - cpu0).as_millis() as u64;
            // Every page written: resident, charged to the cgroup.
            let hog = std::hint::black_box(vec![1u8; hog_mb << 20]);
            say(serde_json::json!({ "pid": me, "forked": forked, "cpu_ms": cpu_ms, "hogged_mb": hog.len() >> 20 }))?;
            wait_line();
            drop(hog);
        }
        Cmd::OddComm { name, userns } => {
            let name = name.map_or_else(|| ODD_COMM.to_vec(), String::into_bytes);
            rustix::thread::set_name(&std::ffi::CString::new(name)?)?;
            if userns {
                unshare_namespaces(UnshareFlags::NEWUSER).context("unshare(CLONE_NEWUSER)")?;
            }
            unshare_namespaces(UnshareFlags::NEWUTS)?;
            let comm = std::fs::read("/proc/self/comm")?;
            say(serde_json::json!({ "pid": me, "comm": String::from_utf8_lossy(&comm).trim_end_matches('\n') }))?;
            wait_line();
        }
        Cmd::Subuids { owner, base, uids, range_root, command } => subuids::run(owner, base, uids, range_root, &command)?,
        Cmd::ApiHold { socket, connections, subscribe, poll } => api_hold::run(&socket, connections, subscribe, poll)?,
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
