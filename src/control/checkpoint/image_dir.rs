//! The image directory: root's alone. Restoring an image that anyone else
//! could write runs their code as root, so a directory (or any of its
//! ancestors) that another user can write or replace, a symlink, or a file
//! in it that is not root's is refused before CRIU runs.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// At most this many entries are looked at in an image directory.
pub const MAX_ENTRIES: usize = 100_000;

/// Why a directory cannot hold (or give) an image.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{}: {op}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} must be an absolute path", .0.display())]
    Relative(PathBuf),
    #[error("{} is a symlink; an image directory must be a directory of its own", .0.display())]
    Symlink(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotADir(PathBuf),
    #[error("{} is owned by uid {uid}, not root: a user who owns an image can make its restore run anything as root", path.display())]
    NotRoots { path: PathBuf, uid: u32 },
    #[error("{} has mode {mode:o}: another user can write it (an image directory is mode 0700, its ancestors writable by root alone or sticky)", path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error("{} is not empty: a checkpoint goes into a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("{} holds more than {MAX_ENTRIES} entries", .0.display())]
    TooMany(PathBuf),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DirError + 'a {
    move |source| DirError::Io { op, path: path.to_path_buf(), source }
}

/// Checks one path's owner and mode: root's, not writable by group or
/// others (`strict`: no access for them at all); an ancestor may be sticky.
fn owned_by_root(path: &Path, meta: &std::fs::Metadata, strict: bool) -> Result<(), DirError> {
    if meta.uid() != 0 {
        return Err(DirError::NotRoots { path: path.to_path_buf(), uid: meta.uid() });
    }
    let mode = meta.mode() & 0o7777;
    let open = if strict { mode & 0o077 != 0 } else { mode & 0o022 != 0 && mode & 0o1000 == 0 };
    if open {
        return Err(DirError::Writable { path: path.to_path_buf(), mode });
    }
    Ok(())
}

/// The directory itself (not followed) and every ancestor.
fn check_path(dir: &Path) -> Result<(), DirError> {
    if !dir.is_absolute() {
        return Err(DirError::Relative(dir.to_path_buf()));
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io("lstat", dir))?;
    if meta.file_type().is_symlink() {
        return Err(DirError::Symlink(dir.to_path_buf()));
    }
    if !meta.is_dir() {
        return Err(DirError::NotADir(dir.to_path_buf()));
    }
    owned_by_root(dir, &meta, true)?;
    for up in dir.ancestors().skip(1) {
        let meta = std::fs::symlink_metadata(up).map_err(io("lstat", up))?;
        if meta.file_type().is_symlink() {
            return Err(DirError::Symlink(up.to_path_buf()));
        }
        owned_by_root(up, &meta, false)?;
    }
    Ok(())
}

/// A directory for a new checkpoint: made (mode 0700) if absent, else empty; root's alone.
pub fn for_dump(dir: &Path) -> Result<(), DirError> {
    if !dir.is_absolute() {
        return Err(DirError::Relative(dir.to_path_buf()));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(DirError::Io { op: "mkdir", path: dir.to_path_buf(), source: e }),
    }
    check_path(dir)?;
    if std::fs::read_dir(dir).map_err(io("read_dir", dir))?.next().is_some() {
        return Err(DirError::NotEmpty(dir.to_path_buf()));
    }
    Ok(())
}

/// A directory holding an image to restore: root's alone, and so is every entry in it.
pub fn for_restore(dir: &Path) -> Result<(), DirError> {
    check_path(dir)?;
    for (n, entry) in std::fs::read_dir(dir).map_err(io("read_dir", dir))?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(DirError::TooMany(dir.to_path_buf()));
        }
        let path = entry.map_err(io("read_dir", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("lstat", &path))?;
        if meta.file_type().is_symlink() {
            return Err(DirError::Symlink(path));
        }
        owned_by_root(&path, &meta, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A root-owned base to test in (the tests' tempdirs are root's when run as root).
    fn base() -> Option<tempfile::TempDir> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: the image directory checks want root-owned directories");
            return None;
        }
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o755);
        let mut up = t.path().parent();
        while let Some(p) = up {
            let m = std::fs::metadata(p).unwrap();
            if m.uid() != 0 || (m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0) {
                eprintln!("skipped: {} is not root's alone", p.display());
                return None;
            }
            up = p.parent();
        }
        Some(t)
    }

    #[test]
    fn a_dump_makes_a_private_directory_or_wants_an_empty_one() {
        assert!(matches!(for_dump(Path::new("rel/img")), Err(DirError::Relative(_))));
        let Some(t) = base() else { return };
        let img = t.path().join("img");
        for_dump(&img).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().mode() & 0o777, 0o700);
        for_dump(&img).unwrap();
        std::fs::write(img.join("core-1.img"), "").unwrap();
        assert!(matches!(for_dump(&img), Err(DirError::NotEmpty(_))));
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o755);
        assert!(matches!(for_dump(&open), Err(DirError::Writable { mode: 0o755, .. })));
    }

    #[test]
    fn a_restore_refuses_what_another_user_could_have_written() {
        let Some(t) = base() else { return };
        let img = t.path().join("img");
        for_dump(&img).unwrap();
        std::fs::write(img.join("core-1.img"), "").unwrap();
        chmod(&img.join("core-1.img"), 0o600);
        for_restore(&img).unwrap();
        chmod(&img.join("core-1.img"), 0o666);
        assert!(matches!(for_restore(&img), Err(DirError::Writable { .. })));
        chmod(&img.join("core-1.img"), 0o600);
        std::os::unix::fs::chown(img.join("core-1.img"), Some(65534), None).unwrap();
        assert!(matches!(for_restore(&img), Err(DirError::NotRoots { uid: 65534, .. })));
        std::os::unix::fs::chown(img.join("core-1.img"), Some(0), None).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        assert!(matches!(for_restore(&link), Err(DirError::Symlink(_))));
        // An ancestor a user can write: they could swap the directory.
        chmod(t.path(), 0o777);
        assert!(matches!(for_restore(&img), Err(DirError::Writable { .. })));
        chmod(t.path(), 0o1777);
        for_restore(&img).unwrap();
        std::os::unix::fs::chown(&img, Some(65534), None).unwrap();
        assert!(matches!(for_restore(&img), Err(DirError::NotRoots { .. })));
        assert!(matches!(for_restore(&t.path().join("absent")), Err(DirError::Io { op: "lstat", .. })));
    }
}
