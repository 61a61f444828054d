//! The API's verbs on the command line: `freeze`, `thaw`, `kill`, `limit`,
//! `attach`, `create`, `events`, `api`. Each talks to the daemon's socket
//! when a daemon listens there, and otherwise (freeze, thaw, kill, limit,
//! attach, create) acts on cgroupfs directly, which needs root
//! ([`nsgroup::api::direct`]).
//!
//! Exit codes: 0 done; 1 the target was not found (no such cgroup, not a
//! node, no such process); 2 a usage or system error, a refusal, or what the
//! kernel refused — with a message naming the problem (and the rule).

use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use nsgroup::api::client::{Client, ClientError};
use nsgroup::api::direct;
use nsgroup::api::proto::{Code, ErrorBody, Request, Target};
use nsgroup::config::DEFAULT_API_SOCKET;
use nsgroup::core::escape::Escaped;

/// Where to reach the daemon, and where to act without it.
#[derive(clap::Args, Debug)]
pub struct ReachFlags {
    /// The daemon's API socket (default: $NSGROUP_SOCKET, else /run/nsgroup/api.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Without a daemon: the cgroup hierarchy to act on directly (as root).
    #[arg(long, value_name = "PATH")]
    hierarchy: Option<PathBuf>,
    /// Print the daemon's answer (or the same object without a daemon) as JSON.
    #[arg(long)]
    json: bool,
}

/// The API's subcommands (flattened into `nsgroup`'s own).
#[derive(clap::Subcommand, Debug)]
pub enum ApiCommand {
    /// Freeze every task of a node's subtree (TARGET: a node's cgroup path, or a pid: its node).
    Freeze {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "TARGET")]
        target: String,
    },
    /// Thaw a node's subtree.
    Thaw {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "TARGET")]
        target: String,
    },
    /// Kill every task of a node's subtree (freezing first where a freezer is at hand).
    Kill {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "TARGET")]
        target: String,
    },
    /// Write a controller value of a node: FILE=VALUE (pids.max=64, memory.max=1G, …).
    Limit {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "TARGET")]
        target: String,
        #[arg(value_name = "FILE=VALUE")]
        setting: String,
    },
    /// Checkpoint a node with CRIU into DIR (root's, mode 0700, new or empty;
    /// CAP_SYS_ADMIN only): its tasks end unless --leave-running.
    Checkpoint {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "TARGET")]
        target: String,
        /// The image directory (absolute).
        #[arg(long, value_name = "DIR")]
        dir: String,
        /// Leave the tasks running after the dump.
        #[arg(long)]
        leave_running: bool,
        /// Dump established TCP connections too (CRIU's --tcp-established).
        #[arg(long)]
        tcp_established: bool,
    },
    /// Restore a checkpoint from DIR into a fresh node with the same limits (CAP_SYS_ADMIN only).
    Restore {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "DIR")]
        dir: String,
    },
    /// Move task PID into cgroup CGROUP; or, with `-- CMD…`, move this
    /// command itself there and run CMD (the seed's rules: only into an
    /// empty child of one's own cgroup; moving another task needs CAP_SYS_ADMIN).
    Attach {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "CGROUP")]
        cgroup: String,
        /// The task to move.
        #[arg(value_name = "PID", conflicts_with = "command")]
        pid: Option<u32>,
        /// The command to run once moved.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Create a cgroup below PARENT (named NAME, or node_<this pid>); prints its path.
    Create {
        #[command(flatten)]
        reach: ReachFlags,
        #[arg(value_name = "PARENT")]
        parent: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the daemon's events as JSON Lines until interrupted.
    Events {
        /// The daemon's API socket (default: $NSGROUP_SOCKET, else /run/nsgroup/api.sock).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Send raw request lines (arguments, else stdin) and print every line the daemon answers.
    Api {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[arg(value_name = "JSON")]
        lines: Vec<String>,
    },
}

/// Exit codes.
const DONE: u8 = 0;
const NOT_FOUND: u8 = 1;
const ERROR: u8 = 2;

pub(super) fn socket_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("NSGROUP_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET))
}

fn fail(message: impl std::fmt::Display) -> u8 {
    let _ = writeln!(io::stderr(), "nsgroup: {message}");
    ERROR
}

fn exit_code(e: &ErrorBody) -> u8 {
    let _ = writeln!(io::stderr(), "nsgroup: {}", e.message);
    if e.code == Code::NotFound {
        NOT_FOUND
    } else {
        ERROR
    }
}

/// Runs one subcommand; the exit code.
pub fn run(cmd: ApiCommand) -> u8 {
    match cmd {
        ApiCommand::Freeze { reach, target } => act(&reach, Request::Freeze { target: Target::from_arg(&target) }),
        ApiCommand::Thaw { reach, target } => act(&reach, Request::Thaw { target: Target::from_arg(&target) }),
        ApiCommand::Kill { reach, target } => act(&reach, Request::Kill { target: Target::from_arg(&target) }),
        ApiCommand::Limit { reach, target, setting } => {
            let Some((file, value)) = setting.split_once('=') else {
                return fail(format!("\"{}\" is not FILE=VALUE", Escaped(&setting)));
            };
            act(&reach, Request::Limit { target: Target::from_arg(&target), file: file.into(), value: value.into() })
        }
        ApiCommand::Attach { reach, cgroup, pid, command } => attach(&reach, &cgroup, pid, &command),
        ApiCommand::Create { reach, parent, name } => act(&reach, Request::Create { parent, name }),
        ApiCommand::Checkpoint { reach, target, dir, leave_running, tcp_established } => {
            act(&reach, Request::Checkpoint { target: Target::from_arg(&target), dir, leave_running, tcp_established })
        }
        ApiCommand::Restore { reach, dir } => act(&reach, Request::Restore { dir }),
        ApiCommand::Events { socket } => events(&socket_path(socket.as_deref())),
        ApiCommand::Api { socket, lines } => raw(&socket_path(socket.as_deref()), &lines),
    }
}

impl ReachFlags {
    /// The library's reach: the socket (the flag, else $NSGROUP_SOCKET, else
    /// the default) and the hierarchy.
    fn reach(&self) -> direct::Reach {
        direct::Reach { socket: socket_path(self.socket.as_deref()), hierarchy: self.hierarchy.clone() }
    }
}

/// Through the daemon if one listens, else directly (as root).
fn act(reach: &ReachFlags, request: Request) -> u8 {
    match direct::answer(&reach.reach(), &request) {
        Ok(answer) => report(reach.json, &request, &answer),
        Err(e) => fail(e),
    }
}

/// Prints an answer; the exit code.
fn report(json: bool, request: &Request, answer: &Value) -> u8 {
    let mut out = io::stdout().lock();
    if json {
        let _ = writeln!(out, "{answer}");
    }
    if answer["type"] == "error" {
        let code = serde_json::from_value::<Value>(answer["error"]["code"].clone()).ok();
        let message = answer["error"]["message"].as_str().unwrap_or("the daemon refused").to_string();
        let body = ErrorBody::new(if code.as_ref().and_then(Value::as_str) == Some("not_found") { Code::NotFound } else { Code::Failed }, message);
        return exit_code(&body);
    }
    let d = &answer["data"];
    if let Some(w) = d["warning"].as_str() {
        let _ = writeln!(io::stderr(), "nsgroup: warning: {w}");
    }
    if !json {
        let path = d["path"].as_str().map(|p| Escaped(p).to_string()).unwrap_or_default();
        let line = match request {
            Request::Freeze { .. } => format!("froze {path} ({})", d["method"].as_str().unwrap_or("")),
            Request::Thaw { .. } => format!("thawed {path} ({})", d["method"].as_str().unwrap_or("")),
            Request::Kill { .. } => format!(
                "killed {path}: {} signalled in {} rounds ({})",
                d["signalled"].as_u64().unwrap_or(0),
                d["rounds"].as_u64().unwrap_or(0),
                d["method"].as_str().unwrap_or("")
            ),
            Request::Limit { file, value, .. } => format!("{path}: {file} = {}", Escaped(value)),
            Request::Attach { pid, .. } => format!("moved {pid} into {path}"),
            Request::Checkpoint { dir, leave_running, .. } => {
                format!("checkpointed {path} into {}{}", Escaped(dir), if *leave_running { " (left running)" } else { "" })
            }
            Request::Restore { .. } => format!("restored {} into {path}", d["from_path"].as_str().map(|p| Escaped(p).to_string()).unwrap_or_default()),
            _ => path,
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    DONE
}

/// `attach`: another task, or this command itself and then CMD.
fn attach(reach: &ReachFlags, cgroup: &str, pid: Option<u32>, command: &[String]) -> u8 {
    let who = match (pid, command.is_empty()) {
        (Some(p), _) => p,
        (None, false) => std::process::id(),
        (None, true) => return fail("attach needs a PID, or -- CMD to run in the cgroup"),
    };
    let request = Request::Attach { pid: who, target: cgroup.to_string() };
    if command.is_empty() {
        return act(reach, request);
    }
    let answer = match direct::answer(&reach.reach(), &request) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if answer["type"] == "error" {
        let code = answer["error"]["code"].as_str() == Some("not_found");
        let message = answer["error"]["message"].as_str().unwrap_or("refused").to_string();
        return exit_code(&ErrorBody::new(if code { Code::NotFound } else { Code::Failed }, message));
    }
    let e = std::process::Command::new(&command[0]).args(&command[1..]).exec();
    fail(format!("running {}: {e}", Escaped(&command[0])))
}

/// `events`: subscribes and prints every line until the daemon closes or stdout does.
fn events(path: &Path) -> u8 {
    let mut client = match Client::connect(path) {
        Ok(c) => c,
        Err(ClientError::NoDaemon(p)) => return fail(format!("nsgroup events needs the daemon: none listens on {}", p.display())),
        Err(e) => return fail(e),
    };
    if let Err(e) = client.send(&Request::Subscribe {}) {
        return fail(e);
    }
    let mut out = io::stdout().lock();
    loop {
        match client.read() {
            Ok(Some(v)) => {
                if v["type"] == "error" {
                    return fail(v["error"]["message"].as_str().unwrap_or("refused"));
                }
                if writeln!(out, "{v}").and_then(|()| out.flush()).is_err() {
                    return DONE;
                }
            }
            Ok(None) => return fail("the daemon closed the stream"),
            Err(e) => return fail(e),
        }
    }
}

/// `api`: raw lines in, every answer line out (until all are answered).
fn raw(path: &Path, lines: &[String]) -> u8 {
    let mut client = match Client::connect(path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let lines: Vec<String> = if lines.is_empty() { io::stdin().lock().lines().map_while(Result::ok).collect() } else { lines.to_vec() };
    let mut out = io::stdout().lock();
    let mut failed = false;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        if let Err(e) = client.send_raw(line) {
            return fail(e);
        }
        loop {
            match client.read() {
                Ok(Some(v)) => {
                    let _ = writeln!(out, "{v}");
                    failed |= v["type"] == "error";
                    if v["type"] != "event" {
                        break;
                    }
                }
                Ok(None) => return fail("the daemon closed the connection"),
                Err(e) => return fail(e),
            }
        }
    }
    let _ = out.flush();
    if failed {
        ERROR
    } else {
        DONE
    }
}
