//! Pressure rules (`[[pressure]]`): which nodes get a kernel PSI trigger
//! (the match keys of `[[limit]]`), on which resource, at what threshold
//! within what window, and what is done to the node when it fires.

use serde::{Deserialize, Serialize};


/// The shortest window the kernel takes for a trigger (µs).
pub const WINDOW_MIN_US: u64 = 500_000;
/// The longest (µs).
pub const WINDOW_MAX_US: u64 = 10_000_000;

rule_with_match_keys! {
    /// A pressure rule.
    #[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct PressureRule {
        /// `memory`, `cpu` or `io`: the node's `<resource>.pressure`.
        pub resource: Resource,
        /// `some` (a task stalled) or `full` (all stalled).
        #[serde(default = "some")]
        pub kind: StallKind,
        /// Stalled this long (µs) within `window_us` fires the trigger.
        pub threshold_us: u64,
        /// The window (µs): 500 ms to 10 s.
        pub window_us: u64,
        /// What is done to the node when it fires (none by default).
        #[serde(default)]
        pub action: Option<Action>,
    }
}

/// A PSI resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Memory,
    Cpu,
    Io,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Cpu => "cpu",
            Resource::Io => "io",
        }
    }
}

/// Which stall a trigger counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StallKind {
    Some,
    Full,
}

fn some() -> StallKind {
    StallKind::Some
}

/// What a firing trigger does to its node (the node and its subtree only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Freeze,
    Kill,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Freeze => "freeze",
            Action::Kill => "kill",
        }
    }
}

impl PressureRule {
    /// What is written into `<resource>.pressure`: `some 150000 1000000`.
    pub fn trigger(&self) -> String {
        let kind = match self.kind {
            StallKind::Some => "some",
            StallKind::Full => "full",
        };
        format!("{kind} {} {}", self.threshold_us, self.window_us)
    }

    /// The kernel's rules for a trigger, and the match keys'.
    pub(super) fn check(&mut self) -> Result<(), (&'static str, String)> {
        self.check_match_keys(["pressure.comm", "pressure.cgroup", "pressure.entered"])?;
        if !(WINDOW_MIN_US..=WINDOW_MAX_US).contains(&self.window_us) {
            let w = self.window_us;
            return Err(("pressure.window_us", format!("{w} µs: the kernel takes windows of {WINDOW_MIN_US} to {WINDOW_MAX_US} µs (500 ms to 10 s)")));
        }
        if self.threshold_us == 0 || self.threshold_us > self.window_us {
            let (t, w) = (self.threshold_us, self.window_us);
            return Err(("pressure.threshold_us", format!("{t} µs: must be above 0 and at most the window ({w} µs)")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;
    use crate::config::Creation;
    use crate::core::nsset::{NsKind, NsMask};

    #[test]
    fn a_rule_parses_to_its_trigger_and_matches_like_a_limit_rule() {
        let c = parse(
            "[[pressure]]\ncomm = [\"bwrap\"]\nentered = [\"net\"]\nresource = \"memory\"\nthreshold_us = 150000\nwindow_us = 1000000\naction = \"kill\"\n\
             [[pressure]]\nresource = \"io\"\nkind = \"full\"\nthreshold_us = 500000\nwindow_us = 500000\n",
        )
        .unwrap();
        let (a, b) = (&c.pressure[0], &c.pressure[1]);
        assert_eq!((a.trigger(), a.action, a.resource.name()), ("some 150000 1000000".to_string(), Some(Action::Kill), "memory"));
        assert_eq!((b.trigger(), b.action), ("full 500000 500000".to_string(), None));
        let net = NsMask::of([NsKind::Net]);
        let at = |comm, entered| Creation { comm, uid: 0, cgroup: "/", entered };
        assert!(a.matches(at("bwrap", net)));
        assert!(!a.matches(at("bwrap", NsMask::of([NsKind::Uts]))));
        assert!(!a.matches(at("sh", net)));
        assert!(b.matches(at("sh", net)), "no keys: every node");
    }

    #[test]
    fn impossible_windows_and_thresholds_are_clear_errors() {
        let rule = |extra: &str| parse(&format!("[[pressure]]\nresource = \"cpu\"\n{extra}\n")).map(|_| ()).map_err(|e| e.to_string());
        let e = rule("threshold_us = 100\nwindow_us = 100000").unwrap_err();
        assert!(e.contains("pressure.window_us") && e.contains("500 ms to 10 s"), "{e}");
        let e = rule("threshold_us = 100\nwindow_us = 20000000").unwrap_err();
        assert!(e.contains("pressure.window_us"), "{e}");
        let e = rule("threshold_us = 2000000\nwindow_us = 1000000").unwrap_err();
        assert!(e.contains("pressure.threshold_us") && e.contains("at most the window"), "{e}");
        assert!(rule("threshold_us = 0\nwindow_us = 1000000").unwrap_err().contains("pressure.threshold_us"));
        assert!(rule("threshold_us = 1\nwindow_us = 1000000\naction = \"reboot\"").unwrap_err().contains("action"));
        assert!(rule("threshold_us = 1\nwindow_us = 1000000").is_ok());
    }
}
