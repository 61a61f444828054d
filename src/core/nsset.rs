//! Namespace sets: the tuple of namespace inode numbers a task lives in.

use std::fmt;
use std::str::FromStr;

/// One namespace slot, in the order of the names under `/proc/<pid>/ns/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsKind {
    Cgroup,
    Ipc,
    Mnt,
    Net,
    Pid,
    PidForChildren,
    Time,
    TimeForChildren,
    User,
    Uts,
}

impl NsKind {
    /// Every slot, in tuple order (the same order as `bpf/nsgroup.h`).
    pub const ALL: [NsKind; 10] = [
        NsKind::Cgroup,
        NsKind::Ipc,
        NsKind::Mnt,
        NsKind::Net,
        NsKind::Pid,
        NsKind::PidForChildren,
        NsKind::Time,
        NsKind::TimeForChildren,
        NsKind::User,
        NsKind::Uts,
    ];

    /// The file name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Cgroup => "cgroup",
            NsKind::Ipc => "ipc",
            NsKind::Mnt => "mnt",
            NsKind::Net => "net",
            NsKind::Pid => "pid",
            NsKind::PidForChildren => "pid_for_children",
            NsKind::Time => "time",
            NsKind::TimeForChildren => "time_for_children",
            NsKind::User => "user",
            NsKind::Uts => "uts",
        }
    }

    /// Parses a `/proc/<pid>/ns/` name.
    pub fn from_proc_name(name: &str) -> Option<NsKind> {
        NsKind::ALL.into_iter().find(|k| k.proc_name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The inode numbers of a task's ten namespaces; 0 in a slot the kernel lacks
/// (or one masked out by [`NsMask`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsSet([u64; 10]);

impl NsSet {
    /// A set from inode numbers in [`NsKind::ALL`] order.
    pub fn new(inodes: [u64; 10]) -> NsSet {
        NsSet(inodes)
    }

    /// The inode number in one slot.
    pub fn get(&self, kind: NsKind) -> u64 {
        self.0[kind.index()]
    }

    /// The slots in which two sets differ, with this set's inode numbers.
    pub fn differing<'a>(&'a self, other: &'a NsSet) -> impl Iterator<Item = (NsKind, u64)> + 'a {
        NsKind::ALL.into_iter().filter(move |k| self.get(*k) != other.get(*k)).map(move |k| (k, self.get(k)))
    }

    /// The set as seen through a mask: ignored slots read 0.
    pub fn masked(&self, mask: NsMask) -> NsSet {
        let mut out = *self;
        for k in NsKind::ALL {
            if !mask.counts(k) {
                out.0[k.index()] = 0;
            }
        }
        out
    }

    /// True when every slot is 0 (an exited task's set).
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&i| i == 0)
    }
}

/// `cgroup:4026531835,ipc:4026531839,...`, the form stored in node xattrs.
impl fmt::Display for NsSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, k) in NsKind::ALL.into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", k.proc_name(), self.get(k))?;
        }
        Ok(())
    }
}

/// Error parsing an [`NsSet`] from its display form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a namespace set: {0:?} (want kind:inode pairs separated by commas)")]
pub struct ParseNsSetError(pub String);

impl FromStr for NsSet {
    type Err = ParseNsSetError;
    fn from_str(s: &str) -> Result<NsSet, ParseNsSetError> {
        let bad = || ParseNsSetError(s.to_string());
        let mut out = NsSet::default();
        for pair in s.trim().split(',').filter(|p| !p.is_empty()) {
            let (kind, inode) = pair.split_once(':').ok_or_else(bad)?;
            let kind = NsKind::from_proc_name(kind).ok_or_else(bad)?;
            out.0[kind.index()] = inode.parse().map_err(|_| bad())?;
        }
        Ok(out)
    }
}

/// Which namespace slots count when comparing sets (configuration `namespaces`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsMask(u16);

impl NsMask {
    /// Every slot counts.
    pub const ALL: NsMask = NsMask((1 << 10) - 1);

    /// A mask counting exactly the given kinds.
    pub fn of(kinds: impl IntoIterator<Item = NsKind>) -> NsMask {
        NsMask(kinds.into_iter().fold(0, |m, k| m | 1 << k.index()))
    }

    /// Whether a change in this slot makes a new set.
    pub fn counts(self, kind: NsKind) -> bool {
        self.0 & (1 << kind.index()) != 0
    }

    /// Whether two masks share a kind.
    pub fn intersects(self, other: NsMask) -> bool {
        self.0 & other.0 != 0
    }

    /// The mask of `/proc/<pid>/ns` names; an unknown name is an error
    /// that lists the known ones.
    pub fn parse_names(names: &[String]) -> Result<NsMask, String> {
        let kinds = names.iter().map(|n| {
            NsKind::from_proc_name(n).ok_or_else(|| {
                let known: Vec<_> = NsKind::ALL.iter().map(|k| k.proc_name()).collect();
                format!("unknown namespace kind {n:?} (known: {})", known.join(", "))
            })
        });
        Ok(NsMask::of(kinds.collect::<Result<Vec<_>, _>>()?))
    }
}

impl Default for NsMask {
    fn default() -> NsMask {
        NsMask::ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(base: u64) -> NsSet {
        NsSet::new(std::array::from_fn(|i| base + i as u64))
    }

    #[test]
    fn display_round_trips() {
        let s = set(4026531835);
        let text = s.to_string();
        assert!(text.starts_with("cgroup:4026531835,ipc:4026531836,"));
        assert_eq!(text.parse::<NsSet>(), Ok(s));
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!("net".parse::<NsSet>().is_err());
        assert!("bogus:1".parse::<NsSet>().is_err());
        assert!("net:x".parse::<NsSet>().is_err());
    }

    #[test]
    fn differing_lists_changed_slots() {
        let a = set(100);
        let mut b = a;
        b.0[NsKind::Net.index()] = 7;
        b.0[NsKind::Uts.index()] = 9;
        let d: Vec<_> = b.differing(&a).collect();
        assert_eq!(d, vec![(NsKind::Net, 7), (NsKind::Uts, 9)]);
    }

    #[test]
    fn mask_hides_ignored_slots() {
        let a = set(100);
        let mut b = a;
        b.0[NsKind::Mnt.index()] = 1;
        let no_mnt = NsMask::of(NsKind::ALL.into_iter().filter(|k| *k != NsKind::Mnt));
        assert_ne!(a, b);
        assert_eq!(a.masked(no_mnt), b.masked(no_mnt));
        assert_eq!(a.masked(NsMask::ALL), a);
    }
}
