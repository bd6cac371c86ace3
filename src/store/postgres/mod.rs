//! The PostgreSQL backend (issue 10, design §9), under construction: the connection pool,
//! the migrations in PostgreSQL's dialect (the same versions as SQLite's, [`migrations`]),
//! and the lifecycle operations. Not yet a variant of [`crate::store::Store`]: that comes
//! with its queries (one arm per operation of the interface), and it is not reachable from
//! the configuration yet.
//!
//! Where SQLite has one writer thread that group-commits, PostgreSQL takes concurrent
//! transactions itself: each operation will run as one transaction on a pooled connection,
//! a write answering once its `COMMIT` returned (`synchronous_commit` on, the server's
//! default, makes that durable). The executor's turns must still commit in the order they
//! were queued (the core learns what is durable in turn order): a single task taking the
//! turns one after another keeps that order, as the SQLite writer does.

pub mod migrations;
pub mod mirror;
pub mod notify;
pub mod queries;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use tokio_postgres::{NoTls, Transaction};

use super::StoreError;

/// Connections in the pool at most.
const POOL_SIZE: usize = 16;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => StoreError::Database(format!("{} ({})", db.message(), db.code().code())),
            None => StoreError::Database(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        match e {
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// Handle to a PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    target: String,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`; the password, when
    /// one is needed, comes from a secret file, not the URL) and migrates it to
    /// [`migrations::LATEST`].
    pub async fn connect(url: &str, password: Option<&str>) -> Result<PgStore, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            target: redact(url),
            reason,
        };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| open_error(e.to_string()))?;
        if let Some(p) = password {
            config.password(p);
        }
        if config.get_application_name().is_none() {
            config.application_name("vpp-reconciler");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| open_error(e.to_string()))?;
        migrations::migrate(&mut client).await?;
        Ok(PgStore {
            pool,
            target: redact(url),
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
    #[cfg_attr(not(test), allow(dead_code))] // until PgStore is a variant of Store
    pub(in crate::store) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, StoreError>> + Send,
    {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
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

    /// Runs `f` in a read-only transaction (one snapshot for all its queries).
    #[cfg_attr(not(test), allow(dead_code))] // until PgStore is a variant of Store
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

    /// A cheap liveness probe: one round trip on a pooled connection.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.batch_execute("SELECT 1").await?;
        Ok(())
    }

    /// Closes the pool: later operations fail with [`StoreError::Closed`]. Every committed
    /// transaction is already durable on the server; nothing is left to flush.
    pub async fn close(&self) -> Result<(), StoreError> {
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
mod tests;
