//! What nsgroup knows about one node, and its record stored on the node itself.

use serde::{Deserialize, Serialize};

use super::nsset::NsSet;

/// A cgroup, identified by its directory inode (the kernel's cgroup id).
pub type CgroupId = u64;

/// A node: the cgroup of one namespace set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: CgroupId,
    /// The cgroup it was created in.
    pub parent: CgroupId,
    pub name: String,
    pub record: NodeRecord,
}

/// The node's identity and history, kept in the node's `trusted.nsgroup`
/// xattr so that it survives a restart of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The set whose tasks live here (with ignored slots masked to 0).
    #[serde(with = "as_text")]
    pub set: NsSet,
    /// The set its creator came from; a task returning to it goes back to `parent`.
    #[serde(with = "as_text")]
    pub parent_set: NsSet,
    pub creator_pid: u32,
    pub creator_comm: String,
    /// The creator's real uid. Records written before it existed read as root's.
    #[serde(default)]
    pub creator_uid: u32,
    /// Who owns the node: the owner of the creator's outermost user
    /// namespace below the daemon's, else `creator_uid` (docs/semantics.md
    /// §13 "Owners"). Whose quota it counts against and who may act on it.
    /// Records written before it existed read as their creator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The node's mirrors in controller hierarchies (cgroup v1 mirrors, see
    /// docs/semantics.md "Control"): where the same set lives there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPath>,
    /// Set on a node `nsgroup restore` made: where its tasks came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored>,
}

/// Where a restored node's tasks were checkpointed (docs/semantics.md
/// "Checkpoint and restore").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The image directory.
    pub dir: String,
    pub restored_unix: u64,
    /// The node they were checkpointed from: its path and cgroup id.
    pub from_path: String,
    pub from_cgroup_id: u64,
}

/// One mirror of a node: its cgroup in another hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorPath {
    /// The mirrored hierarchy's controllers, as `/proc/<pid>/cgroup` lists them (`pids`, `cpu,cpuacct`).
    pub controllers: String,
    /// The mirror's cgroup path inside that hierarchy.
    pub path: String,
}

mod as_text {
    use super::NsSet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(set: &NsSet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(set)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NsSet, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl NodeRecord {
    /// Who owns the node (see [`NodeRecord::owner`]'s field).
    pub fn owner(&self) -> u32 {
        self.owner.unwrap_or(self.creator_uid)
    }

    /// Whether the set has a namespace of kind `k` of its own (one that
    /// differs from the parent set's).
    pub fn has_own(&self, k: crate::core::nsset::NsKind) -> bool {
        self.set.get(k) != 0 && self.set.get(k) != self.parent_set.get(k)
    }

    /// The inode of the set's network namespace when it is its own: its
    /// traffic is the node's.
    pub fn own_net(&self) -> Option<u64> {
        use crate::core::nsset::NsKind::Net;
        self.has_own(Net).then(|| self.set.get(Net))
    }

    /// The node's kind, for bounded metric labels: the outermost namespace
    /// kind its set has of its own (`user`, `pid`, `net`, `mnt`, `cgroup`,
    /// `ipc`, `uts`, `time`), else `other`.
    pub fn kind(&self) -> &'static str {
        use crate::core::nsset::NsKind::*;
        [User, Pid, Net, Mnt, Cgroup, Ipc, Uts, Time].into_iter().find(|&k| self.has_own(k)).map_or("other", |k| k.proc_name())
    }

    /// The xattr value.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serializes")
    }

    /// Parses an xattr value; `None` for anything that is not a record.
    pub fn from_bytes(bytes: &[u8]) -> Option<NodeRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_bytes() {
        let r = NodeRecord {
            set: NsSet::new([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            parent_set: NsSet::new([1; 10]),
            creator_pid: 77,
            creator_comm: "odd\nname\u{fffd}".into(),
            creator_uid: 200_005,
            owner: Some(65534),
            created_unix: 1_800_000_000,
            mirrors: vec![MirrorPath { controllers: "pids".into(), path: "/j/node_77".into() }],
            restored: None,
        };
        assert_eq!(NodeRecord::from_bytes(&r.to_bytes()).as_ref(), Some(&r));
        assert_eq!(NodeRecord::from_bytes(b"garbage"), None);
        // A record from before owners: its creator owns it.
        let mut old: serde_json::Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        old.as_object_mut().unwrap().remove("owner");
        assert_eq!(NodeRecord::from_bytes(old.to_string().as_bytes()).unwrap().owner(), 200_005);
    }

    #[test]
    fn a_nodes_kind_is_its_outermost_namespace_of_its_own() {
        // Slots: cgroup ipc mnt net pid pid_for_children time time_for_children user uts.
        let of = |set: [u64; 10]| NodeRecord {
            set: NsSet::new(set),
            parent_set: NsSet::new([1; 10]),
            creator_pid: 1,
            creator_comm: String::new(),
            creator_uid: 0,
            owner: None,
            created_unix: 0,
            mirrors: vec![],
            restored: None,
        }
        .kind();
        assert_eq!(of([1, 1, 2, 1, 1, 1, 1, 1, 1, 2]), "mnt");
        assert_eq!(of([1, 1, 2, 2, 2, 2, 1, 1, 2, 2]), "user");
        assert_eq!(of([1, 1, 1, 1, 1, 1, 1, 1, 1, 2]), "uts");
        assert_eq!(of([1; 10]), "other");
    }
}
