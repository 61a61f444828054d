//! Learning, at start, the nodes an earlier run left. Only a cgroup that
//! carries a usable record is adopted: one that parses, names a set other
//! than the base set, and sits on a directory owned by root (or the daemon's
//! uid), so that nobody who can make cgroups can make one look like a node.
//! Every unusable record is reported once.

use std::collections::HashMap;

use tracing::warn;

use crate::core::escape::Escaped;
use crate::core::node::{CgroupId, Node, NodeRecord};
use crate::core::nsset::NsMask;
use crate::core::tracker::Entry;
use crate::sys::cgroupfs::{CgroupBackend, CgroupWriter};
use crate::sys::procfs::{HierarchyKey, ProcFs};
use super::placer::Placer;
use crate::sys::hierarchy::{Hierarchy, Surveyed};
use crate::sys::subtree::LEAF;
use crate::sys::error::IoError;

/// Why a record on a cgroup is not adopted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("its record does not parse")]
    Unparsable,
    #[error("its record names the base set (the namespaces of tasks outside nodes)")]
    BaseSet,
    #[error("its directory is owned by uid {0}, not by root: anyone who can create cgroups there could have made it")]
    Owner(u32),
}

/// The record of a cgroup, if it makes the cgroup a node.
pub fn usable_record(
    bytes: &[u8],
    owner: u32,
    base_set_masked: &crate::core::nsset::NsSet,
    mask: NsMask,
) -> Result<NodeRecord, Unusable> {
    let own_uid = rustix::process::geteuid().as_raw();
    if owner != 0 && owner != own_uid {
        return Err(Unusable::Owner(owner));
    }
    let mut record = NodeRecord::from_bytes(bytes).ok_or(Unusable::Unparsable)?;
    record.set = record.set.masked(mask);
    record.parent_set = record.parent_set.masked(mask);
    if record.set == *base_set_masked || record.set.is_empty() {
        return Err(Unusable::BaseSet);
    }
    Ok(record)
}

/// Adopts every cgroup below `root` with a usable record; returns how many.
pub fn adopt(
    placer: &mut Placer<CgroupWriter>,
    hierarchy: &Hierarchy,
    root: &str,
    mask: NsMask,
) -> Result<usize, IoError> {
    let base = placer.tracker().base_set();
    let mut ids: HashMap<String, CgroupId> = HashMap::new();
    let mut adopted = 0;
    // One descriptor per cgroup: its id, owner and record read through it.
    for Surveyed { rel, id, owner, record } in hierarchy.survey(root)? {
        placer.backend().learn(id, rel.clone());
        ids.insert(rel.clone(), id);
        if rel == root {
            continue;
        }
        let (parent_rel, name) = rel.rsplit_once('/').expect("below the root");
        let parent_rel = if parent_rel.is_empty() { "/" } else { parent_rel };
        let Some(&parent) = ids.get(parent_rel) else { continue };
        let Some(bytes) = record else {
            // A node's leaf (cgroup2 controllers): where the node's tasks live.
            if name == LEAF && placer.tracker().node(parent).is_some() {
                placer.backend().adopt_leaf(parent, id);
            }
            continue;
        };
        let record = match usable_record(&bytes, owner, &base, mask) {
            Ok(r) => r,
            Err(why) => {
                warn!(path = %Escaped(&rel), "not adopted: {why}");
                continue;
            }
        };
        let node = Node { id, parent, name: name.to_string(), record };
        match placer.tracker_mut().add_node(node) {
            Ok(()) => adopted += 1,
            Err(first) => {
                warn!(path = %Escaped(&rel), first = %Escaped(&first.name), "a second cgroup claims the set of an adopted node; left alone")
            }
        }
    }
    Ok(adopted)
}

/// What a cgroup `nsgroup exec` made for a task says.
pub enum ExecNode {
    /// No exec record names the task: place it as usual.
    No,
    /// Its record is not complete yet (exec is still setting it up; the
    /// task runs only once it is): leave the task pending.
    Pending,
    /// `nsgroup restore` is filling it (CRIU still runs): looked at again
    /// shortly, as the restored tasks need not exec.
    Restoring,
    /// Adopted as the task's node.
    Adopted(CgroupId),
}

/// Whether `cgroup` is a node `nsgroup restore` made (a root-owned record
/// saying so), not tracked yet.
pub fn restoring_here<B: CgroupBackend>(placer: &mut Placer<B>, cgroup: CgroupId) -> bool {
    let Ok(Some(path)) = placer.backend().path_of(cgroup) else { return false };
    let Ok(Some((0, bytes))) = placer.backend().record_at(&path) else { return false };
    NodeRecord::from_bytes(&bytes).is_some_and(|r| r.restored.is_some())
}

/// How long after a restore began its tasks wait for its record to name their set.
pub const RESTORE_WAIT_S: u64 = 120;

/// Whether a task about to get a node of its own has one `nsgroup exec`
/// made for it: the cgroup it is in (cgroup2: born there), or its
/// `node_<tid>` child (v1: moved in by exec), carrying a root-owned record
/// that names the task as its creator. A complete one is added to the
/// tracker (its recorded mirrors are the caller's to adopt).
pub fn exec_node<B: CgroupBackend>(placer: &mut Placer<B>, proc: &ProcFs, key: &HierarchyKey, mask: NsMask, entry: &Entry) -> ExecNode {
    // A cgroup exec made is new to the daemon: found from the task itself.
    let here = match placer.backend().path_of(entry.cgroup) {
        Ok(Some(p)) => p,
        _ => {
            let Ok(Some(p)) = proc.cgroup_path(entry.tgid, entry.tid, key) else { return ExecNode::No };
            if placer.backend().id_at(&p).ok().flatten() != Some(entry.cgroup) {
                return ExecNode::No;
            }
            p
        }
    };
    let inside = placer.tracker().node(entry.cgroup).is_none().then(|| here.clone());
    let child = crate::core::cgpath::join(&here, &crate::core::naming::candidate(entry.tid, 0));
    for path in inside.into_iter().chain([child]) {
        let Ok(Some((owner, bytes))) = placer.backend().record_at(&path) else { continue };
        let Some(mut record) = NodeRecord::from_bytes(&bytes) else { continue };
        // A node `nsgroup restore` makes is CRIU's to fill: every task born
        // in it belongs to it, whatever its pid (docs/semantics.md
        // "Checkpoint and restore").
        if owner != 0 || (record.creator_pid != entry.tid && record.restored.is_none()) {
            continue;
        }
        if record.set.is_empty() {
            if record.restored.is_some() {
                tracing::debug!(path = %Escaped(&path), tid = entry.tid, "a task born in a node nsgroup restore is filling waits for its record");
            }
            return match &record.restored {
                Some(r) if crate::sys::clock::unix_now().saturating_sub(r.restored_unix) <= RESTORE_WAIT_S => ExecNode::Restoring,
                // A restore that never finished: placed as usual.
                Some(_) => continue,
                None => ExecNode::Pending,
            };
        }
        // A restored task's set is read again: the event's is the one it was
        // cloned with, and CRIU moves it into the restored mount namespace
        // after that (with `--root` it builds that namespace apart).
        let set = match &record.restored {
            Some(_) => proc.ns_set(entry.tgid, entry.tid).ok().flatten().map(|s| s.masked(mask)).unwrap_or(entry.set),
            None => entry.set,
        };
        // A node of an earlier task with this pid names another set.
        if record.set.masked(mask) != set {
            if record.restored.is_some() {
                tracing::debug!(path = %Escaped(&path), tid = entry.tid, recorded = ?record.set, task = ?set, "a task in a restored node is of another set than its record names");
            }
            continue;
        }
        let Some((parent_path, name)) = path.rsplit_once('/') else { continue };
        let parent_path = if parent_path.is_empty() { "/" } else { parent_path };
        let writer = placer.backend();
        let (Ok(Some(parent)), Ok(Some(id))) = (writer.id_at(parent_path), writer.id_at(&path)) else { continue };
        record.set = set;
        record.parent_set = record.parent_set.masked(mask);
        let node = Node { id, parent, name: name.to_string(), record };
        if placer.tracker_mut().add_node(node).is_err() {
            return ExecNode::No;
        }
        tracing::info!(event = "node_adopted", path = %Escaped(&path), creator_pid = entry.tid, "node made by nsgroup exec adopted");
        return ExecNode::Adopted(id);
    }
    ExecNode::No
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nsset::NsSet;

    fn record(set: u64) -> Vec<u8> {
        NodeRecord {
            set: NsSet::new([set; 10]),
            parent_set: NsSet::new([1; 10]),
            creator_pid: 5,
            creator_comm: "unshare".into(),
            creator_uid: 0,
            owner: None,
            created_unix: 0,
            mirrors: vec![],
            restored: None,
        }
        .to_bytes()
    }

    #[test]
    fn only_root_owned_parsable_records_of_other_sets_are_usable() {
        let base = NsSet::new([1; 10]);
        let me = rustix::process::geteuid().as_raw();
        assert!(usable_record(&record(2), 0, &base, NsMask::ALL).is_ok());
        assert!(usable_record(&record(2), me, &base, NsMask::ALL).is_ok());
        assert_eq!(usable_record(&record(1), 0, &base, NsMask::ALL), Err(Unusable::BaseSet));
        assert_eq!(usable_record(b"{\"set\":", 0, &base, NsMask::ALL), Err(Unusable::Unparsable));
        if me != 65534 {
            assert_eq!(usable_record(&record(2), 65534, &base, NsMask::ALL), Err(Unusable::Owner(65534)));
        }
    }
}
