//! The PostgreSQL backend (issue 10, design §9): a connection pool (deadpool-postgres), the
//! migrations in PostgreSQL's dialect under SQLite's version numbers ([`migrations`]), the
//! queries by table ([`queries`]) and the mirror's rows ([`mirror`], [`notify`]), each the
//! counterpart of the SQLite function of the same name; `Store::Postgres` runs the store's
//! operations on it, chosen by `[store] url`; TLS as that URL's `sslmode` and
//! `sslrootcert` ask ([`tls`]). For several
//! instances there are token leases (`queries::leases`, kept by `crate::cluster::keeper`),
//! which fence the executor's writes (`queries::handoffs`); nothing yet for the stages of
//! other instances' syncs. The queries written once for both backends are in
//! `crate::store` over `crate::store::sql::Tx` (this module's transaction behind
//! `sql::postgres::PgTx`).
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

pub mod migrations;
pub mod mirror;
pub mod notify;
pub mod queries;
pub mod tls;

/// The transaction the store's operations run in: the pool's, which derefs to
/// `tokio_postgres::Transaction` and adds the connection's statement cache
/// (`prepare_cached`), so the hot statements are parsed once per connection, not once per
/// use (each parse is a round trip of its own).
pub use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Connections in the pool at most.
const POOL_SIZE: usize = 16;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => StoreError::Database(format!("{} ({})", db.message(), db.code().code())),
            None => StoreError::Database(error_text(&e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        match e {
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Database(pool_error_text(&other)),
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
    Job(OrderedJob),
    Close(oneshot::Sender<()>),
}

/// Answers a job's caller once its batch committed (or did not).
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job of the ordered writer: runs inside the batch's transaction (`None`: none could be
/// started) and says whether it succeeded, with what to call after the commit.
type OrderedJob = Box<
    dyn for<'t> FnOnce(Option<&'t Transaction<'t>>) -> BoxFuture<'t, (bool, Completion)> + Send,
>;

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
}

/// Runs `batch` in one transaction, each job in a savepoint of its own (a failed job is
/// rolled back alone, as on SQLite), commits once, then answers every job in order.
async fn commit_batch(pool: &Pool, batch: &mut Vec<OrderedJob>) {
    if batch.is_empty() {
        return;
    }
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot get a database connection for a write");
            for job in batch.drain(..) {
                let (_, done) = job(None).await;
                done(Err(StoreError::Database(pool_error_text(&e))));
            }
            return;
        }
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => {
            for job in batch.drain(..) {
                let (_, done) = job(None).await;
                done(Err(StoreError::Database(error_text(&e))));
            }
            return;
        }
    };
    // The end of one job's savepoint and the start of the next go in one round trip; a
    // failure of either (the transaction is then aborted) fails the job that follows.
    const BEGIN: &str = "SAVEPOINT job";
    let mut ended = None;
    for job in batch.drain(..) {
        let sp = match ended.take() {
            Some(end) => tx.batch_execute(&format!("{end}; {BEGIN}")).await,
            None => tx.batch_execute(BEGIN).await,
        };
        let (ok, done) = job(sp.is_ok().then_some(&tx)).await;
        ended = sp.is_ok().then_some(if ok {
            "RELEASE SAVEPOINT job"
        } else {
            "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job"
        });
        completions.push(done);
    }
    if let Some(end) = ended {
        let _ = tx.batch_execute(end).await;
    }
    let commit = tx.commit().await.map_err(|e| error_text(&e));
    if let Err(e) = &commit {
        tracing::error!(error = %e, "commit failed; the batch is rolled back");
    }
    for done in completions {
        done(
            commit
                .clone()
                .map_err(|e| StoreError::Database(format!("commit failed: {e}"))),
        );
    }
}

/// The class of the session advisory locks that keep instance ids unique ("vppr").
const INSTANCE_LOCK_CLASS: i32 = 0x7670_7072;

/// How long a starting daemon waits for its preferred instance id (held by a predecessor
/// that was just killed) before taking another.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Longest wait to connect or for a pooled connection.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a statement may run on the server (the biggest is a full sync's final step).
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn open_error(url: &str, reason: String) -> StoreError {
    // What to do about a refused certificate (rustls's words name only the rule).
    let hint = if reason.contains("invalid peer certificate: certificate not valid for name") {
        " (sslmode=verify-full: connect by a name the certificate holds, or use verify-ca)"
    } else if reason.contains("invalid peer certificate: UnknownIssuer")
        || reason.contains("CaUsedAsEndEntity")
    {
        " (name the CA that signed the server's certificate, or that certificate itself, with \
         sslrootcert=/path in store.url)"
    } else {
        ""
    };
    StoreError::Open {
        target: redact(url),
        reason: format!("{reason}{hint}"),
    }
}

/// The driver's settings from the URL, with the password from its secret file, and the
/// URL's TLS settings ([`tls`]: `sslmode`, `sslrootcert`, which the driver does not read).
fn connection_config(
    url: &str,
    password: Option<&str>,
) -> Result<(tokio_postgres::Config, tls::TlsSettings), StoreError> {
    let (driver_url, tls) = tls::TlsSettings::from_url(url).map_err(|error| StoreError::Tls {
        target: redact(url),
        error,
    })?;
    let mut config: tokio_postgres::Config = driver_url
        .parse()
        .map_err(|e: tokio_postgres::Error| open_error(url, error_text(&e)))?;
    config.ssl_mode(tls.driver_mode());
    if let Some(p) = password {
        config.password(p);
    }
    if config.get_application_name().is_none() {
        config.application_name("vpp-reconciler");
    }
    // Every network call is bounded: connecting, each statement (server side), and a
    // server that vanished without closing the connection (keepalives).
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CALL_TIMEOUT);
    }
    if config.get_options().is_none() {
        config.options(format!(
            "-c statement_timeout={}",
            STATEMENT_TIMEOUT.as_millis()
        ));
    }
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(10));
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
    /// What the URL's `sslmode` asks for ([`tls::TlsSettings::describe`]).
    pub tls_settings: String,
}

/// Connects once, without migrating, and answers the schema version found and whether the
/// connection is encrypted: `check-config`'s test of the connection. Bounded: 10 s.
pub async fn probe(url: &str, password: Option<&str>) -> Result<Probe, StoreError> {
    let open_error = |reason: String| open_error(url, reason);
    let (mut config, settings) = connection_config(url, password)?;
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
        tls_settings: settings.describe(),
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
    /// [`migrations::LATEST`].
    pub async fn connect(url: &str, password: Option<&str>) -> Result<PgStore, StoreError> {
        let open_error = |reason: String| open_error(url, reason);
        let (config, tls) = connection_config(url, password)?;
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
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| open_error(pool_error_text(&e)))?;
        migrations::migrate(&mut client).await?;
        drop(client);
        tracing::info!(database = %redact(url), tls = %tls.describe(), "connected to PostgreSQL");
        let (tx, mut rx) = mpsc::channel::<Ordered>(ORDERED_QUEUE);
        let batch_pool = pool.clone();
        tokio::spawn(async move {
            let mut batch: Vec<OrderedJob> = Vec::with_capacity(ORDERED_BATCH);
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
                commit_batch(&batch_pool, &mut batch).await;
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
        })
    }

    /// The database, for messages (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        migrations::version(&client).await
    }

    /// Runs `f` in a transaction of its own on a pooled connection and returns its result
    /// once committed; an error from `f` rolls the whole transaction back. (The PostgreSQL
    /// counterpart of the SQLite writer's job: one operation, one transaction.)
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
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(level)
            .start()
            .await?;
        match f(&tx).await {
            Ok(r) => {
                tx.commit().await?;
                Ok(r)
            }
            Err(e) => {
                // Dropping the transaction rolls it back too; saying so frees the server now.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
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
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let r = f(&tx).await;
        let _ = tx.rollback().await;
        r
    }

    /// Queues `f` behind every job queued before it and returns without waiting; the jobs
    /// waiting together commit in one transaction, each in a savepoint of its own, and are
    /// answered on `on_commit` in queue order.
    /// For the executor's turns.
    pub(in crate::store) async fn write_ordered<R, F>(
        &self,
        f: F,
        on_commit: oneshot::Sender<Result<R, StoreError>>,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, StoreError>>
            + Send
            + 'static,
    {
        let job: OrderedJob = Box::new(move |tx| {
            Box::pin(async move {
                let result = match tx {
                    Some(tx) => f(tx).await,
                    None => Err(StoreError::Closed),
                };
                let ok = result.is_ok();
                let done: Completion = Box::new(move |commit: Result<(), StoreError>| {
                    let _ = on_commit.send(commit.and(result));
                });
                (ok, done)
            })
        });
        self.ordered
            .send(Ordered::Job(job))
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
        let (config, _) = connection_config(&self.url, password)?;
        let (client, conn) =
            tokio::time::timeout(CALL_TIMEOUT, config.connect(self.connector.clone()))
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
        let client = self.pool.get().await?;
        client.batch_execute("SELECT 1").await?;
        Ok(())
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

/// `url` without a password (`postgres://user:secret@host/db` → `postgres://user@host/db`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (auth, host),
        None => return url.to_string(),
    };
    let user = auth.split_once(':').map_or(auth, |(u, _)| u);
    format!("{scheme}://{user}@{host}")
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
