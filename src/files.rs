//! Files only their owner may read (mode 0600), whatever the process's umask: the database
//! and its `-wal`/`-shm` (users' emails, serial numbers), backups, and secrets the daemon
//! generates.
//!
//! Modes are set on the open file descriptor (`fchmod`), never by changing the umask: the
//! umask is process-wide, and changing it around an open would race with every other thread
//! creating files meanwhile. A file is created with `O_CREAT | O_EXCL` at 0600 (the umask can
//! only remove bits from that) and then `fchmod`ed to exactly 0600, so no moment exists where
//! it is readable by others.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The only mode a private file has.
pub const PRIVATE_MODE: u32 = 0o600;

/// What could not be done to a private file, naming it.
#[derive(Debug, Error)]
#[error("cannot {action} {path}: {source}")]
pub struct PrivateFileError {
    pub path: PathBuf,
    /// What was being done ("create", "write", "tighten the mode of", ...).
    pub action: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> PrivateFileError {
    let path = path.to_path_buf();
    move |source| PrivateFileError {
        path,
        action,
        source,
    }
}

/// Whether a mode lets anyone but the owner in (group or others, any of read/write/execute).
pub fn is_loose(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Makes an existing file 0600 if its group or others may access it, logging a warning
/// (a file from an earlier version or another tool). A missing file is left missing.
/// Returns the mode it had when it was tightened.
pub fn ensure_private(path: &Path) -> Result<Option<u32>, PrivateFileError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(path, "read the mode of")(e)),
    };
    // A symlink's own mode means nothing; the file it points to is checked through it.
    let mode = if meta.file_type().is_symlink() {
        std::fs::metadata(path)
            .map_err(err(path, "read the mode of"))?
            .permissions()
            .mode()
    } else {
        meta.permissions().mode()
    } & 0o7777;
    if !is_loose(mode) {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_MODE))
        .map_err(err(path, "tighten the mode of"))?;
    tracing::warn!(
        path = %path.display(),
        mode = %format!("{mode:04o}"),
        "file was readable by others; its mode is now 0600"
    );
    Ok(Some(mode))
}

/// Creates `path` empty at 0600 if it does not exist (never truncating an existing one), or
/// tightens an existing one ([`ensure_private`]). For files another library then opens by
/// name (SQLite creates a missing database at 0644 minus the umask).
pub fn create_private(path: &Path) -> Result<(), PrivateFileError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)
    {
        Ok(f) => set_private(&f, path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ensure_private(path).map(|_| ()),
        Err(e) => Err(err(path, "create")(e)),
    }
}

/// Exactly 0600 on the descriptor (the umask may have removed owner bits at create).
fn set_private(f: &File, path: &Path) -> Result<(), PrivateFileError> {
    f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))
        .map_err(err(path, "set the mode of"))
}

/// Writes `bytes` as the whole content of `path`, atomically and at 0600: into a new file
/// beside it (same directory, so the rename cannot cross filesystems) created at 0600,
/// fsynced, renamed over `path`, and the directory fsynced so the rename survives a crash.
/// A reader sees the old content or the new, never a part, and never a readable-by-others
/// moment.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    publish(path, bytes, |tmp, path| {
        std::fs::rename(tmp, path).map_err(err(path, "rename a new file to"))
    })
}

/// Creates `path` with `bytes` as its content, as [`write_private_file`] does, but never
/// replaces an existing file: the new file is hard-linked to its name, which fails with
/// `AlreadyExists` (in the error's `source`) when another process created it first. For
/// generated secrets that others may already use (the local API token).
pub fn create_private_file(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    publish(path, bytes, |tmp, path| {
        std::fs::hard_link(tmp, path).map_err(err(path, "create"))
    })
}

/// Writes a private temporary beside `path`, gives it its name with `name_it`, then makes
/// the name durable; the temporary is gone afterwards whatever happened.
fn publish(
    path: &Path,
    bytes: &[u8],
    name_it: impl FnOnce(&Path, &Path) -> Result<(), PrivateFileError>,
) -> Result<(), PrivateFileError> {
    let tmp = temp_beside(path);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_MODE)
            .open(&tmp)
            .map_err(err(&tmp, "create"))?;
        set_private(&f, &tmp)?;
        f.write_all(bytes).map_err(err(&tmp, "write"))?;
        f.sync_all().map_err(err(&tmp, "fsync"))?;
        name_it(&tmp, path)
    })();
    // After a rename the temporary's name is gone already; after a link it is a second name.
    let _ = std::fs::remove_file(&tmp);
    written?;
    sync_dir(path)
}

/// A fresh name in `path`'s directory: hidden, with the pid and a random part (two writers
/// of the same file never share a temporary).
pub fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// fsyncs the directory holding `path`, making a rename or create in it durable.
fn sync_dir(path: &Path) -> Result<(), PrivateFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir, "fsync the directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Sets the umask for the closure. Process-wide, so one such test at a time, and only
    /// masks that keep the owner's bits: other tests creating files meanwhile still can.
    fn with_umask<R>(mask: libc::mode_t, f: impl FnOnce() -> R) -> R {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        assert_eq!(mask & 0o700, 0);
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: umask only sets and returns the process's file mode creation mask.
        let old = unsafe { libc::umask(mask) };
        let r = f();
        unsafe { libc::umask(old) };
        r
    }

    #[test]
    fn written_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        for (i, mask) in [0o000, 0o022, 0o002, 0o077].into_iter().enumerate() {
            let p = dir.path().join(format!("secret-{i}"));
            with_umask(mask, || write_private_file(&p, b"s3cret")).unwrap();
            assert_eq!(mode(&p), 0o600, "umask {mask:03o}");
            assert_eq!(std::fs::read(&p).unwrap(), b"s3cret");
        }
        // Replacing keeps 0600 and leaves no temporary behind.
        let p = dir.path().join("secret-0");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        with_umask(0o022, || write_private_file(&p, b"new")).unwrap();
        assert_eq!(
            (mode(&p), std::fs::read(&p).unwrap()),
            (0o600, b"new".to_vec())
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn write_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("secret");
        let e = write_private_file(&p, b"x").unwrap_err();
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }

    #[test]
    fn created_private_and_existing_ones_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        with_umask(0o022, || create_private(&p)).unwrap();
        assert_eq!(mode(&p), 0o600);
        // An existing file keeps its content and is tightened.
        std::fs::write(&p, b"data").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&p).unwrap();
        assert_eq!(
            (mode(&p), std::fs::read(&p).unwrap()),
            (0o600, b"data".to_vec())
        );
        // ensure_private reports what it changed, and leaves private or missing files alone.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(ensure_private(&p).unwrap(), Some(0o640));
        assert_eq!(ensure_private(&p).unwrap(), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            ensure_private(&p).unwrap(),
            None,
            "stricter than 0600 is kept"
        );
        assert_eq!(ensure_private(&dir.path().join("nope")).unwrap(), None);
        assert!(!dir.path().join("nope").exists());
    }
}
