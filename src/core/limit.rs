//! Limits, pure: the one allow-list of the controller files nsgroup writes
//! ([`FILES`], each with the class that orders its values), the check every
//! value written passes ([`value_problem`]), and the limits rules set on new
//! nodes ([`Limit`]): the cgroup2 files a rule may set, how each value is
//! checked, and how each maps onto cgroup v1 files (for mirrors in v1
//! controller hierarchies). Writing them is control's.
//!
//! | cgroup2 | v1 |
//! | --- | --- |
//! | `memory.max` | `memory.limit_in_bytes` |
//! | `memory.high` | `memory.soft_limit_in_bytes` (reclaim target, not a throttle) |
//! | `pids.max` | `pids.max` |
//! | `cpu.max` `QUOTA PERIOD` | `cpu.cfs_period_us`, then `cpu.cfs_quota_us` |
//! | `cpu.weight` (1–10000, 100 normal) | `cpu.shares` (weight × 1024 / 100) |
//! | `io.max` `MAJ:MIN rbps= wbps= riops= wiops=` | `blkio.throttle.{read,write}_{bps,iops}_device` |

use std::fmt;

/// How a file's value may change without CAP_SYS_ADMIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A ceiling in bytes: `max` (cgroup2) or `-1` (v1) for none.
    Bytes { v1: bool },
    /// A ceiling in tasks: `max` for none.
    Count,
    /// cgroup2 `cpu.max`: `max|QUOTA [PERIOD]`, compared as quota / period.
    CpuMax,
    /// v1 `cpu.cfs_quota_us` (`-1` for none), a rate with `cpu.cfs_period_us`.
    CfsQuota,
    /// v1 `cpu.cfs_period_us`, a rate with `cpu.cfs_quota_us`.
    CfsPeriod,
    /// cgroup2 `io.max`: `MAJ:MIN` with `rbps=`, `wbps=`, `riops=`, `wiops=`.
    IoMax,
    /// v1 `blkio.throttle.*_device`: `MAJ:MIN N`, 0 for none.
    Throttle,
    /// A weight in `min..=max` whose default is `default`.
    Weight { default: u64, min: u64, max: u64 },
    /// cgroup2 `io.weight`: `[default] N` or `MAJ:MIN N`.
    IoWeight,
    /// `0` or `1`, where `1` is the harsher setting.
    Flag,
    /// A protection: what others must leave the node.
    Protection,
    /// Values nsgroup does not order.
    Unordered,
}

/// The files `limit` writes, and their classes; `*` stands for one path
/// component of letters and digits (a hugetlb page size). Everything else
/// (`cgroup.*`, `tasks`, `release_agent`, `notify_on_release`, …) is
/// refused: a limit never moves tasks or runs programs.
pub const FILES: &[(&str, Class)] = &[
    // cgroup2
    ("memory.max", Class::Bytes { v1: false }),
    ("memory.high", Class::Bytes { v1: false }),
    ("memory.low", Class::Protection),
    ("memory.min", Class::Protection),
    ("memory.swap.max", Class::Bytes { v1: false }),
    ("memory.swap.high", Class::Bytes { v1: false }),
    ("memory.oom.group", Class::Flag),
    ("pids.max", Class::Count),
    ("cpu.max", Class::CpuMax),
    ("cpu.weight", Class::Weight { default: 100, min: 1, max: 10_000 }),
    ("cpu.weight.nice", Class::Unordered),
    ("cpu.idle", Class::Flag),
    ("io.max", Class::IoMax),
    ("io.weight", Class::IoWeight),
    ("io.latency", Class::Protection),
    ("hugetlb.*.max", Class::Bytes { v1: false }),
    ("cpuset.cpus", Class::Unordered),
    ("cpuset.mems", Class::Unordered),
    // cgroup v1
    ("memory.limit_in_bytes", Class::Bytes { v1: true }),
    ("memory.soft_limit_in_bytes", Class::Bytes { v1: true }),
    ("memory.memsw.limit_in_bytes", Class::Bytes { v1: true }),
    ("memory.swappiness", Class::Unordered),
    ("cpu.shares", Class::Weight { default: 1024, min: 2, max: 262_144 }),
    ("cpu.cfs_quota_us", Class::CfsQuota),
    ("cpu.cfs_period_us", Class::CfsPeriod),
    // CFQ's, the scheduler that has this file (BFQ's is blkio.bfq.weight).
    ("blkio.weight", Class::Weight { default: 500, min: 10, max: 1000 }),
    ("blkio.throttle.read_bps_device", Class::Throttle),
    ("blkio.throttle.write_bps_device", Class::Throttle),
    ("blkio.throttle.read_iops_device", Class::Throttle),
    ("blkio.throttle.write_iops_device", Class::Throttle),
    ("hugetlb.*.limit_in_bytes", Class::Bytes { v1: true }),
];

/// The class of a file `limit` may write; `None` for any other file.
pub fn class_of(file: &str) -> Option<Class> {
    let parts: Vec<&str> = file.split('.').collect();
    let matches = |pattern: &str| {
        let p: Vec<&str> = pattern.split('.').collect();
        p.len() == parts.len()
            && p.iter().zip(&parts).all(|(a, b)| *a == *b || (*a == "*" && !b.is_empty() && b.bytes().all(|c| c.is_ascii_alphanumeric())))
    };
    FILES.iter().find(|(pattern, _)| matches(pattern)).map(|(_, class)| *class)
}

/// The controller a file of [`FILES`] belongs to (`pids` for `pids.max`);
/// `None` for any other file.
pub fn controller_of(file: &str) -> Option<&str> {
    class_of(file)?;
    file.split('.').next()
}

/// The longest value written.
pub const MAX_VALUE: usize = 256;

/// Why `value` is written into no controller file, if it is not: every
/// value is printable ASCII on one line, of 1 to [`MAX_VALUE`] bytes.
pub fn value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("empty");
    }
    if value.len() > MAX_VALUE {
        return Some("longer than 256 bytes");
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Some("only printable ASCII on one line");
    }
    None
}


/// A limit file nsgroup knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitKey {
    MemoryMax,
    MemoryHigh,
    PidsMax,
    CpuMax,
    CpuWeight,
    IoMax,
}

impl LimitKey {
    /// Every key, in the order they are written.
    pub const ALL: [LimitKey; 6] =
        [LimitKey::MemoryMax, LimitKey::MemoryHigh, LimitKey::PidsMax, LimitKey::CpuMax, LimitKey::CpuWeight, LimitKey::IoMax];

    /// The cgroup2 file name.
    pub fn file(self) -> &'static str {
        match self {
            LimitKey::MemoryMax => "memory.max",
            LimitKey::MemoryHigh => "memory.high",
            LimitKey::PidsMax => "pids.max",
            LimitKey::CpuMax => "cpu.max",
            LimitKey::CpuWeight => "cpu.weight",
            LimitKey::IoMax => "io.max",
        }
    }

    /// The cgroup2 controller the file belongs to.
    pub fn controller(self) -> &'static str {
        controller_of(self.file()).expect("every key's file is in FILES")
    }

    /// The v1 controller that carries it.
    fn v1_controller(self) -> &'static str {
        match self {
            LimitKey::IoMax => "blkio",
            k => k.controller(),
        }
    }

    /// The key of a cgroup2 file name.
    pub fn from_file(name: &str) -> Option<LimitKey> {
        LimitKey::ALL.into_iter().find(|k| k.file() == name)
    }

    /// The files of every key, for messages.
    fn files() -> String {
        LimitKey::ALL.map(LimitKey::file).join(", ")
    }
}

/// A value that cannot be used for its file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("unknown limit file {0:?} (known: {known})", known = LimitKey::files())]
    UnknownFile(String),
    #[error("{file}: {value:?} {why}")]
    BadValue { file: &'static str, value: String, why: &'static str },
}

/// A checked limit: a file and its value, normalised (bytes as numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub key: LimitKey,
    value: String,
}

/// `max`, or a count.
fn count(v: &str) -> Option<Option<u64>> {
    if v == "max" { Some(None) } else { v.parse().ok().map(Some) }
}

/// `max`, or bytes with an optional K, M, G or T suffix (powers of 1024).
fn bytes(v: &str) -> Option<Option<u64>> {
    if v == "max" {
        return Some(None);
    }
    let (digits, shift) = byte_suffix(v)?;
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).map(Some)
}

/// A byte value's number and the shift of its K, M, G or T suffix (powers
/// of 1024; 0 without one), as every byte value nsgroup reads is written.
pub fn byte_suffix(v: &str) -> Option<(&str, u32)> {
    // Cut only after an ASCII suffix: a char boundary.
    let cut = |shift| (&v[..v.len() - 1], shift);
    Some(match v.as_bytes().last()? {
        b'K' | b'k' => cut(10),
        b'M' | b'm' => cut(20),
        b'G' | b'g' => cut(30),
        b'T' | b't' => cut(40),
        _ => (v, 0),
    })
}

/// A device and its `key=value` pairs (`None`: `max`).
type IoMax<'a> = (String, Vec<(&'a str, Option<u64>)>);

/// `MAJ:MIN` followed by `key=value` pairs of rbps, wbps, riops, wiops.
fn io_max(v: &str) -> Option<IoMax<'_>> {
    let mut parts = v.split_ascii_whitespace();
    let dev = parts.next()?;
    let (maj, min) = dev.split_once(':')?;
    maj.parse::<u32>().ok()?;
    min.parse::<u32>().ok()?;
    let mut pairs = Vec::new();
    for p in parts {
        let (k, val) = p.split_once('=')?;
        if !["rbps", "wbps", "riops", "wiops"].contains(&k) {
            return None;
        }
        pairs.push((k, count(val)?));
    }
    (!pairs.is_empty()).then(|| (dev.to_string(), pairs))
}

fn show(n: Option<u64>) -> String {
    n.map_or_else(|| "max".to_string(), |n| n.to_string())
}

impl Limit {
    /// Checks `value` for the cgroup2 file `file`.
    pub fn new(file: &str, value: &str) -> Result<Limit, LimitError> {
        let key = LimitKey::from_file(file).ok_or_else(|| LimitError::UnknownFile(file.to_string()))?;
        let v = value.trim();
        let bad = |why| LimitError::BadValue { file: key.file(), value: value.to_string(), why };
        let value = match key {
            LimitKey::MemoryMax | LimitKey::MemoryHigh => {
                show(bytes(v).ok_or(bad("is not max or bytes (a number, optionally with K, M, G or T)"))?)
            }
            LimitKey::PidsMax => show(count(v).ok_or(bad("is not max or a number of tasks"))?),
            LimitKey::CpuMax => {
                let mut parts = v.split_ascii_whitespace();
                let quota = count(parts.next().unwrap_or("")).ok_or(bad("is not `max|QUOTA_US [PERIOD_US]`"))?;
                let period = match parts.next() {
                    Some(p) => p.parse::<u64>().ok().filter(|p| (1000..=1_000_000).contains(p)).ok_or(bad("has a period outside 1000–1000000 µs"))?,
                    None => 100_000,
                };
                if parts.next().is_some() || quota == Some(0) {
                    return Err(bad("is not `max|QUOTA_US [PERIOD_US]` with a quota above 0"));
                }
                format!("{} {period}", show(quota))
            }
            LimitKey::CpuWeight => {
                let w: u64 = v.parse().ok().filter(|w| (1..=10_000).contains(w)).ok_or(bad("is not a weight of 1–10000"))?;
                w.to_string()
            }
            LimitKey::IoMax => {
                let (dev, pairs) = io_max(v).ok_or(bad("is not `MAJ:MIN` with rbps=, wbps=, riops= or wiops= values"))?;
                let pairs: Vec<String> = pairs.iter().map(|(k, n)| format!("{k}={}", show(*n))).collect();
                format!("{dev} {}", pairs.join(" "))
            }
        };
        Ok(Limit { key, value })
    }

    /// The cgroup2 file and value to write.
    pub fn v2(&self) -> (&'static str, String) {
        (self.key.file(), self.value.clone())
    }

    /// The v1 files and values to write, in order, in a hierarchy carrying
    /// `controllers`; empty when it carries none of this limit's.
    pub fn v1(&self, controllers: &[&str]) -> Vec<(&'static str, String)> {
        if !controllers.contains(&self.key.v1_controller()) {
            return Vec::new();
        }
        let unlimited = |v: &str| if v == "max" { "-1".to_string() } else { v.to_string() };
        match self.key {
            LimitKey::MemoryMax => vec![("memory.limit_in_bytes", unlimited(&self.value))],
            LimitKey::MemoryHigh => vec![("memory.soft_limit_in_bytes", unlimited(&self.value))],
            LimitKey::PidsMax => vec![("pids.max", self.value.clone())],
            LimitKey::CpuMax => {
                let (quota, period) = self.value.split_once(' ').expect("normalised as QUOTA PERIOD");
                vec![("cpu.cfs_period_us", period.to_string()), ("cpu.cfs_quota_us", unlimited(quota))]
            }
            LimitKey::CpuWeight => {
                let w: u64 = self.value.parse().expect("normalised");
                vec![("cpu.shares", (w * 1024 / 100).max(2).to_string())]
            }
            LimitKey::IoMax => {
                let (dev, pairs) = self.value.split_once(' ').expect("normalised as DEV PAIRS");
                pairs
                    .split(' ')
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| {
                        let file = match k {
                            "rbps" => "blkio.throttle.read_bps_device",
                            "wbps" => "blkio.throttle.write_bps_device",
                            "riops" => "blkio.throttle.read_iops_device",
                            _ => "blkio.throttle.write_iops_device",
                        };
                        (file, format!("{dev} {}", if v == "max" { "0" } else { v }))
                    })
                    .collect()
            }
        }
    }
}

/// Every file and value `limits` write on a node: the cgroup2 ones and
/// their v1 equivalents (the policy's values, as a `limit` without
/// CAP_SYS_ADMIN compares with them).
pub fn files(limits: &[Limit]) -> Vec<(&'static str, String)> {
    let v1: Vec<&str> = LimitKey::ALL.iter().map(|k| k.v1_controller()).collect();
    limits.iter().flat_map(|l| std::iter::once(l.v2()).chain(l.v1(&v1))).collect()
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key.file(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_and_normalised() {
        assert_eq!(Limit::new("memory.max", "512M").unwrap().v2(), ("memory.max", (512u64 << 20).to_string()));
        assert_eq!(Limit::new("memory.high", "max").unwrap().v2().1, "max");
        assert_eq!(Limit::new("pids.max", " 8 ").unwrap().v2().1, "8");
        assert_eq!(Limit::new("cpu.max", "50000").unwrap().v2().1, "50000 100000");
        assert_eq!(Limit::new("cpu.max", "max 20000").unwrap().v2().1, "max 20000");
        assert_eq!(Limit::new("io.max", "8:0 rbps=1048576 wiops=max").unwrap().v2().1, "8:0 rbps=1048576 wiops=max");
        for (file, value) in [
            ("memory.max", "lots"),
            ("pids.max", "-1"),
            ("cpu.max", "0"),
            ("cpu.max", "10 10"),
            ("cpu.weight", "0"),
            ("io.max", "sda rbps=1"),
            ("io.max", "8:0 speed=1"),
        ] {
            assert!(matches!(Limit::new(file, value), Err(LimitError::BadValue { .. })), "{file}={value}");
        }
        assert_eq!(Limit::new("memory.swap.max", "1").unwrap_err(), LimitError::UnknownFile("memory.swap.max".into()));
    }

    #[test]
    fn v1_equivalents() {
        let v1 = |file, value, ctrl: &[&str]| Limit::new(file, value).unwrap().v1(ctrl);
        assert_eq!(v1("memory.max", "max", &["memory"]), vec![("memory.limit_in_bytes", "-1".to_string())]);
        assert_eq!(v1("pids.max", "8", &["pids"]), vec![("pids.max", "8".to_string())]);
        assert_eq!(v1("pids.max", "8", &["cpu", "cpuacct"]), vec![]);
        assert_eq!(
            v1("cpu.max", "25000 50000", &["cpu", "cpuacct"]),
            vec![("cpu.cfs_period_us", "50000".to_string()), ("cpu.cfs_quota_us", "25000".to_string())]
        );
        assert_eq!(v1("cpu.weight", "100", &["cpu"]), vec![("cpu.shares", "1024".to_string())]);
        assert_eq!(
            v1("io.max", "8:0 rbps=100 wbps=max", &["blkio"]),
            vec![("blkio.throttle.read_bps_device", "8:0 100".to_string()), ("blkio.throttle.write_bps_device", "8:0 0".to_string())]
        );
    }

    #[test]
    fn the_allowlist_matches_whole_components() {
        assert_eq!(class_of("hugetlb.2MB.max"), Some(Class::Bytes { v1: false }));
        assert_eq!(class_of("hugetlb.1GB.limit_in_bytes"), Some(Class::Bytes { v1: true }));
        for f in ["hugetlb..max", "hugetlb.2-MB.max", "memory.max.x", "memory", "../pids.max", "release_agent"] {
            assert_eq!(class_of(f), None, "{f}");
        }
        // Every file a rule sets is one `limit` may write, of the same controller.
        for key in LimitKey::ALL {
            assert!(class_of(key.file()).is_some(), "{}", key.file());
        }
        assert_eq!(LimitKey::ALL.map(LimitKey::controller), ["memory", "memory", "pids", "cpu", "cpu", "io"]);
    }

    #[test]
    fn byte_suffixes_are_powers_of_1024() {
        assert_eq!(byte_suffix("512M"), Some(("512", 20)));
        assert_eq!(byte_suffix("1t"), Some(("1", 40)));
        assert_eq!(byte_suffix("4096"), Some(("4096", 0)));
        assert_eq!(byte_suffix("1é"), Some(("1é", 0)), "no cut inside a character");
        assert_eq!(byte_suffix(""), None);
    }

    #[test]
    fn values_are_one_printable_line() {
        assert_eq!(controller_of("pids.max"), Some("pids"));
        assert_eq!(controller_of("hugetlb.2MB.max"), Some("hugetlb"));
        assert_eq!(controller_of("cgroup.procs"), None);
        assert_eq!(value_problem("8"), None);
        assert_eq!(value_problem("8:0 rbps=1"), None);
        for bad in ["", "8\n9", "\u{1b}[2J", &"9".repeat(MAX_VALUE + 1)] {
            assert!(value_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn files_name_every_file_a_limit_writes() {
        let limits = [Limit::new("memory.max", "max").unwrap(), Limit::new("cpu.max", "20000").unwrap(), Limit::new("pids.max", "32").unwrap()];
        let f = |file: &'static str, value: &str| (file, value.to_string());
        let mut got = files(&limits);
        got.sort();
        let mut want = vec![
            f("memory.max", "max"),
            f("memory.limit_in_bytes", "-1"),
            f("cpu.max", "20000 100000"),
            f("cpu.cfs_period_us", "100000"),
            f("cpu.cfs_quota_us", "20000"),
            f("pids.max", "32"),
            f("pids.max", "32"),
        ];
        want.sort();
        assert_eq!(got, want);
    }
}
