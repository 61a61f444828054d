//! Cgroup paths inside a hierarchy: `/` for the root, `/a/b` below.

use super::escape::Escaped;

/// Why a user-given cgroup path is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CgPathError {
    #[error("cgroup path \"{}\" must start with /", Escaped(.0))]
    NotAbsolute(String),
    #[error("cgroup path \"{}\" has a `{component}` component; cgroup paths are taken literally, give it without . or ..", Escaped(.path))]
    Dot { path: String, component: &'static str },
    #[error("cgroup path \"{}\" contains a NUL or a newline", Escaped(.0))]
    BadByte(String),
}

/// The canonical form of a user-given cgroup path: absolute, repeated
/// slashes collapsed, no trailing slash (`//a//b/` is `/a/b`); `.` and `..`
/// components, NUL and newline are refused.
pub fn canonical(path: &str) -> Result<String, CgPathError> {
    if path.contains(['\0', '\n']) {
        return Err(CgPathError::BadByte(path.into()));
    }
    if !path.starts_with('/') {
        return Err(CgPathError::NotAbsolute(path.into()));
    }
    let mut out = String::with_capacity(path.len());
    for component in path.split('/').filter(|c| !c.is_empty()) {
        match component {
            "." => return Err(CgPathError::Dot { path: path.into(), component: "." }),
            ".." => return Err(CgPathError::Dot { path: path.into(), component: ".." }),
            _ => {}
        }
        out.push('/');
        out.push_str(component);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

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

    #[test]
    fn canonical_collapses_slashes_and_drops_a_trailing_one() {
        assert_eq!(canonical("/").unwrap(), "/");
        assert_eq!(canonical("//").unwrap(), "/");
        assert_eq!(canonical("/scope/").unwrap(), "/scope");
        assert_eq!(canonical("//a///b//").unwrap(), "/a/b");
        assert_eq!(canonical("/a/node_5~2/.x").unwrap(), "/a/node_5~2/.x");
    }

    #[test]
    fn canonical_refuses_relative_dots_and_bad_bytes() {
        assert_eq!(canonical("scope"), Err(CgPathError::NotAbsolute("scope".into())));
        assert_eq!(canonical(""), Err(CgPathError::NotAbsolute("".into())));
        assert_eq!(canonical("/scope/../scope"), Err(CgPathError::Dot { path: "/scope/../scope".into(), component: ".." }));
        assert_eq!(canonical("/scope/../.."), Err(CgPathError::Dot { path: "/scope/../..".into(), component: ".." }));
        assert_eq!(canonical("/./a"), Err(CgPathError::Dot { path: "/./a".into(), component: "." }));
        assert!(matches!(canonical("/a\nb"), Err(CgPathError::BadByte(_))));
        assert!(matches!(canonical("/a\0b"), Err(CgPathError::BadByte(_))));
        let e = canonical("/a/\u{1b}[31m/..").unwrap_err().to_string();
        assert!(e.contains("`..`") && !e.contains('\u{1b}'), "{e}");
    }
}
