//! The invariant, checked from cgroupfs and /proc: every task whose set
//! differs from the base set is in the node of its set, every task in the
//! base set is outside nodes, and every set has exactly one node — except
//! where `nsgroup run` leaves a task where it is by rule (the same policy
//! functions decide: [`crate::policy`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::Config;
use crate::core::naming;
use crate::core::nsset::{NsMask, NsSet};
use crate::core::tracker::Granularity;
use crate::policy::gate::{self, Bounds};
use crate::policy::rules;
use crate::sys::delegation::Delegation;
use crate::sys::error::IoError;
use crate::sys::hierarchy::Hierarchy;
use crate::sys::procfs::ProcFs;
use crate::sys::scan::{scan, Scan, TaskSample};

/// A task that is not where the invariant puts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Misplaced {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    /// The node of its set, if it has one.
    pub expected: Option<String>,
}

/// The rule by which `nsgroup run` leaves a task where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The include/exclude filters do not track it.
    Filters,
    /// Its set's node would be deeper than `max_depth`.
    MaxDepth,
    /// Its cgroup is not in a subtree delegated to nsgroup (§16).
    Delegation,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Filters => "filters",
            Rule::MaxDepth => "max_depth",
            Rule::Delegation => "delegation",
        }
    }
}

/// A task out of the invariant's place that `run` leaves there by `rule`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub rule: Rule,
    #[serde(flatten)]
    pub task: Misplaced,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub tasks: usize,
    pub nodes: usize,
    pub misplaced: Vec<Misplaced>,
    /// Tasks outside the node of their set because it lies outside their
    /// cgroup's subtree and they lack CAP_SYS_ADMIN: the daemon leaves them
    /// there by the ns subsystem's rule (docs/semantics.md §13). Not a violation.
    pub outside_subtree: Vec<Misplaced>,
    /// Tasks the daemon leaves where they are by another rule (filters,
    /// `max_depth`, delegation). Not a violation.
    pub left_out: Vec<LeftOut>,
    /// Sets with more than one node: the node paths.
    pub duplicate_nodes: Vec<Vec<String>>,
    /// Tasks in the subtree whose /proc entries could not be read: not checked.
    pub unreadable_tasks: usize,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.misplaced.is_empty() && self.duplicate_nodes.is_empty()
    }

    /// How many tasks each rule left out, by rule.
    pub fn left_out_by_rule(&self) -> BTreeMap<Rule, usize> {
        let mut counts = BTreeMap::new();
        for l in &self.left_out {
            *counts.entry(l.rule).or_default() += 1;
        }
        counts
    }
}

/// The rules `run` applies, as `config` sets them for `hierarchy`.
pub struct Rules<'a> {
    config: &'a Config,
    mask: NsMask,
    bounds: Bounds,
    delegation: Option<Delegation>,
}

impl<'a> Rules<'a> {
    pub fn new(config: &'a Config, mask: NsMask, hierarchy: &Hierarchy) -> Rules<'a> {
        Rules { config, mask, bounds: Bounds::of(config), delegation: gate::delegation_rule(config, hierarchy) }
    }
}

/// Why a task is not where the invariant puts it, by `run`'s rules.
enum Why {
    /// No rule: a violation.
    Misplaced,
    Subtree,
    Rule(Rule),
}

/// The nodes of a subtree, by path.
struct Nodes {
    paths: BTreeSet<String>,
    root: String,
}

impl Nodes {
    /// How many nodes `path` is inside (itself included), through nodes only.
    fn depth(&self, path: &str) -> u32 {
        self.ancestors(path).take_while(|p| self.paths.contains(*p)).count() as u32
    }

    /// Where the base set lives for a task in `path`: the first ancestor that is no node.
    fn outside(&self, path: &str) -> String {
        self.ancestors(path).find(|p| !self.paths.contains(*p)).unwrap_or(&self.root).to_string()
    }

    /// `path` and its ancestors up to the root.
    fn ancestors<'p>(&'p self, path: &'p str) -> impl Iterator<Item = &'p str> {
        let root = self.root.as_str();
        std::iter::successors(Some(path), move |p| {
            if *p == root || *p == "/" {
                return None;
            }
            Some(match p.rsplit_once('/') {
                Some(("", _)) => "/",
                Some((parent, _)) => parent,
                None => return None,
            })
        })
    }
}

/// Checks the subtree `root`. `base` is the set of cgroups that are no node
/// (unmasked: its user namespace is the one CAP_SYS_ADMIN counts in).
pub fn check(hierarchy: &Hierarchy, root: &str, proc: &ProcFs, base: NsSet, rules: &mut Rules) -> Result<Verdict, IoError> {
    let own_user_ns = base.get(crate::core::nsset::NsKind::User);
    let mut by_set: BTreeMap<NsSet, Vec<String>> = BTreeMap::new();
    let mut nodes = Nodes { paths: BTreeSet::new(), root: root.to_string() };
    for (path, _) in hierarchy.walk(root)? {
        let name = path.rsplit('/').next().unwrap_or("");
        if let Some(record) = hierarchy.record(&path) {
            by_set.entry(record.set).or_default().push(path.clone());
            nodes.paths.insert(path);
        } else if naming::creator_pid(name).is_some() && path != root {
            nodes.paths.insert(path);
        }
    }
    let Scan { tasks, unreadable: unreadable_tasks } = scan(proc, hierarchy, root, own_user_ns)?;
    let per_process = hierarchy.granularity() == Granularity::Process;
    let base = base.masked(rules.mask);
    let mut verdict = Verdict { tasks: tasks.len(), nodes: nodes.paths.len(), unreadable_tasks, ..Verdict::default() };
    for t in tasks {
        if per_process && t.tid != t.tgid {
            continue;
        }
        let set = t.set.masked(rules.mask);
        let expected = by_set.get(&set).and_then(|v| v.first()).cloned();
        let ok = if set == base { !nodes.paths.contains(&t.cgroup_path) } else { expected.as_ref() == Some(&t.cgroup_path) };
        if ok {
            continue;
        }
        let why = why(rules, proc, own_user_ns, &nodes, &t, set == base, expected.as_deref())?;
        let m = Misplaced { tid: t.tid, pid: t.tgid, comm: t.comm, cgroup: t.cgroup_path, expected };
        match why {
            Why::Misplaced => verdict.misplaced.push(m),
            Why::Subtree => verdict.outside_subtree.push(m),
            Why::Rule(rule) => verdict.left_out.push(LeftOut { rule, task: m }),
        }
    }
    verdict.duplicate_nodes = by_set.into_values().filter(|v| v.len() > 1).collect();
    Ok(verdict)
}

/// What `run` would do with task `t`, out of place: the filters first, then
/// the bounds of a node it would need, then where it would go (its set's
/// node, the cgroup outside its nodes for the base set, else a new node
/// in its cgroup) by the delegation rule and the ns subsystem's rule.
fn why(rules: &mut Rules, proc: &ProcFs, own_user_ns: u64, nodes: &Nodes, t: &TaskSample, in_base: bool, expected: Option<&str>) -> Result<Why, IoError> {
    if !rules::admits(rules.config, &t.comm, t.owner, &t.cgroup_path) {
        return Ok(Why::Rule(Rule::Filters));
    }
    let there = match expected {
        Some(node) => node.to_string(),
        None if in_base => nodes.outside(&t.cgroup_path),
        None => {
            if rules.bounds.too_deep(nodes.depth(&t.cgroup_path) + 1).is_some() {
                return Ok(Why::Rule(Rule::MaxDepth));
            }
            t.cgroup_path.clone()
        }
    };
    if gate::undelegated(rules.delegation.as_mut(), &there).is_some() {
        return Ok(Why::Rule(Rule::Delegation));
    }
    let held = gate::outside_subtree(proc, t.tgid, t.tid, own_user_ns, &t.cgroup_path, &there)?;
    Ok(if held.is_some() { Why::Subtree } else { Why::Misplaced })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nsset::NsKind;
    use crate::sys::hierarchy::Version;
    use crate::testing::procfs::{FakeProc, FakeTask, KEY};

    /// A hierarchy of `dirs` and a fake procfs, in one tempdir.
    struct Host {
        dir: tempfile::TempDir,
        fake: FakeProc,
    }

    impl Host {
        fn new(dirs: &[&str]) -> Host {
            let dir = tempfile::tempdir().unwrap();
            for d in dirs {
                std::fs::create_dir_all(dir.path().join("cg").join(d.trim_start_matches('/'))).unwrap();
            }
            let fake = FakeProc::at(dir.path());
            fake.set("base").unwrap();
            Host { dir, fake }
        }

        fn hierarchy(&self) -> Hierarchy {
            Hierarchy::new(self.dir.path().join("cg"), Version::V1, KEY)
        }

        /// A task `pid` named `comm` in `cgroup`, in set `set` (made from the base set by a new mount namespace).
        fn task(&self, pid: u32, comm: &str, cgroup: &str, set: &str, cap_eff: u64) {
            if set != "base" {
                self.fake.derive(set, "base", &[NsKind::Mnt]).unwrap();
            }
            self.fake.write(&FakeTask { comm: comm.into(), cap_eff, ..FakeTask::new(pid, cgroup, set) }).unwrap();
        }

        fn check(&self, config: &str) -> Verdict {
            let config = Config::parse(config, std::path::Path::new("/t.toml")).unwrap();
            let h = self.hierarchy();
            let mut rules = Rules::new(&config, config.mask().unwrap(), &h);
            check(&h, "/", &self.fake.proc(), self.fake.set("base").unwrap(), &mut rules).unwrap()
        }
    }

    fn tids(list: &[Misplaced]) -> Vec<u32> {
        list.iter().map(|m| m.tid).collect()
    }

    fn left(v: &Verdict) -> Vec<(u32, Rule)> {
        v.left_out.iter().map(|l| (l.task.tid, l.rule)).collect()
    }

    #[test]
    fn a_task_of_its_own_set_without_a_node_is_misplaced() {
        let host = Host::new(&["/a"]);
        host.task(10, "sh", "/a", "base", 0);
        host.task(11, "box", "/a", "box", 0);
        let v = host.check("delegated_only = false\n");
        assert_eq!(tids(&v.misplaced), [11]);
        assert!(!v.holds());
    }

    #[test]
    fn the_filters_leave_tasks_out() {
        let host = Host::new(&["/a"]);
        host.task(11, "box", "/a", "box", 0);
        host.task(12, "other", "/a", "other", 0);
        let v = host.check("delegated_only = false\n[exclude]\ncomm = [\"box\"]\n");
        assert_eq!(left(&v), [(11, Rule::Filters)]);
        assert_eq!(tids(&v.misplaced), [12]);
        assert_eq!(v.left_out_by_rule(), BTreeMap::from([(Rule::Filters, 1)]));
    }

    #[test]
    fn a_node_beyond_max_depth_is_left_out() {
        let host = Host::new(&["/node_5"]);
        host.task(6, "inner", "/node_5", "inner", 0);
        let v = host.check("delegated_only = false\nmax_depth = 1\n");
        assert_eq!(left(&v), [(6, Rule::MaxDepth)]);
        assert!(v.holds());
        let v = host.check("delegated_only = false\nmax_depth = 2\n");
        assert_eq!(tids(&v.misplaced), [6], "one level more is allowed: its node is missing");
    }

    #[test]
    fn a_setns_back_without_cap_sys_admin_stays_in_its_node() {
        let host = Host::new(&["/node_5"]);
        host.task(7, "back", "/node_5", "base", 0);
        let v = host.check("delegated_only = false\n");
        assert_eq!(tids(&v.outside_subtree), [7], "the ns subsystem's rule: never up without CAP_SYS_ADMIN");
        assert!(v.holds());
        host.task(7, "back", "/node_5", "base", 1 << 21);
        let v = host.check("delegated_only = false\n");
        assert_eq!(tids(&v.misplaced), [7], "with CAP_SYS_ADMIN it would have been moved up");
    }

    #[test]
    fn undelegated_units_are_left_by_the_delegation_rule() {
        let host = Host::new(&["/system.slice/logind.service", "/system.slice/box.service"]);
        let marked = host.dir.path().join("cg/system.slice/box.service");
        if rustix::fs::setxattr(&marked, "user.delegate", b"1", rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("skipped: no user xattrs on {}", host.dir.path().display());
            return;
        }
        host.task(10, "systemd-logind", "/system.slice/logind.service", "private-tmp", 0);
        host.task(20, "box", "/system.slice/box.service", "box", 0);
        let v = host.check("delegated_only = true\n");
        assert_eq!(left(&v), [(10, Rule::Delegation)]);
        assert_eq!(tids(&v.misplaced), [20], "inside a delegated unit the invariant holds as elsewhere");
        let v = host.check("delegated_only = false\n");
        assert_eq!(tids(&v.misplaced), [10, 20], "without the rule both are misplaced");
    }
}
