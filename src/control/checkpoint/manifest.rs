//! The manifest a checkpoint leaves beside CRIU's images: the node it was
//! taken from (record, path, cgroup id), its limits and namespace kinds, what
//! CRIU was asked for, and when. Versioned; a manifest is hostile input on
//! restore: bounded, parsed strictly, every value checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::cgpath::canonical;
use crate::core::limit::Limit;
use crate::core::node::NodeRecord;
use crate::core::nsset::NsKind;

/// The file name in the image directory.
pub const FILE: &str = "nsgroup-checkpoint.json";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// The largest manifest read.
pub const MAX_BYTES: usize = 64 * 1024;
/// At most this many external mounts.
pub const MAX_MOUNTS: usize = 64;

/// What a checkpoint recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// The node's cgroup path in the tracked hierarchy, and its cgroup id.
    pub source_path: String,
    pub source_cgroup_id: u64,
    pub record: NodeRecord,
    /// Its controller values (cgroup2 file → value), written on the restored node.
    pub limits: BTreeMap<String, String>,
    /// The kinds of namespace the set has of its own (`pid`, `mnt`, …).
    pub namespaces: Vec<String>,
    /// The dumped root task, as the host saw it.
    pub root_pid: u32,
    pub checkpointed_unix: u64,
    pub shell_job: bool,
    pub tcp_established: bool,
    /// Mount points handed to CRIU as external (bound back from the host's same path).
    pub external_mounts: Vec<String>,
    /// The host directory that was the tree's root, its root again on restore.
    pub root: String,
}

/// Why a manifest is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("the manifest is not JSON with a `version`: {0}")]
    Unreadable(String),
    #[error("the manifest is of version {0}; this nsgroup reads version {VERSION}")]
    Version(u64),
    #[error("the manifest does not parse: {0}")]
    Malformed(String),
    #[error("the manifest's {field} is refused: {why}")]
    Bad { field: &'static str, why: String },
}

fn bad(field: &'static str, why: impl Into<String>) -> ManifestError {
    ManifestError::Bad { field, why: why.into() }
}

impl Manifest {
    /// The manifest as written.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes")
    }

    /// Parses and checks a manifest: its version first, then every field.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
        let version = value.get("version").and_then(serde_json::Value::as_u64).ok_or_else(|| ManifestError::Unreadable("no integer `version`".into()))?;
        if version != u64::from(VERSION) {
            return Err(ManifestError::Version(version));
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| ManifestError::Malformed(crate::core::escape::escaped(&e.to_string())))?;
        m.check()?;
        Ok(m)
    }

    /// The limits as nsgroup writes them, checked against its allow-list.
    pub fn checked_limits(&self) -> Result<Vec<Limit>, ManifestError> {
        self.limits.iter().map(|(f, v)| Limit::new(f, v).map_err(|e| bad("limits", crate::core::escape::escaped(&e.to_string())))).collect()
    }

    fn check(&self) -> Result<(), ManifestError> {
        match canonical(&self.source_path) {
            Ok(p) if p == self.source_path => {}
            _ => return Err(bad("source_path", "not a canonical cgroup path")),
        }
        self.checked_limits()?;
        for kind in &self.namespaces {
            if NsKind::from_proc_name(kind).is_none() {
                return Err(bad("namespaces", format!("\"{}\" is no namespace kind", crate::core::escape::Escaped(kind))));
            }
        }
        if self.external_mounts.len() > MAX_MOUNTS {
            return Err(bad("external_mounts", format!("more than {MAX_MOUNTS}")));
        }
        for m in &self.external_mounts {
            if !absolute_path(m) {
                return Err(bad("external_mounts", format!("\"{}\" is no absolute mount point", crate::core::escape::Escaped(m))));
            }
        }
        if !absolute_path(&self.root) {
            return Err(bad("root", format!("\"{}\" is no absolute path", crate::core::escape::Escaped(&self.root))));
        }
        Ok(())
    }
}

/// An absolute path CRIU can take in its arguments: no `..`, no control
/// characters, no `:` (its separator), at most 4,096 bytes.
fn absolute_path(p: &str) -> bool {
    p.starts_with('/') && p.len() <= 4096 && !p.chars().any(|c| c.is_control() || c == ':') && !p.split('/').any(|c| c == "..")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::nsset::NsSet;

    pub fn sample() -> Manifest {
        Manifest {
            version: VERSION,
            source_path: "/t/node_7".into(),
            source_cgroup_id: 4711,
            record: NodeRecord {
                set: NsSet::new([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
                parent_set: NsSet::new([1; 10]),
                creator_pid: 7,
                creator_comm: "unshare".into(),
                creator_uid: 0,
                owner: None,
                created_unix: 1_800_000_000,
                mirrors: vec![],
                restored: None,
            },
            limits: BTreeMap::from([("pids.max".into(), "32".into()), ("memory.max".into(), "67108864".into())]),
            namespaces: vec!["pid".into(), "mnt".into(), "uts".into()],
            root_pid: 7,
            checkpointed_unix: 1_800_000_100,
            shell_job: false,
            tcp_established: false,
            external_mounts: vec!["/mnt/share".into()],
            root: "/".into(),
        }
    }

    fn with(f: impl FnOnce(&mut serde_json::Value)) -> Result<Manifest, ManifestError> {
        let mut v = serde_json::to_value(sample()).unwrap();
        f(&mut v);
        Manifest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_manifest_round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes()), Ok(m.clone()));
        assert_eq!(m.checked_limits().unwrap().len(), 2);
    }

    #[test]
    fn another_version_is_refused_before_anything_else_is_read() {
        assert_eq!(with(|v| v["version"] = 2.into()), Err(ManifestError::Version(2)));
        assert_eq!(Manifest::parse(br#"{"version":7,"whatever":true}"#), Err(ManifestError::Version(7)));
        assert!(matches!(Manifest::parse(br#"{"limits":{}}"#), Err(ManifestError::Unreadable(_))));
        assert!(matches!(Manifest::parse(b"\x00garbage"), Err(ManifestError::Unreadable(_))));
    }

    #[test]
    fn hostile_content_is_refused() {
        assert!(matches!(with(|v| v["extra"] = 1.into()), Err(ManifestError::Malformed(_))));
        assert!(matches!(with(|v| v["limits"]["release_agent"] = "/bin/sh".into()), Err(ManifestError::Bad { field: "limits", .. })));
        assert!(matches!(with(|v| v["limits"]["pids.max"] = "1\n2".into()), Err(ManifestError::Bad { field: "limits", .. })));
        assert!(matches!(with(|v| v["source_path"] = "/t/../etc".into()), Err(ManifestError::Bad { field: "source_path", .. })));
        assert!(matches!(with(|v| v["namespaces"] = serde_json::json!(["pid", "\u{1b}[2J"])), Err(ManifestError::Bad { field: "namespaces", .. })));
        for m in ["relative", "/a:/b", "/a/../b", "/a\nb"] {
            let r = with(|v| v["external_mounts"] = serde_json::json!([m]));
            assert!(matches!(r, Err(ManifestError::Bad { field: "external_mounts", .. })), "{m}: {r:?}");
        }
        for r in ["", "relative", "/a:/b", "/a/../b"] {
            let got = with(|v| v["root"] = r.into());
            assert!(matches!(got, Err(ManifestError::Bad { field: "root", .. })), "{r}: {got:?}");
        }
        assert!(matches!(
            with(|v| {
                v.as_object_mut().unwrap().remove("root");
            }),
            Err(ManifestError::Malformed(_))
        ));
        let huge = format!(r#"{{"version":1,"pad":"{}"}}"#, "x".repeat(MAX_BYTES));
        assert_eq!(Manifest::parse(huge.as_bytes()), Err(ManifestError::TooLarge));
        let e = with(|v| v["namespaces"] = serde_json::json!(["\u{1b}[2J"])).unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
    }
}
