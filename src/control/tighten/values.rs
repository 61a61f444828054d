//! The values of limit files, parsed strictly: decimal digits only (no
//! sign, no hex, nothing after the number but a K/M/G/T suffix where the
//! kernel takes one), within u64, with each file's own word for "no limit"
//! (`max`, `-1`, 0 for v1 throttles). `None` for anything else: what cannot
//! be parsed cannot be compared.

use std::collections::BTreeMap;
use std::fmt;

/// An amount, or a rate as `n / d`; `None` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Level(pub(super) Option<(u64, u64)>);

impl Level {
    pub(super) const NONE: Level = Level(None);

    pub(super) fn amount(n: u64) -> Level {
        Level(Some((n, 1)))
    }

    pub(super) fn rate(quota: Option<u64>, period: u64) -> Level {
        Level(quota.map(|q| (q, period)))
    }

    /// Whether `self` allows at most what `other` allows.
    pub(super) fn at_most(self, other: Level) -> bool {
        match (self.0, other.0) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some((a, b)), Some((c, d))) => u128::from(a) * u128::from(d) <= u128::from(c) * u128::from(b),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("no limit"),
            Some((n, 1)) => write!(f, "{n}"),
            Some((q, p)) => write!(f, "{q} per {p}"),
        }
    }
}

/// Decimal digits only (no sign, no hex), within u64.
pub(super) fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What the kernel shows for an unlimited v1 memory or hugetlb value (-1
/// written): `PAGE_COUNTER_MAX` pages, i64::MAX rounded down to a page.
/// Anything this high is no limit.
const V1_UNLIMITED: u64 = (i64::MAX as u64) - (1 << 20);

/// Bytes, optionally with a K, M, G or T suffix (powers of 1024), or no
/// limit (`max` on cgroup2, `-1` or anything as high as the kernel shows for
/// it on v1).
pub(super) fn bytes(s: &str, v1: bool) -> Option<Level> {
    match s {
        "max" if !v1 => return Some(Level::NONE),
        "-1" if v1 => return Some(Level::NONE),
        _ => {}
    }
    let (number, shift) = crate::core::limit::byte_suffix(s)?;
    let n = digits(number)?.checked_mul(1 << shift)?;
    Some(if v1 && n >= V1_UNLIMITED { Level::NONE } else { Level::amount(n) })
}

/// A number of tasks, or `max`.
pub(super) fn count(s: &str) -> Option<Level> {
    if s == "max" { Some(Level::NONE) } else { digits(s).map(Level::amount) }
}

/// A quota in µs: a number above 0, or `none` (`max`, `-1`) for none.
pub(super) fn quota(s: &str, none: &str) -> Option<Option<u64>> {
    if s == none { Some(None) } else { digits(s).filter(|q| *q > 0).map(Some) }
}

/// A period of 1000–1000000 µs, the kernel's range.
pub(super) fn period(s: &str) -> Option<u64> {
    digits(s).filter(|p| (1000..=1_000_000).contains(p))
}

/// `max|QUOTA [PERIOD]`: the quota and the period, if given.
pub(super) fn cpu_max(s: &str) -> Option<(Option<u64>, Option<u64>)> {
    let mut parts = s.split(' ');
    let q = quota(parts.next()?, "max")?;
    let p = match parts.next() {
        Some(p) => Some(period(p)?),
        None => None,
    };
    parts.next().is_none().then_some((q, p))
}

/// `MAJ:MIN`, as the kernel prints it.
pub(super) fn device(s: &str) -> Option<String> {
    let (maj, min) = s.split_once(':')?;
    Some(format!("{}:{}", u32::try_from(digits(maj)?).ok()?, u32::try_from(digits(min)?).ok()?))
}

/// Per device, per key, the ceilings of `io.max` lines or
/// `blkio.throttle.*_device` lines (whose key is empty: one per file).
pub(super) type Ceilings = BTreeMap<(String, String), Level>;

const IO_KEYS: [&str; 4] = ["rbps", "wbps", "riops", "wiops"];

/// One `io.max` line: `MAJ:MIN` then distinct keys with `max` or a number
/// above 0 (a zero is refused: nothing to compare it with).
pub(super) fn io_max_line(line: &str, into: &mut Ceilings) -> Option<()> {
    let mut parts = line.split(' ');
    let dev = device(parts.next()?)?;
    let mut any = false;
    for p in parts {
        let (k, v) = p.split_once('=')?;
        let v = if v == "max" { Level::NONE } else { Level::amount(digits(v).filter(|n| *n > 0)?) };
        if !IO_KEYS.contains(&k) || into.insert((dev.clone(), k.to_string()), v).is_some() {
            return None;
        }
        any = true;
    }
    any.then_some(())
}

/// One `blkio.throttle.*_device` line: `MAJ:MIN N`, 0 for none.
pub(super) fn throttle_line(line: &str, into: &mut Ceilings) -> Option<()> {
    let (dev, n) = line.split_once(' ')?;
    let n = digits(n)?;
    let level = if n == 0 { Level::NONE } else { Level::amount(n) };
    into.insert((device(dev)?, String::new()), level).is_none().then_some(())
}

/// Every line of a per-device file.
pub(super) fn lines(text: &str, parse: fn(&str, &mut Ceilings) -> Option<()>) -> Option<Ceilings> {
    let mut out = Ceilings::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        parse(line, &mut out)?;
    }
    Some(out)
}

/// `io.weight`: the default weight and the per-device ones.
pub(super) fn io_weights(text: &str) -> Option<(u64, BTreeMap<String, u64>)> {
    let (mut default, mut devices) = (None, BTreeMap::new());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(' ')?;
        let w = digits(v)?;
        if k == "default" {
            default = Some(w);
        } else {
            devices.insert(device(k)?, w);
        }
    }
    Some((default?, devices))
}

/// A level as its file writes it, with `none` for no limit.
pub(super) fn show(level: Level, none: &str) -> String {
    level.0.map_or_else(|| none.to_string(), |(n, _)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_decimal_digits_within_u64() {
        assert_eq!(digits("0042"), Some(42));
        for bad in ["", "+1", "-1", "0x10", "1e3", " 1", "18446744073709551616"] {
            assert_eq!(digits(bad), None, "{bad:?}");
        }
        assert_eq!(bytes("1k", false), Some(Level::amount(1024)));
        assert_eq!(bytes("max", true), None, "v1 says -1");
        assert_eq!(bytes("-1", false), None, "cgroup2 says max");
        assert_eq!(bytes("9223372036854771712", true), Some(Level::NONE), "v1's unlimited as the kernel shows it");
        assert_eq!(bytes("17179869184G", false), None, "overflows");
        assert_eq!(device("008:001"), Some("8:1".into()));
        assert_eq!(device("8:4294967296"), None);
    }

    #[test]
    fn rates_compare_exactly() {
        let r = |q, p| Level::rate(Some(q), p);
        assert!(r(1, 3).at_most(r(2, 6)) && r(2, 6).at_most(r(1, 3)));
        assert!(!r(u64::MAX, 1000).at_most(r(u64::MAX - 1, 1000)));
        assert!(r(u64::MAX, 1_000_000).at_most(Level::NONE) && !Level::NONE.at_most(r(1, 1)));
    }
}
