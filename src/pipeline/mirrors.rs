//! The mirrors: v1 controller hierarchies in which every node has a cgroup
//! of its own, made on first use with the node's policy limits, holding the
//! node's tasks (a hybrid host's `pids`, `memory`, `freezer`, …).

use crate::control::mirror::{Mirror, Mirrored};
use crate::core::escape::Escaped;
use crate::core::node::{MirrorPath, Node};
use crate::policy::rules::applied;
use crate::sys::cgroupfs::Removed;
use crate::sys::procfs::ProcFs;

use super::outcome::{Failure, Outcome};
use super::around::Around;

/// The mirrored hierarchies, in configuration order.
pub struct Mirrors {
    all: Vec<Mirror>,
}

impl Mirrors {
    pub fn new(all: Vec<Mirror>) -> Mirrors {
        Mirrors { all }
    }

    /// The mirrored controllers, one comma-separated list per hierarchy.
    pub fn controllers(&self) -> impl Iterator<Item = &str> {
        self.all.iter().map(Mirror::controllers)
    }

    /// Takes over the mirrors `node`'s record names.
    pub fn adopt(&mut self, node: &Node) {
        for m in &node.record.mirrors {
            let Some(mirror) = self.all.iter_mut().find(|x| x.controllers() == m.controllers) else { continue };
            if !mirror.adopt(node.id, &m.path) {
                tracing::warn!(path = %Escaped(&m.path), controllers = %m.controllers, "a recorded mirror is gone or not root's; not adopted");
            }
        }
    }

    /// A task of `node` is in the node now: it goes into the node's mirror in
    /// every hierarchy (made first, with the files `limits` gives for its
    /// controllers). Returns the mirrors made, for the node's record.
    pub fn follow(
        &mut self,
        proc: &ProcFs,
        node: &Node,
        tgid: u32,
        tid: u32,
        limits: impl Fn(&[&str]) -> Vec<(&'static str, String)>,
        around: &mut dyn Around,
    ) -> Vec<MirrorPath> {
        let mut created = Vec::new();
        for mirror in &mut self.all {
            let files = if mirror.path_of(node.id).is_some() {
                Vec::new()
            } else {
                limits(&mirror.controllers().split(',').collect::<Vec<_>>())
            };
            match mirror.place(proc, node, tgid, tid, &files) {
                Ok(Mirrored::Created { path, refused }) => {
                    for r in &refused {
                        around.publish(Outcome::Failed { what: Failure::MirrorLimit { mirror: &path, controllers: mirror.controllers() }, error: r });
                    }
                    for (file, value) in applied(&files, &refused) {
                        around.publish(Outcome::LimitApplied { node: node.id, path: &path, file, value });
                    }
                    created.push(MirrorPath { controllers: mirror.controllers().to_string(), path });
                }
                Ok(Mirrored::Outside) => around.publish(Outcome::NotMirrored { node: node.id, controllers: mirror.controllers() }),
                Ok(Mirrored::Stayed | Mirrored::Moved | Mirrored::Gone) => {}
                Err(e) => around.publish(Outcome::Failed { what: Failure::Mirror { controllers: mirror.controllers() }, error: &e }),
            }
        }
        created
    }

    /// Removes a removed node's mirrors; returns their usage figures.
    pub fn remove(&mut self, node: &Node, around: &mut dyn Around) -> Vec<(String, u64)> {
        let mut usage = Vec::new();
        for mirror in &mut self.all {
            usage.extend(mirror.usage(node.id));
            match mirror.remove(node.id) {
                Ok(Removed::Removed) | Ok(Removed::Vanished) => {}
                Ok(Removed::Busy) => {
                    tracing::info!(controllers = mirror.controllers(), node = %Escaped(&node.name), "a mirror holds tasks another writer put there; left in place");
                    mirror.forget(node.id);
                }
                Err(e) => {
                    around.publish(Outcome::Failed { what: Failure::RemoveMirror { node: &node.name }, error: &e });
                    mirror.forget(node.id);
                }
            }
        }
        usage
    }

    /// Whether there are none (nothing to follow).
    /// The mirror carrying the memory controller: its mount and controllers.
    pub fn memory(&self) -> Option<(std::path::PathBuf, String)> {
        self.all.iter().find(|m| m.controllers().split(',').any(|c| c == "memory")).map(|m| (m.mount().to_path_buf(), m.controllers().to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}
