//! nsgroup on a systemd host (docs/semantics.md §16), against real systemd
//! on pure cgroup2: the guest bed (scripts/vm-test, docs/vm.md). Every unit
//! here is one the test starts, in a slice of its own that is also the
//! daemon's tracked root, so the daemon cannot touch anything else; the test
//! stops them all. Elsewhere every test skips and says why.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MOUNT: &str = "/sys/fs/cgroup";

/// A slice of the test's own (`nsgrouptest<random>.slice`: no dash, which
/// would nest it), started empty; Drop stops it and every unit in it.
struct Slice {
    name: String,
    cgroup: String,
}

impl Slice {
    fn start() -> Slice {
        let name = format!("{}.slice", unit_name().replace('-', ""));
        systemctl(&["start", &name]).unwrap();
        let cgroup = systemctl(&["show", "-p", "ControlGroup", "--value", &name]).unwrap();
        assert!(cgroup.ends_with(&name), "{name}: {cgroup:?}");
        wait_for("the slice's cgroup", || dir(&cgroup).is_dir());
        Slice { name, cgroup }
    }

    /// Starts `cmd` as a transient service in this slice (`systemd-run`,
    /// `Type=exec`), with `Delegate=yes` if asked.
    fn service(&self, delegate: bool, cmd: &[&str]) -> Service {
        let name = format!("{}.service", unit_name());
        let mut args = vec!["--quiet", "--service-type=exec", "--unit", &name, "--slice", &self.name];
        if delegate {
            args.extend(["-p", "Delegate=yes"]);
        }
        let out = Command::new("systemd-run").args(&args).arg("--").args(cmd).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "systemd-run {name}: {}", String::from_utf8_lossy(&out.stderr));
        let cgroup = systemctl(&["show", "-p", "ControlGroup", "--value", &name]).unwrap();
        assert_eq!(cgroup, format!("{}/{name}", self.cgroup));
        let main = systemctl(&["show", "-p", "MainPID", "--value", &name]).unwrap().parse().unwrap();
        Service { name, cgroup, main }
    }
}

impl Drop for Slice {
    fn drop(&mut self) {
        if let Err(e) = systemctl(&["stop", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

/// A service the test started; Drop stops it (and forgets a failure).
struct Service {
    name: String,
    cgroup: String,
    main: u32,
}

impl Service {
    fn stop(&self) {
        systemctl(&["stop", &self.name]).unwrap();
    }

    /// The pids in the unit's cgroup and below, with their cgroups.
    fn tasks(&self) -> Vec<(u32, String)> {
        tasks_below(&self.cgroup)
    }

    /// Every cgroup below the unit's, relative to it, sorted.
    fn below(&self) -> Vec<String> {
        subdirs(&dir(&self.cgroup))
    }

    /// A file of the unit's cgroup or of one below it (`rel` relative to it).
    fn read(&self, rel: &str, file: &str) -> String {
        std::fs::read_to_string(dir(&self.cgroup).join(rel).join(file)).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = systemctl(&["stop", &self.name]);
        let _ = systemctl(&["reset-failed", &self.name]);
    }
}

/// The pids in `cgroup` and below, with their cgroups, sorted.
fn tasks_below(cgroup: &str) -> Vec<(u32, String)> {
    let mut out = vec![];
    let mut stack = vec![dir(cgroup)];
    while let Some(d) = stack.pop() {
        let rel = format!("/{}", d.strip_prefix(MOUNT).unwrap().display());
        for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()) {
            out.push((pid, rel.clone()));
        }
        stack.extend(std::fs::read_dir(&d).into_iter().flatten().flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    out.sort();
    out
}

fn dir(cgroup: &str) -> PathBuf {
    Path::new(MOUNT).join(cgroup.trim_start_matches('/'))
}

/// The cgroup named `name` below `cgroup`, if there is one.
fn find_cgroup(cgroup: &str, name: &str) -> Option<String> {
    let mut stack = vec![dir(cgroup)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name().to_str() == Some(name) {
                    return Some(format!("/{}", e.path().strip_prefix(MOUNT).unwrap().display()));
                }
                stack.push(e.path());
            }
        }
    }
    None
}

/// A task's cgroup2 path.
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// The daemon on the real hierarchy, tracking only the test's slice.
fn daemon(slice: &Slice, config: &str) -> (Daemon, tempfile::TempDir) {
    let (dir, path) = config_file(config);
    (Daemon::start_at(Path::new(MOUNT), &slice.cgroup, &["--config", &path]), dir)
}

/// The test runs only on a systemd host on pure cgroup2, as root.
fn systemd_host() -> bool {
    if !privileged() {
        return false;
    }
    match systemd_unavailable() {
        Some(why) => {
            skip(&why);
            false
        }
        None => true,
    }
}

/// The `refused_other` count of the daemon's per-interval report for `uid`
/// (0 until one is written: every 10 s while something was counted).
fn refused_other(d: &Daemon, uid: u32) -> u64 {
    d.log_lines_with("entries refused")
        .iter()
        .filter(|l| l.contains(&format!("uid={uid} ")))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("refused_other=")?.parse::<u64>().ok()))
        .sum()
}

/// `unshare --fork --pid --uts sleep 600`: the unshare process P and its
/// child C, C in a new pid namespace. Waits for both; returns (P, C).
fn sandbox_of(svc: &Service) -> (u32, u32) {
    wait_for("the sandbox's child", || !children_of(svc.main).is_empty());
    (svc.main, children_of(svc.main)[0])
}

const SANDBOX: [&str; 6] = ["unshare", "--fork", "--pid", "--uts", "sleep", "600"];

#[test]
fn a_service_that_is_not_delegated_keeps_its_tasks_where_systemd_put_them() {
    if !systemd_host() {
        return;
    }
    let slice = Slice::start();
    // Not even leaf = "everywhere" with controllers moves a task of a unit
    // that is not delegated, or enables a controller in its cgroup.
    let (d, _c) = daemon(&slice, "controllers = [\"memory\", \"pids\"]\nleaf = \"everywhere\"\n");
    let svc = slice.service(false, &SANDBOX);
    let (p, c) = sandbox_of(&svc);
    let subtree_control = svc.read("", "cgroup.subtree_control");
    // The refusals are counted for uid 0, in the report written every 10 s.
    wait_for("the refusals reported", || refused_other(&d, 0) >= 1);
    assert_eq!(svc.tasks(), vec![(p, svc.cgroup.clone()), (c, svc.cgroup.clone())], "both stay in the unit's cgroup");
    assert!(svc.below().is_empty(), "no node, no leaf in the unit: {:?}", svc.below());
    assert_eq!(svc.read("", "cgroup.subtree_control"), subtree_control);
    assert!(d.log_lines_with("node_created").is_empty(), "{}", d.log_text());
    // Counted, not logged per event.
    assert!(d.log_lines_with("left in place").is_empty(), "{}", d.log_text());
}

#[test]
fn a_delegated_service_gets_nodes_and_stopping_it_ends_the_sandbox() {
    if !systemd_host() {
        return;
    }
    let slice = Slice::start();
    let (mut d, _c) = daemon(&slice, "");
    let svc = slice.service(true, &SANDBOX);
    let (p, c) = sandbox_of(&svc);
    let (node_p, node_c) = (format!("{}/node_{p}", svc.cgroup), format!("{}/node_{p}/node_{c}", svc.cgroup));
    wait_for("P and C in their nodes", || cgroup_of(p).as_ref() == Some(&node_p) && cgroup_of(c).as_ref() == Some(&node_c));
    assert_eq!(svc.below(), vec![format!("node_{p}"), format!("node_{p}/node_{c}")]);
    let text = tree_at(&slice, &[]);
    assert!(text.contains(&format!("node_{p}")) && text.contains(&format!("node_{c}")), "{text}");

    // systemctl stop kills the unit's whole cgroup, the sandbox's nodes
    // included, and the cgroups go; the daemon runs on.
    svc.stop();
    for pid in [p, c] {
        wait_for(&format!("{pid} gone"), || !Path::new(&format!("/proc/{pid}")).exists());
    }
    wait_for("the unit's cgroup gone", || !dir(&svc.cgroup).exists());
    assert!(d.running(), "{}", d.log_text());
    assert!(!tree_at(&slice, &[]).contains("node_"), "no node left");
    assert!(d.log_lines_with(" ERROR ").is_empty(), "{}", d.log_text());
}

/// `nsgroup tree` of the test's slice.
fn tree_at(slice: &Slice, extra: &[&str]) -> String {
    let out = Command::new(NSGROUP).args(["tree", "--hierarchy", MOUNT, "--root", &slice.cgroup]).args(extra).output().unwrap();
    assert!(out.status.success(), "tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The unit's main process M (a shell) stays; A (`unshare --uts sh`) makes a
/// node, and B (`unshare --uts sleep`), started by A, a node inside A's.
const NESTED: [&str; 3] = ["sh", "-c", "unshare --uts sh -c 'unshare --uts sleep 600 & wait' & wait"];

/// Waits for A's and B's nodes; returns (M, A, B).
fn nested_of(svc: &Service) -> (u32, u32, u32) {
    let m = svc.main;
    wait_for("A and B", || children_of(m).first().is_some_and(|a| !children_of(*a).is_empty()));
    let a = children_of(m)[0];
    let b = children_of(a)[0];
    let node_b = format!("node_{a}/node_{b}");
    wait_for("B in its node", || cgroup_of(b).is_some_and(|g| g.ends_with(&node_b)));
    (m, a, b)
}

#[test]
fn the_leaf_policy_against_real_systemd() {
    if !systemd_host() {
        return;
    }
    let controllers = "controllers = [\"memory\", \"pids\"]\n[[limit]]\nset = { \"pids.max\" = 64 }\n";
    let slice = Slice::start();

    // Default `nodes`: the unit's own process stays where systemd put it, so
    // its cgroup cannot pass controllers on: the nodes lack them, and say so.
    let (d, _c) = daemon(&slice, controllers);
    let svc = slice.service(true, &NESTED);
    let subtree_control = svc.read("", "cgroup.subtree_control");
    let (m, a, b) = nested_of(&svc);
    let (node_a, node_b) = (format!("node_{a}"), format!("node_{a}/node_{b}"));
    assert_eq!(cgroup_of(m), Some(svc.cgroup.clone()), "M stays in the unit's cgroup");
    assert_eq!(cgroup_of(a), Some(format!("{}/{node_a}", svc.cgroup)), "A in its node, no leaf");
    assert_eq!(svc.below(), vec![node_a.clone(), node_b.clone()], "no leaf anywhere");
    assert_eq!(svc.read("", "cgroup.subtree_control"), subtree_control, "nothing enabled in the unit's cgroup");
    assert!(!svc.read(&node_a, "cgroup.controllers").contains("pids"), "A's node lacks them");
    assert!(!svc.read(&node_b, "cgroup.controllers").contains("pids"), "so does B's");
    wait_for("the lack logged", || d.log_text().contains("lacks memory pids"));
    drop(d);
    drop(svc);

    // `everywhere` inside a delegated unit: its processes move into its
    // leaf, the unit's cgroup passes the controllers on, the nodes get them
    // and their limits, and A's own task moves into its node's leaf.
    let (_d, _c) = daemon(&slice, &format!("leaf = \"everywhere\"\n{controllers}"));
    let svc = slice.service(true, &NESTED);
    let (m, a, b) = nested_of(&svc);
    let (node_a, node_b) = (format!("node_{a}"), format!("node_{a}/node_{b}"));
    assert_eq!(cgroup_of(m), Some(format!("{}/leaf", svc.cgroup)), "M in the unit's leaf");
    assert_eq!(cgroup_of(a), Some(format!("{}/{node_a}/leaf", svc.cgroup)), "A in its node's leaf");
    assert_eq!(cgroup_of(b), Some(format!("{}/{node_b}", svc.cgroup)));
    let enabled = svc.read("", "cgroup.subtree_control");
    assert!(enabled.contains("memory") && enabled.contains("pids"), "{enabled}");
    for node in [&node_a, &node_b] {
        assert!(svc.read(node, "cgroup.controllers").contains("pids"), "{node}");
        assert_eq!(svc.read(node, "pids.max").trim(), "64", "{node}");
    }
}

/// Only one test at a time uses uid 65534's manager (each stops it at the end).
static USER_MANAGER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// uid 65534's user manager, `user@65534.service` (delegated by systemd),
/// started by the test; Drop stops it, which ends every unit it started.
struct UserManager {
    unit: String,
    cgroup: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl UserManager {
    /// Starts it, or says why it cannot run here.
    fn start() -> Result<UserManager, String> {
        let one = USER_MANAGER.lock().unwrap_or_else(|e| e.into_inner());
        // The user manager's session comes from pam_systemd (XDG_RUNTIME_DIR
        // among it); without it `systemd --user` exits at once.
        let pam = ["/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security", "/lib/security", "/usr/lib/security"];
        if !pam.iter().any(|d| Path::new(d).join("pam_systemd.so").exists()) {
            return Err("no pam_systemd.so here (libpam-systemd is not installed): user@.service cannot start a user manager (it gets no XDG_RUNTIME_DIR)".into());
        }
        let unit = format!("user@{NOBODY}.service");
        systemctl(&["start", &unit]).map_err(|e| format!("no user manager for uid {NOBODY}: {e}"))?;
        let mut manager = UserManager { unit, cgroup: String::new(), _one: one };
        manager.cgroup = systemctl(&["show", "-p", "ControlGroup", "--value", &manager.unit])?;
        Ok(manager)
    }

    /// `args` run as uid 65534 with its manager's runtime directory, where
    /// `systemd-run --user` finds the manager's private socket.
    fn command(&self, args: &[&str]) -> Command {
        let runtime = format!("XDG_RUNTIME_DIR=/run/user/{NOBODY}");
        let mut v = as_nobody(&["env", &runtime]);
        v.extend_from_slice(args);
        let mut c = Command::new(v[0]);
        c.args(&v[1..]).stdin(Stdio::null());
        c
    }

    fn stop(&self) {
        systemctl(&["stop", &self.unit]).unwrap();
    }
}

/// uid 65534's manager on a systemd host, or None (skipped, saying why).
fn user_manager() -> Option<UserManager> {
    if !systemd_host() {
        return None;
    }
    UserManager::start().map_err(|why| skip(&why)).ok()
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let _ = systemctl(&["stop", &self.unit]);
    }
}

/// A transient service `name` of uid 65534's manager running `cmd`
/// (`Delegate=yes` if asked), and its cgroup; None (skipped) when the manager
/// will not start one.
fn user_service(manager: &UserManager, name: &str, delegate: bool, cmd: &[&str]) -> Option<String> {
    let mut args = vec!["systemd-run", "--user", "--quiet", "--service-type=exec", "--unit", name];
    if delegate {
        args.extend(["-p", "Delegate=yes"]);
    }
    args.push("--");
    let out = manager.command(&args).args(cmd).output().unwrap();
    if !out.status.success() {
        skip(&format!("uid {NOBODY}'s manager would not start a unit: {}", String::from_utf8_lossy(&out.stderr).trim()));
        return None;
    }
    let mut cgroup = String::new();
    wait_for("the user's unit's cgroup", || find_cgroup(&manager.cgroup, name).map(|c| cgroup = c).is_some());
    Some(cgroup)
}

/// The first pid in the cgroup `cgroup` or below, once there is one.
fn first_pid(cgroup: &str) -> u32 {
    let mut pid = 0;
    wait_for("a task in the unit", || tasks_below(cgroup).first().map(|(p, _)| pid = *p).is_some());
    pid
}

const USER_SANDBOX: [&str; 6] = ["unshare", "--user", "--map-root-user", "--uts", "sleep", "600"];

#[test]
fn a_user_managers_units_get_nodes_only_where_it_delegated() {
    let Some(manager) = user_manager() else { return };
    // Two transient services of uid 65534's own manager in its app.slice,
    // started through its private socket once the daemon runs, each an
    // unprivileged sandbox (user and uts namespaces): one Delegate=yes, one
    // not. Only the test's units are tracked: the manager's own processes
    // are not.
    let (delegated, plain) = (format!("{}.service", unit_name()), format!("{}.service", unit_name()));
    let units = [&delegated, &plain].map(|u| format!("{}/app.slice/{u}", manager.cgroup));
    let (_c, config) = config_file(&format!("[include]\ncgroup = [\"{}\", \"{}\"]\n", units[0], units[1]));
    let d = Daemon::start_at(Path::new(MOUNT), &manager.cgroup, &["--config", &config]);
    let Some(delegated_cgroup) = user_service(&manager, &delegated, true, &USER_SANDBOX) else { return };
    let Some(plain_cgroup) = user_service(&manager, &plain, false, &USER_SANDBOX) else { return };
    assert_eq!([&delegated_cgroup, &plain_cgroup], [&units[0], &units[1]], "a user's transient services go in her app.slice");
    let (pid, plain_pid) = (first_pid(&delegated_cgroup), first_pid(&plain_cgroup));
    let node = format!("{delegated_cgroup}/node_{pid}");
    wait_for("the sandbox in its node", || cgroup_of(pid).as_ref() == Some(&node));
    let mut buf = vec![0u8; 65536];
    assert!(rustix::fs::getxattr(dir(&node), "trusted.nsgroup", &mut buf[..]).is_ok(), "the node has its record: {}", d.log_text());
    // The unit its manager did not delegate is the manager's: nothing is
    // written there, and the refusal is counted for its owner.
    wait_for("the refusal reported", || refused_other(&d, NOBODY) >= 1);
    assert_eq!(cgroup_of(plain_pid).as_ref(), Some(&plain_cgroup));
    assert!(subdirs(&dir(&plain_cgroup)).is_empty(), "no cgroup in the undelegated unit: {}", d.log_text());
    // A restart adopts the node: no second one, nothing moved.
    drop(d);
    let d = Daemon::start_at(Path::new(MOUNT), &manager.cgroup, &["--config", &config]);
    wait_for("the restarted daemon tracking", || d.log_text().contains("nsgroup is tracking"));
    assert!(d.log_text().contains("adopted=1"), "{}", d.log_text());
    assert_eq!(subdirs(&dir(&delegated_cgroup)), [format!("node_{pid}")], "{}", d.log_text());
    assert_eq!(cgroup_of(pid).as_ref(), Some(&node));
    assert!(subdirs(&dir(&plain_cgroup)).is_empty());
    // Stopping the user's manager ends its units, the sandbox with them.
    manager.stop();
    wait_for("the sandbox gone", || !Path::new(&format!("/proc/{pid}")).exists());
    wait_for("its node gone", || !dir(&node).exists());
}

#[test]
fn check_holds_on_the_whole_host() {
    let Some(manager) = user_manager() else { return };
    // The host's own services (PrivateTmp=, ProtectHostname=, …), a system
    // service in namespaces of its own that is not delegated, a delegated
    // one with its nodes, a user's sandbox in an undelegated unit of her
    // manager: `nsgroup check` applies run's rules to all of them. The
    // host's Delegate=yes services in namespaces of their own
    // (systemd-udevd) get nodes from a daemon on /system.slice, as an
    // installed nsgroup makes them (one on the whole hierarchy would act in
    // the other tests' units too); afterwards the test puts every task back
    // where it was and removes the nodes.
    let slice = Slice::start();
    // Dropped after the daemon (declared before it).
    let _restore = Restore { before: tasks_below("/system.slice"), cgroup: "/system.slice" };
    let host = Daemon::start_at(Path::new(MOUNT), "/system.slice", &[]);
    let (_d, _c) = daemon(&slice, "");
    let plain = slice.service(false, &SANDBOX);
    let boxed = slice.service(true, &SANDBOX);
    sandbox_of(&plain);
    let (p, c) = sandbox_of(&boxed);
    let node_c = format!("{}/node_{p}/node_{c}", boxed.cgroup);
    wait_for("C in its node", || cgroup_of(c).as_ref() == Some(&node_c));
    let user_unit = user_service(&manager, &format!("{}.service", unit_name()), false, &USER_SANDBOX);
    // Other tests' sandboxes may be between their start and their placement: retry.
    let mut last = String::new();
    let clean = user_unit.is_some()
        && (0..20).any(|_| {
            let out = Command::new(NSGROUP).args(["check", "-v"]).output().unwrap();
            last = format!("{}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            out.status.success() || {
                std::thread::sleep(std::time::Duration::from_millis(500));
                false
            }
        });
    if user_unit.is_none() {
        return;
    }
    assert!(clean, "nsgroup check on the whole host: {last}\n{}", host.log_text());
    assert!(last.contains("by delegation"), "the undelegated units' tasks are counted: {last}");
    assert!(last.contains(&format!("left by rule delegation: {}", plain.main)), "{last}");
}

/// On drop: puts every task of `before` (pid and cgroup) that is elsewhere
/// now back in its cgroup, then removes the nodes below `cgroup`, deepest first.
struct Restore {
    before: Vec<(u32, String)>,
    cgroup: &'static str,
}

impl Drop for Restore {
    fn drop(&mut self) {
        restore(&self.before, self.cgroup);
    }
}

fn restore(before: &[(u32, String)], cgroup: &str) {
    for (pid, was) in before {
        if cgroup_of(*pid).is_some_and(|now| &now != was) {
            let _ = std::fs::write(dir(was).join("cgroup.procs"), pid.to_string());
        }
    }
    let mut nodes: Vec<String> = subdirs(&dir(cgroup)).into_iter().filter(|d| d.rsplit('/').next().is_some_and(|n| n.starts_with("node_"))).collect();
    nodes.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for n in nodes {
        let _ = std::fs::remove_dir(dir(cgroup).join(n.trim_start_matches('/')));
    }
}

/// A process the test started; Drop kills it by pid and reaps it.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another uid than the sandbox's user, with no session of its own.
const OTHER_USER: u32 = 65533;

#[test]
fn a_user_controls_her_sandbox_from_another_unit_of_her_manager() {
    let Some(manager) = user_manager() else { return };
    // The sandbox, started the way desktops start apps: an app scope of her
    // manager (Delegate=yes, so its cgroup can pass pids on to the nodes).
    // The scope's process P is the test's child; C is P's child in a new
    // pid namespace.
    let scope = format!("app-{}.scope", unit_name());
    let mut sandbox = manager
        .command(&["systemd-run", "--user", "--scope", "--quiet", "-p", "Delegate=yes", "--slice", "app.slice", "--unit", &scope, "--"])
        .args(["unshare", "--user", "--map-root-user", "--uts", "--pid", "--fork", "sleep", "600"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let p = sandbox.id();
    let scope_cgroup = format!("{}/app.slice/{scope}", manager.cgroup);
    wait_for("the sandbox in its app scope", || {
        if let Ok(Some(status)) = sandbox.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(sandbox.stderr.as_mut().unwrap(), &mut err);
            panic!("systemd-run --user --scope exited ({status}): {err}");
        }
        cgroup_of(p).as_ref() == Some(&scope_cgroup) && !children_of(p).is_empty()
    });
    let mut sandbox = Started(sandbox);
    let c = children_of(p)[0];

    // The daemon tracks her manager's subtree, which lies in her user slice,
    // and places only the test's sandbox. (A domain controller with pids:
    // pids alone is enabled in the scope while it holds tasks, which makes
    // it a thread root its node cannot take tasks in, EOPNOTSUPP.)
    let api = tempfile::tempdir().unwrap();
    std::fs::set_permissions(api.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = api.path().join("api.sock").display().to_string();
    // Her own copy of the command: the guest's binaries lie in a directory
    // only root may enter, which a unit of her manager cannot exec from.
    let her_nsgroup = api.path().join("nsgroup");
    std::fs::copy(NSGROUP, &her_nsgroup).unwrap();
    std::fs::set_permissions(&her_nsgroup, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let her_nsgroup = her_nsgroup.display().to_string();
    let config = api.path().join("nsgroup.toml");
    std::fs::write(
        &config,
        format!("controllers = [\"memory\", \"pids\"]\nleaf = \"everywhere\"\n[include]\ncgroup = [\"{scope_cgroup}\"]\n[api]\nsocket = \"{socket}\"\n"),
    )
    .unwrap();
    let d = Daemon::start_at(Path::new(MOUNT), &manager.cgroup, &["--config", config.to_str().unwrap()]);
    let node_p = format!("{scope_cgroup}/node_{p}");
    let node_c = format!("{node_p}/node_{c}");
    wait_for("C in its node", || cgroup_of(c).as_ref() == Some(&node_c));
    let c_text = c.to_string();
    let node_file = |file: &str| std::fs::read_to_string(dir(&node_c).join(file)).unwrap_or_default();

    // Her tool, run by another unit of her manager: never an ancestor of the app scope.
    let from_her_unit = |verb: &[&str]| {
        let out = manager
            .command(&["systemd-run", "--user", "--quiet", "--wait", "--pipe", "--", &her_nsgroup, verb[0], "--socket", &socket, &c_text])
            .args(&verb[1..])
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "nsgroup {verb:?} from her unit: {}\nstdout: {stdout}\nstderr: {stderr}\n{}", out.status, d.log_text());
    };
    from_her_unit(&["freeze"]);
    assert_eq!(node_file("cgroup.freeze").trim(), "1");
    wait_for("the node frozen", || node_file("cgroup.events").lines().any(|l| l == "frozen 1"));

    // Another user's attempt is refused, and changes nothing.
    let other = format!("--reuid={OTHER_USER}");
    let out = Command::new("setpriv")
        .args([&other, &format!("--regid={OTHER_USER}"), "--clear-groups", NSGROUP, "thaw", "--socket", &socket, &c_text])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "another user's thaw: {stderr}");
    assert!(stderr.contains("(rule control.creator_uid)"), "{stderr}");
    assert_eq!(node_file("cgroup.freeze").trim(), "1", "still frozen");

    from_her_unit(&["thaw"]);
    assert_eq!(node_file("cgroup.freeze").trim(), "0");
    wait_for("the node thawed", || node_file("cgroup.events").lines().any(|l| l == "frozen 0"));

    from_her_unit(&["limit", "pids.max=32"]);
    assert_eq!(node_file("pids.max").trim(), "32");

    // Kill: C is gone, and with it P, which waited for it.
    from_her_unit(&["kill"]);
    wait_for("P exited", || sandbox.0.try_wait().unwrap().is_some());
    wait_for("C gone", || !Path::new(&format!("/proc/{c}")).exists());
    assert!(d.log_lines_with(" ERROR ").is_empty(), "{}", d.log_text());
}

/// `systemctl --user show UNIT -p PROPS` of uid 65534's manager, as `key=value` lines.
fn user_unit_show(manager: &UserManager, unit: &str, props: &str) -> String {
    let out = manager.command(&["systemctl", "--user", "show", unit, "-p", props]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_sandbox_in_an_app_scope_becomes_a_scope_of_its_own_bound_to_it_and_nests_there() {
    let Some(manager) = user_manager() else { return };
    let slice = format!("{}/app.slice", manager.cgroup);
    let (_c, config) = config_file(&format!("[include]\ncgroup = [\"{slice}\"]\n"));
    let d = Daemon::start_at(Path::new(MOUNT), &manager.cgroup, &["--config", &config]);
    wait_for("the daemon tracking", || d.log_text().contains("nsgroup is tracking"));
    // The origin, as a desktop starts an app: an app scope of her manager
    // (not delegated), with limits, whose shell S starts a sandbox: P
    // (user and uts namespaces) and its child C (a pid namespace too).
    let origin = format!("app-sandbox-{}.scope", unit_name());
    let shell = manager
        .command(&["systemd-run", "--user", "--scope", "--quiet", "-p", "TasksMax=40", "-p", "MemoryMax=256M", "--slice", "app.slice", "--unit", &origin, "--"])
        .args(["sh", "-c", "unshare --user --map-root-user --uts --pid --fork sleep 600 & wait"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s = shell.id();
    let _shell = Started(shell);
    let origin_cgroup = format!("{slice}/{origin}");
    wait_for("S in its app scope", || cgroup_of(s).as_ref() == Some(&origin_cgroup));
    let mut p = 0;
    wait_for("P", || children_of(s).first().map(|&c| p = c).is_some());
    let mut c = 0;
    wait_for("C", || children_of(p).first().map(|&x| c = x).is_some());

    // P's own scope beside the origin, made by her manager; the nodes inside.
    let mut scope = String::new();
    wait_for("P in a node of a scope of its own", || {
        cgroup_of(p).is_some_and(|at| {
            let name = at.strip_prefix(&format!("{slice}/")).and_then(|r| r.strip_suffix(&format!("/node_{p}")));
            name.is_some_and(|n| n.starts_with(&format!("app-nsgroup-unshare-node_{p}-")) && n.ends_with(".scope") && !n.contains('/'))
                && {
                    scope = name.unwrap().to_string();
                    true
                }
        })
    });
    let scope_cgroup = format!("{slice}/{scope}");
    let node_p = format!("{scope_cgroup}/node_{p}");
    wait_for("C nested in P's node", || cgroup_of(c).as_ref() == Some(&format!("{node_p}/node_{c}")));
    assert!(subdirs(&dir(&origin_cgroup)).is_empty(), "nothing written in the origin: {}", d.log_text());
    assert_eq!(cgroup_of(s).as_ref(), Some(&origin_cgroup), "S stays in the origin");
    assert!(d.log_text().contains("a sandbox left its unit for a scope of its own"), "{}", d.log_text());

    // A unit of her manager, as systemctl and systemd-cgtop show it:
    // delegated, in the origin's slice, part of the origin, with its limits.
    let shown = user_unit_show(&manager, &scope, "ActiveState,Delegate,PartOf,Slice,ControlGroup,Description");
    for want in ["ActiveState=active", "Delegate=yes", &format!("PartOf={origin}"), "Slice=app.slice", &format!("ControlGroup={scope_cgroup}")] {
        assert!(shown.lines().any(|l| l == want), "{want} in:\n{shown}");
    }
    assert!(shown.contains("Description=nsgroup sandbox of unshare"), "{shown}");
    for file in ["pids.max", "memory.max"] {
        let Ok(limit) = std::fs::read_to_string(dir(&origin_cgroup).join(file)) else { continue };
        let kept = std::fs::read_to_string(dir(&scope_cgroup).join(file)).unwrap_or_default();
        assert_eq!(kept, limit, "{file}: the origin's limit bounds the sandbox's scope too");
    }

    // A restart adopts both nodes in the scope: no second scope, nothing moved.
    drop(d);
    let d = Daemon::start_at(Path::new(MOUNT), &manager.cgroup, &["--config", &config]);
    wait_for("the restarted daemon tracking", || d.log_text().contains("nsgroup is tracking"));
    assert!(d.log_text().contains("adopted=2"), "{}", d.log_text());
    let scopes: Vec<String> = subdirs(&dir(&slice)).into_iter().filter(|n| n.starts_with("app-nsgroup-") && !n.contains('/')).collect();
    assert_eq!(scopes.len(), 1, "{scopes:?}");
    assert_eq!(cgroup_of(p).as_ref(), Some(&node_p));

    // Stopping the origin stops the sandbox's scope with it.
    let out = manager.command(&["systemctl", "--user", "stop", &origin]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the sandbox ended", || !Path::new(&format!("/proc/{p}")).exists() && !Path::new(&format!("/proc/{c}")).exists());
    let gone = std::time::Instant::now() + Duration::from_secs(30);
    while dir(&scope_cgroup).exists() {
        if std::time::Instant::now() > gone {
            let journal = Command::new("journalctl").args(["-b", "--no-pager", "-n", "60", "_UID=65534"]).output().unwrap();
            panic!(
                "its scope's cgroup stays: {:?} events {:?}\n{}\njournal:\n{}\n{}",
                subdirs(&dir(&scope_cgroup)),
                std::fs::read_to_string(dir(&scope_cgroup).join("cgroup.events")),
                user_unit_show(&manager, &scope, "ActiveState,SubState,LoadState"),
                String::from_utf8_lossy(&journal.stdout),
                d.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log_lines_with(" ERROR ").is_empty(), "{}", d.log_text());
}

/// Starts `sh -c SCRIPT` in a new scope `unit` of uid 65534's manager's
/// app.slice (with `props`), and returns the process and its cgroup.
fn user_scope(manager: &UserManager, unit: &str, props: &[&str], script: &str) -> (Started, String) {
    let mut args = vec!["systemd-run", "--user", "--scope", "--quiet", "--slice", "app.slice", "--unit", unit];
    for p in props {
        args.extend(["-p", p]);
    }
    args.extend(["--", "sh", "-c", script]);
    let child = manager.command(&args).spawn().unwrap();
    let pid = child.id();
    let cgroup = format!("{}/app.slice/{unit}", manager.cgroup);
    wait_for("the shell in its scope", || cgroup_of(pid).as_ref() == Some(&cgroup));
    (Started(child), cgroup)
}

#[test]
fn a_manager_that_does_not_answer_leaves_its_sandbox_where_it_was_and_the_daemon_goes_on() {
    let Some(manager) = user_manager() else { return };
    let slice = format!("{}/app.slice", manager.cgroup);
    let (_c, config) = config_file(&format!("[include]\ncgroup = [\"{slice}\"]\n"));
    let d = Daemon::start_at(Path::new(MOUNT), &manager.cgroup, &["--config", &config]);
    wait_for("the daemon tracking", || d.log_text().contains("nsgroup is tracking"));
    // Two sandboxes that start when the test says so: one in an app scope
    // its manager must make a scope for, one in a delegated scope.
    let go = tempfile::tempdir().unwrap();
    std::fs::set_permissions(go.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script = format!("while [ ! -e {}/go ]; do sleep 0.1; done; exec unshare --user --map-root-user --uts sleep 600", go.path().display());
    let (plain, plain_cgroup) = user_scope(&manager, &format!("app-plain-{}.scope", unit_name()), &[], &script);
    let (delegated, delegated_cgroup) = user_scope(&manager, &format!("app-box-{}.scope", unit_name()), &["Delegate=yes"], &script);
    // Her manager stops answering (the test started it; it continues below).
    let main_pid: i32 = systemctl(&["show", "-p", "MainPID", "--value", &manager.unit]).unwrap().parse().unwrap();
    assert!(main_pid > 1);
    let manager_pid = rustix::process::Pid::from_raw(main_pid).unwrap();
    rustix::process::kill_process(manager_pid, rustix::process::Signal::STOP).unwrap();
    struct Continue(rustix::process::Pid);
    impl Drop for Continue {
        fn drop(&mut self) {
            let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
        }
    }
    let _continue = Continue(manager_pid);
    std::fs::write(go.path().join("go"), "").unwrap();
    // The delegated sandbox is placed meanwhile; the other stays, said once.
    let node = format!("{delegated_cgroup}/node_{}", delegated.0.id());
    wait_for("the delegated sandbox in its node", || cgroup_of(delegated.0.id()).as_ref() == Some(&node));
    wait_for("the request given up", || d.log_text().contains("a sandbox stays in its unit"));
    assert!(d.log_text().contains("did not answer within"), "{}", d.log_text());
    assert_eq!(cgroup_of(plain.0.id()).as_ref(), Some(&plain_cgroup));
    assert!(subdirs(&dir(&plain_cgroup)).is_empty(), "nothing written in the undelegated scope: {}", d.log_text());
    assert!(d.log_lines_with(" ERROR ").is_empty(), "{}", d.log_text());
}
