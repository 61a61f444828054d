//! What the configuration's rules say of a task or a new node: whether the
//! include/exclude filters track a task, and which limits a new node gets
//! (the pipeline's "prepare" step, the same for events, reconcile and the
//! API's `nsgroup exec`).

use crate::config::{Config, Creation, Subject};
use crate::core::limit::Limit;
use crate::core::node::NodeRecord;
use crate::core::nsset::NsMask;
use crate::core::tracker::Placement;
use crate::sys::cgroupfs::CgroupBackend;

/// Whether the include/exclude filters track a task named `comm` whose set
/// `owner` owns (a filter's `uid` matches the owner: a user's subordinate
/// uids are hers), in the cgroup at `cgroup`.
pub fn admits(config: &Config, comm: &str, owner: u32, cgroup: &str) -> bool {
    config.admits(Subject { comm, uid: Some(owner), cgroup })
}

/// The limits of the rules that match the creator of a node with `record`,
/// made in the cgroup at `parent_path`.
pub fn limits_for(config: &Config, record: &NodeRecord, parent_path: &str) -> Vec<Limit> {
    if config.limit.is_empty() {
        return Vec::new();
    }
    let entered = NsMask::of(record.set.differing(&record.parent_set).map(|(k, _)| k));
    // A rule's `uid` matches the node's owner: a user's subordinate uids are hers.
    config.limits_for(Creation { comm: &record.creator_comm, uid: record.owner(), cgroup: parent_path, entered })
}

/// The pressure rules (their indices) that match a node's record, made in
/// the cgroup at `parent_path`: the same keys as [`limits_for`].
pub fn pressure_for(config: &Config, record: &NodeRecord, parent_path: &str) -> Vec<usize> {
    if config.pressure.is_empty() {
        return Vec::new();
    }
    let entered = NsMask::of(record.set.differing(&record.parent_set).map(|(k, _)| k));
    let c = Creation { comm: &record.creator_comm, uid: record.owner(), cgroup: parent_path, entered };
    config.pressure.iter().enumerate().filter(|(_, r)| r.matches(c)).map(|(i, _)| i).collect()
}

/// The files of `files` that `refused` (`file=value: error` each) does not name.
pub fn applied<'a>(files: &'a [(&'static str, String)], refused: &'a [String]) -> impl Iterator<Item = &'a (&'static str, String)> {
    files.iter().filter(move |(file, value)| !refused.iter().any(|r| r.starts_with(&format!("{file}={value}:"))))
}

/// The pipeline's "prepare" step, the same for events, reconcile and
/// children: a node about to be made for a task named `comm` gets the files
/// of its policy limits where the tracked hierarchy is cgroup2 (`v2`; v1
/// hierarchies take them in mirrors). Other placements pass as they are.
pub fn with_policy_limits<B: CgroupBackend>(config: &Config, v2: bool, backend: &mut B, placement: Placement, comm: &str) -> Placement {
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
            restored: None,
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
