//! Node names: `node_<pid>` as the 2007 subsystem named them, and the suffix
//! that keeps a name from ever failing on pid reuse.
//!
//! The first candidate is `node_<pid>`. When a populated cgroup of that name
//! already exists (an earlier task had the same pid, or the same task left
//! its own node and unshared again), the candidates go on `node_<pid>~2`,
//! `node_<pid>~3`, …; an empty leftover of a candidate name is reused.

/// The `attempt`-th candidate name (0-based) for a node created by `pid`.
pub fn candidate(pid: u32, attempt: u32) -> String {
    match attempt {
        0 => format!("node_{pid}"),
        n => format!("node_{pid}~{}", n + 1),
    }
}

/// The creator pid a node name carries, if it is one of ours.
pub fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("node_")?;
    let digits = rest.split_once('~').map_or(rest, |(pid, n)| if n.parse::<u32>().is_ok() { pid } else { "" });
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_distinct_and_parse_back() {
        let names: Vec<_> = (0..4).map(|a| candidate(42, a)).collect();
        assert_eq!(names, ["node_42", "node_42~2", "node_42~3", "node_42~4"]);
        for n in &names {
            assert_eq!(creator_pid(n), Some(42));
        }
    }

    #[test]
    fn foreign_names_are_not_nodes() {
        for n in ["node_", "node_x", "nodes_1", "node_1~x", "system.slice"] {
            assert_eq!(creator_pid(n), None, "{n}");
        }
    }
}
