//! Strict mode's table: the rules its LSM program (`bpf/lsm.bpf.c`, loaded
//! by [`crate::api::strict`]) enforces on direct cgroupfs writes, per hook
//! in the order it checks them, and the counters it keeps. They are rows of
//! the API's permission table ([`super::perm::Rule`]): the `attach.*` rules
//! on writes of a pid, the `create.*` rules on mkdir, in the API's order. The
//! program is C and cannot read this table; the tests below read its source
//! and check it against the table row by row.

use super::perm::Rule;

/// One LSM program.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Its name in the object.
    pub program: &'static str,
    /// The LSM hook it attaches to.
    pub hook: &'static str,
    /// The rules it checks, in order.
    pub rules: &'static [Rule],
}

/// The programs: a write to `cgroup.procs`, `tasks` or `cgroup.threads`
/// (a move), and a mkdir, in the tracked subtree.
pub const HOOKS: [Hook; 2] = [
    Hook {
        program: "nsg_file_permission",
        hook: "file_permission",
        rules: &[Rule::AttachOtherNeedsCap, Rule::AttachOtherBelowMover, Rule::AttachEmptyOnly, Rule::AttachChildOnly],
    },
    Hook { program: "nsg_inode_mkdir", hook: "inode_mkdir", rules: &[Rule::CreateNeedsCap, Rule::CreateBelowCreator] },
];

/// What the program counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A write or mkdir no rule refused.
    Passed,
    /// A refusal under a rule.
    Refused(Rule),
    /// A write refused because its pid could not be read as the kernel would (fail closed).
    Unreadable,
}

impl Counter {
    /// Its name: the rule's, or `passed`, `unreadable_write`.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::Refused(rule) => rule.name(),
            Counter::Unreadable => "unreadable_write",
        }
    }
}

/// The counters (the program's `strict_stats`), by index: passes, the rules
/// of every hook in the order of [`HOOKS`], unreadable writes.
pub const COUNTED: [Counter; 8] = {
    let mut out = [Counter::Passed; 8];
    let mut i = 1;
    let mut h = 0;
    while h < HOOKS.len() {
        let mut r = 0;
        while r < HOOKS[h].rules.len() {
            out[i] = Counter::Refused(HOOKS[h].rules[r]);
            i += 1;
            r += 1;
        }
        h += 1;
    }
    out[i] = Counter::Unreadable;
    assert!(i + 1 == out.len(), "one counter per rule of every hook, and two more");
    out
};

/// The names of [`COUNTED`], by index.
pub const COUNTERS: [&str; 8] = {
    let mut out = [""; 8];
    let mut i = 0;
    while i < out.len() {
        out[i] = COUNTED[i].name();
        i += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM: &str = include_str!("../../bpf/lsm.bpf.c");

    /// A counter's name in the program: `R_`, then its name in capitals with `_` for `.`.
    fn c_name(counter: Counter) -> String {
        format!("R_{}", counter.name().to_uppercase().replace('.', "_"))
    }

    /// The text of the program from `start` up to the next program or the end.
    fn section<'a>(start: &str) -> &'a str {
        let at = PROGRAM.find(start).unwrap_or_else(|| panic!("bpf/lsm.bpf.c has no {start}"));
        let rest = &PROGRAM[at + start.len()..];
        &rest[..rest.find("SEC(\"").unwrap_or(rest.len())]
    }

    #[test]
    fn the_programs_counters_are_the_tables_in_its_order() {
        let body = section("enum nsg_rule {");
        let body = &body[..body.find("};").expect("the enum ends")];
        let names: Vec<&str> = body
            .lines()
            .map(|l| l.split("/*").next().unwrap_or_default().trim().trim_end_matches(','))
            .filter(|l| !l.is_empty())
            .collect();
        let want: Vec<String> = COUNTED.iter().map(|c| c_name(*c)).chain(["R_COUNT".to_string()]).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn each_program_refuses_by_its_rules_in_the_tables_order() {
        for hook in HOOKS {
            let body = section(&format!("SEC(\"lsm/{}\")", hook.hook));
            assert!(body.trim_start().starts_with(&format!("int BPF_PROG({},", hook.program)), "lsm/{}: {body:.80}", hook.hook);
            // Every outcome, in the order the program's text reaches it; the
            // reads that fail closed come before the rules.
            let outcomes: Vec<&str> = body.match_indices("refuse(").filter_map(|(i, _)| body[i + 7..].split(')').next()).collect();
            let unreadable = c_name(Counter::Unreadable);
            let judged: Vec<&str> = outcomes.iter().copied().skip_while(|o| *o == unreadable).collect();
            let want: Vec<String> = hook.rules.iter().map(|r| c_name(Counter::Refused(*r))).chain([c_name(Counter::Passed)]).collect();
            assert_eq!(judged, want, "lsm/{}", hook.hook);
        }
    }

    #[test]
    fn the_hooks_rules_are_the_apis_attach_and_create_rules_in_its_order() {
        for (hook, kind) in HOOKS.iter().zip(["attach.", "create."]) {
            let api: Vec<Rule> = Rule::ALL.into_iter().filter(|r| r.name().starts_with(kind)).collect();
            assert_eq!(hook.rules, api, "lsm/{}", hook.hook);
        }
        assert_eq!(COUNTERS[0], "passed");
        assert_eq!(COUNTERS[7], "unreadable_write");
    }
}
