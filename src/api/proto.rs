//! The wire format: JSON Lines, one request or answer per line, every
//! message with a `version` field. docs/api.md documents every message, every
//! field and what is stable; this module is its single source of truth.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::core::nsset::{NsKind, NsSet};

/// The protocol version this build speaks (requests must carry it).
pub const VERSION: u64 = 1;

/// The longest line (request or, for a client, answer header) accepted,
/// newline included: longer request lines are answered `too_long`.
pub const MAX_LINE: usize = 64 * 1024;

/// The request types, as `type` names them.
pub const REQUEST_TYPES: [&str; 11] = ["list", "show", "freeze", "thaw", "kill", "limit", "attach", "create", "checkpoint", "restore", "subscribe"];

/// What a request acts on: a node's cgroup path, or a pid (the node it is in).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Target {
    Pid(u32),
    Path(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(p) => write!(f, "pid {p}"),
            Target::Path(p) => write!(f, "{}", crate::core::escape::Escaped(p)),
        }
    }
}

impl Target {
    /// A command-line argument: digits are a pid, anything else a path.
    pub fn from_arg(arg: &str) -> Target {
        match arg.parse::<u32>() {
            Ok(pid) => Target::Pid(pid),
            Err(_) => Target::Path(arg.to_string()),
        }
    }
}

/// One request, without its envelope (`version`, `id`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The tracked subtree as `nsgroup tree --json` shows it.
    List {
        /// Every cgroup and task, not only nodes (`tree --all`).
        #[serde(default)]
        all: bool,
    },
    /// One node and its subtree, in the same model.
    Show { target: Target },
    /// Freezes every task of the node's subtree.
    Freeze { target: Target },
    /// Thaws the node's subtree.
    Thaw { target: Target },
    /// Kills every task of the node's subtree.
    Kill { target: Target },
    /// Writes a controller file of the node.
    Limit { target: Target, file: String, value: String },
    /// Moves task `pid` (a thread id on cgroup v1, a process on cgroup2) into cgroup `target`.
    Attach { pid: u32, target: String },
    /// Creates a cgroup below `parent`, named `name` or `node_<caller pid>`.
    Create {
        parent: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Checkpoints the node with CRIU into the root-only directory `dir`.
    Checkpoint {
        target: Target,
        dir: String,
        #[serde(default)]
        leave_running: bool,
        #[serde(default)]
        tcp_established: bool,
    },
    /// Restores the checkpoint in `dir` into a fresh node.
    Restore { dir: String },
    /// Streams events until the connection closes.
    Subscribe {},
}

impl Request {
    /// The `type` name.
    pub fn name(&self) -> &'static str {
        match self {
            Request::List { .. } => "list",
            Request::Show { .. } => "show",
            Request::Freeze { .. } => "freeze",
            Request::Thaw { .. } => "thaw",
            Request::Kill { .. } => "kill",
            Request::Limit { .. } => "limit",
            Request::Attach { .. } => "attach",
            Request::Create { .. } => "create",
            Request::Checkpoint { .. } => "checkpoint",
            Request::Restore { .. } => "restore",
            Request::Subscribe {} => "subscribe",
        }
    }
}

/// Error codes (`error.code`): stable, documented in docs/api.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Not JSON, not an object, a missing or mistyped field, an unknown field.
    Malformed,
    /// A line longer than [`MAX_LINE`].
    TooLong,
    /// `version` is not one this daemon speaks.
    UnsupportedVersion,
    /// `type` names no request.
    UnknownRequest,
    /// The permission model refuses; `error.rule` names the rule.
    Denied,
    /// The target does not exist, or is not a node.
    NotFound,
    /// A value is refused before anything is done (a bad path, a file that is no limit).
    Invalid,
    /// The operation cannot be done here (no freezer for a v1 node).
    Unsupported,
    /// The system refused or failed (an errno, a timeout); nothing or part was done.
    Failed,
    /// Too many requests at once; retry later.
    Busy,
}

/// A refusal or failure, as answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    pub code: Code,
    /// The permission rule that refused (`code` = `denied`), e.g. `attach.child_only`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: Code, message: impl Into<String>) -> ErrorBody {
        ErrorBody { code, rule: None, message: message.into() }
    }
}

/// A parsed request line: its envelope and the request, or what was wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The request's `id`, echoed in the answer (any JSON scalar; null when absent).
    pub id: Value,
    pub request: Result<Request, ErrorBody>,
    /// The `type` given, when it was a string (echoed as `request` in errors).
    pub kind: Option<String>,
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Parsed {
    let fail = |id: Value, kind: Option<String>, code: Code, message: String| Parsed {
        id,
        kind,
        request: Err(ErrorBody::new(code, message)),
    };
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return fail(Value::Null, None, Code::Malformed, format!("not JSON: {e}")),
    };
    let Value::Object(mut map) = value else {
        return fail(Value::Null, None, Code::Malformed, "a request is a JSON object".into());
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ (Value::String(_) | Value::Number(_))) => v,
        Some(_) => return fail(Value::Null, None, Code::Malformed, "`id` must be a string or a number".into()),
    };
    let kind = map.get("type").and_then(Value::as_str).map(str::to_string);
    match map.remove("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(Value::Number(n)) => {
            return fail(id, kind, Code::UnsupportedVersion, format!("version {n} is not spoken here; this daemon speaks version {VERSION}"))
        }
        Some(_) => return fail(id, kind, Code::Malformed, "`version` must be an integer".into()),
        None => return fail(id, kind, Code::Malformed, format!("missing `version` (this daemon speaks version {VERSION})")),
    }
    match &kind {
        None => return fail(id, kind, Code::Malformed, "missing `type` (a string naming the request)".into()),
        Some(k) if !REQUEST_TYPES.contains(&k.as_str()) => {
            let message = format!("unknown request type \"{}\" (known: {})", crate::core::escape::Escaped(k), REQUEST_TYPES.join(", "));
            return fail(id, kind, Code::UnknownRequest, message);
        }
        Some(_) => {}
    }
    match serde_json::from_value::<Request>(Value::Object(map)) {
        Ok(request) => Parsed { id, kind, request: Ok(request) },
        Err(e) => fail(id, kind, Code::Malformed, e.to_string()),
    }
}

/// An answer line: `ok` with data, or `error`.
pub fn answer_ok(id: &Value, request: &str, data: Value) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), VERSION.into());
    if !id.is_null() {
        m.insert("id".into(), id.clone());
    }
    m.insert("type".into(), "ok".into());
    m.insert("request".into(), request.into());
    m.insert("data".into(), data);
    Value::Object(m)
}

/// An error answer; `request` is the type asked for, when known.
pub fn answer_error(id: &Value, request: Option<&str>, error: &ErrorBody) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), VERSION.into());
    if !id.is_null() {
        m.insert("id".into(), id.clone());
    }
    m.insert("type".into(), "error".into());
    if let Some(r) = request {
        m.insert("request".into(), r.into());
    }
    m.insert("error".into(), serde_json::to_value(error).expect("an error body serializes"));
    Value::Object(m)
}

/// A set as a map of namespace kind to inode number, without the slots
/// that are 0 (masked out, or a kind the kernel lacks).
pub fn set_map(set: &NsSet) -> BTreeMap<&'static str, u64> {
    NsKind::ALL.into_iter().filter(|k| set.get(*k) != 0).map(|k| (k.proc_name(), set.get(k))).collect()
}

/// Who made a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreatorView {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    /// Who owns the node (docs/semantics.md §13 "Owners").
    pub owner: u32,
}

/// A task the OOM killer killed, as the kernel's log named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VictimView {
    pub pid: u32,
    pub comm: String,
}

/// A `user_scope` event: uid `uid`'s manager was asked for the scope
/// `scope` for the sandbox of `pid` started in its scope `origin`: made
/// (`started`), or the sandbox stays there (`error` says why).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserScopeView {
    pub uid: u32,
    pub origin: String,
    pub scope: String,
    pub pid: u32,
    pub comm: String,
    pub started: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An `oom_kill` event: `kills` since the last one, the counts now, the
/// victim when the kernel's log named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OomKillView {
    pub path: String,
    pub cgroup_id: u64,
    pub creator: CreatorView,
    pub owner: u32,
    pub set: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub victim: Option<VictimView>,
    /// The node's memory limit in force (`max` or bytes), when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<String>,
    pub kills: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

/// A `pressure` event: the node whose trigger fired, the trigger, and the
/// rule's action with how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PressureView {
    pub path: String,
    pub cgroup_id: u64,
    pub creator: CreatorView,
    pub owner: u32,
    pub resource: &'static str,
    /// As written into `<resource>.pressure` (`some 150000 1000000`).
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// How the action was done (`cgroup.kill`, `cgroup.freeze`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// Why the action failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the daemon (and the API itself, for `limit`) publishes to
/// subscribers. Serialized as `"event": <name>, "data": {…}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum ApiEvent {
    /// A node was created (by placement or by a reconcile).
    NodeCreated {
        path: String,
        cgroup_id: u64,
        creator: CreatorView,
        /// The node's set (masked: only the kinds that count).
        set: BTreeMap<&'static str, u64>,
        created_unix: u64,
    },
    /// A node was removed; its final usage as the hierarchy kept it.
    NodeRemoved {
        path: String,
        cgroup_id: u64,
        creator: CreatorView,
        set: BTreeMap<&'static str, u64>,
        lifetime_s: u64,
        usage: BTreeMap<String, u64>,
    },
    /// A task was moved into a node (or back to where its node came from).
    TaskPlaced {
        pid: u32,
        tid: u32,
        uid: u32,
        comm: String,
        path: String,
        cgroup_id: u64,
        /// Whether the node was created for it.
        created: bool,
        /// From the kernel's event to the move (0 when not measured: reconcile, followers).
        latency_us: u64,
    },
    /// A controller value was written on a node.
    LimitsApplied {
        path: String,
        file: String,
        value: String,
        /// `api` (a `limit` request, with the caller's uid) or `policy` (the configuration).
        by: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
    },
    /// A node was checkpointed into `dir` (its tasks ended unless `leave_running`).
    Checkpointed { path: String, cgroup_id: u64, dir: String, root_pid: u32, leave_running: bool, uid: u32 },
    /// A checkpoint was restored into the fresh node `path`, from the node `from_path`.
    Restored { path: String, cgroup_id: u64, dir: String, root_pid: u32, from_path: String, from_cgroup_id: u64, uid: u32 },
    /// The kernel's ring buffer overflowed: `lost` events were lost; a reconcile follows.
    Overflow { lost: u64 },
    /// A user's manager was asked for a sandbox's scope (boxed: the other events stay small).
    UserScope(Box<UserScopeView>),
    /// A reconcile ran (`why`: start, overflow, rescan).
    Reconcile { why: String, examined: u64, moved: u64, created: u64, elapsed_ms: u64 },
    /// The OOM killer killed in a node (boxed: the other events stay small).
    OomKill(Box<OomKillView>),
    /// A node's pressure crossed a `[[pressure]]` rule's threshold.
    Pressure(Box<PressureView>),
    /// Events that never reached this subscriber (the daemon's queue to the
    /// API was full); `seq` numbers go on without a gap, this says how many are missing.
    Lost { events: u64 },
}

/// An event line: `{"version":1,"type":"event","seq":N,"event":…,"data":…}`.
pub fn event_line(seq: u64, event: &ApiEvent) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), VERSION.into());
    m.insert("type".into(), "event".into());
    m.insert("seq".into(), seq.into());
    if let Value::Object(body) = serde_json::to_value(event).expect("an event serializes") {
        m.extend(body);
    }
    Value::Object(m)
}

/// A JSON value as one line.
pub fn line_of(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("a value serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Parsed {
        parse_request(s.as_bytes())
    }

    #[test]
    fn requests_parse_with_their_envelope() {
        let p = parse(r#"{"version":1,"id":7,"type":"kill","target":"/t/node_5"}"#);
        assert_eq!(p.id, Value::from(7));
        assert_eq!(p.request, Ok(Request::Kill { target: Target::Path("/t/node_5".into()) }));
        let p = parse(r#"{"version":1,"type":"freeze","target":42}"#);
        assert_eq!(p.request, Ok(Request::Freeze { target: Target::Pid(42) }));
        assert_eq!(parse(r#"{"version":1,"type":"list"}"#).request, Ok(Request::List { all: false }));
        assert_eq!(parse(r#"{"version":1,"type":"subscribe"}"#).request, Ok(Request::Subscribe {}));
        let p = parse(r#"{"version":1,"id":"a","type":"create","parent":"/t"}"#);
        assert_eq!(p.request, Ok(Request::Create { parent: "/t".into(), name: None }));
    }

    #[test]
    fn bad_requests_get_their_code() {
        let code = |s: &str| parse(s).request.unwrap_err().code;
        assert_eq!(code("not json"), Code::Malformed);
        assert_eq!(code("[1]"), Code::Malformed);
        assert_eq!(code(r#"{"type":"list"}"#), Code::Malformed);
        assert_eq!(code(r#"{"version":2,"type":"list"}"#), Code::UnsupportedVersion);
        assert_eq!(code(r#"{"version":1,"type":"reboot"}"#), Code::UnknownRequest);
        assert_eq!(code(r#"{"version":1}"#), Code::Malformed);
        assert_eq!(code(r#"{"version":1,"type":"kill"}"#), Code::Malformed);
        assert_eq!(code(r#"{"version":1,"type":"kill","target":"/x","bogus":1}"#), Code::Malformed);
        assert_eq!(code(r#"{"version":1,"type":"attach","pid":-1,"target":"/x"}"#), Code::Malformed);
        assert_eq!(code(r#"{"version":1,"id":{},"type":"list"}"#), Code::Malformed);
        let p = parse(r#"{"version":1,"id":3,"type":"nope\u001b[31m"}"#);
        assert_eq!(p.id, Value::from(3));
        assert!(!p.request.unwrap_err().message.contains('\u{1b}'));
    }

    #[test]
    fn answers_and_events_carry_version_and_type() {
        let a = answer_ok(&Value::from(1), "list", serde_json::json!({}));
        assert_eq!(a["version"], 1);
        assert_eq!(a["type"], "ok");
        let e = answer_error(&Value::Null, None, &ErrorBody { code: Code::Denied, rule: Some("attach.child_only"), message: "m".into() });
        assert_eq!(e["error"]["code"], "denied");
        assert_eq!(e["error"]["rule"], "attach.child_only");
        assert!(e.get("id").is_none());
        let ev = event_line(5, &ApiEvent::Overflow { lost: 3 });
        assert_eq!(ev.to_string(), r#"{"data":{"lost":3},"event":"overflow","seq":5,"type":"event","version":1}"#);
    }
}
