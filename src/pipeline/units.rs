//! Sandboxes started in an undelegated scope of a user's manager, which
//! nsgroup may not write in, become scopes of their own that the manager
//! makes (docs/semantics.md §16): one request per sandbox (its set), made
//! by its first task; once the scope holds that task, the task is placed
//! again from there, as if it had just entered its set, and its node is made
//! inside the scope. A request that failed is not made again for a while.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::bpf::Event;
use crate::core::nsset::NsSet;
use crate::core::unit::UnitPlan;

/// How long a sandbox whose request failed stays where it is before its
/// next entry may ask again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Failed sandboxes remembered at most (then forgotten all at once).
const MAX_FAILED: usize = 4096;

/// The requests in flight and those that failed lately.
pub struct Units {
    enabled: bool,
    /// By the first task (pid, start time): its event, the set it came
    /// from and the one it entered (as tracked: masked).
    asked: HashMap<(u32, u64), (Event, NsSet, NsSet)>,
    /// The sets asked for.
    sets: HashSet<NsSet>,
    failed: HashMap<NsSet, Instant>,
}

impl Units {
    pub fn new(enabled: bool) -> Units {
        Units { enabled, asked: HashMap::new(), sets: HashSet::new(), failed: HashMap::new() }
    }

    /// Whether sandboxes are asked scopes of their own at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The request for the sandbox `ev`'s task (entering `set`, refused in
    /// the cgroup at `origin` because nsgroup may not write there), if one
    /// is to be made: not for a thread (a scope holds processes), a cgroup
    /// that is no user's scope, a sandbox asked for already or lately, nor a
    /// task whose request waits (one per task and per set: what waits is
    /// bounded by the worker's queue).
    pub fn plan(&self, ev: &Event, set: NsSet, origin: &str) -> Option<UnitPlan> {
        if !self.enabled || ev.tid != ev.tgid || self.sets.contains(&set) || self.asked.contains_key(&(ev.tgid, ev.start_ns)) {
            return None;
        }
        if self.failed.get(&set).is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return None;
        }
        UnitPlan::for_task(origin, ev.tgid, ev.start_ns, &ev.comm)
    }

    /// `plan` was queued for `ev` (which came from `prev` into `set`).
    pub fn asked(&mut self, plan: &UnitPlan, ev: &Event, prev: NsSet, set: NsSet) {
        self.sets.insert(set);
        self.asked.insert((plan.pid, plan.start_ns), (ev.clone(), prev, set));
    }

    /// `plan`'s request ended (`started`: its scope holds its task): the
    /// event and the set it came from, to place it again.
    pub fn ended(&mut self, plan: &UnitPlan, started: bool) -> Option<(Event, NsSet)> {
        let (ev, prev, set) = self.asked.remove(&(plan.pid, plan.start_ns))?;
        self.sets.remove(&set);
        if !started {
            if self.failed.len() >= MAX_FAILED {
                self.failed.clear();
            }
            self.failed.insert(set, Instant::now());
        }
        Some((ev, prev))
    }
}
