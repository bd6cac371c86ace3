//! Sync runs (`syncs`): started by the core's turns ([`super::Store::commit_turn`]),
//! finished by the run, listed for the API and the CLI. The final step of a streamed sync is
//! in [`super::mirror`].

use super::postgres::queries as pq;
use super::sqlite::queries as q;
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
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| {
                    q::sync_started(
                        c,
                        start.id,
                        &start.token,
                        start.kind,
                        start.full,
                        &start.cause,
                        at,
                    )
                })
                .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move {
                        let s = &start;
                        pq::sync_started(tx, s.id, &s.token, s.kind, s.full, &s.cause, at).await
                    })
                })
                .await
            }
        }
    }

    /// Finishes a run row (a failed run; a successful one ends with
    /// [`Store::commit_sync`]).
    pub async fn sync_finished(
        &self,
        sync_id: u64,
        at: Timestamp,
        end: SyncEnd,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::sync_finished(c, sync_id, at, &end))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move { pq::sync_finished(tx, sync_id, at, &end).await })
                })
                .await
            }
        }
    }

    /// The newest runs, of one token or all, at most `limit`.
    pub async fn list_syncs(
        &self,
        token: Option<String>,
        limit: u32,
    ) -> Result<Vec<SyncView>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(move |c| q::list_syncs(c, token.as_deref(), limit))
                    .await
            }
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move { pq::list_syncs(tx, token.as_deref(), limit).await })
                })
                .await
            }
        }
    }

    /// A page of runs newest first, before the run id `before` when given.
    pub async fn list_syncs_page(
        &self,
        token: Option<String>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<SyncView>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(move |c| q::list_syncs_page(c, token.as_deref(), before, limit))
                    .await
            }
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move {
                        pq::list_syncs_page(tx, token.as_deref(), before, limit).await
                    })
                })
                .await
            }
        }
    }
}
