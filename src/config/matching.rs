//! Which tasks are tracked (the include and exclude filters) and which
//! limits a new node gets (the limit rules that match its creation); the
//! pressure rules match the same keys.

use super::{Config, Filter};
use crate::core::limit::Limit;
use crate::core::cgpath::within;
use crate::core::nsset::NsMask;

/// What a limit rule looks at, about the entry that makes a node.
#[derive(Clone, Copy, Debug)]
pub struct Creation<'a> {
    pub comm: &'a str,
    pub uid: u32,
    pub cgroup: &'a str,
    /// The kinds in which the new set differs from the one its task came from.
    pub entered: NsMask,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.comm.is_empty() && self.uid.is_empty() && self.cgroup.is_empty()
    }

    /// Whether a filter needs the task's uid (a /proc read per event).
    pub fn needs_uid(&self) -> bool {
        !self.uid.is_empty()
    }
}

impl Config {
    /// The limits of every rule that matches a creation, in file order (a
    /// later rule's value for a file replaces an earlier one's).
    pub fn limits_for(&self, c: Creation<'_>) -> Vec<Limit> {
        let mut out: Vec<Limit> = Vec::new();
        for rule in self.limit.iter().filter(|r| r.matches(c)) {
            for l in &rule.checked {
                out.retain(|o| o.key != l.key);
                out.push(l.clone());
            }
        }
        out.sort_by_key(|l| l.key);
        out
    }
}

/// The match keys of `[[limit]]` and `[[pressure]]`: every non-empty list
/// matches the creation.
pub(super) fn keys_match(comm: &[String], uid: &[u32], cgroup: &[String], entered_names: &[String], c: Creation<'_>) -> bool {
    let entered = NsMask::parse_names(entered_names).unwrap_or(NsMask::ALL);
    (comm.is_empty() || comm.iter().any(|x| x == c.comm))
        && (uid.is_empty() || uid.contains(&c.uid))
        && (cgroup.is_empty() || cgroup.iter().any(|x| within(c.cgroup, x)))
        && (entered_names.is_empty() || entered.intersects(c.entered))
}

/// What a filter decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub comm: &'a str,
    pub uid: Option<u32>,
    pub cgroup: &'a str,
}

impl Config {
    /// Whether a filter looks at cgroup paths.
    pub fn filters_cgroups(&self) -> bool {
        !self.include.cgroup.is_empty() || !self.exclude.cgroup.is_empty()
    }

    /// Whether a task is tracked at all under the include/exclude filters.
    pub fn admits(&self, s: Subject<'_>) -> bool {
        let inc = &self.include;
        let included = inc.is_empty()
            || ((inc.comm.is_empty() || inc.comm.iter().any(|c| c == s.comm))
                && (inc.uid.is_empty() || s.uid.is_some_and(|u| inc.uid.contains(&u)))
                && (inc.cgroup.is_empty() || inc.cgroup.iter().any(|c| within(s.cgroup, c))));
        let ex = &self.exclude;
        let excluded = ex.comm.iter().any(|c| c == s.comm)
            || s.uid.is_some_and(|u| ex.uid.contains(&u))
            || ex.cgroup.iter().any(|c| within(s.cgroup, c));
        included && !excluded
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;
    use crate::core::nsset::NsKind;

    #[test]
    fn limit_rules_match_creators_and_later_values_win() {
        let c = parse(
            "[[limit]]\nset = { \"pids.max\" = 100, \"cpu.weight\" = 50 }\n\
             [[limit]]\ncomm = [\"bwrap\"]\nentered = [\"net\"]\nset = { \"pids.max\" = \"8\", \"memory.max\" = \"1G\" }\n",
        )
        .unwrap();
        let net = NsMask::of([NsKind::Net]);
        let uts = NsMask::of([NsKind::Uts]);
        let at = |comm, entered| {
            let limits = c.limits_for(Creation { comm, uid: 1000, cgroup: "/a", entered });
            limits.iter().map(|l| l.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(at("bwrap", net), ["memory.max=1073741824", "pids.max=8", "cpu.weight=50"]);
        assert_eq!(at("bwrap", uts), ["pids.max=100", "cpu.weight=50"]);
        assert_eq!(at("sh", net), ["pids.max=100", "cpu.weight=50"]);
        let e = parse("[[limit]]\nset = { \"cpu.max\" = \"0\" }\n").unwrap_err().to_string();
        assert!(e.contains("limit.set") && e.contains("line 2") && e.contains("cpu.max"), "{e}");
    }

    #[test]
    fn filters() {
        let c = parse("[include]\ncomm = [\"unshare\", \"nsenter\"]\n[exclude]\ncgroup = [\"/a/b\"]\nuid = [7]").unwrap();
        let s = |comm, uid, cgroup| Subject { comm, uid, cgroup };
        assert!(c.admits(s("unshare", None, "/a")));
        assert!(!c.admits(s("sleep", None, "/a")));
        assert!(!c.admits(s("unshare", None, "/a/b/c")));
        assert!(c.admits(s("unshare", None, "/a/bc")));
        assert!(!c.admits(s("unshare", Some(7), "/a")));
        assert!(Config::default().admits(s("anything", None, "/")));
    }
}
