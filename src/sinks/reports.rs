//! What the daemon says about what it refused or could not do, at a pace no
//! user can set: a few lines per kind per interval, then one line of how many
//! were suppressed; refusals counted per user and reported once per interval.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::core::tracker::Refusal;

/// How often the counts are reported (and the per-kind allowance renewed).
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Lines of one kind written per interval before the rest are only counted.
const LINES_PER_INTERVAL: u32 = 5;
/// Users named in one report; the rest are summed up.
const USERS_PER_REPORT: usize = 20;

/// Kinds of log lines that users can cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// An entry left where it is, for a reason worth a line.
    Refused,
    /// A placement or removal that failed.
    Failed,
    /// A move dropped: the tid belongs to another task now.
    Reused,
    /// A move dropped: another cgroup writer moved the task meanwhile.
    OtherWriter,
    /// Ring buffer records that did not decode.
    Undecodable,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::Failed => "failed",
            Kind::Reused => "reused_tid",
            Kind::OtherWriter => "other_writer",
            Kind::Undecodable => "undecodable",
        }
    }
}

/// Refusals of one user in the current interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserRefusals {
    /// Over `max_nodes_per_user`.
    pub quota: u64,
    /// Over `max_creations_per_second_per_user`.
    pub rate: u64,
    /// For any other reason (depth, subtree, …).
    pub other: u64,
}

impl UserRefusals {
    fn total(&self) -> u64 {
        self.quota + self.rate + self.other
    }
}

/// One interval's counts, taken for logging.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Lines not written, by kind.
    pub suppressed: Vec<(&'static str, u64)>,
    /// The users with the most refusals, most first.
    pub users: Vec<(u32, UserRefusals)>,
    /// Refusals of the users left out of `users`, and how many they were.
    pub other_users: (usize, u64),
}

/// The counts of the current interval.
#[derive(Default)]
pub(crate) struct Reports {
    lines: HashMap<Kind, (u32, u64)>,
    users: BTreeMap<u32, UserRefusals>,
    /// Whether the report timer is pending ([`super::log::Log::report_due`]).
    armed: bool,
}

impl Reports {
    /// Whether a line of `kind` may be written now; counted either way.
    pub(crate) fn allow(&mut self, kind: Kind) -> bool {
        let (written, suppressed) = self.lines.entry(kind).or_default();
        if *written < LINES_PER_INTERVAL {
            *written += 1;
            true
        } else {
            *suppressed += 1;
            false
        }
    }

    /// Counts a refused entry of a set owned by `owner`.
    pub(crate) fn refused(&mut self, owner: u32, why: &Refusal) {
        let u = self.users.entry(owner).or_default();
        match why {
            Refusal::UserQuota { .. } => u.quota += 1,
            Refusal::UserRate { .. } => u.rate += 1,
            _ => u.other += 1,
        }
    }

    /// Whether the report timer must be started: something was counted and
    /// no timer is pending. Idle, nothing is armed (no periodic wakeups).
    pub(crate) fn arm(&mut self) -> bool {
        if self.armed || (self.lines.is_empty() && self.users.is_empty()) {
            return false;
        }
        self.armed = true;
        true
    }

    /// The interval's counts; a new interval starts.
    pub(crate) fn take(&mut self) -> Summary {
        self.armed = false;
        let mut suppressed: Vec<(&'static str, u64)> =
            self.lines.drain().filter(|(_, (_, n))| *n > 0).map(|(k, (_, n))| (k.name(), n)).collect();
        suppressed.sort();
        let mut users: Vec<(u32, UserRefusals)> = std::mem::take(&mut self.users).into_iter().collect();
        users.sort_by_key(|(uid, r)| (std::cmp::Reverse(r.total()), *uid));
        let rest = users.split_off(users.len().min(USERS_PER_REPORT));
        let other_users = (rest.len(), rest.iter().map(|(_, r)| r.total()).sum());
        Summary { suppressed, users, other_users }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_few_lines_and_counts_the_rest() {
        let mut r = Reports::default();
        let written = (0..15_000).filter(|_| r.allow(Kind::Refused)).count();
        assert_eq!(written, LINES_PER_INTERVAL as usize);
        assert!(r.arm() && !r.arm(), "armed once");
        let s = r.take();
        assert_eq!(s.suppressed, vec![("refused", 15_000 - LINES_PER_INTERVAL as u64)]);
        assert!(r.allow(Kind::Refused), "a new interval writes again");
    }

    #[test]
    fn refusals_are_summed_per_user_and_the_report_is_bounded() {
        let mut r = Reports::default();
        assert!(!r.arm(), "nothing to report: no timer");
        for uid in 0..30u32 {
            for _ in 0..=uid {
                r.refused(uid, &Refusal::UserQuota { owner: uid, live: 1 });
            }
        }
        r.refused(29, &Refusal::UserRate { owner: 29 });
        r.refused(29, &Refusal::TooDeep { depth: 40 });
        let s = r.take();
        assert_eq!(s.users.len(), USERS_PER_REPORT);
        assert_eq!(s.users[0], (29, UserRefusals { quota: 30, rate: 1, other: 1 }));
        assert_eq!(s.other_users, (10, (1..=10).sum()));
        assert_eq!(r.take(), Summary::default());
    }
}
