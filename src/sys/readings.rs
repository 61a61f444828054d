//! Readings of a cgroup beyond its usage files: pressure stall information
//! (`cpu.pressure`, `memory.pressure`, `io.pressure`), swap, and the network
//! counters of a namespace as one of its members sees them
//! (`/proc/<pid>/task/<tid>/net/dev`). Every reader is rooted at a path; a
//! missing file is `None`, a garbled one a [`ReadingError`] naming it.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{vanished, IoError};

/// At most this many bytes are read of one file.
const MAX_FILE: u64 = 64 * 1024;
/// At most this many interfaces are kept per namespace; the rest are counted.
pub const MAX_INTERFACES: usize = 16;
/// Interface names are cut to this many bytes (the kernel's IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Why a reading failed (a vanished file or task is `None`, not this).
#[derive(Debug, thiserror::Error)]
pub enum ReadingError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{}: line {line}: {why}", path.display())]
    Garbled { path: PathBuf, line: usize, why: &'static str },
}

/// One line of a pressure file: the share of time stalled over the last 10
/// and 60 seconds (percent) and the total stall time (microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stall {
    pub avg10: f64,
    pub avg60: f64,
    pub total_us: u64,
}

/// One pressure file: `some` (at least one task stalled) and, where the
/// kernel has it, `full` (all non-idle tasks stalled; cgroup `cpu.pressure`
/// before 5.13 has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub some: Stall,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full: Option<Stall>,
}

/// The three pressure files of a cgroup; a resource without its file is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Pressure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Pressure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<Pressure>,
}

impl Pressures {
    /// Whether no file was there (PSI off, or a v1 hierarchy).
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.io.is_none()
    }
}

/// One interface's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// A network namespace's interfaces, at most [`MAX_INTERFACES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Network {
    pub interfaces: Vec<Interface>,
    /// Interfaces left out by the bound.
    #[serde(skip_serializing_if = "is_zero")]
    pub cut: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Network {
    /// The sums over the interfaces kept: rx bytes, rx packets, tx bytes, tx packets.
    pub fn totals(&self) -> [u64; 4] {
        self.interfaces.iter().fold([0; 4], |t, i| {
            [t[0] + i.rx_bytes, t[1] + i.rx_packets, t[2] + i.tx_bytes, t[3] + i.tx_packets]
        })
    }

    /// The totals as final-usage figures (`net_rx_bytes`, …).
    pub fn figures(&self) -> Vec<(String, u64)> {
        let names = ["net_rx_bytes", "net_rx_packets", "net_tx_bytes", "net_tx_packets"];
        names.iter().zip(self.totals()).map(|(n, v)| (n.to_string(), v)).collect()
    }
}

/// The text of a file, at most [`MAX_FILE`] bytes; `None` when it is not there.
fn read_bounded(path: &Path) -> Result<Option<String>, IoError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if vanished(&e) => return Ok(None),
        Err(e) => return Err(IoError::new("open", path, e)),
    };
    let mut bytes = Vec::new();
    match (&mut file).take(MAX_FILE).read_to_end(&mut bytes) {
        Ok(_) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(IoError::new("read", path, e)),
    }
}

/// Parses a pressure file's text (`some avg10=… avg60=… avg300=… total=…`,
/// then maybe a `full` line); `path` names it in errors.
pub fn parse_pressure(text: &str, path: &Path) -> Result<Pressure, ReadingError> {
    let garbled = |line: usize, why| ReadingError::Garbled { path: path.to_path_buf(), line, why };
    let mut some = None;
    let mut full = None;
    for (i, l) in text.lines().enumerate().take(4) {
        let mut words = l.split_ascii_whitespace();
        let slot = match words.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            None => continue,
            Some(_) => return Err(garbled(i + 1, "neither a some nor a full line")),
        };
        let mut stall = Stall::default();
        let (mut seen10, mut seen60, mut seen_total) = (false, false, false);
        for w in words {
            let Some((key, value)) = w.split_once('=') else { return Err(garbled(i + 1, "a field without =")) };
            match key {
                "avg10" => (stall.avg10, seen10) = (parse_avg(value).ok_or_else(|| garbled(i + 1, "avg10 is no percentage"))?, true),
                "avg60" => (stall.avg60, seen60) = (parse_avg(value).ok_or_else(|| garbled(i + 1, "avg60 is no percentage"))?, true),
                "total" => (stall.total_us, seen_total) = (value.parse().map_err(|_| garbled(i + 1, "total is no number"))?, true),
                _ => {}
            }
        }
        if !(seen10 && seen60 && seen_total) {
            return Err(garbled(i + 1, "avg10, avg60 or total missing"));
        }
        *slot = Some(stall);
    }
    let some = some.ok_or_else(|| garbled(1, "no some line"))?;
    Ok(Pressure { some, full })
}

fn parse_avg(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|x| x.is_finite() && (0.0..=100.0).contains(x))
}

/// The pressure files of the cgroup directory `dir`.
pub fn pressures(dir: &Path) -> Result<Pressures, ReadingError> {
    let one = |file: &str| -> Result<Option<Pressure>, ReadingError> {
        let path = dir.join(file);
        read_bounded(&path)?.map(|t| parse_pressure(&t, &path)).transpose()
    };
    Ok(Pressures { cpu: one("cpu.pressure")?, memory: one("memory.pressure")?, io: one("io.pressure")? })
}

fn read_number(path: &Path) -> Result<Option<u64>, ReadingError> {
    let Some(text) = read_bounded(path)? else { return Ok(None) };
    let n = text.trim().parse().map_err(|_| ReadingError::Garbled { path: path.to_path_buf(), line: 1, why: "not a number" })?;
    Ok(Some(n))
}

/// Swap in use by a cgroup2 cgroup (`memory.swap.current`).
pub fn swap_v2(dir: &Path) -> Result<Option<u64>, ReadingError> {
    read_number(&dir.join("memory.swap.current"))
}

/// Swap in use by a v1 memory cgroup: `memory.memsw.usage_in_bytes` (memory
/// and swap) less `memory.usage_in_bytes`; `None` without swap accounting.
pub fn swap_v1(dir: &Path) -> Result<Option<u64>, ReadingError> {
    let Some(both) = read_number(&dir.join("memory.memsw.usage_in_bytes"))? else { return Ok(None) };
    let Some(memory) = read_number(&dir.join("memory.usage_in_bytes"))? else { return Ok(None) };
    Ok(Some(both.saturating_sub(memory)))
}

/// Parses `/proc/net/dev`'s text: two header lines, then `name: rx_bytes
/// rx_packets … (8 receive fields) tx_bytes tx_packets …`.
pub fn parse_net_dev(text: &str, path: &Path) -> Result<Network, ReadingError> {
    let mut net = Network::default();
    for (i, l) in text.lines().enumerate().skip(2) {
        let garbled = |why| ReadingError::Garbled { path: path.to_path_buf(), line: i + 1, why };
        let Some((name, fields)) = l.split_once(':') else { return Err(garbled("no interface name")) };
        let numbers: Vec<u64> = fields.split_ascii_whitespace().map(str::parse).collect::<Result<_, _>>().map_err(|_| garbled("a counter is no number"))?;
        if numbers.len() < 10 {
            return Err(garbled("fewer than 10 counters"));
        }
        if net.interfaces.len() == MAX_INTERFACES {
            net.cut += 1;
            continue;
        }
        let name = name.trim();
        let cut = (0..=MAX_IFNAME.min(name.len())).rev().find(|&n| name.is_char_boundary(n)).unwrap_or(0);
        net.interfaces.push(Interface {
            name: name[..cut].to_string(),
            rx_bytes: numbers[0],
            rx_packets: numbers[1],
            tx_bytes: numbers[8],
            tx_packets: numbers[9],
        });
    }
    Ok(net)
}

/// The network counters a task sees (`<proc>/<pid>/task/<tid>/net/dev`);
/// `None` when the task is gone.
pub fn net_dev(proc_root: &Path, pid: u32, tid: u32) -> Result<Option<Network>, ReadingError> {
    let path = proc_root.join(format!("{pid}/task/{tid}/net/dev"));
    read_bounded(&path)?.map(|t| parse_net_dev(&t, &path)).transpose()
}

/// The network counters of namespace `ns` (an inode number) as the first of
/// `tids` still in it sees them (at most 8 are tried); `None` when none is.
pub fn net_dev_of_members(proc_root: &Path, tids: &[u32], ns: u64) -> Result<Option<Network>, ReadingError> {
    use std::os::unix::fs::MetadataExt;
    for &tid in tids.iter().take(8) {
        let in_ns = std::fs::metadata(proc_root.join(format!("{tid}/task/{tid}/ns/net"))).is_ok_and(|m| m.ino() == ns);
        if in_ns {
            if let Some(net) = net_dev(proc_root, tid, tid)? {
                return Ok(Some(net));
            }
        }
    }
    Ok(None)
}

/// The network counters of the network namespace `ns` (an open nsfs file,
/// such as a node's pin), read by a short-lived thread that enters it: the
/// namespace may have no task left. `None` when the thread could not enter it.
pub fn net_dev_in(ns: std::os::fd::BorrowedFd) -> Result<Option<Network>, ReadingError> {
    let ns = ns.try_clone_to_owned().map_err(|e| IoError::new("dup", "network namespace", e))?;
    let reader = std::thread::Builder::new().name("nsgroup-netns".into()).spawn(move || {
        use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
        if move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)).is_err() {
            return Ok(None);
        }
        let path = Path::new("/proc/thread-self/net/dev");
        read_bounded(path)?.map(|t| parse_net_dev(&t, path)).transpose()
    });
    let reader = reader.map_err(|e| IoError::new("spawn a reader for", "network namespace", e))?;
    reader.join().unwrap_or(Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = "some avg10=1.50 avg60=0.25 avg300=0.00 total=12407658\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

    #[test]
    fn pressure_files_are_read_and_a_missing_one_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cpu.pressure"), CPU).unwrap();
        std::fs::write(tmp.path().join("io.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        let p = pressures(tmp.path()).unwrap();
        let cpu = p.cpu.unwrap();
        assert_eq!(cpu.some, Stall { avg10: 1.5, avg60: 0.25, total_us: 12407658 });
        assert_eq!(cpu.full, Some(Stall::default()));
        assert_eq!(p.io.unwrap(), Pressure { some: Stall { total_us: 7, ..Stall::default() }, full: None }, "no full line");
        assert!(p.memory.is_none());
        assert!(pressures(&tmp.path().join("gone")).unwrap().is_empty());
    }

    #[test]
    fn garbled_pressure_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        for (text, why) in [
            ("", "no some line"),
            ("some avg10=1.00 total=3\n", "avg10, avg60 or total missing"),
            ("some avg10=NaN avg60=0 total=1\n", "avg10 is no percentage"),
            ("some avg10=1 avg60=0 total=-1\n", "total is no number"),
            ("\u{1b}[2J avg10=1\n", "neither a some nor a full line"),
            ("some avg10\n", "a field without ="),
        ] {
            std::fs::write(tmp.path().join("memory.pressure"), text).unwrap();
            let err = pressures(tmp.path()).unwrap_err();
            assert!(matches!(&err, ReadingError::Garbled { why: w, .. } if *w == why), "{text:?}: {err}");
            assert!(err.to_string().contains("memory.pressure"), "{err}");
        }
    }

    fn dev_line(name: &str, rx: u64, tx: u64) -> String {
        format!("{name}: {rx} {} 0 0 0 0 0 0 {tx} {} 0 0 0 0 0 0\n", rx / 100, tx / 100)
    }

    const HEADER: &str = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n";

    #[test]
    fn net_dev_is_read_from_the_task_bounded_and_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("7/task/8/net");
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!("{HEADER}{}", dev_line("    lo", 1000, 1000));
        text += &dev_line("a-name-longer-than-ifnamsiz", 200, 300);
        for i in 0..20 {
            text += &dev_line(&format!("veth{i}"), 100, 100);
        }
        std::fs::write(dir.join("dev"), text).unwrap();
        let net = net_dev(tmp.path(), 7, 8).unwrap().unwrap();
        assert_eq!(net.interfaces.len(), MAX_INTERFACES);
        assert_eq!(net.cut, 22 - MAX_INTERFACES as u64);
        assert_eq!(net.interfaces[0], Interface { name: "lo".into(), rx_bytes: 1000, rx_packets: 10, tx_bytes: 1000, tx_packets: 10 });
        assert_eq!(net.interfaces[1].name, "a-name-longer-t");
        assert_eq!(net.totals(), [1000 + 200 + 14 * 100, 10 + 2 + 14, 1000 + 300 + 1400, 10 + 3 + 14]);
        assert_eq!(net_dev(tmp.path(), 7, 9).unwrap(), None, "a task gone");
    }

    #[test]
    fn garbled_net_dev_is_an_error() {
        let p = Path::new("/proc/1/net/dev");
        for text in [format!("{HEADER}lo 1 2 3\n"), format!("{HEADER}lo: 1 2 3\n"), format!("{HEADER}lo: 1 2 3 4 5 6 7 8 x 10\n")] {
            let err = parse_net_dev(&text, p).unwrap_err();
            assert!(matches!(err, ReadingError::Garbled { line: 3, .. }), "{text:?}: {err}");
        }
        assert_eq!(parse_net_dev(HEADER, p).unwrap(), Network::default());
    }

    #[test]
    fn swap_is_read_on_both_versions() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(swap_v2(tmp.path()).unwrap(), None);
        assert_eq!(swap_v1(tmp.path()).unwrap(), None);
        std::fs::write(tmp.path().join("memory.swap.current"), "4096\n").unwrap();
        std::fs::write(tmp.path().join("memory.memsw.usage_in_bytes"), "10000\n").unwrap();
        std::fs::write(tmp.path().join("memory.usage_in_bytes"), "8000\n").unwrap();
        assert_eq!(swap_v2(tmp.path()).unwrap(), Some(4096));
        assert_eq!(swap_v1(tmp.path()).unwrap(), Some(2000));
        std::fs::write(tmp.path().join("memory.swap.current"), "max\n").unwrap();
        assert!(matches!(swap_v2(tmp.path()), Err(ReadingError::Garbled { .. })));
    }
}
