//! A user manager's units, as cgroup paths name them, and the scope a
//! sandbox gets from its manager (docs/semantics.md §16, "Units of the
//! user's manager"): which undelegated unit it came from, the scope's name,
//! slice and binding, and the limits it takes over from that unit. Pure: the
//! edge (src/sys/systemd) reads the files and asks the manager.

/// What every scope nsgroup asks for is named after (`app-nsgroup-…`).
pub const SCOPE_PREFIX: &str = "app-nsgroup-";
/// How much of a command name goes into a scope's name.
const MAX_COMM_IN_NAME: usize = 32;

/// The uid of a user manager's cgroup name, `user@<uid>.service`.
pub fn manager_uid(name: &str) -> Option<u32> {
    let uid = name.strip_prefix("user@")?.strip_suffix(".service")?;
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    uid.parse().ok()
}

/// Whether the cgroup at `rel` is a user manager's: `user@<uid>.service`.
pub fn is_user_manager(rel: &str) -> bool {
    manager_uid(rel.rsplit('/').next().unwrap_or("")).is_some()
}

/// The nearest user manager's cgroup that `rel` lies strictly below: its
/// uid, and the rest of `rel` below it.
pub fn user_manager_above(rel: &str) -> Option<(u32, &str)> {
    let mut at = 0;
    let mut found = None;
    for part in rel.split('/') {
        at += part.len() + 1;
        if let Some(uid) = manager_uid(part) {
            found = Some((uid, at.min(rel.len())));
        }
    }
    found.and_then(|(uid, end)| {
        let below = &rel[end..];
        (!below.is_empty()).then_some((uid, below))
    })
}

/// The user manager whose unit the cgroup at `rel` is, by systemd's own
/// layout only: `/user.slice/user-<uid>.slice/user@<uid>.service/…`, the
/// same uid twice, and no other `user@<n>.service` below (a user may name
/// her own cgroups so, inside her subtree, to pass for another manager's
/// units: root's among them). Its uid, and the rest of `rel` below it.
pub fn user_manager_of(rel: &str) -> Option<(u32, &str)> {
    let rest = rel.strip_prefix("/user.slice/user-")?;
    let (uid, rest) = rest.split_once(".slice/")?;
    let (manager, below) = rest.split_once('/')?;
    let uid: u32 = (!uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit())).then(|| uid.parse().ok()).flatten()?;
    if manager_uid(manager) != Some(uid) || below.split('/').any(|p| manager_uid(p).is_some()) {
        return None;
    }
    Some((uid, below))
}

/// An undelegated scope of a user's manager that a sandbox was started in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The manager's uid (`user@<uid>.service`).
    pub uid: u32,
    /// The scope's unit name (`app-sandbox1.scope`).
    pub unit: String,
    /// The slice it is in (`app.slice`), if any below the manager's root.
    pub slice: Option<String>,
    /// Its cgroup, relative to the hierarchy's mount.
    pub cgroup: String,
}

impl Origin {
    /// The scope whose cgroup is `rel`, when it is one a sandbox may leave
    /// for a scope of its own: a `.scope` of a user manager, through slices
    /// only, not the manager's own `init.scope` and not one of nsgroup's.
    /// A service is never left: its main process is the service.
    pub fn of(rel: &str) -> Option<Origin> {
        // systemd's layout only (not a name she gave a cgroup of hers), and
        // in a slice of the manager (a scope is made beside it there).
        let (uid, below) = user_manager_of(rel)?;
        let mut parts: Vec<&str> = below.split('/').filter(|p| !p.is_empty()).collect();
        let unit = parts.pop()?;
        let slice = parts.last()?;
        let nested_right = parts.iter().all(|p| p.ends_with(".slice") && valid_unit_name(p));
        if !nested_right || !unit.ends_with(".scope") || unit == "init.scope" || unit.starts_with(SCOPE_PREFIX) || !valid_unit_name(unit) {
            return None;
        }
        Some(Origin { uid, unit: unit.to_string(), slice: Some(slice.to_string()), cgroup: rel.to_string() })
    }
}

/// Whether the cgroup at `rel` is a scope nsgroup asked a user's manager
/// for: `app-nsgroup-….scope` below `user@<uid>.service`, through slices.
pub fn is_own_scope(rel: &str) -> bool {
    let Some((_, below)) = user_manager_of(rel) else { return false };
    let mut parts: Vec<&str> = below.split('/').filter(|p| !p.is_empty()).collect();
    let Some(unit) = parts.pop() else { return false };
    unit.starts_with(SCOPE_PREFIX) && unit.ends_with(".scope") && parts.iter().all(|p| p.ends_with(".slice"))
}

/// Whether `name` is a unit name systemd takes as it is (its characters,
/// its length).
fn valid_unit_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// The scope's name for the sandbox whose first task is `pid`, started at
/// `start_ns`, running `comm`: `app-nsgroup-<comm>-node_<pid>-<start>.scope`.
/// A command name is the user's to choose: only letters, digits, `_`, `.`
/// and `:` of it are kept, at most [`MAX_COMM_IN_NAME`] of them.
pub fn scope_name(comm: &str, pid: u32, start_ns: u64) -> String {
    let kept: String = comm.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':')).take(MAX_COMM_IN_NAME).collect();
    let comm = if kept.is_empty() { "sandbox".to_string() } else { kept };
    format!("{SCOPE_PREFIX}{comm}-node_{pid}-{start_ns:x}.scope")
}

/// The limits of a unit's own cgroup that a scope made beside it takes over
/// (the same properties, so a sandbox does not escape them by leaving).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub memory_swap_max: Option<u64>,
    pub tasks_max: Option<u64>,
    /// `cpu.max`: quota and period, in µs.
    pub cpu: Option<(u64, u64)>,
}

/// A limit nsgroup cannot hand to a scope: the sandbox stays where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("its unit's {file} is {value:?}, which a scope of its own could not keep")]
pub struct Untransferable {
    pub file: &'static str,
    pub value: String,
}

/// The cgroup files a unit's limits are read from.
pub const LIMIT_FILES: [&str; 6] = ["memory.max", "memory.high", "memory.swap.max", "pids.max", "cpu.max", "io.max"];

impl Limits {
    /// The limits that `read` (a file's text, `None` when the unit has no
    /// such file) shows; an `io.max` with any line, or a value that is not
    /// a limit, cannot be handed on.
    pub fn read(mut read: impl FnMut(&'static str) -> Option<String>) -> Result<Limits, Untransferable> {
        let mut limits = Limits::default();
        for file in LIMIT_FILES {
            let Some(text) = read(file) else { continue };
            let value = text.trim();
            let bad = || Untransferable { file, value: value.chars().take(64).collect() };
            let amount = |v: &str| if v == "max" { Ok(None) } else { v.parse::<u64>().map(Some).map_err(|_| bad()) };
            match file {
                "memory.max" => limits.memory_max = amount(value)?,
                "memory.high" => limits.memory_high = amount(value)?,
                "memory.swap.max" => limits.memory_swap_max = amount(value)?,
                "pids.max" => limits.tasks_max = amount(value)?,
                "cpu.max" => {
                    let (quota, period) = value.split_once(' ').ok_or_else(bad)?;
                    let period: u64 = period.parse().map_err(|_| bad())?;
                    limits.cpu = match amount(quota)? {
                        Some(q) if period > 0 => Some((q, period)),
                        Some(_) => return Err(bad()),
                        None => None,
                    };
                }
                _ if value.is_empty() => {}
                _ => return Err(bad()),
            }
        }
        Ok(limits)
    }

    /// The scope's properties that keep these limits: systemd's names
    /// and values (bytes, tasks, µs of CPU per second and the period).
    pub fn properties(&self) -> Vec<(&'static str, u64)> {
        let mut p = Vec::new();
        let mut put = |name, v: Option<u64>| p.extend(v.map(|v| (name, v)));
        put("MemoryMax", self.memory_max);
        put("MemoryHigh", self.memory_high);
        put("MemorySwapMax", self.memory_swap_max);
        put("TasksMax", self.tasks_max);
        if let Some((quota, period)) = self.cpu {
            put("CPUQuotaPerSecUSec", Some(quota.saturating_mul(1_000_000) / period));
            put("CPUQuotaPeriodUSec", Some(period));
        }
        p
    }
}

/// What the daemon asks a user's manager for: a scope for the sandbox
/// whose first task is `pid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitPlan {
    pub origin: Origin,
    pub scope: String,
    pub pid: u32,
    pub start_ns: u64,
    /// The sandbox's command, for the scope's description (escaped there).
    pub comm: String,
}

impl UnitPlan {
    /// The plan for the task `pid` (started at `start_ns`, running `comm`)
    /// whose sandbox was started in the scope at cgroup `rel`; `None` when
    /// that is no scope a sandbox leaves.
    pub fn for_task(rel: &str, pid: u32, start_ns: u64, comm: &str) -> Option<UnitPlan> {
        let origin = Origin::of(rel)?;
        Some(UnitPlan { origin, scope: scope_name(comm, pid, start_ns), pid, start_ns, comm: comm.to_string() })
    }

    /// The scope's description (`systemctl status` shows it).
    pub fn description(&self) -> String {
        let comm: String = crate::core::escape::Escaped(&self.comm).to_string().chars().take(64).collect();
        format!("nsgroup sandbox of {comm} (pid {}) from {}", self.pid, self.origin.unit)
    }

    /// The scope's cgroup once its manager made it: beside the origin, in
    /// the same slice.
    pub fn scope_cgroup(&self) -> String {
        let parent = self.origin.cgroup.rsplit_once('/').map_or("", |(p, _)| p);
        format!("{parent}/{}", self.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "/user.slice/user-1000.slice/user@1000.service";

    #[test]
    fn only_a_user_managers_own_scopes_are_left() {
        let o = Origin::of(&format!("{M}/app.slice/app-sandbox1.scope")).unwrap();
        assert_eq!((o.uid, o.unit.as_str(), o.slice.as_deref()), (1000, "app-sandbox1.scope", Some("app.slice")));
        for not in [
            // Directly below the manager: no slice to put a scope beside it in.
            format!("{M}/x.scope"),
            // A cgroup she made in her subtree, named as another manager's (root's), is hers.
            format!("{M}/app.slice/x.slice/user@0.service/app.slice/x.scope"),
            "/user.slice/user-0.slice/user@1000.service/app.slice/x.scope".to_string(),
            "/system.slice/user@0.service/app.slice/x.scope".to_string(),
            format!("{M}/app.slice/bad name.slice/x.scope"),
            format!("{M}/init.scope"),
            format!("{M}/app.slice/run-u7.service"),
            format!("{M}/app.slice"),
            format!("{M}/app.slice/{SCOPE_PREFIX}sh-node_5-a.scope"),
            format!("{M}/app.slice/app-x.scope/inner"),
            format!("{M}/app.slice/bad name.scope"),
            M.to_string(),
            "/system.slice/session-1.scope".to_string(),
            "/user.slice/user-1000.slice/session-2.scope".to_string(),
        ] {
            assert_eq!(Origin::of(&not), None, "{not}");
        }
        assert_eq!(user_manager_above(&format!("{M}/app.slice/x.scope")), Some((1000, "app.slice/x.scope")));
        assert_eq!(user_manager_above(M), None);
        assert!(is_own_scope(&format!("{M}/app.slice/{SCOPE_PREFIX}sh-node_5-a.scope")));
        assert!(!is_own_scope(&format!("{M}/app.slice/y.slice/user@0.service/app.slice/{SCOPE_PREFIX}sh-node_5-a.scope")));
        assert_eq!(user_manager_of(&format!("{M}/app.slice/x.scope")), Some((1000, "app.slice/x.scope")));
        for not in [format!("{M}/app.slice/app-x.scope"), format!("{M}/app.slice/{SCOPE_PREFIX}x.scope/node_5"), format!("/system.slice/{SCOPE_PREFIX}x.scope")] {
            assert!(!is_own_scope(&not), "{not}");
        }
        assert!(is_user_manager(M) && !is_user_manager("/user@.service") && !is_user_manager("/user@1x.service"));
    }

    #[test]
    fn a_scope_is_named_after_the_sandbox_and_nothing_a_user_chose_breaks_the_name() {
        assert_eq!(scope_name("unshare", 441, 0xabc), "app-nsgroup-unshare-node_441-abc.scope");
        assert_eq!(scope_name("a/b\n-c\\x2d", 1, 1), "app-nsgroup-abcx2d-node_1-1.scope");
        assert_eq!(scope_name("/-\u{202e}", 1, 1), "app-nsgroup-sandbox-node_1-1.scope");
        let long = scope_name(&"x".repeat(200), u32::MAX, u64::MAX);
        assert!(long.len() < 100 && valid_unit_name(&long), "{long}");
        let plan = UnitPlan::for_task(&format!("{M}/app.slice/app-s.scope"), 7, 16, "sh\x1b[2J").unwrap();
        assert_eq!(plan.scope_cgroup(), format!("{M}/app.slice/app-nsgroup-sh2J-node_7-10.scope"));
        assert!(!plan.description().contains('\x1b'), "{}", plan.description());
    }

    #[test]
    fn the_scope_keeps_its_units_limits_or_the_sandbox_stays() {
        let files = |pairs: &'static [(&'static str, &'static str)]| move |f: &str| pairs.iter().find(|(n, _)| *n == f).map(|(_, v)| v.to_string());
        let none = Limits::read(files(&[("memory.max", "max\n"), ("pids.max", "max\n"), ("cpu.max", "max 100000\n"), ("io.max", "")])).unwrap();
        assert_eq!(none, Limits::default());
        assert!(none.properties().is_empty());
        let some = Limits::read(files(&[("memory.max", "67108864\n"), ("memory.high", "max"), ("pids.max", "50\n"), ("cpu.max", "20000 100000\n")])).unwrap();
        assert_eq!(
            some.properties(),
            [("MemoryMax", 67108864), ("TasksMax", 50), ("CPUQuotaPerSecUSec", 200_000), ("CPUQuotaPeriodUSec", 100_000)]
        );
        let io = Limits::read(files(&[("io.max", "8:0 rbps=1048576 wbps=max riops=max wiops=max\n")])).unwrap_err();
        assert_eq!(io.file, "io.max");
        for bad in [&[("memory.max", "lots")][..], &[("cpu.max", "1000")], &[("cpu.max", "1000 0")], &[("pids.max", "-1")]] {
            assert!(Limits::read(files(bad)).is_err(), "{bad:?}");
        }
    }
}
