//! `backup PATH [--force]`: a consistent copy of the database with SQLite's online backup API,
//! safe while the daemon runs, checked with `PRAGMA integrity_check`. Restoring is stopping
//! the daemon and putting the file in place (README.md, "Backup and restore").

use std::path::Path;

use super::{load_public_config, store_error, BackupArgs, CliError, CliResult};
use crate::store::backup;

pub fn run(config_path: &Path, args: BackupArgs) -> CliResult {
    let loaded = load_public_config(config_path)?;
    if let Some(store) = &loaded.config.store {
        return Err(CliError::failed(format!(
            "the state is in PostgreSQL ({}); back it up with PostgreSQL's own tools \
             (pg_dump): `backup` copies the SQLite file",
            crate::store::postgres::url::redact(&store.url)
        )));
    }
    let db = &loaded.config.daemon.database;
    if !db.exists() {
        return Err(CliError::failed(format!(
            "database {} does not exist yet (has the daemon run?)",
            db.display()
        )));
    }
    let summary = backup::backup(db, &args.dest, args.force).map_err(store_error)?;
    println!(
        "backup of {} written to {}: {} events, schema version {}, {} bytes, integrity ok",
        db.display(),
        args.dest.display(),
        summary.events,
        summary.schema_version,
        summary.bytes
    );
    Ok(())
}
