//! The PostgreSQL backend (README "PostgreSQL"): a connection pool (deadpool-postgres), the
//! migrations in PostgreSQL's dialect under SQLite's version numbers ([`migrations`]), the
//! queries by table ([`queries`]) and the mirror's rows ([`mirror`], [`notify`]), each the
//! counterpart of the SQLite function of the same name; `Store::Postgres` runs the store's
//! operations on it, chosen by `[store] url`; TLS as that URL's `sslmode`, `sslrootcert`
//! and `channel_binding` ask ([`tls`]); a URL is shown only redacted and may hold no
//! password ([`url`]); every connection runs under the timeouts of [`session`], and every
//! operation is bounded on the client too (a frozen connection is closed, not reused). For
//! several instances there are token leases (`queries::leases`, kept by
//! `crate::cluster::keeper`), which fence the executor's writes (`queries::handoffs`);
//! nothing yet for the stages of other instances' syncs. The queries written once for both
//! backends are in `crate::store` over `crate::store::sql::Tx` (this module's transaction
//! behind `sql::postgres::PgTx`).
//!
//! Where SQLite has one writer thread that group-commits, PostgreSQL takes concurrent
//! transactions itself: each operation runs as one transaction on a pooled connection
//! ([`PgStore::write`]; reads in a read-only snapshot, [`PgStore::read`]), a write answering
//! once its `COMMIT` returned (`synchronous_commit` on, the server's default, makes that
//! durable). The executor's turns must still commit, and answer, in the order they were
//! queued (the core learns what is durable in turn order): one task takes them one after
//! another ([`PgStore::write_ordered`]), as the SQLite writer does. The feed's counter row
//! is locked by the transaction that takes a number until it commits, so `seq` follows
//! commit order across transactions and instances.
//!
//! How write transactions end is kept for `/healthz` ([`super::health`], whose rule says
//! which errors are the database's): [`PgStore::write`] records its transaction, the ordered
//! writer its batch. A batch that does not commit answers every job with why, and
//! [`PgStore::write_ordered`] hands each job's input back with it, so the executor's turn
//! comes back with every change failed (to be retried), never lost.

pub mod migrations;
pub mod mirror;
pub mod notify;
pub mod queries;
pub mod session;
pub mod tls;
pub mod url;

/// The transaction the store's operations run in: the pool's, which derefs to
/// `tokio_postgres::Transaction` and adds the connection's statement cache
/// (`prepare_cached`), so the hot statements are parsed once per connection, not once per
/// use (each parse is a round trip of its own).
pub use deadpool_postgres::Transaction;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

pub use self::session::SessionLimits;
use self::session::CONNECT_TIMEOUT;
use self::url::redact;
use super::health::{self, WriteHealth, WriteOutcome, WritesFailing};
use super::StoreError;

/// Connections in the pool at most.
const POOL_SIZE: usize = 16;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => StoreError::Refused {
                message: db.message().to_string(),
                code: db.code().code().to_string(),
            },
            None => StoreError::Database(error_text(&e)),
        }
    }
}

/// `e`'s words when it is the database's failure to take a write rather than the write's
/// own ([`health::is_database_failure`]): a statement the server refused for its own reason,
/// or no answer at all (the driver's or the pool's error: unreachable, connection lost; the
/// operation's time limit).
pub(in crate::store) fn refusal(e: &StoreError) -> Option<String> {
    let database = match e {
        StoreError::Refused { code, .. } => health::is_database_failure(Some(code)),
        StoreError::Database(_) | StoreError::Timeout(_) => health::is_database_failure(None),
        _ => false,
    };
    database.then(|| e.to_string())
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        match e {
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            // No connection, whatever the server's reason: never the job's (so not
            // `Refused`, which the write health would weigh by its SQLSTATE).
            other => StoreError::Database(format!(
                "cannot connect to the database: {}",
                pool_error_text(&other)
            )),
        }
    }
}

/// The driver's error with its causes ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer"): its own words name only the kind.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// A pool's error with its causes (the connection's error when it could not make one).
fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => error_text(e),
        deadpool_postgres::PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(e)) => {
            error_text(e)
        }
        other => error_text(other),
    }
}

/// Work for the ordered writer: a job (its own transaction), or the request to stop after
/// the jobs before it.
enum Ordered {
    Job(Queued),
    Close(oneshot::Sender<()>),
}

/// A job and what answers its caller if the job never gets to (the batch timed out while
/// it ran, or before): a no-op once the job answered.
struct Queued {
    run: OrderedJob,
    abort: Box<dyn FnOnce(StoreError) + Send>,
}

/// Answers a job's caller once its batch committed (or did not).
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job of the ordered writer: runs inside the batch's transaction (`None`: none could be
/// started) and says how it went, with what to call after the commit.
type OrderedJob =
    Box<dyn for<'t> FnOnce(Option<&'t Transaction<'t>>) -> BoxFuture<'t, JobEnd> + Send>;

/// How an ordered job ran.
struct JobEnd {
    /// Its work succeeded (its savepoint is kept).
    ok: bool,
    /// A write the database refused for a reason of its own ([`refusal`]), the job's error
    /// or one it absorbed: the batch's transaction counts as failing writes.
    refused: Option<String>,
    done: Completion,
}

/// What an ordered job's work hands back: its result, and the first write in it that the
/// database refused for a reason of its own ([`refusal`]) and the work absorbed (a change of
/// a turn failing alone), which the write health must still see.
pub(in crate::store) struct Ran<R> {
    pub result: R,
    pub refused: Option<String>,
}

/// An ordered job's input and its caller, shared by the job and its abort: whichever
/// answers first takes them.
struct Slot<I, A> {
    input: Option<I>,
    reply: Option<oneshot::Sender<A>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running job's input: dropped unfinished (its batch ran out of time), it goes back to
/// the [`Slot`], so the abort still answers the caller with it.
struct Held<I, A> {
    slot: Arc<Mutex<Slot<I, A>>>,
    input: Option<I>,
}

impl<I, A> Drop for Held<I, A> {
    fn drop(&mut self) {
        if let Some(input) = self.input.take() {
            lock(&self.slot).input = Some(input);
        }
    }
}

/// Jobs the ordered writer commits together at most.
const ORDERED_BATCH: usize = 256;

/// Jobs queued for the ordered writer at most; callers wait (backpressure) beyond this.
const ORDERED_QUEUE: usize = 4096;

/// Handle to a PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    ordered: mpsc::Sender<Ordered>,
    /// The URL without its password, for messages.
    target: String,
    /// For connections outside the pool (the single-instance lock).
    url: String,
    password: Option<crate::secret::Secret>,
    /// This instance's id once it works tokens by lease ([`PgStore::join_cluster`]): writes
    /// that concern a token are then fenced by its lease (docs/architecture.md, "Several
    /// instances").
    instance: std::sync::Arc<std::sync::OnceLock<String>>,
    /// The connector made from the URL's `sslmode`/`sslrootcert`.
    connector: tls::Connector,
    limits: SessionLimits,
    /// How write transactions end, for `/healthz` ([`health`]).
    health: WriteHealth,
}

/// Runs `batch` in one transaction, each job in a savepoint of its own (a failed job is
/// rolled back alone, as on SQLite), commits once, then answers every job in order and
/// records how the transaction ended in `health`. When it does not commit (no connection,
/// an aborted transaction, a failed `COMMIT`), every job is answered with why, the executor's
/// turns as undone ([`PgStore::write_ordered`]). The whole batch gets `limit`: past it, every
/// job fails with [`StoreError::Timeout`] and the connection is closed.
async fn commit_batch(
    pool: &Pool,
    batch: &mut Vec<Queued>,
    limit: std::time::Duration,
    health: &WriteHealth,
) {
    if batch.is_empty() {
        return;
    }
    let mut jobs: VecDeque<OrderedJob> = VecDeque::with_capacity(batch.len());
    let mut aborts = Vec::with_capacity(batch.len());
    for q in batch.drain(..) {
        jobs.push_back(q.run);
        aborts.push(q.abort);
    }
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    let mut refused = None;
    let ran = tokio::time::timeout(
        limit,
        run_batch(pool, &mut jobs, &mut completions, &mut refused),
    )
    .await;
    let outcome = match ran {
        Ok(Ok(wrote)) => {
            for done in completions {
                done(Ok(()));
            }
            match refused {
                Some(why) => WriteOutcome::Failed(why),
                None if wrote => WriteOutcome::Wrote,
                None => WriteOutcome::NothingWritten,
            }
        }
        Ok(Err(unwritten)) => {
            for done in completions {
                done(Err(StoreError::Database(unwritten.why.clone())));
            }
            match unwritten.database {
                true => WriteOutcome::Failed(unwritten.why),
                false => WriteOutcome::NothingWritten,
            }
        }
        Err(_) => {
            tracing::error!(
                limit = %crate::time::format_duration(limit),
                "a batch of writes did not finish in time; it is rolled back and its \
                 connection closed"
            );
            for done in completions {
                done(Err(StoreError::Timeout(limit)));
            }
            WriteOutcome::Failed(StoreError::Timeout(limit).to_string())
        }
    };
    health.record(&outcome);
    // The jobs that did not answer above: the one running when time ran out (its work was
    // dropped with the batch), and those after it.
    drop(jobs);
    for abort in aborts {
        abort(StoreError::Timeout(limit));
    }
}

/// Why a batch did not commit: what every job is answered, and whether it is the
/// database's failure ([`refusal`]).
struct Unwritten {
    why: String,
    database: bool,
}

impl Unwritten {
    fn new(stage: &str, e: StoreError) -> Unwritten {
        Unwritten {
            database: refusal(&e).is_some(),
            why: format!("{stage}: {}", error_words(&e)),
        }
    }
}

/// An error's words without the "database error: " of its kind (the answer adds its own).
fn error_words(e: &StoreError) -> String {
    match e {
        StoreError::Database(m) => m.clone(),
        StoreError::Refused { message, code } => format!("{message} ({code})"),
        e => e.to_string(),
    }
}

/// [`commit_batch`]'s transaction: answers whether the commit wrote (the transaction had an
/// id), or why nothing committed, once each job pushed its completion (and the first
/// refusal of the database a job saw, into `refused`).
async fn run_batch(
    pool: &Pool,
    jobs: &mut VecDeque<OrderedJob>,
    completions: &mut Vec<Completion>,
    refused: &mut Option<String>,
) -> Result<bool, Unwritten> {
    let mut lent = match pool.get().await {
        Ok(c) => Lent::new(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot get a database connection for a write");
            while let Some(job) = jobs.pop_front() {
                completions.push(job(None).await.done);
            }
            return Err(Unwritten::new("no write transaction", e.into()));
        }
    };
    let finished = lent.finished();
    let tx = match lent.client().transaction().await {
        Ok(tx) => tx,
        Err(e) => {
            while let Some(job) = jobs.pop_front() {
                completions.push(job(None).await.done);
            }
            finished.set();
            tracing::error!(error = %e, "cannot begin a write transaction");
            return Err(Unwritten::new("cannot begin a write transaction", e.into()));
        }
    };
    // The end of one job's savepoint and the start of the next go in one round trip; a
    // failure of either aborts the transaction: the job that follows fails unrun, and the
    // batch does not commit (PostgreSQL would answer its COMMIT by rolling back, silently).
    const BEGIN: &str = "SAVEPOINT job";
    let mut ended = None;
    let mut aborted = None;
    while let Some(job) = jobs.pop_front() {
        let sp = match (&aborted, ended.take()) {
            (Some(_), _) => None,
            (None, Some(end)) => Some(tx.batch_execute(&format!("{end}; {BEGIN}")).await),
            (None, None) => Some(tx.batch_execute(BEGIN).await),
        };
        if let Some(Err(e)) = sp {
            aborted = Some(StoreError::from(e));
        }
        let run = aborted.is_none().then_some(&tx);
        let end = job(run).await;
        if run.is_some() {
            ended = Some(if end.ok {
                "RELEASE SAVEPOINT job"
            } else {
                "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job"
            });
        }
        if refused.is_none() {
            *refused = end.refused;
        }
        completions.push(end.done);
    }
    // The last savepoint's end, and whether the transaction wrote, in one round trip.
    let mut wrote = false;
    if let (None, Some(end)) = (&aborted, ended) {
        let asked = tx
            .simple_query(&format!(
                "{end}; SELECT txid_current_if_assigned() IS NOT NULL"
            ))
            .await;
        match asked {
            Ok(messages) => {
                wrote = messages.iter().any(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("t"),
                    _ => false,
                })
            }
            Err(e) => aborted = Some(e.into()),
        }
    }
    if let Some(e) = aborted {
        tracing::error!(error = %e, "a write transaction was aborted; the batch is rolled back");
        let _ = tx.rollback().await;
        finished.set();
        return Err(Unwritten::new("the transaction was aborted", e));
    }
    let commit = tx.commit().await;
    finished.set();
    match commit {
        Ok(()) => Ok(wrote),
        Err(e) => {
            tracing::error!(error = %e, "commit failed; the batch is rolled back");
            Err(Unwritten::new("commit failed", e.into()))
        }
    }
}

/// A pooled connection lent to one operation. Dropped before its [`Finished`] was set (the
/// operation timed out, or its caller dropped it mid-way: the keeper's own timeouts do), it
/// is taken out of the pool and closed, its driver task aborted: it may be frozen inside a
/// transaction, and whoever got it next would wait behind it. The pool makes a new one.
struct Lent {
    client: Option<deadpool_postgres::Object>,
    finished: Finished,
}

/// Set once the operation on a [`Lent`] connection ran to its end (committed, rolled back
/// or failed): the connection may go back to the pool (which drops it if it is closed). A
/// handle of its own, so it can be set while the connection is borrowed.
#[derive(Clone)]
struct Finished(Arc<std::sync::atomic::AtomicBool>);

impl Finished {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Lent {
    fn new(client: deadpool_postgres::Object) -> Lent {
        Lent {
            client: Some(client),
            finished: Finished(Default::default()),
        }
    }

    fn finished(&self) -> Finished {
        self.finished.clone()
    }

    fn client(&mut self) -> &mut deadpool_postgres::Object {
        match self.client.as_mut() {
            Some(c) => c,
            None => unreachable!("a lent connection is there until dropped"),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let (false, Some(client)) = (self.finished.get(), self.client.take()) {
            // Dropping the pool's wrapper aborts the connection's task: the socket closes.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// The class of the session advisory locks that keep instance ids unique ("vppr").
const INSTANCE_LOCK_CLASS: i32 = 0x7670_7072;

/// How long a starting daemon waits for its preferred instance id (held by a predecessor
/// that was just killed) before taking another.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

fn open_error(url: &str, reason: String) -> StoreError {
    // What to do about a refused certificate (rustls's words name only the rule).
    let hint = if reason.contains("invalid peer certificate: certificate not valid for name") {
        " (sslmode=verify-full: connect by a name the certificate holds, or use verify-ca)"
    } else if reason.contains("invalid peer certificate: UnknownIssuer")
        || reason.contains("CaUsedAsEndEntity")
    {
        " (name the CA that signed the server's certificate, or that certificate itself, with \
         sslrootcert=/path in store.url)"
    } else if reason.contains("server did not use channel binding") {
        " (with a password, channel_binding=require is the default: the server must sign in \
         with SCRAM-SHA-256-PLUS over TLS, which a Unix socket, sslmode=disable, a server \
         without TLS, a password_encryption=md5 password, trust authentication or an \
         Ed25519 certificate cannot give; if that is intended, say channel_binding=prefer \
         in store.url)"
    } else {
        ""
    };
    StoreError::Open {
        target: redact(url),
        reason: format!("{reason}{hint}"),
    }
}

/// The driver's settings from the URL, with the password from its secret file, the URL's
/// TLS settings ([`tls`]: `sslmode`, `sslrootcert`, `channel_binding`, which the driver does
/// not read as libpq does) and the session's limits ([`session`]).
fn connection_config(
    url: &str,
    password: Option<&str>,
    limits: &SessionLimits,
) -> Result<(tokio_postgres::Config, tls::TlsSettings), StoreError> {
    if url::has_password(url) {
        return Err(open_error(
            url,
            "the URL holds a password (not shown); put it in store.password_file".into(),
        ));
    }
    let (driver_url, tls) = tls::TlsSettings::from_url(url).map_err(|error| StoreError::Tls {
        target: redact(url),
        error,
    })?;
    let mut config: tokio_postgres::Config = driver_url
        .parse()
        .map_err(|e: tokio_postgres::Error| open_error(url, error_text(&e)))?;
    config.ssl_mode(tls.driver_mode());
    config.channel_binding(tls.channel_binding(password.is_some()).driver());
    if let Some(p) = password {
        config.password(p);
    }
    if config.get_application_name().is_none() {
        config.application_name("vpp-reconciler");
    }
    // Every network call is bounded: connecting, each statement and lock wait and idle
    // transaction (server side, merged before the URL's own options), and a link that died
    // (TCP user timeout and keepalives, on both ends).
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let options = limits.merged_options(config.get_options());
    config.options(options);
    config.keepalives(true);
    config.keepalives_idle(limits.keepalive_idle);
    config.keepalives_interval(limits.keepalive_interval);
    config.keepalives_retries(limits.keepalive_retries);
    config.tcp_user_timeout(limits.tcp_user_timeout);
    Ok((config, tls))
}

/// The TLS connector for `settings` (reads `sslrootcert` or the system's roots).
fn connector(url: &str, settings: &tls::TlsSettings) -> Result<tls::Connector, StoreError> {
    settings.connector().map_err(|error| StoreError::Tls {
        target: redact(url),
        error,
    })
}

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The schema version (0: none yet).
    pub schema_version: i64,
    /// The TLS protocol of the connection (`TLSv1.3`), `None` when not encrypted, as the
    /// server reports it (`pg_stat_ssl`); `Some("unknown")` if it would not say.
    pub tls: Option<String>,
    /// What the URL's `sslmode` and `channel_binding` ask for
    /// ([`tls::TlsSettings::describe_with`]).
    pub tls_settings: String,
    /// The session's limits ([`SessionLimits::describe`]).
    pub limits: String,
}

/// Connects once, without migrating, and answers the schema version found and whether the
/// connection is encrypted: `check-config`'s test of the connection, with the limits of
/// `lease_ttl`. Bounded: 10 s.
pub async fn probe(
    url: &str,
    password: Option<&str>,
    lease_ttl: std::time::Duration,
) -> Result<Probe, StoreError> {
    let open_error = |reason: String| open_error(url, reason);
    let limits = SessionLimits::new(lease_ttl);
    let (mut config, settings) = connection_config(url, password, &limits)?;
    let connector = connector(url, &settings)?;
    config.connect_timeout(std::time::Duration::from_secs(10));
    let (client, conn) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        config.connect(connector),
    )
    .await
    .map_err(|_| open_error("no answer within 10 s".into()))?
    .map_err(|e| open_error(error_text(&e)))?;
    let driver = tokio::spawn(conn);
    let tls = session_tls(&client).await;
    let version = migrations::version(&client).await;
    drop(client);
    let _ = driver.await;
    Ok(Probe {
        schema_version: version?,
        tls,
        tls_settings: settings.describe_with(password.is_some()),
        limits: limits.describe(),
    })
}

/// The TLS protocol of this session as the server sees it (`None`: not encrypted).
async fn session_tls(client: &tokio_postgres::Client) -> Option<String> {
    let row = client
        .query_opt(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await;
    match row {
        Ok(Some(row)) => match row.get::<_, bool>(0) {
            true => Some(
                row.get::<_, Option<String>>(1)
                    .unwrap_or_else(|| "unknown".into()),
            ),
            false => None,
        },
        _ => Some("unknown".into()),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`; the password, when
    /// one is needed, comes from a secret file, not the URL) and migrates it to
    /// [`migrations::LATEST`]; the sessions' limits are those of the default lease TTL.
    pub async fn connect(url: &str, password: Option<&str>) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, password, crate::cluster::DEFAULT_LEASE_TTL).await
    }

    /// [`PgStore::connect`] with the limits of `lease_ttl` ([`SessionLimits`]).
    pub async fn connect_with(
        url: &str,
        password: Option<&str>,
        lease_ttl: std::time::Duration,
    ) -> Result<PgStore, StoreError> {
        PgStore::connect_limited(url, password, SessionLimits::new(lease_ttl)).await
    }

    /// [`PgStore::connect`] under `limits`.
    async fn connect_limited(
        url: &str,
        password: Option<&str>,
        limits: SessionLimits,
    ) -> Result<PgStore, StoreError> {
        let open_error = |reason: String| open_error(url, reason);
        let (config, tls) = connection_config(url, password, &limits)?;
        let connector = connector(url, &tls)?;
        let manager = Manager::from_config(
            config,
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| open_error(pool_error_text(&e)))?;
        // Bounded as every operation is; a connection left mid-way is closed, not reused.
        let migrated =
            tokio::time::timeout(limits.operation_timeout, migrations::migrate(&mut client)).await;
        match migrated {
            Ok(r) => r?,
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                return Err(StoreError::Timeout(limits.operation_timeout));
            }
        }
        drop(client);
        tracing::info!(
            database = %redact(url),
            tls = %tls.describe_with(password.is_some()),
            limits = %limits.describe(),
            "connected to PostgreSQL"
        );
        let (tx, mut rx) = mpsc::channel::<Ordered>(ORDERED_QUEUE);
        let batch_pool = pool.clone();
        let batch_limit = limits.operation_timeout;
        let health = WriteHealth::default();
        let batch_health = health.clone();
        tokio::spawn(async move {
            let mut batch: Vec<Queued> = Vec::with_capacity(ORDERED_BATCH);
            while let Some(msg) = rx.recv().await {
                let mut close = None;
                match msg {
                    Ordered::Job(job) => batch.push(job),
                    Ordered::Close(done) => close = Some(done),
                }
                // Group commit, as SQLite's writer does: every job waiting now, one commit.
                while close.is_none() && batch.len() < ORDERED_BATCH {
                    match rx.try_recv() {
                        Ok(Ordered::Job(job)) => batch.push(job),
                        Ok(Ordered::Close(done)) => close = Some(done),
                        Err(_) => break,
                    }
                }
                commit_batch(&batch_pool, &mut batch, batch_limit, &batch_health).await;
                if let Some(done) = close {
                    rx.close();
                    let _ = done.send(());
                }
            }
        });
        Ok(PgStore {
            pool,
            ordered: tx,
            target: redact(url),
            url: url.to_string(),
            password: password.map(crate::secret::Secret::new),
            instance: Default::default(),
            connector,
            limits,
            health,
        })
    }

    /// The database, for messages (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.bounded(async {
            let mut lent = Lent::new(self.pool.get().await?);
            let finished = lent.finished();
            let version = migrations::version(lent.client()).await;
            finished.set();
            version
        })
        .await
    }

    /// The session's limits.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// `op` within the operation timeout ([`SessionLimits::operation_timeout`]); past it,
    /// [`StoreError::Timeout`] (and `op`'s connection, dropped unfinished, is closed).
    async fn bounded<R>(
        &self,
        op: impl std::future::Future<Output = Result<R, StoreError>>,
    ) -> Result<R, StoreError> {
        let limit = self.limits.operation_timeout;
        match tokio::time::timeout(limit, op).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(
                    limit = %crate::time::format_duration(limit),
                    "a database operation did not finish in time; its connection is closed"
                );
                Err(StoreError::Timeout(limit))
            }
        }
    }

    /// Runs `f` in a transaction of its own on a pooled connection and returns its result
    /// once committed; an error from `f` rolls the whole transaction back. (The PostgreSQL
    /// counterpart of the SQLite writer's job: one operation, one transaction.) How it ended
    /// goes to the write health ([`health`]).
    pub(in crate::store) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, StoreError>> + Send,
    {
        self.write_at(tokio_postgres::IsolationLevel::ReadCommitted, f)
            .await
    }

    async fn write_at<R, F>(
        &self,
        level: tokio_postgres::IsolationLevel,
        f: F,
    ) -> Result<R, StoreError>
    where
        R: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, StoreError>> + Send,
    {
        // Whether writes fail now: only then is a commit asked whether it wrote (a round
        // trip), since only then can it clear anything.
        let failing = self.health.failing().is_some();
        let r = self
            .bounded(async {
                let mut lent = Lent::new(self.pool.get().await?);
                let finished = lent.finished();
                let tx = lent
                    .client()
                    .build_transaction()
                    .isolation_level(level)
                    .start()
                    .await;
                let r = match tx {
                    Err(e) => Err(e.into()),
                    Ok(tx) => match f(&tx).await {
                        Ok(r) => {
                            // Also refused when the transaction was aborted by an error the
                            // work absorbed: its COMMIT would quietly roll back.
                            let wrote = match failing {
                                true => tx
                                    .query_one("SELECT txid_current_if_assigned() IS NOT NULL", &[])
                                    .await
                                    .map(|row| Some(row.get::<_, bool>(0))),
                                false => Ok(None),
                            };
                            match wrote {
                                Ok(wrote) => tx.commit().await.map(|()| (r, wrote)),
                                Err(e) => {
                                    let _ = tx.rollback().await;
                                    Err(e)
                                }
                            }
                            .map_err(StoreError::from)
                        }
                        Err(e) => {
                            // Dropping the transaction rolls it back too; saying so frees the
                            // server now.
                            let _ = tx.rollback().await;
                            Err(e)
                        }
                    },
                };
                finished.set();
                r
            })
            .await;
        match r {
            Ok((r, wrote)) => {
                match wrote {
                    Some(true) => self.health.record(&WriteOutcome::Wrote),
                    Some(false) => self.health.record(&WriteOutcome::NothingWritten),
                    // Not failing: a success changes nothing.
                    None => {}
                }
                Ok(r)
            }
            Err(e) => {
                if let Some(why) = refusal(&e) {
                    self.health.record(&WriteOutcome::Failed(why));
                }
                Err(e)
            }
        }
    }

    /// `Some` while write transactions fail ([`health`]).
    pub fn writes_failing(&self) -> Option<WritesFailing> {
        self.health.failing()
    }

    /// Makes this handle fence its writes by the leases of instance `me` (once; later calls
    /// keep the first id).
    pub fn join_cluster(&self, me: &str) {
        let _ = self.instance.set(me.to_string());
    }

    /// The instance whose leases fence the writes, once joined.
    pub fn instance(&self) -> Option<&str> {
        self.instance.get().map(String::as_str)
    }

    /// [`PgStore::write`] in one snapshot (repeatable read): what it reads and deletes is
    /// one consistent state, for loading a token and taking its handoffs.
    pub(in crate::store) async fn write_snapshot<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, StoreError>> + Send,
    {
        self.write_at(tokio_postgres::IsolationLevel::RepeatableRead, f)
            .await
    }

    /// Runs `f` in a read-only transaction (one snapshot for all its queries).
    pub(in crate::store) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, StoreError>> + Send,
    {
        self.bounded(async {
            let mut lent = Lent::new(self.pool.get().await?);
            let finished = lent.finished();
            let tx = lent
                .client()
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await;
            let r = match tx {
                Err(e) => Err(e.into()),
                Ok(tx) => {
                    let r = f(&tx).await;
                    let _ = tx.rollback().await;
                    r
                }
            };
            finished.set();
            r
        })
        .await
    }

    /// Queues `f` over `input` behind every job queued before it and returns without
    /// waiting; the jobs waiting together commit in one transaction, each in a savepoint of
    /// its own, and are answered on `on_commit` in queue order with what `answer` makes of
    /// the input and the work's result once committed, or of the input and why not: the
    /// work failed (its savepoint rolled back), or its transaction did not commit (no
    /// connection, the server's refusal, a timeout, even while the work ran). So the
    /// executor's turn is handed back with every change failed, to be retried, never lost.
    /// For the executor's turns.
    pub(in crate::store) async fn write_ordered<I, R, A, F>(
        &self,
        input: I,
        f: F,
        answer: fn(I, Result<R, StoreError>) -> A,
        on_commit: oneshot::Sender<A>,
    ) -> Result<(), StoreError>
    where
        I: Send + 'static,
        R: Send + 'static,
        A: Send + 'static,
        F: for<'t> FnOnce(&'t Transaction<'t>, &'t I) -> BoxFuture<'t, Result<Ran<R>, StoreError>>
            + Send
            + 'static,
    {
        let slot = Arc::new(Mutex::new(Slot {
            input: Some(input),
            reply: Some(on_commit),
        }));
        // Answers the caller once: with `input`, or the input left in the slot.
        let settle = move |slot: &Mutex<Slot<I, A>>, input: Option<I>, r: Result<R, StoreError>| {
            let mut s = lock(slot);
            let input = input.or_else(|| s.input.take());
            if let (Some(reply), Some(input)) = (s.reply.take(), input) {
                let _ = reply.send(answer(input, r));
            }
        };
        let for_abort = slot.clone();
        let abort = Box::new(move |e: StoreError| settle(&for_abort, None, Err(e)));
        let job: OrderedJob = Box::new(move |tx| {
            Box::pin(async move {
                let mut held = Held {
                    input: lock(&slot).input.take(),
                    slot: slot.clone(),
                };
                let ran = match (tx, &held.input) {
                    (Some(tx), Some(input)) => f(tx, input).await,
                    _ => Err(StoreError::Closed),
                };
                let input = held.input.take();
                drop(held);
                let (ok, refused, result) = match ran {
                    Ok(Ran { result, refused }) => (true, refused, Ok(result)),
                    Err(e) => (false, refusal(&e), Err(e)),
                };
                let done: Completion = Box::new(move |commit: Result<(), StoreError>| {
                    settle(&slot, input, commit.and(result));
                });
                JobEnd { ok, refused, done }
            })
        });
        self.ordered
            .send(Ordered::Job(Queued { run: job, abort }))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Claims an instance id among the instances sharing this database: `preferred` (the
    /// host's name) unless a live process holds it, else `preferred` with this process's id
    /// and a random part. A session advisory lock on a connection of its own keeps the id
    /// for the process's life; the server releases it when the process ends, however it
    /// ends, so a daemon restarted after `kill -9` gets its id back, and with it its
    /// unexpired leases, at once.
    pub async fn claim_instance(&self, preferred: &str) -> Result<String, StoreError> {
        let password = self.password.as_ref().map(|p| p.expose());
        let (config, _) = connection_config(&self.url, password, &self.limits)?;
        let (client, conn) =
            tokio::time::timeout(CONNECT_TIMEOUT, config.connect(self.connector.clone()))
                .await
                .map_err(|_| open_error(&self.url, "no answer within 10 s".into()))?
                .map_err(|e| open_error(&self.url, error_text(&e)))?;
        let driver = tokio::spawn(conn);
        let try_lock = |id: String| {
            let client = &client;
            async move {
                let got: bool = client
                    .query_one(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))",
                        &[&INSTANCE_LOCK_CLASS, &id],
                    )
                    .await?
                    .get(0);
                Ok::<_, StoreError>(got.then_some(id))
            }
        };
        // A predecessor killed a moment ago may still show as connected until the server
        // notices: retry for a short, bounded while.
        let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
        let mut claimed = None;
        while claimed.is_none() && tokio::time::Instant::now() < deadline {
            claimed = try_lock(preferred.to_string()).await?;
            if claimed.is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        while claimed.is_none() {
            let id = format!(
                "{preferred}-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            );
            claimed = try_lock(id).await?;
        }
        // The lock lives as long as this session: keep the client for the process's life.
        tokio::spawn(async move {
            let _client = client;
            if let Ok(Err(e)) = driver.await {
                tracing::error!(error = %e, "lost the connection holding this instance's id");
            }
        });
        Ok(claimed.unwrap_or_default())
    }

    /// A cheap liveness probe: one round trip on a pooled connection.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut lent = Lent::new(self.pool.get().await?);
            let finished = lent.finished();
            let r = lent.client().batch_execute("SELECT 1").await;
            finished.set();
            Ok(r?)
        })
        .await
    }

    /// Waits for the ordered jobs queued before it, then closes the pool: later operations
    /// fail with [`StoreError::Closed`]. Every committed transaction is already durable on
    /// the server; nothing is left to flush. Closing twice is harmless.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.ordered.send(Ordered::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.pool.close();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;

/// The PostgreSQL server of this test process: `VPPR_TEST_PG_URL` if set, else a throwaway
/// cluster that `scripts/pg-test-server` starts once per process on 127.0.0.1 (and stops
/// after the process ends). Panics with the reason when there is none: the PostgreSQL
/// tests fail rather than skip. For tests and benchmarks only.
#[doc(hidden)]
pub fn test_server_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("VPPR_TEST_PG_URL") {
            return url;
        }
        start_test_server(&[]).1
    })
    .clone()
}

/// Starts a throwaway cluster with `scripts/pg-test-server --owner PID ARGS` (it stops once
/// this process has ended) and answers its directory and URL; panics with the script's
/// words when it cannot. `--ssl CERTDIR` starts one with TLS. For tests only.
#[doc(hidden)]
pub fn start_test_server(args: &[&std::ffi::OsStr]) -> (std::path::PathBuf, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-server");
    let out = std::process::Command::new(script)
        .arg("--owner")
        .arg(std::process::id().to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(dir), Some(url)) if out.status.success() => (dir.into(), url.to_string()),
        _ => panic!(
            "the PostgreSQL tests need a server and {script} could not start one: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
