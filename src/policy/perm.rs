//! The permission model: the kernel's ns subsystem's rules for requests that
//! move or create (`ns_can_attach`, `ns_create`), plus nsgroup's rules for the
//! verbs and for the values a `limit` may write. Pure: the facts come from
//! /proc and cgroupfs, read by the caller of these functions, never from the
//! request. The table is in docs/semantics.md
//! ("The API's permission table").

use super::territory::{Host, Territory};
use crate::control::tighten::Bound;
use crate::core::cgpath::within;
use crate::core::escape::Escaped;

/// A rule that can refuse a request; its name is answered as `error.rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Moving another task needs CAP_SYS_ADMIN (`ns_can_attach`: `current != task && !capable`).
    AttachOtherNeedsCap,
    /// Moving another task: the destination must lie at or below the mover's
    /// cgroup (`ns_can_attach`: `!cgroup_is_descendant(new_cgroup)`).
    AttachOtherBelowMover,
    /// Only an empty cgroup can be attached to (`ns_can_attach`: `count != 0`).
    AttachEmptyOnly,
    /// A task may only enter a child of the cgroup it is in (`ns_can_attach`:
    /// `orig != new_cgroup->parent`).
    AttachChildOnly,
    /// Creating a cgroup needs CAP_SYS_ADMIN (`ns_create`).
    CreateNeedsCap,
    /// A new cgroup must lie below the creator's cgroup (`ns_create`: `!cgroup_is_descendant`).
    CreateBelowCreator,
    /// nsgroup's rule: without CAP_SYS_ADMIN, only nodes whose creator had the caller's uid.
    ControlCreatorUid,
    /// nsgroup's rule: without CAP_SYS_ADMIN, only nodes at or below the caller's cgroup.
    ControlBelowCaller,
    /// nsgroup's rule on systemd hosts: without CAP_SYS_ADMIN, only nodes at
    /// or below the caller's cgroup or in its owner's user slice.
    ControlUserSlice,
    /// `limit` without CAP_SYS_ADMIN: never a file whose values nsgroup does not order.
    LimitNeedsCap,
    /// `limit` without CAP_SYS_ADMIN: no protection (`memory.min`, `memory.low`, `io.latency`).
    LimitNoProtection,
    /// `limit` without CAP_SYS_ADMIN: a weight never above its default.
    LimitWeightDefault,
    /// `limit` without CAP_SYS_ADMIN: a value never above the policy's for
    /// the node nor above the value in force (a delegatee only tightens).
    LimitTightenOnly,
    /// nsgroup's rule: checkpoint and restore need CAP_SYS_ADMIN (restoring
    /// an image runs whatever it holds as root).
    CheckpointNeedsCap,
    /// Everyone: requests act inside the daemon's tracked subtree only.
    ScopeTrackedRoot,
    /// Everyone: the connecting process must still be the one that connected.
    PeerIdentity,
}

impl Rule {
    /// The stable name (`error.rule`).
    pub const fn name(self) -> &'static str {
        match self {
            Rule::AttachOtherNeedsCap => "attach.other_needs_cap_sys_admin",
            Rule::AttachOtherBelowMover => "attach.other_below_mover",
            Rule::AttachEmptyOnly => "attach.empty_only",
            Rule::AttachChildOnly => "attach.child_only",
            Rule::CreateNeedsCap => "create.needs_cap_sys_admin",
            Rule::CreateBelowCreator => "create.below_creator",
            Rule::ControlCreatorUid => "control.creator_uid",
            Rule::ControlBelowCaller => "control.below_caller",
            Rule::ControlUserSlice => "control.user_slice",
            Rule::LimitNeedsCap => "limit.needs_cap_sys_admin",
            Rule::LimitNoProtection => "limit.no_protection",
            Rule::LimitWeightDefault => "limit.weight_default",
            Rule::LimitTightenOnly => "limit.tighten_only",
            Rule::CheckpointNeedsCap => "checkpoint.needs_cap_sys_admin",
            Rule::ScopeTrackedRoot => "scope.tracked_root",
            Rule::PeerIdentity => "peer.identity",
        }
    }

    /// Every rule, in the order of the table.
    pub const ALL: [Rule; 16] = [
        Rule::AttachOtherNeedsCap,
        Rule::AttachOtherBelowMover,
        Rule::AttachEmptyOnly,
        Rule::AttachChildOnly,
        Rule::CreateNeedsCap,
        Rule::CreateBelowCreator,
        Rule::ControlCreatorUid,
        Rule::ControlBelowCaller,
        Rule::ControlUserSlice,
        Rule::LimitNeedsCap,
        Rule::LimitNoProtection,
        Rule::LimitWeightDefault,
        Rule::LimitTightenOnly,
        Rule::CheckpointNeedsCap,
        Rule::ScopeTrackedRoot,
        Rule::PeerIdentity,
    ];
}

/// A refusal: the rule and a message that says what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Rule,
    pub message: String,
}

impl Refusal {
    fn new(rule: Rule, message: String) -> Refusal {
        Refusal { rule, message: format!("{message} (rule {})", rule.name()) }
    }
}

/// The caller, as read from SO_PEERCRED and its /proc entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    /// Who owns the caller's set (its user namespaces' owner, else `uid`).
    pub owner: u32,
    /// CAP_SYS_ADMIN in its effective set, in the daemon's user namespace.
    pub cap_sys_admin: bool,
    /// Its cgroup in the tracked hierarchy.
    pub cgroup: String,
    /// The kind of host, which decides its territory ([`Territory`]).
    pub host: Host,
}

impl Caller {
    /// Where it may act on its own nodes without CAP_SYS_ADMIN.
    pub fn territory(&self) -> Territory {
        Territory::of(self.host, self.owner, &self.cgroup)
    }
}

/// The scope rule: everything acted on lies in the tracked subtree.
pub fn in_scope(path: &str, root: &str) -> Result<(), Refusal> {
    if within(path, root) {
        return Ok(());
    }
    Err(Refusal::new(
        Rule::ScopeTrackedRoot,
        format!("{} lies outside the daemon's tracked subtree {}", Escaped(path), Escaped(root)),
    ))
}

/// Whether `caller` may move task `task` (now in cgroup `task_cgroup`) into
/// cgroup `dest` (which holds tasks unless `dest_empty`). The seed's checks,
/// in its order; `task == caller.pid` is moving oneself.
pub fn may_attach(caller: &Caller, task: u32, task_cgroup: &str, dest: &str, dest_empty: bool, root: &str) -> Result<(), Refusal> {
    in_scope(dest, root)?;
    if task != caller.pid {
        if !caller.cap_sys_admin {
            return Err(Refusal::new(
                Rule::AttachOtherNeedsCap,
                format!("moving another task ({task}) needs CAP_SYS_ADMIN, which the caller (pid {}) lacks", caller.pid),
            ));
        }
        if !within(dest, &caller.cgroup) {
            return Err(Refusal::new(
                Rule::AttachOtherBelowMover,
                format!("{} does not lie below the mover's cgroup {}", Escaped(dest), Escaped(&caller.cgroup)),
            ));
        }
    }
    if !dest_empty {
        return Err(Refusal::new(Rule::AttachEmptyOnly, format!("{} holds tasks; only an empty cgroup can be attached to", Escaped(dest))));
    }
    if parent_of(dest) != Some(task_cgroup) {
        return Err(Refusal::new(
            Rule::AttachChildOnly,
            format!(
                "{} is not a child of {}, the cgroup task {task} is in; a task may only enter a child of its cgroup",
                Escaped(dest),
                Escaped(task_cgroup)
            ),
        ));
    }
    Ok(())
}

/// Whether `caller` may create a cgroup below `parent`.
pub fn may_create(caller: &Caller, parent: &str, root: &str) -> Result<(), Refusal> {
    in_scope(parent, root)?;
    if !caller.cap_sys_admin {
        return Err(Refusal::new(Rule::CreateNeedsCap, format!("creating a cgroup needs CAP_SYS_ADMIN, which the caller (pid {}) lacks", caller.pid)));
    }
    if !within(parent, &caller.cgroup) {
        return Err(Refusal::new(
            Rule::CreateBelowCreator,
            format!("{} does not lie below the creator's cgroup {}", Escaped(parent), Escaped(&caller.cgroup)),
        ));
    }
    Ok(())
}

/// Whether `caller` may freeze, thaw, kill or limit node `node`, owned by `owner`.
pub fn may_control(caller: &Caller, node: &str, owner: u32, root: &str) -> Result<(), Refusal> {
    in_scope(node, root)?;
    if caller.cap_sys_admin {
        return Ok(());
    }
    if owner != caller.owner {
        return Err(Refusal::new(
            Rule::ControlCreatorUid,
            format!("{} is owned by uid {owner}, not by the caller's owner uid {}; without CAP_SYS_ADMIN only one's own nodes", Escaped(node), caller.owner),
        ));
    }
    let territory = caller.territory();
    if !territory.contains(node) {
        let rule = match territory {
            Territory::BelowCaller { .. } => Rule::ControlBelowCaller,
            Territory::UserSlice { .. } => Rule::ControlUserSlice,
        };
        return Err(Refusal::new(rule, territory.outside(node)));
    }
    Ok(())
}

/// Whether `caller` may checkpoint node `node` or restore below `node`:
/// CAP_SYS_ADMIN only, whoever owns it.
pub fn may_checkpoint(caller: &Caller, node: &str, verb: &str, root: &str) -> Result<(), Refusal> {
    in_scope(node, root)?;
    if !caller.cap_sys_admin {
        return Err(Refusal::new(
            Rule::CheckpointNeedsCap,
            format!("{verb} needs CAP_SYS_ADMIN, which the caller (pid {}) lacks: an image restored runs as root whatever it holds", caller.pid),
        ));
    }
    Ok(())
}

/// A refusal of a `limit` value for a caller without CAP_SYS_ADMIN
/// ([`crate::control::tighten`] decides), under its rule.
pub fn limit_refused(bound: Bound, message: String) -> Refusal {
    let rule = match bound {
        Bound::TightenOnly => Rule::LimitTightenOnly,
        Bound::WeightDefault => Rule::LimitWeightDefault,
        Bound::NoProtection => Rule::LimitNoProtection,
        Bound::NeedsCap => Rule::LimitNeedsCap,
    };
    Refusal::new(rule, message)
}

/// A refusal for a caller whose pid no longer names the process that connected.
pub fn peer_gone(pid: u32) -> Refusal {
    Refusal::new(Rule::PeerIdentity, format!("the connecting process {pid} has exited or its pid names another process now"))
}

/// The parent of a cgroup path; `None` for `/`.
pub fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    let cut = path.rfind('/')?;
    Some(if cut == 0 { "/" } else { &path[..cut] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(cap: bool) -> Caller {
        Caller { pid: 10, uid: 65534, owner: 65534, cap_sys_admin: cap, cgroup: "/t/a".into(), host: Host::Plain }
    }

    fn rule<T>(r: Result<T, Refusal>) -> Option<&'static str> {
        r.err().map(|e| {
            assert!(e.message.contains(e.rule.name()), "{}", e.message);
            e.rule.name()
        })
    }

    #[test]
    fn attach_follows_the_seed_in_order() {
        for cap in [false, true] {
            let c = caller(cap);
            // Oneself: only into an empty child of one's own cgroup.
            assert_eq!(rule(may_attach(&c, 10, "/t/a", "/t/a/k", true, "/t")), None);
            assert_eq!(rule(may_attach(&c, 10, "/t/a", "/t/a/k/g", true, "/t")), Some("attach.child_only"));
            assert_eq!(rule(may_attach(&c, 10, "/t/a", "/t/b", true, "/t")), Some("attach.child_only"));
            assert_eq!(rule(may_attach(&c, 10, "/t/a", "/t/a/k", false, "/t")), Some("attach.empty_only"));
            assert_eq!(rule(may_attach(&c, 10, "/t/a", "/elsewhere/k", true, "/t")), Some("scope.tracked_root"));
        }
        // Another task: CAP_SYS_ADMIN, then below the mover, then the same rules.
        assert_eq!(rule(may_attach(&caller(false), 11, "/t/a", "/t/a/k", true, "/t")), Some("attach.other_needs_cap_sys_admin"));
        assert_eq!(rule(may_attach(&caller(true), 11, "/t/a", "/t/a/k", true, "/t")), None);
        assert_eq!(rule(may_attach(&caller(true), 11, "/t/b", "/t/b/k", true, "/t")), Some("attach.other_below_mover"));
        assert_eq!(rule(may_attach(&caller(true), 11, "/t/a/x", "/t/a/k", true, "/t")), Some("attach.child_only"));
    }

    #[test]
    fn create_needs_cap_and_lies_below() {
        assert_eq!(rule(may_create(&caller(false), "/t/a", "/t")), Some("create.needs_cap_sys_admin"));
        assert_eq!(rule(may_create(&caller(false), "/t/b", "/t")), Some("create.needs_cap_sys_admin"));
        assert_eq!(rule(may_create(&caller(true), "/t/a", "/t")), None);
        assert_eq!(rule(may_create(&caller(true), "/t/a/x", "/t")), None);
        assert_eq!(rule(may_create(&caller(true), "/t/b", "/t")), Some("create.below_creator"));
        assert_eq!(rule(may_create(&caller(true), "/u", "/t")), Some("scope.tracked_root"));
    }

    #[test]
    fn control_wants_own_uid_and_below_without_cap() {
        let c = caller(false);
        assert_eq!(rule(may_control(&c, "/t/a/node_5", 65534, "/t")), None);
        assert_eq!(rule(may_control(&c, "/t/a", 65534, "/t")), None, "its own cgroup counts, as cgroup_is_descendant did");
        assert_eq!(rule(may_control(&c, "/t/a/node_5", 0, "/t")), Some("control.creator_uid"));
        assert_eq!(rule(may_control(&c, "/t/b/node_5", 65534, "/t")), Some("control.below_caller"));
        assert_eq!(rule(may_control(&caller(true), "/t/b/node_5", 0, "/t")), None);
        assert_eq!(rule(may_control(&caller(true), "/u/node_5", 0, "/t")), Some("scope.tracked_root"));
    }

    #[test]
    fn control_on_systemd_reaches_the_owners_user_slice_only() {
        let slice = "/user.slice/user-65534.slice";
        let shell = Caller { cgroup: format!("{slice}/user@65534.service/app.slice/run-u3.service"), host: Host::Systemd, ..caller(false) };
        let sandbox = format!("{slice}/user@65534.service/app.slice/app-sandbox1.scope/node_7");
        assert_eq!(rule(may_control(&shell, &sandbox, 65534, "/")), None, "another unit of her manager");
        assert_eq!(rule(may_control(&shell, &format!("{slice}/session-2.scope/node_8"), 65534, "/")), None);
        assert_eq!(rule(may_control(&Caller { host: Host::Plain, ..shell.clone() }, &sandbox, 65534, "/")), Some("control.below_caller"));
        // The owner still decides first: not another's node inside her slice.
        assert_eq!(rule(may_control(&shell, &sandbox, 0, "/")), Some("control.creator_uid"));
        // Her own node outside her slice and her cgroup.
        for outside in ["/user.slice/user-0.slice/session-1.scope/node_9", "/system.slice/x.service/node_9", "/user.slice/user-655340.slice/node_9"] {
            assert_eq!(rule(may_control(&shell, outside, 65534, "/")), Some("control.user_slice"), "{outside}");
        }
        // A look-alike she made below her manager names nothing but her own slice.
        let fake = Caller { cgroup: format!("{slice}/user@65534.service/app.slice/user-0.slice"), ..shell.clone() };
        assert_eq!(rule(may_control(&fake, "/user.slice/user-0.slice/session-1.scope/node_9", 65534, "/")), Some("control.user_slice"));
        // The tracked subtree still bounds everything; CAP_SYS_ADMIN reaches all of it.
        assert_eq!(rule(may_control(&shell, &sandbox, 65534, "/system.slice")), Some("scope.tracked_root"));
        let admin = Caller { cap_sys_admin: true, ..shell.clone() };
        assert_eq!(rule(may_control(&admin, "/system.slice/x.service/node_9", 0, "/")), None);
        let e = may_control(&shell, "/system.slice/x.service/node_9", 65534, "/").unwrap_err();
        assert!(e.message.contains("nor in the user slice of its owner (uid 65534), /user.slice/user-65534.slice"), "{}", e.message);
    }

    #[test]
    fn checkpoint_and_restore_are_root_only_even_on_ones_own_node() {
        assert_eq!(rule(may_checkpoint(&caller(false), "/t/a/node_5", "checkpoint", "/t")), Some("checkpoint.needs_cap_sys_admin"));
        assert_eq!(rule(may_checkpoint(&caller(true), "/t/b/node_5", "restore", "/t")), None);
        assert_eq!(rule(may_checkpoint(&caller(true), "/u/node_5", "checkpoint", "/t")), Some("scope.tracked_root"));
    }

    #[test]
    fn limit_refusals_carry_their_rule_and_every_name_is_distinct() {
        let r = limit_refused(Bound::TightenOnly, "pids.max=max is above 32".into());
        assert_eq!((r.rule.name(), r.message.as_str()), ("limit.tighten_only", "pids.max=max is above 32 (rule limit.tighten_only)"));
        let names: std::collections::HashSet<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
    }

    #[test]
    fn parents() {
        assert_eq!(parent_of("/a/b"), Some("/a"));
        assert_eq!(parent_of("/a"), Some("/"));
        assert_eq!(parent_of("/"), None);
    }
}
