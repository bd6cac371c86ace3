//! The store: one interface of named operations, one backend per database engine.
//!
//! [`Store`] is the only way the rest of the daemon reaches the database. Its operations are
//! named and grouped by concern, each in the module of that concern, next to the plain types
//! it takes and returns: [`events`] (tracking, the core's turns, retention, listing),
//! [`notifications`] (the webhook), [`syncs`] (sync runs), [`mirror`] (Apple's data per
//! token, the stage of a streamed sync), [`tokens`], [`feed`] (the changes feed), [`push`]
//! (the outbox), [`licences`] (the licence report), [`submissions`] (idempotency keys of
//! submissions through the daemon), [`status`] (the status page) and
//! [`stats`] (the metrics); [`views`] holds the JSON shapes the API and the CLI print. No
//! code outside this module sees a database connection or SQL.
//!
//! A backend is one variant of [`Store`]: [`sqlite`] (one file, WAL, one writer thread
//! group-committing every write) when the configuration has no `[store]`, [`postgres`] (a
//! pool, one transaction per operation, token leases for several instances) with
//! `[store] url`; both have the same migrations (same version numbers), each in its dialect.
//! Queries are written once over [`sql::Tx`] where they have been converted ([`syncs`],
//! [`tokens`], [`status`], the feed's writers): `Store::write` and `Store::read` choose
//! the backend once, and the SQL is one text unless the dialects differ
//! (docs/architecture.md, "One query source"). The other operations are still a `match` over
//! the variants with a twin query per backend (`sqlite::queries`, `postgres::queries`).
//!
//! Guarantees every backend keeps:
//! - a write answers only once committed (an acknowledged notification or a tracked event
//!   is durable before the answer);
//! - each operation is one transaction of its own, whole or not at all: a failing operation
//!   never undoes another one answered done (when SQLite rolls a whole group commit back by
//!   itself, every operation it undid is answered failed), and [`Store::commit_turn`] hands
//!   its result back in the order the turns were queued;
//! - the changes feed's `seq` only grows, in commit order;
//! - no blocking database call runs on a tokio runtime thread;
//! - [`Store::close`] commits what was queued before it and leaves the database complete on
//!   its own (SQLite: the WAL checkpointed into the file).

pub mod events;
pub mod feed;
pub mod handoffs;
pub mod health;
pub mod leases;
pub mod licences;
pub mod mirror;
pub mod notifications;
pub mod postgres;
pub mod push;
pub mod sql;
pub mod sqlite;
pub mod stats;
pub mod status;
pub mod submissions;
pub mod syncs;
pub mod tokens;
pub mod views;

use std::path::Path;

use futures::future::BoxFuture;
use thiserror::Error;

use sql::postgres::PgTx;
pub(crate) use sql::Tx;

pub use events::{EventFilter, RecoveryStart, TurnCommit, TurnWrite};
pub use feed::{licence_transition, LicenceCounts, TokenStatus};
pub use handoffs::{Handoff, Loaded, Taken, TrackedElsewhere};
pub use leases::LeaseSnapshot;
pub use licences::{AssetLicences, AssignmentRef};
pub use mirror::{MirrorKind, StageRows};
pub use notifications::NewNotification;
pub use push::{InFlightView, ParkedView, PushRow, PushStatusView, ReplayRefused};
pub use sqlite::{backup, migrations, open_read_only, open_write_connection};
pub use stats::{EventCount, StoreStats, TokenExpiry};
pub use status::StatusSnapshot;
pub use submissions::{SubmissionClaim, SubmissionRow};
pub use syncs::{SyncCommit, SyncEnd, SyncStart};
pub use tokens::{TokenRow, UnhealthyToken};
pub use views::{
    ChangeView, EventDetail, EventView, FeedItem, HistoryView, NotificationView, PollView,
    SyncView, TokenView,
};

/// The schema version this binary writes, the same number in every backend's migrations.
pub const SCHEMA_VERSION: i64 = sqlite::migrations::LATEST;

/// Where the store lives: built by the caller from its configuration, so the store does not
/// depend on the configuration's types.
#[derive(Debug, Clone)]
pub enum Target {
    /// The SQLite file (`daemon.database`).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database (`[store]`): its URL without a password, the password read from
    /// its secret file, and how long a token's lease lasts without renewal.
    Postgres {
        url: String,
        password: Option<crate::secret::Secret>,
        lease_ttl: std::time::Duration,
    },
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// The engine refused a statement; the engine's own message. (Each backend converts its
    /// driver's error into this, so no driver type shows here.)
    #[error("database error: {0}")]
    Database(String),
    /// PostgreSQL refused a statement: its message and SQLSTATE, kept apart so the write
    /// health can tell the database's failure from the job's own
    /// ([`health::is_database_failure`]).
    #[error("database error: {message} ({code})")]
    Refused { message: String, code: String },
    #[error("cannot open database {target}: {reason}")]
    Open { target: String, reason: String },
    /// The TLS settings of a PostgreSQL URL (`sslmode`, `sslrootcert`) are wrong, or its
    /// root certificates cannot be loaded.
    #[error("cannot open database {target}: {error}")]
    Tls {
        target: String,
        error: postgres::tls::TlsError,
    },
    /// A PostgreSQL operation (its whole transaction) took longer than its limit; its
    /// connection was closed rather than returned to the pool.
    #[error(
        "the database did not finish the operation within {} (connection closed)",
        crate::time::format_duration(*.0)
    )]
    Timeout(std::time::Duration),
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "database schema version {found} is newer than this binary supports (schema version \
         {supported}): it was written by a newer vpp-reconciler, and downgrades are not supported; \
         run the newer version, or restore a backup made by this one"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the database writer has stopped")]
    Closed,
    #[error("the database is open read-only")]
    ReadOnly,
    #[error("{0} not found")]
    NotFound(String),
    /// A write for a token whose lease this instance no longer holds (several instances).
    #[error("this instance no longer holds the lease of token {0}")]
    LeaseLost(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("backup failed: {0}")]
    Backup(String),
    /// A database or backup file could not be made readable by its owner only (0600).
    #[error(transparent)]
    PrivateFile(#[from] crate::files::PrivateFileError),
}

/// Handle to the database. Cheap to clone; one variant per backend.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the SQLite database at `path` (creating it, migrating it) and starts its writer.
    /// Blocking (file IO): call from `spawn_blocking` or before the runtime starts.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(sqlite::SqliteStore::open(path)?))
    }

    /// Opens the SQLite database at `path` for reading only, for the inspection commands:
    /// works while the daemon runs and while it is down; refuses a database without a schema
    /// or with a newer one. Every write answers [`StoreError::ReadOnly`].
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(sqlite::SqliteStore::open_read_only(path)?))
    }

    /// Connects to the PostgreSQL database at `url` (the password from a secret file, not the
    /// URL) and migrates it. Not reachable from the configuration yet.
    pub async fn connect_postgres(url: &str, password: Option<&str>) -> Result<Store, StoreError> {
        Ok(Store::Postgres(
            postgres::PgStore::connect(url, password).await?,
        ))
    }

    /// Opens the store `target` names: PostgreSQL (README "PostgreSQL") or the SQLite file (blocking
    /// file IO runs off the runtime threads).
    pub async fn open_target(target: Target) -> Result<Store, StoreError> {
        match target {
            Target::Postgres {
                url,
                password,
                lease_ttl,
            } => {
                let password = password.as_ref().map(|p| p.expose().to_string());
                Ok(Store::Postgres(
                    postgres::PgStore::connect_with(&url, password.as_deref(), lease_ttl).await?,
                ))
            }
            Target::Sqlite(db) => tokio::task::spawn_blocking(move || Store::open(&db))
                .await
                .map_err(|e| StoreError::Database(format!("cannot open the store: {e}")))?,
        }
    }

    /// Stops writing on clean shutdown: every write queued before this is committed, and the
    /// database is left complete on its own (SQLite: the WAL is checkpointed into the main
    /// file, so a copy of that file alone holds everything). Writes queued after it fail with
    /// [`StoreError::Closed`]. Closing twice is harmless.
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }

    /// This instance's id among those sharing the database (see
    /// `postgres::PgStore::claim_instance`); SQLite has one instance, named `preferred`.
    pub async fn claim_instance(&self, preferred: &str) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(preferred.to_string()),
            Store::Postgres(p) => p.claim_instance(preferred).await,
        }
    }

    /// A cheap liveness probe of the writer: commits an empty transaction.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(p) => p.ping().await,
        }
    }

    /// Runs `f` as one write of its own, whole or not at all, answering once committed (the
    /// one entry point of every backend: SQLite's writer thread, a PostgreSQL transaction).
    pub(in crate::store) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R, StoreError>> + Send + 'static,
    {
        match self {
            Store::Sqlite(s) => s.write(move |c| sql::sqlite::run(c, f)).await,
            Store::Postgres(p) => {
                p.write(move |t| Box::pin(async move { f(&mut PgTx::new(t)).await }))
                    .await
            }
        }
    }

    /// Runs `f` as a read (SQLite: a pooled read connection; PostgreSQL: a read-only
    /// snapshot).
    pub(in crate::store) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R, StoreError>> + Send + 'static,
    {
        match self {
            Store::Sqlite(s) => s.read(move |c| sql::sqlite::run(c, f)).await,
            Store::Postgres(p) => {
                p.read(move |t| Box::pin(async move { f(&mut PgTx::new(t)).await }))
                    .await
            }
        }
    }

    /// `Some` while the writes' transactions fail (disk full, I/O errors, a read-only
    /// PostgreSQL server; see [`health`]), which [`Store::ping`] does not show. Kept by
    /// SQLite's writer, and by PostgreSQL's write transactions.
    pub fn writes_failing(&self) -> Option<health::WritesFailing> {
        match self {
            Store::Sqlite(s) => s.writes_failing(),
            Store::Postgres(p) => p.writes_failing(),
        }
    }
}

#[cfg(test)]
mod boundary {
    use std::path::Path;

    /// No code outside `src/store/` sees the database: no driver, no SQL. (A second backend
    /// is then only a matter of this module.)
    #[test]
    fn only_the_store_sees_the_database() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let forbidden = [
            "rusqlite::",
            "use rusqlite",
            "execute_batch",
            "query_row",
            "SELECT ",
            "INSERT INTO",
            "DELETE FROM",
        ];
        let mut dirs = vec![root.clone()];
        let mut seen = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == root.join("store") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    seen += 1;
                    let src = std::fs::read_to_string(&path).unwrap();
                    for word in forbidden {
                        assert!(
                            !src.contains(word),
                            "{} mentions {word:?}: the database belongs to src/store/",
                            path.display()
                        );
                    }
                }
            }
        }
        assert!(seen > 20, "walked only {seen} files");
    }
}
