//! `vpp-reconciler backup PATH`: a consistent copy of the state with SQLite's online backup
//! API, taken while the daemon runs (WAL readers never block the writer), then checked with
//! `PRAGMA integrity_check`. The copy is 0600 whatever the umask, like the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use super::{open_read_only, StoreError};

/// What a finished backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub events: i64,
    pub schema_version: i64,
    pub bytes: u64,
}

/// Copies the database at `source` to `dest`. The copy is written beside `dest` under a
/// temporary name, checked, switched out of WAL mode (one self-contained file), and only then
/// renamed to `dest`, so `dest` is never a half-written or unchecked file. An existing `dest`
/// is replaced only with `overwrite`.
pub fn backup(source: &Path, dest: &Path, overwrite: bool) -> Result<BackupSummary, StoreError> {
    if !overwrite && dest.exists() {
        return Err(StoreError::Backup(format!(
            "{} already exists; pass --force to overwrite it",
            dest.display()
        )));
    }
    if dest.is_dir() {
        return Err(StoreError::Backup(format!(
            "{} is a directory; give the path of the backup file",
            dest.display()
        )));
    }
    let src = open_read_only(source)?;
    let tmp = temp_path(dest);
    let result = copy_and_check(&src, &tmp);
    match result {
        Ok(summary) => {
            std::fs::rename(&tmp, dest).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                StoreError::Backup(format!("cannot move the backup to {}: {e}", dest.display()))
            })?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn copy_and_check(src: &Connection, tmp: &Path) -> Result<BackupSummary, StoreError> {
    let _ = std::fs::remove_file(tmp);
    // The copy holds what the database does: 0600 from the start, whatever the umask (SQLite
    // would create it at 0644 minus the umask; its -journal takes this file's mode). The
    // rename to the destination keeps the mode.
    crate::files::create_private(tmp)?;
    let mut dst = Connection::open(tmp).map_err(|e| super::open_error(tmp, e))?;
    {
        // All pages in one step: one read snapshot of the source, never restarted by the
        // daemon's writes.
        let b = Backup::new(src, &mut dst)?;
        let mut waits = 0;
        loop {
            match b.step(-1)? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if waits < 200 => {
                    waits += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(StoreError::Backup(
                        "the database stayed locked for 10s; try again".into(),
                    ))
                }
            }
        }
    }
    // One self-contained file: no -wal beside the copy.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    let check: Vec<String> = {
        let mut stmt = dst.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<_, _>>()?
    };
    if check != ["ok"] {
        return Err(StoreError::Backup(format!(
            "the copy failed PRAGMA integrity_check: {}",
            check.join("; ")
        )));
    }
    let schema_version: i64 = dst.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let events: i64 = dst.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    drop(dst);
    let bytes = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
    Ok(BackupSummary {
        events,
        schema_version,
        bytes,
    })
}
