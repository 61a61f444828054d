//! Watching nodes for what the kernel does to them: as a sink it arms a
//! node's watches when the node is made (or adopted at start) — its memory
//! events, and the PSI triggers of the `[[pressure]]` rules that match it —
//! and drops them when the node goes. When the loop sees its file
//! descriptor readable it decides what happened ([`Watch::fired`]): a rise of
//! a node's OOM kill counts is one [`OomKill`] (with the victim the kernel
//! logged and the limit in force); a trigger that fired is one
//! [`PressureCrossed`], its rule's action done to that node (and its
//! subtree) only, at most once per node per [`PRESSURE_EVERY`].

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::rate::Rate;
use crate::config::pressure::{Action, PressureRule};
use crate::config::Config;
use crate::control::verbs::{self, PidfdSignaller, Subtree, Timing};
use crate::core::node::{CgroupId, Node};
use crate::pipeline::outcome::{OomKill, Outcome, PressureCrossed, Sink};
use crate::sys::hierarchy::{Hierarchy, Version};
use crate::sys::procfs::ProcFs;
use crate::sys::watch::{Armed, Fired, Kmsg, MemCounts, Watcher};

/// Where the kernel's log is read from.
const KMSG: &str = "/dev/kmsg";
/// The most notifications looked at per call (the rest are looked at next turn).
const FIRED_BATCH: usize = 256;
/// A node's pressure is told (and acted on) at most once per this.
pub const PRESSURE_EVERY: Duration = Duration::from_secs(10);
/// Nodes followed at once for that.
const PRESSURE_NODES: usize = 4096;
/// How long an action may take (freeze waits for `frozen 1`; kill before
/// 5.14 takes signal rounds).
const ACTION_TIMING: Timing = Timing { poll: Duration::from_millis(2), timeout: Duration::from_secs(2) };

/// A watched node, as last seen.
struct Seen {
    node: Node,
    path: String,
    /// The path of its memory cgroup as the kernel logs it.
    memcg: String,
    last: MemCounts,
}

/// Where a node's memory controller is.
enum Memory {
    /// cgroup2: the node itself, in the tracked hierarchy.
    Unified(Hierarchy),
    /// v1: its mirror in the memory hierarchy mounted here (controllers `memory…`).
    Mirror { mount: PathBuf, controllers: String },
}

/// What the kernel told about a node.
pub enum Told {
    Oom(OomKill),
    Pressure(PressureCrossed),
}

/// The watch sink.
pub struct Watch {
    watcher: Option<Watcher>,
    memory: Option<Memory>,
    kmsg: Option<Kmsg>,
    oom: bool,
    pressure: Vec<PressureRule>,
    config: Config,
    proc: ProcFs,
    seen: HashMap<CgroupId, Seen>,
    ready: Vec<(CgroupId, Fired)>,
    per_node: Rate<CgroupId>,
}

impl Watch {
    /// Watches per `config`: the tracked `hierarchy`'s nodes on cgroup2, or
    /// their mirror in the memory hierarchy `mirror` (mount, controllers) on
    /// v1 (OOM kills only: PSI triggers are cgroup2's).
    pub fn start(config: &Config, hierarchy: &Hierarchy, proc: &ProcFs, mirror: Option<(PathBuf, String)>) -> Watch {
        let v2 = hierarchy.version() == Version::V2;
        let memory = match (v2, mirror) {
            (true, _) => Some(Memory::Unified(hierarchy.clone())),
            (false, Some((mount, controllers))) => Some(Memory::Mirror { mount, controllers }),
            (false, None) => None,
        };
        let w = &config.watch;
        let pressure = if v2 { config.pressure.clone() } else { Vec::new() };
        if !v2 && !config.pressure.is_empty() {
            warn!("[[pressure]] rules need cgroup2 (PSI triggers): ignored on this v1 hierarchy");
        }
        if !pressure.is_empty() && !crate::sys::watch::psi_enabled() {
            warn!("the kernel accounts no pressure (no /proc/pressure: boot it with psi=1): [[pressure]] rules write no triggers");
        }
        let mut off = Watch {
            watcher: None,
            memory: None,
            kmsg: None,
            oom: w.oom,
            pressure,
            config: config.clone(),
            proc: proc.clone(),
            seen: HashMap::new(),
            ready: Vec::new(),
            per_node: Rate::new(PRESSURE_EVERY, 1, PRESSURE_NODES),
        };
        if memory.is_none() || (!w.oom && off.pressure.is_empty()) {
            return off;
        }
        let watcher = match Watcher::new(w.max_watches, w.max_pressure_triggers) {
            Ok(watcher) => watcher,
            Err(e) => {
                warn!("nodes are not watched (OOM kills, pressure): {e}");
                return off;
            }
        };
        off.kmsg = (w.oom && w.kmsg).then(|| Kmsg::open(std::path::Path::new(KMSG)));
        if off.kmsg.as_ref().is_some_and(|k| !k.readable()) {
            warn!("{KMSG} cannot be read: OOM kills are reported without their victim");
        }
        info!(
            oom = w.oom,
            max_watches = w.max_watches,
            victims = off.kmsg.as_ref().is_some_and(Kmsg::readable),
            pressure_rules = off.pressure.len(),
            max_pressure_triggers = w.max_pressure_triggers,
            "watching nodes"
        );
        Watch { watcher: Some(watcher), memory, ..off }
    }

    /// What the loop polls, when anything is watched at all.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.watcher.as_ref().map(Watcher::fd)
    }

    /// The PSI triggers the loop polls for POLLPRI itself (tokens, fds).
    pub fn triggers(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>)> {
        self.watcher.iter().flat_map(Watcher::triggers)
    }

    /// The loop's poll said `revents` of trigger `token`.
    pub fn trigger_polled(&mut self, token: u64, revents: rustix::event::PollFlags) {
        if let Some(w) = &mut self.watcher {
            w.trigger_polled(token, revents, &mut self.ready);
        }
    }

    /// Nodes left unwatched, and triggers left unwritten, by the bounds.
    pub fn skipped(&self) -> (u64, u64) {
        self.watcher.as_ref().map_or((0, 0), |w| (w.skipped(), w.triggers_skipped()))
    }

    /// Arms `node` at `path` (made now, or adopted at start).
    pub fn arm(&mut self, node: &Node, path: &str) {
        let (Some(watcher), Some(memory)) = (&mut self.watcher, &self.memory) else { return };
        let (dir, memcg, v2) = match memory {
            Memory::Unified(h) => (h.dir(path), path.to_string(), true),
            Memory::Mirror { mount, controllers } => {
                let Some(m) = node.record.mirrors.iter().find(|m| &m.controllers == controllers) else { return };
                (mount.join(m.path.trim_start_matches('/')), m.path.clone(), false)
            }
        };
        let mut armed = false;
        if self.oom {
            match watcher.watch_memory(node.id, &dir, v2) {
                Ok(Armed::Yes) => armed = true,
                Ok(Armed::NoMemory | Armed::Skipped) => {}
                // The node went meanwhile, or the kernel refused: not watched.
                Err(e) => tracing::debug!("not watching {}: {e}", crate::core::escape::Escaped(path)),
            }
        }
        let parent = crate::policy::perm::parent_of(path).unwrap_or("/");
        for i in crate::policy::rules::pressure_for(&self.config, &node.record, parent) {
            let rule = &self.pressure[i];
            match watcher.add_trigger(node.id, &dir, rule.resource.name(), &rule.trigger(), i) {
                Ok(Armed::Yes) => armed = true,
                Ok(Armed::NoMemory | Armed::Skipped) => {}
                Err(e) => warn!("no pressure trigger on {}: {e}", crate::core::escape::Escaped(path)),
            }
        }
        if armed {
            let last = watcher.counts(node.id).ok().flatten().unwrap_or_default();
            self.seen.insert(node.id, Seen { node: node.clone(), path: path.to_string(), memcg, last });
        }
    }

    fn forget(&mut self, node: CgroupId) {
        if let Some(w) = &mut self.watcher {
            w.forget(node);
        }
        self.seen.remove(&node);
    }

    /// What the kernel told since the last call.
    pub fn fired(&mut self) -> Vec<Told> {
        let Some(watcher) = &mut self.watcher else { return Vec::new() };
        if self.ready.is_empty() {
            if let Err(e) = watcher.ready(&mut self.ready) {
                warn!("reading the watches: {e}");
            }
        }
        let take = self.ready.len().min(FIRED_BATCH);
        let mut told = Vec::new();
        for (id, fired) in self.ready.drain(..take).collect::<Vec<_>>() {
            let t = match fired {
                Fired::Memory => self.oom_kill(id).map(Told::Oom),
                Fired::Pressure(rule) => self.pressure(id, rule).map(Told::Pressure),
            };
            told.extend(t);
        }
        told
    }

    /// An OOM kill, if `id`'s kill counts rose.
    fn oom_kill(&mut self, id: CgroupId) -> Option<OomKill> {
        let watcher = self.watcher.as_ref()?;
        let counts = match watcher.counts(id) {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => {
                self.forget(id);
                return None;
            }
        };
        let seen = self.seen.get_mut(&id)?;
        let before = std::mem::replace(&mut seen.last, counts);
        if !counts.killed_since(&before) {
            return None;
        }
        let kills = counts.oom_kill.saturating_sub(before.oom_kill) + counts.oom_group_kill.saturating_sub(before.oom_group_kill);
        let victim = self.kmsg.as_mut().and_then(|k| k.victim(&seen.memcg));
        Some(OomKill { node: seen.node.clone(), path: seen.path.clone(), counts, kills, victim, memory_max: watcher.limit(id) })
    }

    /// A crossing of rule `rule` on `id`, its action done; `None` while the
    /// node was told of within [`PRESSURE_EVERY`].
    fn pressure(&mut self, id: CgroupId, rule: usize) -> Option<PressureCrossed> {
        let seen = self.seen.get(&id)?;
        let Memory::Unified(h) = self.memory.as_ref()? else { return None };
        if !self.per_node.allow(id, Instant::now()) {
            return None;
        }
        let r = &self.pressure[rule];
        let action = r.action.map(|a| {
            let s = Subtree { dir: h.dir(&seen.path), version: Version::V2, freezer: None };
            let done = match a {
                Action::Freeze => verbs::freeze(&s, ACTION_TIMING),
                Action::Kill => {
                    let mut sig = PidfdSignaller { proc: self.proc.clone(), key: h.key().clone(), subtree: seen.path.clone() };
                    verbs::kill(&s, &mut sig, ACTION_TIMING)
                }
            };
            (a.name(), done.map(|o| o.method).map_err(|e| e.to_string()))
        });
        Some(PressureCrossed { node: seen.node.clone(), path: seen.path.clone(), resource: r.resource.name(), trigger: r.trigger(), action })
    }

    /// Whether more notifications wait (the loop calls [`Watch::fired`] again next turn).
    pub fn pending(&self) -> bool {
        !self.ready.is_empty()
    }
}

impl Sink for Watch {
    fn follows_nodes(&self) -> bool {
        self.watcher.is_some()
    }

    fn take(&mut self, outcome: &Outcome<'_>) {
        match *outcome {
            Outcome::Created { node, path, .. } => self.arm(node, path),
            Outcome::Removed { removal, .. } => self.forget(removal.node.id),
            _ => {}
        }
    }
}
