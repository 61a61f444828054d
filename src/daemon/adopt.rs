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
use crate::placer::Placer;
use crate::sys::cgroupfs::{CgroupWriter, Hierarchy};
use crate::sys::subtree::LEAF;
use crate::sys::error::IoError;

/// Why a record on a cgroup is not adopted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Unusable {
    #[error("its record does not parse")]
    Unparsable,
    #[error("its record names the base set (the namespaces of tasks outside nodes)")]
    BaseSet,
    #[error("its directory is owned by uid {0}, not by root: anyone who can create cgroups there could have made it")]
    Owner(u32),
}

/// The record of a cgroup, if it makes the cgroup a node.
pub(super) fn usable_record(
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
pub(super) fn adopt(
    placer: &mut Placer<CgroupWriter>,
    hierarchy: &Hierarchy,
    root: &str,
    mask: NsMask,
) -> Result<usize, IoError> {
    let base = placer.tracker().base_set();
    let mut ids: HashMap<String, CgroupId> = HashMap::new();
    let mut adopted = 0;
    for (rel, id) in hierarchy.walk(root)? {
        placer.backend().learn(id, rel.clone());
        ids.insert(rel.clone(), id);
        if rel == root {
            continue;
        }
        let (parent_rel, name) = rel.rsplit_once('/').expect("below the root");
        let parent_rel = if parent_rel.is_empty() { "/" } else { parent_rel };
        let Some(&parent) = ids.get(parent_rel) else { continue };
        let Some(bytes) = hierarchy.record_bytes(&rel) else {
            // A node's leaf (cgroup2 controllers): where the node's tasks live.
            if name == LEAF && placer.tracker().node(parent).is_some() {
                placer.backend().adopt_leaf(parent, id);
            }
            continue;
        };
        let Ok(owner) = hierarchy.owner(&rel) else { continue };
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
            created_unix: 0,
            mirrors: vec![],
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
