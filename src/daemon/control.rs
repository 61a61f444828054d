//! The daemon's side of control: the limits a new node gets by policy, and
//! the mirrors (v1 controller hierarchies) that follow every placement.

use tracing::{info, warn};

use super::outcome::Outcome;
use super::reports::Kind;
use super::Daemon;
use crate::config::{Config, Creation};
use crate::control::limits::Limit;
use crate::control::mirror::Mirrored;
use crate::core::escape::Escaped;
use crate::core::node::{CgroupId, MirrorPath, Node, NodeRecord};
use crate::core::nsset::NsMask;
use crate::core::tracker::Placement;
use crate::sys::cgroupfs::{CgroupBackend, Removed};

/// The limits of the rules that match the creator of a node with `record`,
/// made in the cgroup at `parent_path`.
pub(super) fn limits_for(config: &Config, record: &NodeRecord, parent_path: &str) -> Vec<Limit> {
    if config.limit.is_empty() {
        return Vec::new();
    }
    let entered = NsMask::of(record.set.differing(&record.parent_set).map(|(k, _)| k));
    // A rule's `uid` matches the node's owner: a user's subordinate uids are hers.
    config.limits_for(Creation { comm: &record.creator_comm, uid: record.owner(), cgroup: parent_path, entered })
}

/// The files of `files` that `refused` (`file=value: error` each) does not name.
pub(super) fn applied<'a>(files: &'a [(&'static str, String)], refused: &'a [String]) -> impl Iterator<Item = &'a (&'static str, String)> {
    files.iter().filter(move |(file, value)| !refused.iter().any(|r| r.starts_with(&format!("{file}={value}:"))))
}

/// The pipeline's "prepare" step, the same for events, reconcile and
/// children: a node about to be made for a task named `comm` gets the files
/// of its policy limits where the tracked hierarchy is cgroup2 (`v2`; v1
/// hierarchies take them in mirrors). Other placements pass as they are.
pub(super) fn with_policy_limits<B: CgroupBackend>(config: &Config, v2: bool, backend: &mut B, placement: Placement, comm: &str) -> Placement {
    match placement {
        Placement::Create(mut new) if v2 && !config.limit.is_empty() => {
            let record = new.record(comm, 0);
            let parent_path = backend.path_of(new.parent).ok().flatten().unwrap_or_default();
            new.files = limits_for(config, &record, &parent_path).iter().map(Limit::v2).collect();
            Placement::Create(new)
        }
        other => other,
    }
}

impl Daemon {
    /// Logs the limit files the kernel refused for new nodes; returns them.
    pub(super) fn report_refused_files(&mut self) -> Vec<String> {
        let refused = self.placer.take_refused_files();
        for (node, r) in &refused {
            if self.reports.allow(Kind::Failed) {
                let path = self.placer.backend().path_of(*node).ok().flatten().unwrap_or_default();
                warn!(node = %Escaped(&path), "limit not applied (the task is placed anyway): {r}");
            }
        }
        refused.into_iter().map(|(_, r)| r).collect()
    }

    /// A task is in node `id` now: it goes into the node's mirror in every
    /// mirrored hierarchy (made on first use, with the node's limits).
    pub(super) fn follow_in_mirrors(&mut self, id: CgroupId, tgid: u32, tid: u32) {
        if self.mirrors.is_empty() {
            return;
        }
        let Some(node) = self.placer.tracker().node(id).cloned() else { return };
        let mut created = Vec::new();
        for (i, mirror) in self.mirrors.iter_mut().enumerate() {
            let files = if mirror.path_of(id).is_some() {
                Vec::new()
            } else {
                let parent_path = self.placer.backend().path_of(node.parent).ok().flatten().unwrap_or_default();
                let controllers: Vec<&str> = mirror.controllers().split(',').collect();
                limits_for(&self.config, &node.record, &parent_path).iter().flat_map(|l| l.v1(&controllers)).collect()
            };
            match mirror.place(&self.proc, &node, tgid, tid, &files) {
                Ok(Mirrored::Created { path, refused }) => {
                    for r in &refused {
                        if self.reports.allow(Kind::Failed) {
                            warn!(mirror = %Escaped(&path), controllers = mirror.controllers(), "limit not applied (the task is placed anyway): {r}");
                        }
                    }
                    for (file, value) in applied(&files, &refused) {
                        self.sinks.publish(Outcome::LimitApplied { path: &path, file, value });
                    }
                    created.push(MirrorPath { controllers: mirror.controllers().to_string(), path });
                }
                Ok(Mirrored::Outside) => self.stats.not_mirrored[i] += 1,
                Ok(Mirrored::Stayed | Mirrored::Moved | Mirrored::Gone) => {}
                Err(e) => {
                    if self.reports.allow(Kind::Failed) {
                        warn!(controllers = mirror.controllers(), "mirroring failed: {e}");
                    }
                }
            }
        }
        if !created.is_empty() {
            let mut mirrors = node.record.mirrors.clone();
            mirrors.retain(|m| !created.iter().any(|c| c.controllers == m.controllers));
            mirrors.extend(created);
            if let Some(updated) = self.placer.tracker_mut().set_mirrors(id, mirrors) {
                let record = updated.record.clone();
                if let Err(e) = self.placer.backend().store_record(id, &record) {
                    warn!("storing the mirrors of node {id}: {e}");
                }
            }
        }
    }

    /// Takes over the mirrors the records of adopted nodes name.
    pub(super) fn adopt_mirrors(&mut self) {
        let nodes: Vec<Node> = self.placer.tracker().nodes().cloned().collect();
        for node in nodes {
            for m in &node.record.mirrors {
                let Some(mirror) = self.mirrors.iter_mut().find(|x| x.controllers() == m.controllers) else { continue };
                if !mirror.adopt(node.id, &m.path) {
                    warn!(path = %Escaped(&m.path), controllers = %m.controllers, "a recorded mirror is gone or not root's; not adopted");
                }
            }
        }
    }

    /// Removes a removed node's mirrors; their usage figures, for the log.
    pub(super) fn remove_mirrors(&mut self, node: &Node) -> Vec<(String, u64)> {
        let mut usage = Vec::new();
        for mirror in &mut self.mirrors {
            usage.extend(mirror.usage(node.id));
            match mirror.remove(node.id) {
                Ok(Removed::Removed) | Ok(Removed::Vanished) => {}
                Ok(Removed::Busy) => {
                    info!(controllers = mirror.controllers(), node = %Escaped(&node.name), "a mirror holds tasks another writer put there; left in place");
                    mirror.forget(node.id);
                }
                Err(e) => {
                    if self.reports.allow(Kind::Failed) {
                        warn!("removing a mirror of {}: {e}", Escaped(&node.name));
                    }
                    mirror.forget(node.id);
                }
            }
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::{applied, limits_for};
    use crate::core::node::NodeRecord;
    use crate::core::nsset::NsSet;

    #[test]
    fn a_limit_rules_uid_matches_the_nodes_owner() {
        let text = "[[limit]]\nuid = [65534]\nset = { \"pids.max\" = 32 }\n";
        let config = crate::config::Config::parse(text, std::path::Path::new("/t.toml")).unwrap();
        let subordinate = NodeRecord {
            set: NsSet::new([7; 10]),
            parent_set: NsSet::new([1; 10]),
            creator_pid: 7,
            creator_comm: "sh".into(),
            creator_uid: 200_001,
            owner: Some(65534),
            created_unix: 0,
            mirrors: vec![],
        };
        assert_eq!(limits_for(&config, &subordinate, "/t").len(), 1, "a subordinate uid's node is its owner's");
        let other = NodeRecord { owner: Some(1000), ..subordinate };
        assert!(limits_for(&config, &other, "/t").is_empty());
    }

    #[test]
    fn applied_files_are_those_not_refused() {
        let files = vec![("pids.max", "32".to_string()), ("memory.max", "64M".to_string()), ("pids.max", "320".to_string())];
        let refused = vec!["memory.max=64M: Invalid argument".to_string(), "pids.max=3: x".to_string()];
        let got: Vec<_> = applied(&files, &refused).map(|(f, v)| format!("{f}={v}")).collect();
        assert_eq!(got, ["pids.max=32", "pids.max=320"]);
    }
}
