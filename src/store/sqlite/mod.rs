//! The SQLite backend: one file, WAL, migrations in code, one writer thread.
//!
//! Every write goes through one dedicated OS thread that owns the write connection and
//! group-commits: it takes every job waiting in its queue, runs each in a savepoint inside one
//! `BEGIN IMMEDIATE` transaction, commits once (one fsync for the batch), and only then answers
//! each caller and runs its post-commit hook. Hooks run on the writer thread in commit order.
//! When SQLite rolls the whole transaction back by itself after a job's error (SQLITE_FULL,
//! SQLITE_IOERR, SQLITE_NOMEM...), the jobs before it in that transaction are undone too and
//! answered as failed, and the jobs after it run in a fresh transaction ([`commit_batch`]).
//! How transactions end is kept for `/healthz` ([`super::health`]).
//! No SQLite call ever runs on a tokio runtime thread: reads use `spawn_blocking` with a small
//! pool of read connections.
//!
//! The database, its `-wal` and `-shm` are 0600 whatever the umask: the file is created at
//! 0600 before SQLite opens it, and SQLite gives the files it creates beside it the
//! database's mode ([`open_write_connection`]).
//!
//! The closures over a [`Connection`] ([`SqliteStore::write`], [`SqliteStore::read`], ...) are
//! this backend's own: [`super::Store`]'s operations use them, with the queries written once
//! (`crate::store::sql::sqlite::SqliteTx` over the connection) or the functions of
//! [`queries`] and [`mirror`] not yet converted; nothing outside `crate::store` does.

pub mod backup;
pub mod migrations;
pub mod mirror;
pub mod notify;
pub mod queries;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::health::{WriteHealth, WriteOutcome, WritesFailing};
use super::StoreError;
use crate::files;
use tokio::sync::{mpsc, oneshot};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Database(e.to_string())
    }
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Open {
        target: path.display().to_string(),
        reason: e.to_string(),
    }
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A unit of work for the writer: runs inside the batch's transaction (`None`: none could be
/// had, so it only hands back its completion, to be failed), says whether it succeeded (the
/// error's text if not), and answers after commit.
type Job = Box<dyn FnOnce(Option<&mut Connection>) -> (Result<(), String>, Completion) + Send>;

/// What the writer thread receives: work, or the request to stop after the work before it.
enum Msg {
    Job(Job),
    /// Commit everything queued before, checkpoint the WAL into the main file, stop, answer.
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// Handle to a SQLite database. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    /// `None` when opened read-only.
    jobs: Option<mpsc::Sender<Msg>>,
    readers: Arc<ReadPool>,
    path: PathBuf,
    /// How the writer's transactions end, for `/healthz`.
    health: WriteHealth,
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Jobs queued for the writer at most; callers wait (backpressure) beyond this.
const WRITE_QUEUE: usize = 4096;
/// Jobs committed together at most.
const MAX_BATCH: usize = 1024;

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens the database read-only, for the inspection commands; works while the daemon runs
/// (WAL readers do not block the writer) and while it is down.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    configure(&conn)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > migrations::LATEST {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: migrations::LATEST,
        });
    }
    if version == 0 {
        return Err(StoreError::Corrupt(format!(
            "{} is not a vpp-reconciler database (no schema)",
            path.display()
        )));
    }
    Ok(conn)
}

/// `path` with `suffix` appended to its file name (`state.db-wal`).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The files SQLite keeps beside a database.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Opens (creating if needed) the database for writing, with WAL and migrations applied.
/// Blocking: call it before starting the runtime or inside `spawn_blocking`.
///
/// The database is 0600 whatever the umask: created at 0600 here before SQLite opens it
/// (SQLite would create it at 0644 minus the umask), tightened with a warning if it exists
/// with a looser mode. SQLite's unix VFS creates `-wal`, `-shm` and `-journal` with the
/// database file's mode, and `fchmod`s them to it when they are empty (`robust_open` with
/// the mode `findCreateFileMode` reads from the database), so they are 0600 too; a non-empty
/// one left with a looser mode by an earlier version is tightened before the open. No umask
/// is changed (it is process-wide; other threads create files meanwhile).
pub fn open_write_connection(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        // A directory made here is the owner's only; an existing one is left as it is.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    files::create_private(path)?;
    for suffix in SIDE_FILES {
        files::ensure_private(&beside(path, suffix))?;
    }
    let mut conn = Connection::open(path).map_err(|e| open_error(path, e))?;
    configure(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Created by now: checked (and logged if SQLite ever did otherwise), not assumed.
    for suffix in SIDE_FILES {
        files::ensure_private(&beside(path, suffix))?;
    }
    // FULL: an acknowledged notification must survive power loss, not only kill -9.
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrations::migrate(&mut conn)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens the database and starts the writer thread. Blocking (file IO): call from
    /// `spawn_blocking` or before the runtime starts.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = open_write_connection(path)?;
        let (tx, rx) = mpsc::channel::<Msg>(WRITE_QUEUE);
        let health = WriteHealth::default();
        let recorder = health.clone();
        std::thread::Builder::new()
            .name("vppr-store-writer".into())
            .spawn(move || writer_loop(conn, rx, recorder))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            jobs: Some(tx),
            readers: Arc::new(ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            path: path.to_path_buf(),
            health,
        })
    }

    /// Opens the database for reads only (see [`open_read_only`]); writes answer
    /// [`StoreError::ReadOnly`].
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let first = open_read_only(path)?;
        Ok(SqliteStore {
            jobs: None,
            readers: Arc::new(ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(vec![first]),
            }),
            path: path.to_path_buf(),
            health: WriteHealth::default(),
        })
    }

    /// `Some` while the writer's transactions fail (see [`super::health`]).
    pub fn writes_failing(&self) -> Option<WritesFailing> {
        self.health.failing()
    }

    fn writer(&self) -> Result<&mpsc::Sender<Msg>, StoreError> {
        self.jobs.as_ref().ok_or(StoreError::ReadOnly)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the next group commit and returns its result once committed.
    pub(in crate::store) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// Like [`Store::write`], and runs `hook` on the writer thread right after the commit,
    /// in commit order, before answering.
    pub(in crate::store) async fn write_then<R, F, H>(&self, f: F, hook: H) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = run_job(f, conn);
            let ok = job_result(&result);
            let done: Completion = Box::new(move |commit| {
                let answer = match (commit, result) {
                    (Ok(()), Ok(r)) => {
                        hook(&r);
                        Ok(r)
                    }
                    (Err(e), _) | (Ok(()), Err(e)) => Err(e),
                };
                let _ = tx.send(answer);
            });
            (ok, done)
        });
        self.writer()?
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a write without waiting for it; `on_commit` gets the result after commit. Used
    /// by the executor so that its loop never waits on disk. When the work succeeded and its
    /// transaction then did not commit, `undone` makes the answer of the result and the
    /// error (the executor's turn hands every change back as failed, to be retried, rather
    /// than losing them with the error).
    pub(in crate::store) async fn write_detached<R, F>(
        &self,
        f: F,
        on_commit: oneshot::Sender<Result<R, StoreError>>,
        undone: fn(R, StoreError) -> Result<R, StoreError>,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.writer()?
            .send(Msg::Job(detached_job(f, on_commit, undone)))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Stops the writer on clean shutdown: every write queued before this is committed, then
    /// the WAL is checkpointed into the main file (`PRAGMA wal_checkpoint(TRUNCATE)`), so a
    /// copy of the database file alone holds everything. Writes queued after it fail with
    /// [`StoreError::Closed`]. Closing twice is harmless.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let Some(jobs) = &self.jobs else {
            return Ok(());
        };
        if jobs.send(Msg::Close(tx)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Runs a read on a pooled read-only connection, off the runtime threads.
    pub(in crate::store) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = match pool.idle.lock().ok().and_then(|mut v| v.pop()) {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &pool.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(|e| open_error(&pool.path, e))?;
                    configure(&c)?;
                    c
                }
            };
            let r = f(&mut conn);
            if let Ok(mut idle) = pool.idle.lock() {
                if idle.len() < 8 {
                    idle.push(conn);
                }
            }
            r
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// A cheap liveness probe of the writer: commits an empty transaction.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute_batch("SELECT 1")?;
            Ok(())
        })
        .await
    }
}

/// Runs a job's closure on the connection, or fails it when there is none.
fn run_job<R, F>(f: F, conn: Option<&mut Connection>) -> Result<R, StoreError>
where
    F: FnOnce(&mut Connection) -> Result<R, StoreError>,
{
    match conn {
        Some(c) => f(c),
        // Never shown: the completion is answered with the writer's own error.
        None => Err(StoreError::Database("no write transaction".into())),
    }
}

/// What the writer learns of a job's result: success, or the error's text (the engine's own
/// words for an engine error, to be wrapped again).
fn job_result<R>(result: &Result<R, StoreError>) -> Result<(), String> {
    result.as_ref().map(|_| ()).map_err(|e| match e {
        StoreError::Database(m) => m.clone(),
        e => e.to_string(),
    })
}

/// A job answering `on_commit` with its result once committed; when its work succeeded but
/// the transaction did not commit, with what `undone` makes of the two.
fn detached_job<R, F>(
    f: F,
    on_commit: oneshot::Sender<Result<R, StoreError>>,
    undone: fn(R, StoreError) -> Result<R, StoreError>,
) -> Job
where
    R: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
{
    Box::new(move |conn| {
        let result = run_job(f, conn);
        let ok = job_result(&result);
        let done: Completion = Box::new(move |commit| {
            let answer = match (commit, result) {
                (Ok(()), result) => result,
                (Err(e), Ok(r)) => undone(r, e),
                (Err(e), Err(_)) => Err(e),
            };
            let _ = on_commit.send(answer);
        });
        (ok, done)
    })
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Msg>, health: WriteHealth) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut close: Option<oneshot::Sender<Result<(), StoreError>>> = None;
    while let Some(first) = rx.blocking_recv() {
        match first {
            Msg::Job(job) => batch.push(job),
            Msg::Close(reply) => {
                close = Some(reply);
                break;
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Close(reply)) => {
                    close = Some(reply);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch, &health);
        if close.is_some() {
            break;
        }
    }
    // Refuse what comes after the close; answer every later Close too.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Close(reply) = msg {
            let _ = reply.send(Ok(()));
        }
    }
    let result = checkpoint(&conn);
    if let Some(reply) = close {
        let _ = reply.send(result);
    }
}

/// Moves every committed page from the WAL into the main file and truncates the WAL, so the
/// database file alone is a complete copy (README, "Backup and restore").
fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 {
        tracing::warn!(
            wal_frames = log,
            checkpointed = done,
            "WAL checkpoint at shutdown was blocked by a reader; the -wal file still holds data"
        );
        return Err(StoreError::Corrupt(
            "the WAL checkpoint at shutdown was blocked by a reader".into(),
        ));
    }
    tracing::info!(
        checkpointed = done,
        "WAL checkpointed into the database file"
    );
    Ok(())
}

/// Runs `batch` in as few transactions as it takes (one, unless SQLite ends one by itself)
/// and answers every job, in order, once its transaction ended.
///
/// Each job runs in a savepoint, so a failing job is undone alone and the rest commit.
/// After certain errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM, some SQLITE_BUSY) SQLite
/// rolls back the whole transaction instead, leaving the connection in autocommit mode: the
/// jobs already run in it are undone too and are answered failed (never "failed" while
/// committed, nor "done" while undone). The jobs after it run in a fresh transaction; without
/// that check, the next job's `SAVEPOINT` would open a transaction of its own and its
/// `RELEASE` commit it alone, while the batch's failed `COMMIT` reported it failed.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Job>, health: &WriteHealth) {
    let mut jobs = batch.drain(..).peekable();
    while jobs.peek().is_some() {
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = e.to_string();
            tracing::error!(error = %msg, "cannot begin a write transaction");
            health.record(&WriteOutcome::Failed(msg.clone()));
            for job in jobs {
                let (_, done) = job(None);
                done(Err(StoreError::Database(format!(
                    "cannot begin a write transaction: {msg}"
                ))));
            }
            // Not a busy loop while the database is locked or broken.
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        let before = conn.total_changes();
        // Jobs run in this transaction, answered when it ends.
        let mut ran: Vec<Completion> = Vec::new();
        let mut rolled_back = None;
        for job in jobs.by_ref() {
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                // This job could not be kept apart: it fails unrun; the transaction (still
                // open: a failed SAVEPOINT does not end it) commits the jobs before it, and
                // the rest go to the next one.
                let (_, done) = job(None);
                done(Err(StoreError::Database(format!(
                    "cannot start the write: {e}"
                ))));
                break;
            }
            let (result, done) = job(Some(&mut *conn));
            if !conn.is_autocommit() {
                let end = match result {
                    Ok(()) => "RELEASE job",
                    // Undo only this job; the rest of the batch still commits.
                    Err(_) => "ROLLBACK TO job; RELEASE job",
                };
                let _ = conn.execute_batch(end);
            }
            if conn.is_autocommit() {
                let why = result
                    .err()
                    .unwrap_or_else(|| "the transaction ended inside a write".into());
                rolled_back = Some((why, done));
                break;
            }
            ran.push(done);
        }
        if let Some((why, failed)) = rolled_back {
            tracing::error!(
                error = %why,
                undone = ran.len(),
                "SQLite rolled back a write transaction by itself; its writes are answered failed"
            );
            health.record(&WriteOutcome::Failed(why.clone()));
            for done in ran {
                done(Err(StoreError::Database(format!(
                    "not written: SQLite rolled back the transaction after another write in \
                     it failed ({why})"
                ))));
            }
            failed(Err(StoreError::Database(format!(
                "{why} (SQLite rolled back the whole transaction)"
            ))));
            continue;
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                health.record(&if conn.total_changes() > before {
                    WriteOutcome::Wrote
                } else {
                    WriteOutcome::NothingWritten
                });
                for done in ran {
                    done(Ok(()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "commit failed; the batch is rolled back");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                health.record(&WriteOutcome::Failed(msg.clone()));
                for done in ran {
                    done(Err(StoreError::Database(format!("commit failed: {msg}"))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
