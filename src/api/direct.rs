//! The command line's way to an answer: through the daemon's socket when a
//! daemon listens there, and otherwise (as root) the same request carried
//! out directly on cgroupfs, with no permission model (root may do
//! everything the seed allowed). Freeze, thaw, kill, limit, attach and
//! create work both ways; the rest need the daemon.

use std::path::PathBuf;

use serde_json::Value;

use super::client::{Client, ClientError};
use super::handler::{self, NodeRef};
use super::proto::{self, Code, ErrorBody, Request, Target};
use crate::control::verbs::{self, PidfdSignaller, Timing};
use crate::core::cgpath::{canonical, join};
use crate::core::escape::Escaped;
use crate::sys::cgroup_dir;
use crate::sys::locate::locate;
use crate::sys::procfs::ProcFs;

/// Where to reach the daemon, and where to act without it.
#[derive(Clone, Debug)]
pub struct Reach {
    /// The daemon's API socket.
    pub socket: PathBuf,
    /// Without a daemon: the mount point of the cgroup hierarchy to act on
    /// (None: the one `nsgroup run` would use).
    pub hierarchy: Option<PathBuf>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no daemon listens on {} and acting on cgroupfs directly needs root", .0.display())]
    NeedsRoot(PathBuf),
}

/// The answer line to `request`: the daemon's, or, when no daemon listens
/// and this process is root, the same object made by acting directly (an
/// error answer where that failed).
pub fn answer(reach: &Reach, request: &Request) -> Result<Value, ReachError> {
    match Client::connect(&reach.socket) {
        Ok(mut client) => Ok(client.call(request)?),
        Err(ClientError::NoDaemon(p)) if !rustix::process::geteuid().is_root() => Err(ReachError::NeedsRoot(p)),
        Err(ClientError::NoDaemon(_)) => Ok(match direct(reach, request) {
            Ok(data) => proto::answer_ok(&Value::Null, request.name(), data),
            Err(e) => proto::answer_error(&Value::Null, Some(request.name()), &e),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Without a daemon: the same request carried out directly, as root, with
/// no permission model (root may do everything the seed allowed).
fn direct(reach: &Reach, request: &Request) -> Result<Value, ErrorBody> {
    let located = locate(reach.hierarchy.as_deref(), false).map_err(|e| ErrorBody::new(Code::Failed, e.to_string()))?;
    let h = located.hierarchy;
    let proc = ProcFs::new("/proc");
    let node = |target: &Target| -> Result<NodeRef, ErrorBody> {
        let path = handler::target_cgroup(&h, &proc, target)?;
        handler::node_at(&h, &path, target)
    };
    let timing = Timing::default();
    let outcome = |o: verbs::Outcome, path: &str| {
        let mut v = serde_json::to_value(o).expect("an outcome serializes");
        v["path"] = path.into();
        v
    };
    match request {
        Request::Freeze { target } => {
            let n = node(target)?;
            Ok(outcome(verbs::freeze(&handler::subtree(&h, &n), timing)?, &n.path))
        }
        Request::Thaw { target } => {
            let n = node(target)?;
            Ok(outcome(verbs::thaw(&handler::subtree(&h, &n), timing)?, &n.path))
        }
        Request::Kill { target } => {
            let n = node(target)?;
            let mut sig = PidfdSignaller { proc: proc.clone(), key: h.key().clone(), subtree: n.path.clone() };
            Ok(outcome(verbs::kill(&handler::subtree(&h, &n), &mut sig, timing)?, &n.path))
        }
        Request::Limit { target, file, value } => {
            let controller = verbs::limit_controller(file)?.to_string();
            let n = node(target)?;
            let dir = handler::limit_dir(&h, &n, &controller)?;
            let written = verbs::write_limit(&dir, file, value)?;
            Ok(serde_json::json!({ "path": n.path, "file": file, "value": value, "written": written }))
        }
        Request::Attach { pid, target } => {
            let dest = canonical(target).map_err(|e| ErrorBody::new(Code::Invalid, e.to_string()))?;
            if !h.dir(&dest).is_dir() {
                return Err(ErrorBody::new(Code::NotFound, format!("no cgroup {} in {}", Escaped(&dest), h.mount().display())));
            }
            cgroup_dir::move_task(&h.dir(&dest), h.version(), *pid, *pid)?;
            Ok(serde_json::json!({ "pid": pid, "path": dest }))
        }
        Request::Create { parent, name } => {
            let parent = canonical(parent).map_err(|e| ErrorBody::new(Code::Invalid, e.to_string()))?;
            let name = name.clone().unwrap_or_else(|| format!("node_{}", std::process::id()));
            let path = join(&parent, &name);
            cgroup_dir::make_new(&h.dir(&path))?;
            Ok(serde_json::json!({ "path": path }))
        }
        _ => Err(ErrorBody::new(Code::Invalid, "this request needs the daemon")),
    }
}
