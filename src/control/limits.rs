//! Controller values for new nodes: the cgroup2 files a limit rule may set,
//! how each value is checked, and how each maps onto cgroup v1 files (for
//! mirrors in v1 controller hierarchies).
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
        match self {
            LimitKey::MemoryMax | LimitKey::MemoryHigh => "memory",
            LimitKey::PidsMax => "pids",
            LimitKey::CpuMax | LimitKey::CpuWeight => "cpu",
            LimitKey::IoMax => "io",
        }
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
}

/// A value that cannot be used for its file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("unknown limit file {0:?} (known: memory.max, memory.high, pids.max, cpu.max, cpu.weight, io.max)")]
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
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        b'T' | b't' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).map(Some)
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
/// CAP_SYS_ADMIN compares with them: [`crate::control::tighten`]).
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
