//! Watching nodes for what the kernel does to them: as a sink it arms a
//! node's memory watch when the node is made (or adopted at start) and drops
//! it when the node goes; when the loop sees its file descriptor readable it
//! decides what happened ([`Watch::fired`]): a rise of a node's OOM kill
//! counts is one [`OomKill`], with the victim the kernel logged and the limit
//! in force, for every sink.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use tracing::{info, warn};

use crate::config::WatchConfig;
use crate::core::node::{CgroupId, Node};
use crate::pipeline::outcome::{OomKill, Outcome, Sink};
use crate::sys::hierarchy::Hierarchy;
use crate::sys::watch::{Armed, Kmsg, MemCounts, Watcher};

/// Where the kernel's log is read from.
const KMSG: &str = "/dev/kmsg";
/// The most fired nodes looked at per call (the rest are looked at next turn).
const FIRED_BATCH: usize = 256;

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

/// The watch sink.
pub struct Watch {
    watcher: Option<Watcher>,
    memory: Option<Memory>,
    kmsg: Option<Kmsg>,
    seen: HashMap<CgroupId, Seen>,
    ready: Vec<CgroupId>,
}

impl Watch {
    /// Watches per `config`: the tracked `hierarchy`'s nodes on cgroup2, or
    /// their mirror in the memory hierarchy `mirror` (mount, controllers) on v1.
    pub fn start(config: &WatchConfig, hierarchy: &Hierarchy, v2: bool, mirror: Option<(PathBuf, String)>) -> Watch {
        let memory = match (v2, mirror) {
            (true, _) => Some(Memory::Unified(hierarchy.clone())),
            (false, Some((mount, controllers))) => Some(Memory::Mirror { mount, controllers }),
            (false, None) => None,
        };
        let off = Watch { watcher: None, memory: None, kmsg: None, seen: HashMap::new(), ready: Vec::new() };
        if !config.oom || memory.is_none() {
            return off;
        }
        let watcher = match Watcher::new(config.max_watches) {
            Ok(w) => w,
            Err(e) => {
                warn!("OOM kills are not watched: {e}");
                return off;
            }
        };
        let kmsg = config.kmsg.then(|| Kmsg::open(std::path::Path::new(KMSG)));
        if kmsg.as_ref().is_some_and(|k| !k.readable()) {
            warn!("{KMSG} cannot be read: OOM kills are reported without their victim");
        }
        info!(max_watches = config.max_watches, victims = kmsg.as_ref().is_some_and(Kmsg::readable), "watching nodes for OOM kills");
        Watch { watcher: Some(watcher), memory, kmsg, ..off }
    }

    /// What the loop polls, when anything is watched at all.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.watcher.as_ref().map(Watcher::fd)
    }

    /// Nodes left unwatched by the bound.
    pub fn skipped(&self) -> u64 {
        self.watcher.as_ref().map_or(0, Watcher::skipped)
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
        match watcher.watch_memory(node.id, &dir, v2) {
            Ok(Armed::Yes) => {
                let last = watcher.counts(node.id).ok().flatten().unwrap_or_default();
                self.seen.insert(node.id, Seen { node: node.clone(), path: path.to_string(), memcg, last });
            }
            Ok(Armed::NoMemory | Armed::Skipped) => {}
            // The node went meanwhile, or the kernel refused: not watched.
            Err(e) => tracing::debug!("not watching {}: {e}", crate::core::escape::Escaped(path)),
        }
    }

    fn forget(&mut self, node: CgroupId) {
        if let Some(w) = &mut self.watcher {
            w.forget(node);
        }
        self.seen.remove(&node);
    }

    /// What the kernel told since the last call: one [`OomKill`] per node
    /// whose kill counts rose.
    pub fn fired(&mut self) -> Vec<OomKill> {
        let Some(watcher) = &mut self.watcher else { return Vec::new() };
        if self.ready.is_empty() {
            if let Err(e) = watcher.ready(&mut self.ready) {
                warn!("reading the watches: {e}");
            }
        }
        let take = self.ready.len().min(FIRED_BATCH);
        let mut kills = Vec::new();
        for id in self.ready.drain(..take).collect::<Vec<_>>() {
            let Some(watcher) = &self.watcher else { break };
            let counts = match watcher.counts(id) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => {
                    self.forget(id);
                    continue;
                }
            };
            let Some(seen) = self.seen.get_mut(&id) else { continue };
            let before = std::mem::replace(&mut seen.last, counts);
            if !counts.killed_since(&before) {
                continue;
            }
            let kills_now = counts.oom_kill.saturating_sub(before.oom_kill) + counts.oom_group_kill.saturating_sub(before.oom_group_kill);
            let victim = self.kmsg.as_mut().and_then(|k| k.victim(&seen.memcg));
            kills.push(OomKill {
                node: seen.node.clone(),
                path: seen.path.clone(),
                counts,
                kills: kills_now,
                victim,
                memory_max: watcher.limit(id),
            });
        }
        kills
    }

    /// Whether more fired nodes wait (the loop calls [`Watch::fired`] again next turn).
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
