//! Cgroup paths inside a hierarchy: `/` for the root, `/a/b` below.

/// `parent/name`.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

/// Whether `path` is `root` or lies below it.
pub fn within(path: &str, root: &str) -> bool {
    root == "/" || path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_contains() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(within("/a/b", "/a") && within("/a", "/a") && within("/x", "/"));
        assert!(!within("/ab", "/a") && !within("/", "/a"));
    }
}
