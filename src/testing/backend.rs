//! A recording fake of the cgroupfs edge: an in-memory hierarchy that does
//! what [`CgroupBackend`] asks and logs each call (`mkdir`, `move`, `rmdir`,
//! `write`), for tests of the pipeline that need no root.

use std::collections::{BTreeMap, BTreeSet};

use crate::core::node::{CgroupId, NodeRecord};
use crate::sys::cgroupfs::{Attached, CgroupBackend, Created, Removed};
use crate::sys::error::IoError;

/// An in-memory hierarchy: cgroups by id, members, and a log of calls.
#[derive(Default, Debug)]
pub struct FakeBackend {
    /// Every cgroup, by id.
    pub paths: BTreeMap<CgroupId, String>,
    /// The tasks in each cgroup.
    pub members: BTreeMap<CgroupId, BTreeSet<u32>>,
    /// The records stored on nodes.
    pub records: BTreeMap<CgroupId, NodeRecord>,
    /// What was asked, in order: `mkdir P`, `move TID P`, `rmdir P`, `write P/FILE VALUE`.
    pub log: Vec<String>,
    /// Tasks that are gone: moving them finds them vanished.
    pub vanished_tids: BTreeSet<u32>,
    /// Controller files the kernel refuses to take.
    pub refused_files: BTreeSet<String>,
    /// The uid owning a cgroup's directory, where it is not root.
    pub owners: BTreeMap<CgroupId, u32>,
    /// Cgroups whose removal fails (an I/O error, as a kernel may return).
    pub failing_removals: BTreeSet<CgroupId>,
    next_id: CgroupId,
}

impl FakeBackend {
    /// A hierarchy of one cgroup, `path` with id `id`; new cgroups get ids from 10,001.
    pub fn with_root(id: CgroupId, path: &str) -> FakeBackend {
        let mut b = FakeBackend { next_id: 10_000, ..Default::default() };
        b.paths.insert(id, path.to_string());
        b
    }
    /// The id of the cgroup at `path`.
    pub fn id_of(&self, path: &str) -> Option<CgroupId> {
        self.paths.iter().find(|(_, p)| p.as_str() == path).map(|(id, _)| *id)
    }
    fn where_is(&self, tid: u32) -> Option<CgroupId> {
        self.members.iter().find(|(_, m)| m.contains(&tid)).map(|(id, _)| *id)
    }
    /// Makes cgroup `path` (with id `id`) as another writer would.
    pub fn add_cgroup(&mut self, id: CgroupId, path: &str) {
        self.paths.insert(id, path.to_string());
    }
    /// Puts `tid` into `id` as another writer (or a fork) would, unlogged.
    pub fn put(&mut self, tid: u32, id: CgroupId) {
        for m in self.members.values_mut() {
            m.remove(&tid);
        }
        self.members.entry(id).or_default().insert(tid);
    }
    /// Where `tid` is.
    pub fn path_of_task(&self, tid: u32) -> Option<&str> {
        self.where_is(tid).map(|id| self.paths[&id].as_str())
    }
}

impl CgroupBackend for FakeBackend {
    fn path_of(&mut self, id: CgroupId) -> Result<Option<String>, IoError> {
        Ok(self.paths.get(&id).cloned())
    }
    fn create(&mut self, parent: CgroupId, name: &str) -> Result<Created, IoError> {
        let path = crate::core::cgpath::join(&self.paths[&parent], name);
        self.log.push(format!("mkdir {path}"));
        if let Some(id) = self.id_of(&path) {
            let empty = self.members.get(&id).is_none_or(|m| m.is_empty())
                && !self.paths.values().any(|p| p.starts_with(&format!("{path}/")));
            return Ok(if empty { Created::EmptyLeftover(id) } else { Created::Taken });
        }
        self.next_id += 1;
        self.paths.insert(self.next_id, path);
        Ok(Created::New(self.next_id))
    }
    fn store_record(&mut self, id: CgroupId, record: &NodeRecord) -> Result<bool, IoError> {
        self.records.insert(id, record.clone());
        Ok(true)
    }
    fn attach(&mut self, id: CgroupId, tid: u32, _tgid: u32) -> Result<Attached, IoError> {
        if self.vanished_tids.contains(&tid) {
            return Ok(Attached::Vanished);
        }
        for m in self.members.values_mut() {
            m.remove(&tid);
        }
        self.members.entry(id).or_default().insert(tid);
        self.log.push(format!("move {tid} {}", self.paths[&id]));
        Ok(Attached::Moved)
    }
    fn remove(&mut self, id: CgroupId) -> Result<Removed, IoError> {
        let Some(path) = self.paths.get(&id).cloned() else { return Ok(Removed::Vanished) };
        if self.failing_removals.contains(&id) {
            return Err(IoError::new("rmdir", &path, std::io::Error::from_raw_os_error(16)));
        }
        let busy = self.members.get(&id).is_some_and(|m| !m.is_empty())
            || self.paths.values().any(|p| p.starts_with(&format!("{path}/")));
        if busy {
            return Ok(Removed::Busy);
        }
        self.paths.remove(&id);
        self.log.push(format!("rmdir {path}"));
        Ok(Removed::Removed)
    }
    fn usage(&mut self, _id: CgroupId) -> Vec<(String, u64)> {
        Vec::new()
    }
    fn configure(&mut self, id: CgroupId, files: &[(&'static str, String)]) -> Vec<String> {
        let mut refused = Vec::new();
        for (file, value) in files {
            if self.refused_files.contains(*file) {
                refused.push(format!("{file}={value}: Invalid argument"));
                continue;
            }
            self.log.push(format!("write {}/{file} {value}", self.paths[&id]));
        }
        refused
    }
    fn id_at(&mut self, path: &str) -> Result<Option<CgroupId>, IoError> {
        Ok(self.id_of(path))
    }
    fn members_of(&mut self, id: CgroupId) -> Result<Vec<u32>, IoError> {
        Ok(self.members.get(&id).map(|m| m.iter().copied().collect()).unwrap_or_default())
    }
    fn rescan(&mut self) -> Result<(), IoError> {
        Ok(())
    }
    fn record_at(&mut self, path: &str) -> Result<Option<(u32, Vec<u8>)>, IoError> {
        let Some(id) = self.id_of(path) else { return Ok(None) };
        let owner = self.owners.get(&id).copied().unwrap_or(0);
        Ok(self.records.get(&id).map(|r| (owner, r.to_bytes())))
    }
}
