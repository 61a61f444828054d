//! What a caller without CAP_SYS_ADMIN may write into the files `limit`
//! writes (their classes: [`crate::core::limit::FILES`]): only values that
//! tighten. A delegatee never loosens what it was given (the kernel's
//! delegation model: the limits of a delegated cgroup belong to its
//! parent's owner), so for such a caller
//!
//! - a ceiling (`pids.max`, `memory.max`, `memory.high`, `cpu.max` as a rate,
//!   `io.max` per device and key, their v1 equivalents, …) never goes above
//!   the value the policy gives the node, nor above the value in force;
//! - a weight (`cpu.weight`, `io.weight`, `cpu.shares`, `blkio.weight`) never
//!   goes above its default either;
//! - a flag whose `1` is the harsher setting (`cpu.idle`, `memory.oom.group`)
//!   is never cleared once set;
//! - a protection (`memory.min`, `memory.low`, `io.latency`) is never set, and
//!   files whose values nsgroup does not order (`cpuset.*`,
//!   `cpu.weight.nice`, `memory.swappiness`) are never written.
//!
//! Values are parsed strictly (decimal digits, the file's own word for
//! "none"; no sign, hex, inner whitespace or overflow), compared exactly
//! (rates by cross-multiplication), and written in the normalised form that
//! was checked. Pure: the value in force comes through a reader, the policy's
//! as the files and values the daemon writes ([`crate::core::limit::files`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::core::escape::Escaped;
use crate::core::limit::{class_of, Class};
use crate::sys::error::IoError;
use values::{bytes, count, cpu_max, device, digits, io_max_line, io_weights, lines, period, quota, show, throttle_line, Ceilings, Level};

mod values;

/// Why a caller without CAP_SYS_ADMIN may not write a value (each is a rule
/// of the permission table, docs/semantics.md §15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Above the policy's value for the node or the value in force.
    TightenOnly,
    /// A weight above its default.
    WeightDefault,
    /// A protection.
    NoProtection,
    /// A file whose values nsgroup does not order.
    NeedsCap,
}

/// Why a value is not written.
#[derive(Debug, thiserror::Error)]
pub enum TightenError {
    #[error("value \"{}\" for {file}: {why}", Escaped(value))]
    Invalid { file: String, value: String, why: String },
    #[error("{message}")]
    Refused { bound: Bound, message: String },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// The class of `file` if a caller without CAP_SYS_ADMIN may write it at
/// all (with a value that tightens); protections and unordered values are
/// refused before anything is read.
pub fn writable_without_cap(file: &str) -> Result<Class, TightenError> {
    let (bound, why) = match class_of(file) {
        None => (Bound::NeedsCap, "is not a controller value nsgroup writes"),
        Some(Class::Protection) => (Bound::NoProtection, "is a protection (it takes from other nodes); without CAP_SYS_ADMIN none is set"),
        Some(Class::Unordered) => (Bound::NeedsCap, "has values nsgroup does not order (it cannot tell a tighter one); writing it needs CAP_SYS_ADMIN"),
        Some(class) => return Ok(class),
    };
    Err(TightenError::Refused { bound, message: format!("{} {why}", Escaped(file)) })
}

/// Reads files of the cgroup directory `dir` (the value in force).
pub fn reader(dir: &Path) -> impl Fn(&str) -> Result<String, TightenError> + '_ {
    move |file| {
        crate::sys::cgroup_dir::read(&dir.join(file)).map_err(|IoError { path, source, .. }| {
            let source = match source.kind() {
                io::ErrorKind::NotFound => io::Error::new(source.kind(), "no such file: the controller is not enabled on this node, or not mounted"),
                _ => source,
            };
            TightenError::Read { path, source }
        })
    }
}

/// One value checked: how it is shown, and its level.
struct Check {
    shown: String,
    new: Level,
}

impl Check {
    fn within(&self, bound: Bound, limit: Level, whose: &str, why: &str) -> Result<(), TightenError> {
        if self.new.at_most(limit) {
            return Ok(());
        }
        Err(TightenError::Refused { bound, message: format!("{} is above {limit}, {whose}; {why}", self.shown) })
    }

    /// Not above the policy's level (if it sets one) nor the one in force.
    fn tightens(&self, policy: Option<Level>, current: Level) -> Result<(), TightenError> {
        const WHY: &str = "without CAP_SYS_ADMIN a limit only tightens";
        if let Some(p) = policy {
            self.within(Bound::TightenOnly, p, "the value the policy ([[limit]] rules) gives this node", WHY)?;
        }
        self.within(Bound::TightenOnly, current, "the value in force", WHY)
    }

    fn weight(&self, default: u64, policy: Option<Level>, current: u64) -> Result<(), TightenError> {
        self.within(Bound::WeightDefault, Level::amount(default), "the default weight", "without CAP_SYS_ADMIN a weight only goes down")?;
        self.tightens(policy, Level::amount(current))
    }
}

/// Where the bounds of a value come from: the policy's files and values,
/// and the files in force.
struct Sources<'a> {
    file: &'a str,
    policy: &'a [(&'static str, String)],
    current: &'a dyn Fn(&str) -> Result<String, TightenError>,
}

impl Sources<'_> {
    fn incomparable(&self, whose: &str, text: &str) -> TightenError {
        TightenError::Refused {
            bound: Bound::TightenOnly,
            message: format!("{whose} for {} ({:?}) is not one nsgroup can compare with", Escaped(self.file), Escaped(text)),
        }
    }

    /// The text in force in `name`, parsed.
    fn now<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, TightenError> {
        let text = (self.current)(name)?;
        parse(text.trim()).ok_or_else(|| self.incomparable("the value in force", text.trim()))
    }

    /// The policy's value for `name`, parsed, if it sets one.
    fn policy<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, TightenError> {
        match self.policy.iter().find(|(f, _)| *f == name) {
            None => Ok(None),
            Some((_, text)) => parse(text).map(Some).ok_or_else(|| self.incomparable("the policy's value", text)),
        }
    }
}

/// What a caller without CAP_SYS_ADMIN may write into `file`: `value`
/// normalised, if it tightens both the policy's value (`policy`: the files
/// and values the policy writes on the node) and the value in force (read
/// through `current`, in the directory that is written). A value in force
/// or a policy's value that cannot be parsed refuses: what cannot be
/// compared is not written.
pub fn tightened(
    file: &str,
    value: &str,
    policy: &[(&'static str, String)],
    current: &dyn Fn(&str) -> Result<String, TightenError>,
) -> Result<String, TightenError> {
    let class = writable_without_cap(file)?;
    let v = value.trim_matches(' ');
    let invalid = |why: &str| TightenError::Invalid { file: file.to_string(), value: value.to_string(), why: why.to_string() };
    let src = Sources { file, policy, current };
    let shown = format!("{}={}", Escaped(file), Escaped(v));
    match class {
        Class::Bytes { v1 } => {
            let parse = |s: &str| bytes(s, v1);
            let new = parse(v).ok_or_else(|| invalid(if v1 { "is not -1 or bytes (digits, optionally K, M, G or T)" } else { "is not max or bytes (digits, optionally K, M, G or T)" }))?;
            Check { shown, new }.tightens(src.policy(file, parse)?, src.now(file, parse)?)?;
            Ok(show(new, if v1 { "-1" } else { "max" }))
        }
        Class::Count => {
            let new = count(v).ok_or_else(|| invalid("is not max or a number (digits)"))?;
            Check { shown, new }.tightens(src.policy(file, count)?, src.now(file, count)?)?;
            Ok(show(new, "max"))
        }
        Class::CpuMax => {
            let (q, p) = cpu_max(v).ok_or_else(|| invalid("is not `max|QUOTA [PERIOD]` (µs: a quota above 0, a period of 1000–1000000)"))?;
            let full = |s: &str| cpu_max(s).and_then(|(q, p)| Some((q, p?)));
            let (cq, cp) = src.now(file, full)?;
            // Without a period the kernel keeps the one in force.
            let period = p.unwrap_or(cp);
            let policy = src.policy(file, full)?.map(|(q, p)| Level::rate(q, p));
            Check { shown, new: Level::rate(q, period) }.tightens(policy, Level::rate(cq, cp))?;
            Ok(format!("{} {period}", q.map_or_else(|| "max".to_string(), |q| q.to_string())))
        }
        class @ (Class::CfsQuota | Class::CfsPeriod) => {
            let q_of = |s: &str| quota(s, "-1");
            let (cq, cp) = (src.now("cpu.cfs_quota_us", q_of)?, src.now("cpu.cfs_period_us", period)?);
            let (q, p, out) = if class == Class::CfsQuota {
                let q = q_of(v).ok_or_else(|| invalid("is not -1 or a quota above 0 (µs, digits)"))?;
                (q, cp, q.map_or_else(|| "-1".to_string(), |q| q.to_string()))
            } else {
                let p = period(v).ok_or_else(|| invalid("is not a period of 1000–1000000 µs (digits)"))?;
                (cq, p, p.to_string())
            };
            let policy = src.policy("cpu.cfs_quota_us", q_of)?.zip(src.policy("cpu.cfs_period_us", period)?);
            Check { shown, new: Level::rate(q, p) }.tightens(policy.map(|(q, p)| Level::rate(q, p)), Level::rate(cq, cp))?;
            Ok(out)
        }
        Class::Weight { default, min, max } => {
            let w = digits(v).filter(|w| (min..=max).contains(w)).ok_or_else(|| invalid(&format!("is not a weight of {min}–{max} (digits)")))?;
            let policy = src.policy(file, digits)?.map(Level::amount);
            Check { shown, new: Level::amount(w) }.weight(default, policy, src.now(file, digits)?)?;
            Ok(w.to_string())
        }
        Class::IoWeight => {
            let bad = || invalid("is not `[default] N` or `MAJ:MIN N` with a weight of 1–10000 (digits)");
            let (target, w) = match v.split_once(' ') {
                None => ("default".to_string(), v),
                Some(("default", w)) => ("default".to_string(), w),
                Some((dev, w)) => (device(dev).ok_or_else(bad)?, w),
            };
            let w = digits(w).filter(|w| (1..=10_000).contains(w)).ok_or_else(bad)?;
            let (default, devices) = src.now(file, io_weights)?;
            let current = devices.get(&target).copied().unwrap_or(default);
            Check { shown, new: Level::amount(w) }.weight(100, None, current)?;
            Ok(format!("{target} {w}"))
        }
        class @ (Class::IoMax | Class::Throttle) => {
            let line: fn(&str, &mut Ceilings) -> Option<()> = if class == Class::IoMax { io_max_line } else { throttle_line };
            let mut new = Ceilings::new();
            line(v, &mut new).ok_or_else(|| {
                invalid(if class == Class::IoMax {
                    "is not `MAJ:MIN` with distinct rbps=, wbps=, riops=, wiops= of max or a number above 0"
                } else {
                    "is not `MAJ:MIN N` (digits; 0 for none)"
                })
            })?;
            let parse = |s: &str| lines(s, line);
            let (current, policy) = (src.now(file, parse)?, src.policy(file, parse)?);
            for (key, level) in &new {
                let shown = match key.1.as_str() {
                    "" => shown.clone(),
                    k => format!("{} {} {k}={}", Escaped(file), key.0, show(*level, "max")),
                };
                let policy = policy.as_ref().map(|p| p.get(key).copied().unwrap_or(Level::NONE));
                Check { shown, new: *level }.tightens(policy, current.get(key).copied().unwrap_or(Level::NONE))?;
            }
            let dev = &new.keys().next().expect("a line names a device").0;
            let values: Vec<String> = match class {
                Class::IoMax => new.iter().map(|((_, k), l)| format!("{k}={}", show(*l, "max"))).collect(),
                _ => new.values().map(|l| show(*l, "0")).collect(),
            };
            Ok(format!("{dev} {}", values.join(" ")))
        }
        Class::Flag => {
            let flag = |s: &str| match s {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            };
            let set = flag(v).ok_or_else(|| invalid("is not 0 or 1"))?;
            if src.now(file, flag)? && !set {
                return Err(TightenError::Refused {
                    bound: Bound::TightenOnly,
                    message: format!("{shown} clears what is in force (1); without CAP_SYS_ADMIN a limit only tightens"),
                });
            }
            Ok(if set { "1" } else { "0" }.to_string())
        }
        Class::Protection | Class::Unordered => unreachable!("writable_without_cap refuses them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The node's files in force, and the policy's files.
    type Files<'a> = &'a [(&'a str, &'a str)];
    type Policy<'a> = &'a [(&'static str, &'a str)];
    /// A file, a value, the files in force, the policy's, the outcome.
    type Case<'a> = (&'a str, &'a str, Files<'a>, Policy<'a>, &'a str);

    /// The outcome of writing `value` into `file` with `in_force` as the
    /// node's files and `policy` as the policy's: the value written, or
    /// `invalid`, or the refusing bound's name.
    fn outcome(file: &str, value: &str, in_force: &[(&str, &str)], policy: &[(&'static str, &str)]) -> String {
        let files: HashMap<&str, &str> = in_force.iter().copied().collect();
        let read = |f: &str| {
            files.get(f).map(|t| format!("{t}\n")).ok_or_else(|| TightenError::Read { path: f.into(), source: io::ErrorKind::NotFound.into() })
        };
        let policy: Vec<(&'static str, String)> = policy.iter().map(|(f, v)| (*f, v.to_string())).collect();
        match tightened(file, value, &policy, &read) {
            Ok(v) => v,
            Err(TightenError::Invalid { .. }) => "invalid".into(),
            Err(TightenError::Refused { bound, message }) => {
                assert!(!message.is_empty());
                format!("{bound:?}")
            }
            Err(TightenError::Read { path, .. }) => format!("unread {}", path.display()),
        }
    }

    #[test]
    fn ceilings_never_rise_above_the_policy_or_the_value_in_force() {
        let pids = [("pids.max", "32")];
        let policy = [("pids.max", "32")];
        let cases: &[Case] = &[
            ("pids.max", "max", &pids, &policy, "TightenOnly"),
            ("pids.max", "64", &pids, &policy, "TightenOnly"),
            ("pids.max", "33", &pids, &[], "TightenOnly"),
            ("pids.max", "32", &pids, &policy, "32"),
            ("pids.max", " 16 ", &pids, &policy, "16"),
            ("pids.max", "0", &pids, &policy, "0"),
            // Root raised it to 64: the policy's 32 still bounds the user.
            ("pids.max", "48", &[("pids.max", "64")], &policy, "TightenOnly"),
            ("pids.max", "max", &[("pids.max", "max")], &[], "max"),
            ("pids.max", "100", &[("pids.max", "max")], &[], "100"),
            // Strict parsing.
            ("pids.max", "+16", &pids, &[], "invalid"),
            ("pids.max", "-1", &pids, &[], "invalid"),
            ("pids.max", "0x10", &pids, &[], "invalid"),
            ("pids.max", "1 6", &pids, &[], "invalid"),
            ("pids.max", "16 ", &pids, &[], "16"),
            ("pids.max", "99999999999999999999", &pids, &[], "invalid"),
            ("pids.max", "MAX", &pids, &[], "invalid"),
            ("pids.max", "8", &[("pids.max", "lots")], &[], "TightenOnly"),
            ("pids.max", "8", &pids, &[("pids.max", "garbage")], "TightenOnly"),
            ("pids.max", "8", &[], &[], "unread pids.max"),
            // Bytes, cgroup2 and v1.
            ("memory.max", "100M", &[("memory.max", "max")], &[], "104857600"),
            ("memory.max", "max", &[("memory.max", "104857600")], &[], "TightenOnly"),
            ("memory.max", "1G", &[("memory.max", "max")], &[("memory.max", "536870912")], "TightenOnly"),
            ("memory.max", "512M", &[("memory.max", "max")], &[("memory.max", "536870912")], "536870912"),
            ("memory.max", "-1", &[("memory.max", "max")], &[], "invalid"),
            ("memory.max", "16E", &[("memory.max", "max")], &[], "invalid"),
            ("memory.max", "99999999999T", &[("memory.max", "max")], &[], "invalid"),
            ("memory.high", "1G", &[("memory.high", "max")], &[], "1073741824"),
            ("memory.swap.max", "0", &[("memory.swap.max", "max")], &[], "0"),
            ("hugetlb.2MB.max", "max", &[("hugetlb.2MB.max", "0")], &[], "TightenOnly"),
            ("memory.limit_in_bytes", "-1", &[("memory.limit_in_bytes", "9223372036854771712")], &[], "-1"),
            ("memory.limit_in_bytes", "64M", &[("memory.limit_in_bytes", "9223372036854771712")], &[("memory.limit_in_bytes", "-1")], "67108864"),
            ("memory.limit_in_bytes", "-1", &[("memory.limit_in_bytes", "67108864")], &[], "TightenOnly"),
            ("memory.limit_in_bytes", "max", &[("memory.limit_in_bytes", "67108864")], &[], "invalid"),
            ("memory.soft_limit_in_bytes", "2G", &[("memory.soft_limit_in_bytes", "1073741824")], &[], "TightenOnly"),
            ("hugetlb.2MB.limit_in_bytes", "2M", &[("hugetlb.2MB.limit_in_bytes", "9223372036854771712")], &[], "2097152"),
        ];
        for (file, value, in_force, policy, want) in cases {
            assert_eq!(outcome(file, value, in_force, policy), *want, "{file}={value:?} with {in_force:?}, policy {policy:?}");
        }
    }

    #[test]
    fn cpu_quotas_compare_as_rates() {
        let half = [("cpu.max", "50000 100000")];
        let cases: &[(&str, Files, Policy, &str)] = &[
            ("max", &half, &[], "TightenOnly"),
            ("max 100000", &half, &[], "TightenOnly"),
            ("25000", &half, &[], "25000 100000"),
            ("50000", &half, &[], "50000 100000"),
            ("50001", &half, &[], "TightenOnly"),
            // The same half CPU in a shorter period; a shorter period alone raises the rate.
            ("5000 10000", &half, &[], "5000 10000"),
            ("50000 50000", &half, &[], "TightenOnly"),
            ("100000 1000000", &half, &[], "100000 1000000"),
            ("20000 100000", &[("cpu.max", "max 100000")], &[("cpu.max", "20000 100000")], "20000 100000"),
            ("30000 100000", &[("cpu.max", "max 100000")], &[("cpu.max", "20000 100000")], "TightenOnly"),
            ("4000 10000", &[("cpu.max", "max 100000")], &[("cpu.max", "20000 100000")], "TightenOnly"),
            ("0", &half, &[], "invalid"),
            ("50000 100", &half, &[], "invalid"),
            ("50000  100000", &half, &[], "invalid"),
            ("50000 100000 1", &half, &[], "invalid"),
            ("18446744073709551615 1000", &[("cpu.max", "max 1000000")], &[], "18446744073709551615 1000"),
            ("18446744073709551615 1000000", &half, &[], "TightenOnly"),
        ];
        for (value, in_force, policy, want) in cases {
            assert_eq!(outcome("cpu.max", value, in_force, policy), *want, "cpu.max={value:?} with {in_force:?}, policy {policy:?}");
        }
        // v1: the quota and the period make the rate together.
        let v1 = [("cpu.cfs_quota_us", "50000"), ("cpu.cfs_period_us", "100000")];
        let unlimited = [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000")];
        let policy = [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "20000")];
        assert_eq!(outcome("cpu.cfs_quota_us", "-1", &v1, &[]), "TightenOnly");
        assert_eq!(outcome("cpu.cfs_quota_us", "40000", &v1, &[]), "40000");
        assert_eq!(outcome("cpu.cfs_quota_us", "0", &v1, &[]), "invalid");
        assert_eq!(outcome("cpu.cfs_period_us", "200000", &v1, &[]), "200000", "a longer period lowers the rate");
        assert_eq!(outcome("cpu.cfs_period_us", "50000", &v1, &[]), "TightenOnly");
        assert_eq!(outcome("cpu.cfs_period_us", "50000", &unlimited, &[]), "50000", "no quota: no rate to raise");
        assert_eq!(outcome("cpu.cfs_period_us", "50000", &unlimited, &policy), "TightenOnly");
        assert_eq!(outcome("cpu.cfs_quota_us", "30000", &unlimited, &policy), "TightenOnly");
        assert_eq!(outcome("cpu.cfs_quota_us", "20000", &unlimited, &policy), "20000");
    }

    #[test]
    fn weights_stay_at_or_below_the_default_the_policy_and_the_value_in_force() {
        let cases: &[Case] = &[
            ("cpu.weight", "200", &[("cpu.weight", "100")], &[], "WeightDefault"),
            ("cpu.weight", "101", &[("cpu.weight", "100")], &[], "WeightDefault"),
            ("cpu.weight", "100", &[("cpu.weight", "100")], &[], "100"),
            ("cpu.weight", "10", &[("cpu.weight", "100")], &[], "10"),
            ("cpu.weight", "60", &[("cpu.weight", "50")], &[("cpu.weight", "50")], "TightenOnly"),
            ("cpu.weight", "60", &[("cpu.weight", "50")], &[], "TightenOnly"),
            // Root gave it 500: the user still cannot go above the default.
            ("cpu.weight", "200", &[("cpu.weight", "500")], &[], "WeightDefault"),
            ("cpu.weight", "0", &[("cpu.weight", "100")], &[], "invalid"),
            ("cpu.weight", "10001", &[("cpu.weight", "100")], &[], "invalid"),
            ("cpu.shares", "2048", &[("cpu.shares", "1024")], &[], "WeightDefault"),
            ("cpu.shares", "512", &[("cpu.shares", "1024")], &[], "512"),
            ("cpu.shares", "1024", &[("cpu.shares", "1024")], &[("cpu.shares", "512")], "TightenOnly"),
            ("cpu.shares", "1", &[("cpu.shares", "1024")], &[], "invalid"),
            ("blkio.weight", "600", &[("blkio.weight", "500")], &[], "WeightDefault"),
            ("blkio.weight", "100", &[("blkio.weight", "500")], &[], "100"),
            ("io.weight", "200", &[("io.weight", "default 100")], &[], "WeightDefault"),
            ("io.weight", "50", &[("io.weight", "default 100")], &[], "default 50"),
            ("io.weight", "default 50", &[("io.weight", "default 100")], &[], "default 50"),
            ("io.weight", "8:0 80", &[("io.weight", "default 100\n8:0 50")], &[], "TightenOnly"),
            ("io.weight", "8:0 40", &[("io.weight", "default 100\n8:0 50")], &[], "8:0 40"),
            ("io.weight", "08:16 40", &[("io.weight", "default 30")], &[], "TightenOnly"),
            ("io.weight", "8:0 default", &[("io.weight", "default 100")], &[], "invalid"),
            ("io.weight", "8:0 40", &[("io.weight", "weird")], &[], "TightenOnly"),
        ];
        for (file, value, in_force, policy, want) in cases {
            assert_eq!(outcome(file, value, in_force, policy), *want, "{file}={value:?} with {in_force:?}, policy {policy:?}");
        }
    }

    #[test]
    fn io_ceilings_are_per_device_and_key() {
        let in_force = [("io.max", "8:0 rbps=1000 wbps=max riops=max wiops=max\n8:16 rbps=max wbps=max riops=max wiops=10")];
        let policy = [("io.max", "8:0 rbps=1000")];
        let cases: &[(&str, Policy, &str)] = &[
            ("8:0 rbps=max", &[], "TightenOnly"),
            ("8:0 rbps=2000", &[], "TightenOnly"),
            ("8:0 rbps=500 wbps=100", &[], "8:0 rbps=500 wbps=100"),
            ("8:0 wbps=max", &[], "8:0 wbps=max"),
            ("8:0 wbps=max", &policy, "8:0 wbps=max"),
            ("8:16 wiops=11", &[], "TightenOnly"),
            ("8:16 rbps=1", &[], "8:16 rbps=1"),
            ("8:32 rbps=max", &[], "8:32 rbps=max"),
            ("8:32 rbps=10", &[], "8:32 rbps=10"),
            ("8:0 rbps=0", &[], "invalid"),
            ("8:0 rbps=1 rbps=max", &[], "invalid"),
            ("8:0 speed=1", &[], "invalid"),
            ("8:0", &[], "invalid"),
            ("sda rbps=1", &[], "invalid"),
            ("8:99999999999 rbps=1", &[], "invalid"),
        ];
        for (value, policy, want) in cases {
            assert_eq!(outcome("io.max", value, &in_force, policy), *want, "io.max={value:?}, policy {policy:?}");
        }
        assert_eq!(outcome("io.max", "8:0 rbps=1", &[("io.max", "8:0 rbps=1 latency=5")], &[]), "TightenOnly", "a key nsgroup does not know");
        let throttle = |value, in_force: &str, policy: &[(&'static str, &str)]| {
            outcome("blkio.throttle.read_bps_device", value, &[("blkio.throttle.read_bps_device", in_force)], policy)
        };
        assert_eq!(throttle("8:0 0", "8:0 1000", &[]), "TightenOnly", "0 removes the throttle");
        assert_eq!(throttle("8:0 2000", "8:0 1000", &[]), "TightenOnly");
        assert_eq!(throttle("8:0 500", "8:0 1000", &[]), "8:0 500");
        assert_eq!(throttle("8:16 0", "8:0 1000", &[]), "8:16 0");
        assert_eq!(throttle("8:16 5000", "", &[("blkio.throttle.read_bps_device", "8:16 1000")]), "TightenOnly");
        assert_eq!(throttle("8:16 1000", "", &[("blkio.throttle.read_bps_device", "8:16 1000")]), "8:16 1000");
        assert_eq!(throttle("8:0 1M", "", &[]), "invalid", "the kernel would read 1M as 1");
    }

    #[test]
    fn flags_protections_and_unordered_files() {
        assert_eq!(outcome("cpu.idle", "1", &[("cpu.idle", "0")], &[]), "1");
        assert_eq!(outcome("cpu.idle", "0", &[("cpu.idle", "1")], &[]), "TightenOnly");
        assert_eq!(outcome("cpu.idle", "0", &[("cpu.idle", "0")], &[]), "0");
        assert_eq!(outcome("memory.oom.group", "2", &[("memory.oom.group", "0")], &[]), "invalid");
        for file in ["memory.low", "memory.min", "io.latency"] {
            assert_eq!(outcome(file, "0", &[], &[]), "NoProtection", "{file}: refused before anything is read");
        }
        for file in ["cpuset.cpus", "cpuset.mems", "cpu.weight.nice", "memory.swappiness", "cgroup.procs", "tasks"] {
            assert_eq!(outcome(file, "0", &[], &[]), "NeedsCap", "{file}");
        }
    }

    #[test]
    fn refusals_say_what_bounds_them() {
        let read = |_: &str| Ok("32".to_string());
        let e = tightened("pids.max", "max", &[("pids.max", "32".into())], &read).unwrap_err().to_string();
        assert!(e.contains("pids.max=max is above 32") && e.contains("policy"), "{e}");
        let e = tightened("pids.max", "40", &[], &read).unwrap_err().to_string();
        assert!(e.contains("above 32, the value in force"), "{e}");
        let e = tightened("pids.max", "\u{1b}[2J", &[], &read).unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
    }
}
