//! The SQLite backend: one file, WAL, migrations in code, one writer thread.
//!
//! Every write goes through one dedicated OS thread that owns the write connection and
//! group-commits: it takes every job waiting in its queue, runs each in a savepoint inside one
//! `BEGIN IMMEDIATE` transaction, commits once (one fsync for the batch), and only then answers
//! each caller and runs its post-commit hook. Hooks run on the writer thread in commit order.
//! No SQLite call ever runs on a tokio runtime thread: reads use `spawn_blocking` with a small
//! pool of read connections.
//!
//! The closures over a [`Connection`] ([`SqliteStore::write`], [`SqliteStore::read`], ...) are
//! this backend's own: [`super::Store`]'s operations use them with the functions of
//! [`queries`] and [`mirror`]; nothing outside `crate::store` does.

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

use super::StoreError;
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
/// A unit of work for the writer: runs inside the batch's transaction, answers after commit.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

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

/// Opens (creating if needed) the database for writing, with WAL and migrations applied.
/// Blocking: call it before starting the runtime or inside `spawn_blocking`.
pub fn open_write_connection(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut conn = Connection::open(path).map_err(|e| open_error(path, e))?;
    configure(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
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
        std::thread::Builder::new()
            .name("vppr-store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            jobs: Some(tx),
            readers: Arc::new(ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            path: path.to_path_buf(),
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
        })
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
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// Like [`Store::write`], and runs `hook` on the writer thread right after the commit,
    /// in commit order, before answering.
    pub(in crate::store) async fn write_then<R, F, H>(&self, f: F, hook: H) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
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
    /// by the executor so that its loop never waits on disk.
    pub(in crate::store) async fn write_detached<R, F>(
        &self,
        f: F,
        on_commit: oneshot::Sender<Result<R, StoreError>>,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit| {
                let _ = on_commit.send(commit.and(result));
            });
            (ok, done)
        });
        self.writer()?
            .send(Msg::Job(job))
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
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().ok().and_then(|mut v| v.pop()) {
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
            let r = f(&conn);
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

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Msg>) {
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
        commit_batch(&conn, &mut batch);
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

fn commit_batch(conn: &Connection, batch: &mut Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        // Dropping the jobs answers their callers with `Closed`; nothing was written.
        tracing::error!(error = %e, "cannot begin a write transaction");
        batch.clear();
        std::thread::sleep(Duration::from_millis(100));
        return;
    }
    for job in batch.drain(..) {
        let sp = conn.execute_batch("SAVEPOINT job");
        let (ok, done) = job(conn);
        if sp.is_ok() {
            if ok {
                let _ = conn.execute_batch("RELEASE job");
            } else {
                // Undo only this job; the rest of the batch still commits.
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            }
        }
        completions.push(done);
    }
    let commit = conn.execute_batch("COMMIT");
    let failed = commit.as_ref().err().map(|e| e.to_string());
    if let Some(msg) = &failed {
        tracing::error!(error = %msg, "commit failed; the batch is rolled back");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for done in completions {
        match &failed {
            None => done(Ok(())),
            Some(msg) => done(Err(StoreError::Corrupt(format!("commit failed: {msg}")))),
        }
    }
}

#[cfg(test)]
mod tests;
