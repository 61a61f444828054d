//! Restores the invariant from a snapshot of all tasks: at start, after lost
//! events, in the /proc fallback. Every task whose set differs from its
//! cgroup's is placed as if it had just entered its set, in start order, so
//! that a node is named after the earliest-started task of its set and a
//! child follows its parent's move.

use std::collections::HashMap;

use crate::core::node::CgroupId;
use crate::core::nsset::{NsMask, NsSet};
use crate::core::tracker::{Entry, Granularity, Placement};
use crate::pipeline::placer::{Outcome, Placer};
use crate::sys::cgroupfs::CgroupBackend;
use crate::sys::error::IoError;
use crate::sys::scan::TaskSample;

/// What a reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub examined: usize,
    pub moved: usize,
    pub created: usize,
    /// Tasks another cgroup writer had put elsewhere, left there.
    pub foreign: usize,
    pub refused: usize,
    pub vanished: usize,
}

/// A task's final place after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub tid: u32,
    pub tgid: u32,
    /// Its start time, as sampled.
    pub start: u64,
    /// Its set, masked.
    pub set: NsSet,
    pub cgroup: CgroupId,
}

/// Places every sampled task that `admits` tracks. With
/// `respect_other_writers`, a task is moved only along a node lineage (down
/// into its node, or back up where its node came from); one found elsewhere
/// was put there by someone else. Every move or creation passes `check`
/// first, which may turn it into a stay or a refusal.
pub fn reconcile<B: CgroupBackend>(
    placer: &mut Placer<B>,
    mut tasks: Vec<TaskSample>,
    mask: NsMask,
    respect_other_writers: bool,
    mut admits: impl FnMut(&TaskSample) -> bool,
    mut check: impl FnMut(&mut Placer<B>, &Entry, &TaskSample, Placement) -> Placement,
) -> Result<(Report, Vec<Placed>), IoError> {
    tasks.sort_by_key(|t| (t.start, t.tgid, t.tid));
    let mut report = Report { examined: tasks.len(), ..Report::default() };
    let mut moved: HashMap<u32, (CgroupId, CgroupId)> = HashMap::new();
    let mut placed = Vec::with_capacity(tasks.len());
    let per_process = placer.tracker().granularity() == Granularity::Process;
    for t in &tasks {
        // A task still where its parent was before the parent moved follows it.
        let effective = match moved.get(&t.parent) {
            Some(&(from, to)) if from == t.cgroup => to,
            _ => t.cgroup,
        };
        let set = t.set.masked(mask);
        let prev = placer.tracker().home_set(effective).masked(mask);
        let entry = Entry { tid: t.tid, tgid: t.tgid, uid: t.uid, owner: t.owner, cgroup: effective, set, prev };
        let here = |cgroup| Placed { tid: t.tid, tgid: t.tgid, start: t.start, set, cgroup };
        let mut placement = if admits(t) { placer.tracker().place(&entry) } else { Placement::Stay };
        if placement == Placement::Stay && effective != t.cgroup && !(per_process && t.tid != t.tgid) {
            placement = Placement::Move(effective);
        }
        if per_process && t.tid != t.tgid && matches!(placement, Placement::Move(_)) {
            placement = Placement::Stay; // moved with its leader
        }
        if let Placement::Move(to) = placement {
            if respect_other_writers && !placer.tracker().on_lineage(t.cgroup, to) {
                report.foreign += 1;
                placed.push(here(t.cgroup));
                continue;
            }
        }
        let placement = check(placer, &entry, t, placement);
        let at = match placer.carry_out(placement, &entry, &t.comm)? {
            Outcome::Stayed => t.cgroup,
            Outcome::Moved { to, created } => {
                report.moved += 1;
                report.created += usize::from(created);
                moved.insert(t.tid, (t.cgroup, to));
                to
            }
            Outcome::Refused(_) => {
                report.refused += 1;
                t.cgroup
            }
            Outcome::Vanished => {
                report.vanished += 1;
                continue;
            }
        };
        placed.push(here(at));
    }
    Ok((report, placed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nsset::NsSet;
    use crate::core::tracker::Tracker;
    use crate::testing::FakeBackend;

    const ROOT: CgroupId = 1;

    fn set(n: u64) -> NsSet {
        NsSet::new([n; 10])
    }

    fn task(tid: u32, parent: u32, start: u64, cgroup: CgroupId, s: u64) -> TaskSample {
        TaskSample {
            tid,
            tgid: tid,
            parent,
            start,
            uid: 0,
            owner: 0,
            comm: format!("t{tid}"),
            cgroup,
            cgroup_path: String::new(),
            set: set(s),
        }
    }

    fn pass(_: &mut Placer<FakeBackend>, _: &Entry, _: &TaskSample, p: Placement) -> Placement {
        p
    }

    fn placer() -> Placer<FakeBackend> {
        Placer::new(Tracker::new(set(1), Granularity::Thread), FakeBackend::with_root(ROOT, "/t"), || 0)
    }

    #[test]
    fn places_as_if_just_entered_with_children_following_parents() {
        let mut p = placer();
        let tasks = vec![
            task(30, 20, 3, ROOT, 3), // init of the new pid ns, forked by 20
            task(20, 1, 2, ROOT, 2),  // unshare --fork --pid
            task(31, 30, 4, ROOT, 3), // a child of 30, same set
            task(10, 1, 1, ROOT, 1),  // untouched
        ];
        let (report, _) = reconcile(&mut p, tasks, NsMask::ALL, false, |_| true, pass).unwrap();
        assert_eq!(report, Report { examined: 4, moved: 3, created: 2, ..Report::default() });
        let b = p.backend();
        assert_eq!(b.path_of_task(20), Some("/t/node_20"));
        assert_eq!(b.path_of_task(30), Some("/t/node_20/node_30"));
        assert_eq!(b.path_of_task(31), Some("/t/node_20/node_30"));
        assert_eq!(b.path_of_task(10), None);
    }

    #[test]
    fn second_run_moves_nothing_and_adopted_nodes_are_reused() {
        let mut p = placer();
        let tasks = vec![task(20, 1, 2, ROOT, 2)];
        reconcile(&mut p, tasks, NsMask::ALL, false, |_| true, pass).unwrap();
        let node = p.tracker().node_of_set(&set(2)).unwrap().id;
        let again = vec![task(20, 1, 2, node, 2), task(21, 1, 5, ROOT, 2)];
        let (report, _) = reconcile(&mut p, again, NsMask::ALL, false, |_| true, pass).unwrap();
        assert_eq!((report.moved, report.created), (1, 0));
        assert_eq!(p.backend().path_of_task(21), Some("/t/node_20"));
    }

    #[test]
    fn other_writers_placements_are_respected_in_shared_hierarchies() {
        let mut p = placer();
        reconcile(&mut p, vec![task(20, 1, 2, ROOT, 2)], NsMask::ALL, true, |_| true, pass).unwrap();
        p.backend().paths.insert(77, "/elsewhere".into());
        let (report, placed) = reconcile(&mut p, vec![task(20, 1, 2, 77, 2)], NsMask::ALL, true, |_| true, pass).unwrap();
        assert_eq!((report.foreign, report.moved), (1, 0));
        assert_eq!(placed.iter().map(|p| (p.tid, p.cgroup)).collect::<Vec<_>>(), vec![(20, 77)]);
        let (report, _) = reconcile(&mut p, vec![task(20, 1, 2, 77, 2)], NsMask::ALL, false, |_| true, pass).unwrap();
        assert_eq!(report.moved, 1, "in its own hierarchy nsgroup converges");
    }

    #[test]
    fn filtered_and_masked_tasks_stay() {
        let mut p = placer();
        let (r, _) = reconcile(&mut p, vec![task(20, 1, 2, ROOT, 2)], NsMask::ALL, false, |t| t.tid != 20, pass).unwrap();
        assert_eq!(r.moved, 0);
        let mut only_slot0 = set(1);
        only_slot0 = NsSet::new(std::array::from_fn(|i| if i == 2 { 99 } else { only_slot0.get(crate::core::nsset::NsKind::ALL[i]) }));
        let mut t = task(21, 1, 3, ROOT, 1);
        t.set = only_slot0;
        let no_mnt = NsMask::of(crate::core::nsset::NsKind::ALL.into_iter().filter(|k| *k != crate::core::nsset::NsKind::Mnt));
        let (r, _) = reconcile(&mut p, vec![t], no_mnt, false, |_| true, pass).unwrap();
        assert_eq!(r.moved, 0);
    }
}
