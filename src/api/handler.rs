//! Carrying out one request for one caller: resolving the target, asking
//! the permission model ([`crate::policy::perm`]) with facts read from /proc and
//! cgroupfs, then acting through cgroupfs ([`crate::control::verbs`] for the
//! verbs). Runs on the API's worker threads, never on the daemon's.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::events::Publisher;
use super::peer::Peer;
use super::proto::{ApiEvent, Code, ErrorBody, Request, Target};
use crate::control::checkpoint::{self, CheckpointError, CheckpointSpec, Source};
use crate::control::tighten::{self, TightenError};
use crate::sys::criu::{Criu, CriuError};
use crate::control::verbs::{self, PidfdSignaller, Subtree, Timing, VerbError};
use crate::core::cgpath::{canonical, join, within};
use crate::core::escape::Escaped;
use crate::core::limit::{self, Limit};
use crate::core::naming;
use crate::core::node::NodeRecord;
use crate::core::nsset::NsSet;
use crate::history::{Happening, Msg, Recorder};
use crate::model::{self, Units};
use crate::policy::perm::{self, Refusal};
use crate::policy::territory::Host;
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::cgroup_dir;
use crate::sys::error::IoError;
use crate::sys::mounts::read_mountinfo;
use crate::sys::procfs::ProcFs;

/// What every request needs to know.
pub struct Context {
    pub hierarchy: Hierarchy,
    /// The daemon's tracked subtree.
    pub root: String,
    pub proc: ProcFs,
    /// The daemon's user namespace: CAP_SYS_ADMIN counts only there.
    pub user_ns: u64,
    /// The set of cgroups that are no nodes (the daemon's own), for the tree model.
    pub base_set: NsSet,
    pub timing: Timing,
    /// Where `limit` publishes `limits_applied`.
    pub events: Option<Publisher>,
    /// The policy's limits, for `limit` without CAP_SYS_ADMIN.
    pub limits: LimitPolicy,
    /// The latest `list` answers (by `all`), shared for [`LIST_FRESH`]: a
    /// hundred clients polling the list cost one read of the hierarchy per
    /// interval, not a hundred.
    pub list_cache: std::sync::Mutex<[Option<(std::time::Instant, Value)>; 2]>,
    /// Where the verbs and `limit` are recorded in the nodes' timelines
    /// (the daemon's history, when it keeps one).
    pub history: Option<Recorder>,
    /// The CRIU `checkpoint` and `restore` run (`[api] criu`).
    pub criu: PathBuf,
}

/// The limits the policy gives a node — the `[[limit]]` rules that match its
/// record, as the daemon computes them — and the lock that makes each
/// `limit`'s check and write one step (no two requests interleave their
/// reads and writes). The default has no rules.
#[derive(Default)]
pub struct LimitPolicy {
    rules: Option<Box<PolicyRules>>,
    lock: std::sync::Mutex<()>,
}

/// A node's policy limits, from its record and the cgroup it was made in.
type PolicyRules = dyn Fn(&NodeRecord, &str) -> Vec<Limit> + Send + Sync;

impl LimitPolicy {
    pub fn new(rules: impl Fn(&NodeRecord, &str) -> Vec<Limit> + Send + Sync + 'static) -> LimitPolicy {
        LimitPolicy { rules: Some(Box::new(rules)), lock: Default::default() }
    }

    /// The files and values the policy writes on `node` (cgroup2 and v1 names).
    fn files_of(&self, node: &NodeRef) -> Vec<(&'static str, String)> {
        let parent = perm::parent_of(&node.path).unwrap_or("/");
        self.rules.as_ref().map(|rules| limit::files(&rules(&node.record, parent))).unwrap_or_default()
    }
}

/// How long a `list` answer is served again to other callers.
pub const LIST_FRESH: std::time::Duration = std::time::Duration::from_millis(100);

fn error(code: Code, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

impl From<Refusal> for ErrorBody {
    fn from(r: Refusal) -> ErrorBody {
        ErrorBody { code: Code::Denied, rule: Some(r.rule.name()), message: r.message }
    }
}

impl From<IoError> for ErrorBody {
    fn from(e: IoError) -> ErrorBody {
        error(Code::Failed, e.to_string())
    }
}

impl From<VerbError> for ErrorBody {
    fn from(e: VerbError) -> ErrorBody {
        let code = match &e {
            VerbError::NoFreezer(_) => Code::Unsupported,
            VerbError::NotALimit { .. } | VerbError::BadValue { .. } => Code::Invalid,
            _ => Code::Failed,
        };
        error(code, e.to_string())
    }
}

impl From<CheckpointError> for ErrorBody {
    fn from(e: CheckpointError) -> ErrorBody {
        let code = match &e {
            CheckpointError::Dir(_) | CheckpointError::Manifest(_) => Code::Invalid,
            CheckpointError::NoPidNs | CheckpointError::SessionOutside { .. } | CheckpointError::RootUnreachable { .. } => Code::Unsupported,
            CheckpointError::Criu(CriuError::Missing { .. } | CriuError::TooOld { .. } | CriuError::NoVersion { .. }) => Code::Unsupported,
            CheckpointError::Verb(VerbError::NoFreezer(_)) => Code::Unsupported,
            _ => Code::Failed,
        };
        error(code, e.to_string())
    }
}

impl From<TightenError> for ErrorBody {
    fn from(e: TightenError) -> ErrorBody {
        match e {
            TightenError::Refused { bound, message } => perm::limit_refused(bound, message).into(),
            TightenError::Invalid { .. } => error(Code::Invalid, e.to_string()),
            TightenError::Read { .. } => error(Code::Failed, e.to_string()),
        }
    }
}

/// A node found by its path or by a task in it.
#[derive(Clone, Debug)]
pub struct NodeRef {
    pub path: String,
    pub record: NodeRecord,
}

/// A user-given cgroup path in canonical form, or `invalid`.
fn cgroup_path(p: &str) -> Result<String, ErrorBody> {
    canonical(p).map_err(|e| error(Code::Invalid, e.to_string()))
}

/// The cgroup a target names: the path itself, or the cgroup of the pid.
pub fn target_cgroup(hierarchy: &Hierarchy, proc: &ProcFs, target: &Target) -> Result<String, ErrorBody> {
    match target {
        Target::Path(p) => cgroup_path(p),
        Target::Pid(pid) => {
            let tgid = proc.tgid(*pid)?.unwrap_or(*pid);
            proc.cgroup_path(tgid, *pid, hierarchy.key())?.ok_or_else(|| error(Code::NotFound, format!("no process {pid}")))
        }
    }
}

/// The node at `path`: a cgroup that carries a node record on a directory
/// owned by root (as adoption requires), else `not_found`.
pub fn node_at(hierarchy: &Hierarchy, path: &str, target: &Target) -> Result<NodeRef, ErrorBody> {
    let dir = hierarchy.dir(path);
    if !dir.is_dir() {
        return Err(error(Code::NotFound, format!("{target}: no cgroup {} in {}", Escaped(path), hierarchy.mount().display())));
    }
    let owner = hierarchy.owner(path)?;
    let own = rustix::process::geteuid().as_raw();
    match hierarchy.record(path) {
        Some(record) if owner == 0 || owner == own => Ok(NodeRef { path: path.to_string(), record }),
        _ => Err(error(Code::NotFound, format!("{target}: {} is not a node (it carries no nsgroup record)", Escaped(path)))),
    }
}

/// The subtree of a node as the verbs see it (its freezer mirror on v1).
pub fn subtree(hierarchy: &Hierarchy, node: &NodeRef) -> Subtree {
    let freezer = match hierarchy.version() {
        Version::V2 => None,
        Version::V1 => {
            let mounts = read_mountinfo(std::path::Path::new("/proc/self/mountinfo")).unwrap_or_default();
            if tracked_has_controller(hierarchy, &mounts, "freezer") {
                Some(hierarchy.dir(&node.path))
            } else {
                verbs::mirror_with(&mounts, &node.record.mirrors, "freezer")
            }
        }
    };
    Subtree { dir: hierarchy.dir(&node.path), version: hierarchy.version(), freezer }
}

/// Whether the tracked hierarchy itself is a v1 hierarchy with `controller`.
fn tracked_has_controller(hierarchy: &Hierarchy, mounts: &[crate::sys::mounts::Mount], controller: &str) -> bool {
    mounts.iter().rev().any(|m| m.mount_point == hierarchy.mount() && m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == controller))
}

/// The directory whose `file` a limit writes: the node's own on cgroup2 or
/// on a v1 hierarchy with the controller, else its mirror with the controller.
pub fn limit_dir(hierarchy: &Hierarchy, node: &NodeRef, controller: &str) -> Result<PathBuf, ErrorBody> {
    if hierarchy.version() == Version::V2 {
        return Ok(hierarchy.dir(&node.path));
    }
    let mounts = read_mountinfo(std::path::Path::new("/proc/self/mountinfo"))?;
    if tracked_has_controller(hierarchy, &mounts, controller) {
        return Ok(hierarchy.dir(&node.path));
    }
    verbs::mirror_with(&mounts, &node.record.mirrors, controller).ok_or_else(|| {
        error(
            Code::Unsupported,
            format!("{} has no `{controller}` controller: the tracked hierarchy lacks it and the node has no mirror with it (add it to the mirrored controllers)", Escaped(&node.path)),
        )
    })
}

/// The kind of host `hierarchy` is on, as it is now.
fn host_of(hierarchy: &Hierarchy) -> Host {
    if crate::sys::delegation::systemd_manages(hierarchy) {
        Host::Systemd
    } else {
        Host::Plain
    }
}

/// Units of /proc figures.
fn units() -> Units {
    Units { clock_ticks: rustix::param::clock_ticks_per_second(), page_size: rustix::param::page_size() as u64 }
}

impl Context {
    /// Carries out `request` for `peer`: the answer's `data`, or the error.
    pub fn handle(&self, peer: &Peer, request: &Request) -> Result<Value, ErrorBody> {
        match request {
            Request::List { all } => self.list(*all),
            Request::Show { target } => self.show(target),
            Request::Freeze { target } => self.verb(peer, target, "freeze"),
            Request::Thaw { target } => self.verb(peer, target, "thaw"),
            Request::Kill { target } => self.verb(peer, target, "kill"),
            Request::Limit { target, file, value } => self.limit(peer, target, file, value),
            Request::Attach { pid, target } => self.attach(peer, *pid, target),
            Request::Create { parent, name } => self.create(peer, parent, name.as_deref()),
            Request::Checkpoint { target, dir, leave_running, tcp_established } => {
                let spec = CheckpointSpec { dir: PathBuf::from(dir), leave_running: *leave_running, tcp_established: *tcp_established };
                self.checkpoint(peer, target, &spec)
            }
            Request::Restore { dir } => self.restore(peer, dir),
            Request::Subscribe {} => Err(error(Code::Invalid, "subscribe is handled by the server")),
        }
    }

    /// The caller's facts; on a systemd host its territory holds its
    /// owner's user slice ([`crate::policy::territory`]).
    fn caller(&self, peer: &Peer) -> Result<perm::Caller, ErrorBody> {
        Ok(peer.caller(&self.proc, self.hierarchy.key(), self.user_ns, host_of(&self.hierarchy))??)
    }

    /// A target in the tracked subtree that is a node.
    fn node(&self, target: &Target) -> Result<NodeRef, ErrorBody> {
        let path = target_cgroup(&self.hierarchy, &self.proc, target)?;
        perm::in_scope(&path, &self.root)?;
        node_at(&self.hierarchy, &path, target)
    }

    fn list(&self, all: bool) -> Result<Value, ErrorBody> {
        // Only the API's workers take this lock, never the daemon's loop.
        let mut cache = self.list_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, v)) = &cache[usize::from(all)] {
            if at.elapsed() < LIST_FRESH {
                return Ok(v.clone());
            }
        }
        let tree = self.tree(&self.root.clone(), all)?;
        let v = json!({ "hierarchy": self.hierarchy.mount(), "root": self.root, "tree": tree });
        cache[usize::from(all)] = Some((std::time::Instant::now(), v.clone()));
        Ok(v)
    }

    fn show(&self, target: &Target) -> Result<Value, ErrorBody> {
        let node = self.node(target)?;
        let tree = self.tree(&node.path, false)?;
        Ok(json!({ "node": tree }))
    }

    fn tree(&self, path: &str, all: bool) -> Result<Value, ErrorBody> {
        // A cgroup removed while it is read answers ENODEV (kernfs): read again.
        let mut tries = 0;
        let sample = loop {
            match model::sample::sample(&self.hierarchy, path, &self.proc) {
                Err(e) if e.source.raw_os_error() == Some(libc::ENODEV) && tries < 10 => tries += 1,
                other => break other?,
            }
        };
        let sample = sample.ok_or_else(|| error(Code::NotFound, format!("{} vanished while being read", Escaped(path))))?;
        let tree = model::build(&sample, &self.base_set, units(), all).expect("the top is always kept");
        Ok(serde_json::to_value(&tree).expect("the tree serializes"))
    }

    fn verb(&self, peer: &Peer, target: &Target, verb: &str) -> Result<Value, ErrorBody> {
        let node = self.node(target)?;
        let caller = self.caller(peer)?;
        perm::may_control(&caller, &node.path, node.record.owner(), &self.root)?;
        let s = subtree(&self.hierarchy, &node);
        // Before the act: a killed node may be gone after it.
        let id = self.hierarchy.id(&node.path).ok();
        let outcome = match verb {
            "freeze" => verbs::freeze(&s, self.timing)?,
            "thaw" => verbs::thaw(&s, self.timing)?,
            _ => {
                let mut sig = PidfdSignaller { proc: self.proc.clone(), key: self.hierarchy.key().clone(), subtree: node.path.clone() };
                verbs::kill(&s, &mut sig, self.timing)?
            }
        };
        let detail = [("method".to_string(), Value::from(outcome.method))].into();
        self.record(id, verb, caller.uid, detail);
        let mut data = serde_json::to_value(&outcome).expect("an outcome serializes");
        data["path"] = node.path.into();
        Ok(data)
    }

    /// Writes a controller value: any allowed one with CAP_SYS_ADMIN, else
    /// only one that tightens ([`tighten`]), written as it was checked.
    fn limit(&self, peer: &Peer, target: &Target, file: &str, value: &str) -> Result<Value, ErrorBody> {
        let controller = verbs::limit_controller(file)?.to_string();
        verbs::check_value(file, value)?;
        let node = self.node(target)?;
        let caller = self.caller(peer)?;
        perm::may_control(&caller, &node.path, node.record.owner(), &self.root)?;
        if !caller.cap_sys_admin {
            tighten::writable_without_cap(file)?;
        }
        let dir = limit_dir(&self.hierarchy, &node, &controller)?;
        let _one_at_a_time = self.limits.lock.lock().unwrap_or_else(|e| e.into_inner());
        let value = if caller.cap_sys_admin {
            value.to_string()
        } else {
            tighten::tightened(file, value, &self.limits.files_of(&node), &tighten::reader(&dir))?
        };
        let written = verbs::write_limit(&dir, file, &value)?;
        let detail = [("file".to_string(), Value::from(file)), ("value".to_string(), Value::from(value.as_str()))].into();
        self.record(self.hierarchy.id(&node.path).ok(), "limit", caller.uid, detail);
        if let Some(events) = &self.events {
            events.publish(ApiEvent::LimitsApplied {
                path: node.path.clone(),
                file: file.to_string(),
                value: value.clone(),
                by: "api",
                uid: Some(caller.uid),
            });
            events.flush();
        }
        Ok(json!({ "path": node.path, "file": file, "value": value, "written": written }))
    }

    /// Adds `what`, done by `uid` through the API, to node `id`'s timeline.
    fn record(&self, id: Option<u64>, what: &str, uid: u32, detail: std::collections::BTreeMap<String, Value>) {
        let (Some(history), Some(cgroup_id)) = (&self.history, id) else { return };
        let happening = Happening { at_unix: crate::sys::clock::unix_now(), what: what.into(), by: "api".into(), uid: Some(uid), detail };
        history.send(Msg::Happened { cgroup_id, happening });
    }

    fn attach(&self, peer: &Peer, tid: u32, target: &str) -> Result<Value, ErrorBody> {
        let dest = cgroup_path(target)?;
        let caller = self.caller(peer)?;
        let gone = || error(Code::NotFound, format!("no task {tid}"));
        let tgid = self.proc.tgid(tid)?.ok_or_else(gone)?;
        let stat = self.proc.stat(tgid, tid)?.filter(|s| !s.is_dead()).ok_or_else(gone)?;
        let task_cgroup = self.proc.cgroup_path(tgid, tid, self.hierarchy.key())?.ok_or_else(gone)?;
        if !within(&dest, &self.root) {
            // The scope rule first: nothing about cgroups outside is told.
            perm::may_attach(&caller, tid, &task_cgroup, &dest, true, &self.root)?;
        }
        if !self.hierarchy.dir(&dest).is_dir() {
            return Err(error(Code::NotFound, format!("no cgroup {} in {}", Escaped(&dest), self.hierarchy.mount().display())));
        }
        let empty = self.hierarchy.members(&dest)?.is_empty();
        perm::may_attach(&caller, tid, &task_cgroup, &dest, empty, &self.root)?;
        // The task checked is the one moved: same start time, still alive.
        if !self.proc.stat(tgid, tid)?.is_some_and(|s| s.start_ticks == stat.start_ticks && !s.is_dead()) {
            return Err(gone());
        }
        cgroup_dir::move_task(&self.hierarchy.dir(&dest), self.hierarchy.version(), tgid, tid)?;
        Ok(json!({ "pid": tid, "path": dest, "cgroup_id": self.hierarchy.id(&dest)? }))
    }

    /// Checkpoints a node: CAP_SYS_ADMIN only (§15), CRIU checked first.
    fn checkpoint(&self, peer: &Peer, target: &Target, spec: &CheckpointSpec) -> Result<Value, ErrorBody> {
        let node = self.node(target)?;
        let caller = self.caller(peer)?;
        perm::may_checkpoint(&caller, &node.path, "checkpoint", &self.root)?;
        let criu = Criu::detect(&self.criu).map_err(CheckpointError::from)?;
        let s = subtree(&self.hierarchy, &node);
        let cgroup_id = self.hierarchy.id(&node.path)?;
        let src = Source { path: &node.path, cgroup_id, record: &node.record, subtree: &s };
        let manifest = checkpoint::checkpoint(&criu, &self.proc, &src, spec, self.timing)?;
        let dir = spec.dir.display().to_string();
        if let Some(events) = &self.events {
            events.publish(ApiEvent::Checkpointed { path: node.path.clone(), cgroup_id, dir: dir.clone(), root_pid: manifest.root_pid, leave_running: spec.leave_running, uid: caller.uid });
            events.flush();
        }
        Ok(json!({ "path": node.path, "cgroup_id": cgroup_id, "dir": dir, "root_pid": manifest.root_pid, "leave_running": spec.leave_running, "external_mounts": manifest.external_mounts, "criu": criu.version.to_string() }))
    }

    /// Restores a checkpoint into a fresh node below the source's parent
    /// (the tracked root when that is gone): CAP_SYS_ADMIN only.
    fn restore(&self, peer: &Peer, dir: &str) -> Result<Value, ErrorBody> {
        let caller = self.caller(peer)?;
        perm::may_checkpoint(&caller, &self.root, "restore", &self.root)?;
        let criu = Criu::detect(&self.criu).map_err(CheckpointError::from)?;
        let dir = PathBuf::from(dir);
        let manifest = checkpoint::read_manifest(&dir)?;
        let parent = perm::parent_of(&manifest.source_path)
            .filter(|p| within(p, &self.root) && self.hierarchy.dir(p).is_dir())
            .unwrap_or(&self.root)
            .to_string();
        let made = checkpoint::restore(&criu, &self.hierarchy, &self.proc, &dir, &manifest, &parent, caller.pid)?;
        let shown = dir.display().to_string();
        if let Some(events) = &self.events {
            events.publish(ApiEvent::Restored {
                path: made.path.clone(),
                cgroup_id: made.cgroup_id,
                dir: shown.clone(),
                root_pid: made.root_pid,
                from_path: manifest.source_path.clone(),
                from_cgroup_id: manifest.source_cgroup_id,
                uid: caller.uid,
            });
            events.flush();
        }
        Ok(json!({ "path": made.path, "cgroup_id": made.cgroup_id, "root_pid": made.root_pid, "from_path": manifest.source_path, "from_cgroup_id": manifest.source_cgroup_id, "refused": made.refused }))
    }

    fn create(&self, peer: &Peer, parent: &str, name: Option<&str>) -> Result<Value, ErrorBody> {
        let parent = cgroup_path(parent)?;
        if let Some(n) = name {
            if n.is_empty() || n.len() > 255 || n.contains(['/', '\0', '\n']) || n == "." || n == ".." {
                return Err(error(Code::Invalid, format!("\"{}\" is no cgroup name (1 to 255 bytes, no `/`, not `.` or `..`)", Escaped(n))));
            }
        }
        let caller = self.caller(peer)?;
        perm::may_create(&caller, &parent, &self.root)?;
        if !self.hierarchy.dir(&parent).is_dir() {
            return Err(error(Code::NotFound, format!("no cgroup {} in {}", Escaped(&parent), self.hierarchy.mount().display())));
        }
        let attempts: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => (0..1000).map(|a| naming::candidate(caller.pid, a)).collect(),
        };
        for n in attempts {
            let path = join(&parent, &n);
            let dir = self.hierarchy.dir(&path);
            // A name given must be free; one chosen moves on to the next.
            let made = if name.is_some() { cgroup_dir::make_new(&dir).map(|()| true)? } else { cgroup_dir::make(&dir)? };
            if made {
                return Ok(json!({ "path": path, "cgroup_id": self.hierarchy.id(&path)? }));
            }
        }
        Err(error(Code::Failed, format!("no free node name below {}", Escaped(&parent))))
    }
}
