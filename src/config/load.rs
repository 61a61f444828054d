//! Reading the configuration file: whether it may be trusted, then parsing
//! and checking it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Config, DEFAULT_PATH};
use crate::core::limit::Limit;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {} is {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("config {}: {source}", path.display())]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("config {}: key `{key}`: {why}", path.display())]
    Value { path: PathBuf, key: &'static str, why: String },
}

impl Config {
    /// Loads `path`. A missing file is an error unless `path` is the default
    /// one. The file must be owned by root (or by the effective uid) and not
    /// writable by group or others.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let euid = rustix::process::geteuid().as_raw();
        if let Err(why) = trust(meta.uid(), meta.mode(), euid) {
            return Err(ConfigError::Untrusted { path, why });
        }
        let mut text = String::new();
        match file.read_to_string(&mut text) {
            Ok(_) => Config::parse(&text, &path),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses and checks a configuration text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(e) })?;
        // Limit values are checked here, where their line is known.
        for rule in &config.limit {
            for (file, value) in &rule.set {
                if let Err(e) = Limit::new(file, &value.get_ref().text()) {
                    let line = text[..value.span().start.min(text.len())].matches('\n').count() + 1;
                    let why = format!("line {line}: {e}");
                    return Err(ConfigError::Value { path: path.to_path_buf(), key: "limit.set", why });
                }
            }
        }
        config.check().map_err(|(key, why)| ConfigError::Value { path: path.to_path_buf(), key, why })?;
        Ok(config)
    }
}

/// Whether a config file with owner `uid` and `mode` may be trusted by a
/// process with effective uid `euid`; else what is wrong and how to fix it.
fn trust(uid: u32, mode: u32, euid: u32) -> Result<(), String> {
    if uid != 0 && uid != euid {
        return Err(format!("owned by uid {uid}, not root; chown root it"));
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, true) => "group and others",
        (true, false) => "group",
        (false, true) => "others",
    };
    Err(format!("writable by {who} (mode {:04o}); chmod go-w it", mode & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_line() {
        let e = parse("root = \"/\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = parse("max_depth = \"deep\"\n").unwrap_err().to_string();
        assert!(e.contains("max_depth") && e.contains("line 1"), "{e}");
        let e = parse("ring_buffer_bytes = 5000\n").unwrap_err().to_string();
        assert!(e.contains("ring_buffer_bytes"), "{e}");
        let e = parse("coalesce_above_per_second = 0\n").unwrap_err().to_string();
        assert!(e.contains("coalesce_above_per_second"), "{e}");
        let e = parse("hooks = \"kprobe\"\n").unwrap_err().to_string();
        assert!(e.contains("hooks") && e.contains("no-syscall"), "{e}");
        let e = parse("namespaces = [\"nett\"]\n").unwrap_err().to_string();
        assert!(e.contains("namespaces") && e.contains("nett"), "{e}");
        assert!(parse("root = \"jobs\"").is_err());
        assert!(parse("[exclude]\ncgroup = [\"x\"]").is_err());
    }

    #[test]
    fn files_writable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nsgroup.toml");
        std::fs::write(&path, "max_depth = 3\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("writable by group and others (mode 0666); chmod go-w"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().max_depth, 3);
    }

    #[test]
    fn trust_wants_root_or_self_and_no_group_or_other_write() {
        assert!(trust(0, 0o100644, 1000).is_ok());
        assert!(trust(1000, 0o100600, 1000).is_ok());
        let e = trust(1000, 0o100644, 0).unwrap_err();
        assert!(e.contains("uid 1000") && e.contains("chown root"), "{e}");
        assert_eq!(trust(0, 0o100664, 0).unwrap_err(), "writable by group (mode 0664); chmod go-w it");
        assert_eq!(trust(0, 0o100646, 0).unwrap_err(), "writable by others (mode 0646); chmod go-w it");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        assert!(matches!(Config::load(Some(Path::new("/nonexistent/nsgroup.toml"))), Err(ConfigError::Read { .. })));
    }
}
