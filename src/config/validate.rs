//! The checks the types alone do not make: paths canonical and absolute,
//! names that can match, numbers in range, limit values that parse.

use super::{ApiConfig, Config};
use crate::core::limit::Limit;
use crate::core::cgpath::canonical;
use crate::core::nsset::NsMask;

/// The longest command name the kernel keeps (TASK_COMM_LEN - 1).
const COMM_MAX: usize = 15;

impl Config {
    /// Checks values that the types alone do not, and puts the cgroup paths
    /// (`root`, `include.cgroup`, `exclude.cgroup`) in canonical form.
    pub fn check(&mut self) -> Result<(), (&'static str, String)> {
        self.root = canonical(&self.root).map_err(|e| ("root", e.to_string()))?;
        for (key, f) in [("include.cgroup", &mut self.include), ("exclude.cgroup", &mut self.exclude)] {
            for c in &mut f.cgroup {
                *c = canonical(c).map_err(|e| (key, e.to_string()))?;
            }
        }
        for (key, f) in [("include.comm", &self.include), ("exclude.comm", &self.exclude)] {
            f.comm.iter().try_for_each(|c| comm_fits(c)).map_err(|why| (key, why))?;
        }
        self.mask().map_err(|why| ("namespaces", why))?;
        self.check_control()?;
        self.api.check()?;
        self.check_operability()?;
        let rb = self.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return Err(("ring_buffer_bytes", format!("{rb} must be a power of two of at least 4096")));
        }
        if self.realtime_priority > 99 {
            return Err(("realtime_priority", format!("{} is above 99", self.realtime_priority)));
        }
        if !(-20..=19).contains(&self.nice) {
            return Err(("nice", format!("{} is outside -20..19", self.nice)));
        }
        if self.slice_us != 0 && !(100..=100_000).contains(&self.slice_us) {
            return Err(("slice_us", format!("{} is outside 100..100000 (0: the kernel's default)", self.slice_us)));
        }
        let at_least_one = [
            ("coalesce_above_per_second", self.coalesce_above_per_second == 0),
            ("snapshot_interval_ms", self.snapshot_interval_ms == 0),
            ("max_depth", self.max_depth == 0),
            ("max_nodes", self.max_nodes == 0),
            ("max_nodes_per_user", self.max_nodes_per_user == 0),
            ("max_creations_per_second_per_user", self.max_creations_per_second_per_user == 0),
        ];
        if let Some((key, _)) = at_least_one.into_iter().find(|&(_, zero)| zero) {
            return Err((key, "must be at least 1".into()));
        }
        Ok(())
    }

    /// The namespace kinds that count, as a mask.
    pub fn mask(&self) -> Result<NsMask, String> {
        if self.namespaces.is_empty() {
            return Err("must name at least one namespace kind".into());
        }
        NsMask::parse_names(&self.namespaces)
    }
}

/// Whether a command name can match a task's `comm` at all.
pub(super) fn comm_fits(comm: &str) -> Result<(), String> {
    if comm.is_empty() {
        return Err("an empty command name matches no task".into());
    }
    if comm.len() > COMM_MAX {
        return Err(format!(
            "{:?} is {} bytes, longer than the {COMM_MAX} the kernel keeps of a command name (TASK_COMM_LEN - 1): it matches no task",
            comm,
            comm.len()
        ));
    }
    Ok(())
}

impl Config {
    /// Checks the mirrors, controllers and limit rules, and fills each rule's `checked`.
    fn check_control(&mut self) -> Result<(), (&'static str, String)> {
        for m in &mut self.mirror {
            if m.controllers.is_empty() || m.controllers.split(',').any(|c| c.is_empty() || c.starts_with("name=")) {
                return Err(("mirror.controllers", format!("{:?} must name v1 controllers (`pids`, `cpu,cpuacct`)", m.controllers)));
            }
            m.root = canonical(&m.root).map_err(|e| ("mirror.root", e.to_string()))?;
        }
        const KNOWN: [&str; 8] = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc"];
        if let Some(bad) = self.controllers.iter().find(|c| !KNOWN.contains(&c.as_str())) {
            return Err(("controllers", format!("unknown cgroup2 controller {bad:?} (known: {})", KNOWN.join(", "))));
        }
        for rule in &mut self.limit {
            rule.check_match_keys(["limit.comm", "limit.cgroup", "limit.entered"])?;
            rule.checked = rule
                .set
                .iter()
                .map(|(file, v)| Limit::new(file, &v.get_ref().text()))
                .collect::<Result<_, _>>()
                .map_err(|e| ("limit.set", e.to_string()))?;
        }
        for rule in &mut self.pressure {
            rule.check()?;
        }
        Ok(())
    }

    /// Checks the metrics address and the operability paths.
    fn check_operability(&self) -> Result<(), (&'static str, String)> {
        let m = &self.metrics;
        if !m.listen.is_empty() && m.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(("metrics.listen", format!("{:?} is not an address like 127.0.0.1:9853", m.listen)));
        }
        if m.file_interval_seconds == 0 {
            return Err(("metrics.file_interval_seconds", "must be at least 1".into()));
        }
        for (key, p) in [("metrics.file", &m.file), ("history.database", &self.history.database), ("status.dir", &self.status.dir)] {
            if !p.as_os_str().is_empty() && !p.is_absolute() {
                return Err((key, format!("{} is not an absolute path", p.display())));
            }
        }
        Ok(())
    }
}

impl ApiConfig {
    /// The socket mode must be permission bits only; the path absolute; the
    /// group a name or a number.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.socket_mode & !0o777 != 0 {
            return Err(("api.socket_mode", format!("{:#o} has bits beyond 0o777 (permission bits only)", self.socket_mode)));
        }
        if !self.socket.as_os_str().is_empty() && !self.socket.is_absolute() {
            return Err(("api.socket", format!("{} is not an absolute path", self.socket.display())));
        }
        let g = &self.socket_group;
        if !g.is_empty() && !g.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(("api.socket_group", format!("{g:?} is neither a group name nor a number")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;

    #[test]
    fn cgroup_paths_are_canonical() {
        let c = parse("root = \"/jobs//a/\"\n[include]\ncgroup = [\"/x/\"]\n[exclude]\ncgroup = [\"//y\"]").unwrap();
        assert_eq!((c.root.as_str(), c.include.cgroup[0].as_str(), c.exclude.cgroup[0].as_str()), ("/jobs/a", "/x", "/y"));
        let e = parse("root = \"/jobs/../jobs\"").unwrap_err().to_string();
        assert!(e.contains("`root`") && e.contains(".."), "{e}");
        let e = parse("[include]\ncgroup = [\"/a/./b\"]").unwrap_err().to_string();
        assert!(e.contains("include.cgroup") && e.contains("`.`"), "{e}");
    }

    #[test]
    fn impossible_filter_values_are_refused() {
        let e = parse("[include]\ncomm = [\"0123456789abcdef\"]").unwrap_err().to_string();
        assert!(e.contains("include.comm") && e.contains("TASK_COMM_LEN"), "{e}");
        let e = parse("[exclude]\ncomm = [\"\"]").unwrap_err().to_string();
        assert!(e.contains("exclude.comm") && e.contains("empty"), "{e}");
        assert!(parse("[include]\ncomm = [\"0123456789abcde\"]").is_ok());
        for key in ["max_nodes", "max_nodes_per_user", "max_creations_per_second_per_user"] {
            let e = parse(&format!("{key} = 0")).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")) && e.contains("at least 1"), "{e}");
        }
    }

    #[test]
    fn the_scheduling_keys_are_bounded() {
        for bad in ["slice_us = 99", "slice_us = 100001", "realtime_priority = 100", "nice = -21"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{}`", bad.split(' ').next().unwrap())), "{bad}: {e}");
        }
        for good in ["slice_us = 0", "slice_us = 100", "slice_us = 100000"] {
            assert!(parse(good).is_ok(), "{good}");
        }
    }
}
