//! The tree as text, nested like systemd-cgls.

use std::io::{self, Write};

use crate::core::escape::Escaped;
use crate::model::{TreeNode, Usage};

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n}B") } else { format!("{v:.1}{}", UNITS[u]) }
}

fn usage(u: &Usage) -> String {
    format!("tasks {} cpu {:.2}s rss {}", u.tasks, u.cpu_seconds, bytes(u.rss_bytes))
}

/// Writes the tree.
pub fn write(out: &mut impl Write, tree: &TreeNode) -> io::Result<()> {
    writeln!(out, "{}  ({})", Escaped(&tree.path), usage(&tree.subtree_usage))?;
    write_body(out, tree, "")
}

fn write_body(out: &mut impl Write, node: &TreeNode, indent: &str) -> io::Result<()> {
    let total = node.tasks.len() + node.children.len();
    let mut i = 0;
    for t in &node.tasks {
        i += 1;
        let (branch, _) = if i == total { ("└─", "  ") } else { ("├─", "│ ") };
        let thread = if t.tid != t.pid { format!(" (thread of {})", t.pid) } else { String::new() };
        let id = if t.tid != t.pid { t.tid } else { t.pid };
        let differs: Vec<String> = t.differs.iter().map(|e| format!("{}:[{}]", e.kind, e.inode)).collect();
        let differs = if differs.is_empty() { String::new() } else { format!("  in another set: {}", differs.join(" ")) };
        writeln!(out, "{indent}{branch}{id} {}{thread}{differs}", Escaped(&t.comm))?;
    }
    for c in &node.children {
        i += 1;
        let (branch, cont) = if i == total { ("└─", "  ") } else { ("├─", "│ ") };
        let ns: Vec<String> = c.namespaces.iter().map(|e| format!("{}:[{}]", e.kind, e.inode)).collect();
        let label = if c.node { format!("  {}", ns.join(" ")) } else { String::new() };
        writeln!(out, "{indent}{branch}{}{label}  ({})", Escaped(&c.name), usage(&c.subtree_usage))?;
        write_body(out, c, &format!("{indent}{cont}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskView;

    fn cgroup(path: &str, tasks: Vec<TaskView>, children: Vec<TreeNode>) -> TreeNode {
        TreeNode {
            path: path.into(),
            name: path.rsplit('/').next().unwrap().into(),
            cgroup_id: 1,
            node: false,
            namespaces: vec![],
            creator: None,
            tasks,
            usage: Usage::default(),
            subtree_usage: Usage::default(),
            children,
        }
    }

    #[test]
    fn names_and_commands_are_escaped() {
        let task = TaskView { pid: 7, tid: 7, comm: "a\u{1b}[2Jb\nc".into(), differs: vec![] };
        let child = cgroup("/t/x\u{1b}[31my\nz", vec![task], vec![]);
        let tree = cgroup("/t\r", vec![], vec![child]);
        let mut out = Vec::new();
        write(&mut out, &tree).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("└─x\\x1b[31my\\nz  (") && text.contains("7 a\\x1b[2Jb\\nc") && text.starts_with("/t\\r "), "{text}");
    }
}
