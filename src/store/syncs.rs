//! Sync runs (`syncs`): started by the core's turns ([`super::Store::commit_turn`]),
//! finished by the run, listed for the API and the CLI. The final step of a streamed sync is
//! in [`super::mirror`].

use super::sql::{args, Row, Tx};
use super::views::SyncView;
use super::{Store, StoreError};
use crate::core::SyncKind;
use crate::time::Timestamp;

/// A sync run a turn starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStart {
    pub id: u64,
    pub token: String,
    pub kind: SyncKind,
    pub full: bool,
    pub cause: String,
}

/// The final step of a streamed sync (see [`super::Store::commit_sync`]).
#[derive(Clone, Debug)]
pub struct SyncCommit {
    pub token: String,
    pub sync_id: u64,
    pub kind: SyncKind,
    /// When the run started: notifications received since are replayed after a replace.
    pub started: Timestamp,
    /// Replace the token's mirror of `kind` with the stage (else upsert the stage into it).
    pub replace: bool,
    /// The versionId to keep for the next incremental read.
    pub version_id: Option<String>,
    /// Whether to store `version_id`. An unreliable full read proves nothing about any
    /// version (its pages described several), so the stored one stays: an incremental
    /// read from page 0's versionId would miss what changed during the read.
    pub store_version: bool,
    /// How the run row ends (`records` is counted from the stage by the store).
    pub end: SyncEnd,
}

/// The end of a sync run.
#[derive(Clone, Debug, Default)]
pub struct SyncEnd {
    pub pages: u32,
    pub records: u64,
    pub ok: bool,
    pub error: Option<String>,
    pub version_id: Option<String>,
}

impl Store {
    /// Writes the run row of a sync that starts now (the executor writes it with its turn;
    /// this is for tools and benchmarks).
    pub async fn sync_started(&self, start: SyncStart, at: Timestamp) -> Result<(), StoreError> {
        self.write(move |tx| Box::pin(async move { sync_started(tx, &start, at).await }))
            .await
    }

    /// Finishes a run row (a failed run; a successful one ends with
    /// [`Store::commit_sync`]).
    pub async fn sync_finished(
        &self,
        sync_id: u64,
        at: Timestamp,
        end: SyncEnd,
    ) -> Result<(), StoreError> {
        self.write(move |tx| Box::pin(async move { sync_finished(tx, sync_id, at, &end).await }))
            .await
    }

    /// The newest runs, of one token or all, at most `limit`.
    pub async fn list_syncs(
        &self,
        token: Option<String>,
        limit: u32,
    ) -> Result<Vec<SyncView>, StoreError> {
        self.list_syncs_page(token, None, limit).await
    }

    /// A page of runs newest first, before the run id `before` when given.
    pub async fn list_syncs_page(
        &self,
        token: Option<String>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<SyncView>, StoreError> {
        self.read(move |tx| {
            Box::pin(async move { list_syncs_page(tx, token.as_deref(), before, limit).await })
        })
        .await
    }
}

pub(crate) async fn next_sync_id(tx: &mut dyn Tx) -> Result<u64, StoreError> {
    let row = tx
        .query_one("SELECT COALESCE(MAX(id), 0) + 1 FROM syncs", &[])
        .await?;
    Ok(row.i64(0)?.max(1) as u64)
}

/// Writes the run row of a sync starting at `at`; a row with this id starts over.
pub(crate) async fn sync_started(
    tx: &mut dyn Tx,
    s: &SyncStart,
    at: Timestamp,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO syncs (id, token, kind, \"full\", cause, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET token = excluded.token, kind = excluded.kind, \
         \"full\" = excluded.\"full\", cause = excluded.cause, started_at = excluded.started_at, \
         finished_at = NULL, pages = 0, records = 0, result = 'running', error = NULL, \
         version_id = NULL",
        args![s.id, &s.token, s.kind.as_str(), s.full, &s.cause, at],
    )
    .await?;
    Ok(())
}

pub(crate) async fn sync_finished(
    tx: &mut dyn Tx,
    id: u64,
    at: Timestamp,
    end: &SyncEnd,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE syncs SET finished_at = $2, pages = $3, records = $4, result = $5, error = $6, \
         version_id = $7 WHERE id = $1",
        args![
            id,
            at,
            end.pages,
            end.records,
            if end.ok { "ok" } else { "failed" },
            &end.error,
            &end.version_id
        ],
    )
    .await?;
    Ok(())
}

/// Marks runs left `running` by a crash as abandoned.
pub(crate) async fn abandon_running_syncs(
    tx: &mut dyn Tx,
    at: Timestamp,
) -> Result<u64, StoreError> {
    tx.execute(
        "UPDATE syncs SET result = 'abandoned', finished_at = $1 WHERE result = 'running'",
        args![at],
    )
    .await
}

pub(crate) const SYNC_COLS: &str =
    "id, token, kind, \"full\", cause, started_at, finished_at, pages, records, result, error";

pub(crate) fn sync_from_row(r: &Row) -> Result<SyncView, StoreError> {
    let started = r.i64(5)?;
    let finished = r.opt_i64(6)?;
    Ok(SyncView {
        id: r.u64(0)?,
        token: r.string(1)?,
        kind: r.string(2)?,
        full: r.bool(3)?,
        cause: r.opt_string(4)?,
        started_at: Timestamp(started),
        finished_at: finished.map(Timestamp),
        duration_ms: finished.map(|f| f - started),
        pages: r.u32(7)?,
        records: r.u64(8)?,
        result: r.string(9)?,
        error: r.opt_string(10)?,
    })
}

/// Sync runs newest first, strictly older than the run `before` when given (the local API's
/// cursor).
pub(crate) async fn list_syncs_page(
    tx: &mut dyn Tx,
    token: Option<&str>,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<SyncView>, StoreError> {
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT {SYNC_COLS} FROM syncs WHERE (CAST($1 AS TEXT) IS NULL OR token = $1) AND id < $2 \
         ORDER BY id DESC LIMIT $3"
    );
    let rows = tx
        .query(&sql, args![token, before, limit.clamp(1, 10_000)])
        .await?;
    rows.iter().map(sync_from_row).collect()
}
