//! The daemon's side of the local API (src/api): the socket is served by
//! threads of its own, and the event loop only hands events over. Every call
//! here is a no-op costing an atomic load while nobody subscribes; with
//! subscribers, building an event and queueing it never blocks (a full queue
//! counts the event as lost and tells the subscribers). The loop wakes the
//! server once per turn ([`ApiHost::flush`]), not once per event.
//!
//! Strict mode's LSM program is held here too, for the daemon's lifetime.

use tracing::info;

use crate::pipeline::outcome::{Outcome, Sink};
use super::error::SinkError;
use crate::api::handler::{Context, LimitPolicy};
use crate::api::listen::{self, Bound, Listening};
use crate::api::proto::{set_map, ApiEvent, CreatorView, OomKillView, PressureView, UserScopeView, VictimView};
use crate::api::events::Publisher;
use crate::api::server::Server;
use crate::api::strict::{Strict, StrictScope};
use crate::config::Config;
use crate::control::verbs::Timing;
use crate::core::node::Node;
use crate::core::nsset::NsSet;
use crate::history::Recorder;
use crate::sys::clock::unix_now;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::procfs::ProcFs;

/// The API server and strict mode, as the daemon holds them.
pub struct ApiHost {
    publisher: Option<Publisher>,
    // Dropped before the socket: the thread stops, then the file goes.
    server: Option<Server>,
    socket: Option<Listening>,
    _strict: Option<Strict>,
}

impl ApiHost {
    /// Loads strict mode (when configured: failing says exactly why), binds
    /// the socket and starts serving it.
    /// `history` records the verbs and limits requests carry out.
    pub fn start(
        config: &Config,
        hierarchy: &Hierarchy,
        root: &str,
        proc: &ProcFs,
        own_set: &NsSet,
        history: Option<Recorder>,
    ) -> Result<ApiHost, SinkError> {
        let user_ns = own_set.get(crate::core::nsset::NsKind::User);
        let strict = if config.api.strict {
            let scope = StrictScope::of(hierarchy, root, user_ns).map_err(|e| SinkError::Config(format!("api.strict: {e}")))?;
            let s = Strict::load(scope).map_err(|e| SinkError::Config(format!("api.strict (--strict): {e}")))?;
            info!(hooks = %s.describe(), "strict mode: direct writes to cgroup.procs/tasks and mkdirs follow the permission model");
            Some(s)
        } else {
            None
        };
        let api = &config.api;
        if api.socket.as_os_str().is_empty() {
            info!("the API is off (api.socket is empty)");
            return Ok(ApiHost { publisher: None, server: None, socket: None, _strict: strict });
        }
        let gid = match api.socket_group.as_str() {
            "" => None,
            g => Some(listen::resolve_group(g).map_err(|e| SinkError::Config(e.to_string()))?),
        };
        let socket = match listen::bind(&api.socket, api.socket_mode, gid) {
            Ok(Bound::Listening(l)) => l,
            Ok(Bound::Taken { by }) if api.default_socket() => {
                let by = by.map_or_else(|| "another daemon".to_string(), |p| format!("pid {p}"));
                info!(socket = %api.socket.display(), "the API socket is served by {by}; this daemon runs without the API (set api.socket to serve one of its own)");
                return Ok(ApiHost { publisher: None, server: None, socket: None, _strict: strict });
            }
            Ok(Bound::Taken { by }) => {
                let by = by.map_or_else(|| "another daemon".to_string(), |p| format!("pid {p}"));
                return Err(SinkError::Config(format!("api.socket: {} is served by {by} already", api.socket.display())));
            }
            Err(e) => return Err(SinkError::Config(format!("api.socket: {e}"))),
        };
        let listener = socket.listener.try_clone().map_err(|e| SinkError::Config(format!("api.socket: {e}")))?;
        let ctx = Context {
            hierarchy: hierarchy.clone(),
            root: root.to_string(),
            proc: proc.clone(),
            user_ns,
            base_set: *own_set,
            timing: Timing::default(),
            events: None,
            limits: {
                let config = config.clone();
                LimitPolicy::new(move |record, parent| crate::policy::rules::limits_for(&config, record, parent))
            },
            list_cache: Default::default(),
            history,
            criu: api.criu.clone(),
        };
        let server = Server::start(listener, ctx).map_err(|e| SinkError::Config(format!("api.socket: starting the server: {e}")))?;
        info!(socket = %socket.path().display(), mode = format!("{:04o}", api.socket_mode), "serving the API");
        Ok(ApiHost { publisher: Some(server.publisher().clone()), server: Some(server), socket: Some(socket), _strict: strict })
    }

    /// Whether anybody subscribes (build events only then).
    pub fn wants_events(&self) -> bool {
        self.publisher.as_ref().is_some_and(Publisher::wants_events)
    }

    /// Queues an event for the subscribers; never blocks.
    pub fn publish(&self, event: ApiEvent) {
        if let Some(p) = &self.publisher {
            p.publish(event);
        }
    }

    /// Wakes the server if events were queued (once per turn of the loop).
    pub fn flush(&self) {
        if let Some(p) = &self.publisher {
            p.flush();
        }
    }
}

impl Drop for ApiHost {
    fn drop(&mut self) {
        self.server.take();
        self.socket.take();
    }
}

impl Sink for ApiHost {
    fn follows_nodes(&self) -> bool {
        self.wants_events()
    }

    /// `node_created`, `task_placed`, `node_removed`, `reconcile`,
    /// `limits_applied`, `overflow`, `oom_kill` and `pressure`, built only while somebody subscribes.
    fn take(&mut self, outcome: &Outcome<'_>) {
        if !self.wants_events() {
            return;
        }
        let creator = |n: &Node| {
            let r = &n.record;
            CreatorView { pid: r.creator_pid, uid: r.creator_uid, comm: r.creator_comm.clone(), owner: r.owner() }
        };
        let event = match *outcome {
            Outcome::Created { node, path, .. } => ApiEvent::NodeCreated {
                path: path.to_string(),
                cgroup_id: node.id,
                creator: creator(node),
                set: set_map(&node.record.set),
                created_unix: node.record.created_unix,
            },
            Outcome::Placed { task, to, path, created, latency_us } => ApiEvent::TaskPlaced {
                pid: task.tgid,
                tid: task.tid,
                uid: task.uid,
                comm: task.comm.clone(),
                path: path.to_string(),
                cgroup_id: to,
                created,
                latency_us,
            },
            Outcome::Removed { removal, .. } => ApiEvent::NodeRemoved {
                path: removal.path.clone(),
                cgroup_id: removal.node.id,
                creator: creator(&removal.node),
                set: set_map(&removal.node.record.set),
                lifetime_s: unix_now().saturating_sub(removal.node.record.created_unix),
                usage: removal.usage.iter().cloned().collect(),
            },
            Outcome::Reconciled { why, report, elapsed } => ApiEvent::Reconcile {
                why: why.to_string(),
                examined: report.examined as u64,
                moved: report.moved as u64,
                created: report.created as u64,
                elapsed_ms: elapsed.as_millis() as u64,
            },
            Outcome::LimitApplied { path, file, value, .. } => {
                ApiEvent::LimitsApplied { path: path.to_string(), file: file.to_string(), value: value.to_string(), by: "policy", uid: None }
            }
            Outcome::Overflow { lost } => ApiEvent::Overflow { lost },
            Outcome::Unit { plan, result } => ApiEvent::UserScope(Box::new(UserScopeView {
                uid: plan.origin.uid,
                origin: plan.origin.unit.clone(),
                scope: plan.scope.clone(),
                pid: plan.pid,
                comm: plan.comm.clone(),
                started: result.is_ok(),
                error: result.err().map(|e| e.to_string()),
            })),
            Outcome::Pressure(p) => ApiEvent::Pressure(Box::new(PressureView {
                path: p.path.clone(),
                cgroup_id: p.node.id,
                creator: creator(&p.node),
                owner: p.node.record.owner(),
                resource: p.resource,
                trigger: p.trigger.clone(),
                action: p.action.as_ref().map(|(a, _)| *a),
                done: p.action.as_ref().and_then(|(_, d)| d.as_ref().ok().map(|m| m.to_string())),
                error: p.action.as_ref().and_then(|(_, d)| d.as_ref().err().cloned()),
            })),
            Outcome::OomKill(k) => ApiEvent::OomKill(Box::new(OomKillView {
                path: k.path.clone(),
                cgroup_id: k.node.id,
                creator: creator(&k.node),
                owner: k.node.record.owner(),
                set: set_map(&k.node.record.set),
                victim: k.victim.as_ref().map(|v| VictimView { pid: v.pid, comm: v.comm.clone() }),
                memory_max: k.memory_max.clone(),
                kills: k.kills,
                oom: k.counts.oom,
                oom_kill: k.counts.oom_kill,
                oom_group_kill: k.counts.oom_group_kill,
            })),
            Outcome::Coalesced { .. }
            | Outcome::Events { .. }
            | Outcome::Refused { .. }
            | Outcome::Dropped { .. }
            | Outcome::NotMirrored { .. }
            | Outcome::Failed { .. } => return,
        };
        self.publish(event);
    }
}
