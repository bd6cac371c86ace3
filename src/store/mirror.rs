//! The mirror of Apple's data per token (assets, assignments, users), kept from syncs and
//! from notifications (docs/architecture.md, "The mirror"), and the stage of a streamed
//! sync: each page is written into the stage of its sync id as it arrives, in small jobs the
//! writer interleaves with everything else; [`Store::commit_sync`] then moves the stage into
//! the mirror in one transaction. A failed or crashed sync leaves the mirror as it was.

use serde_json::Value;

use super::postgres::mirror as pm;
use super::sql::Tx;
use super::sqlite::mirror as m;
use super::{Store, StoreError, SyncCommit};
use crate::apple::model::{Assignment, ResponseAsset, ResponseUser};
use crate::apple::KeySetDigest;
use crate::core::SyncKind;

/// Records of one kind for the stage of a sync.
#[derive(Clone, Debug)]
pub enum StageRows {
    Assets(Vec<ResponseAsset>),
    Assignments(Vec<Assignment>),
    Users(Vec<ResponseUser>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorKind {
    Assets,
    Assignments,
    Users,
}

/// How a notification's assignment changes update its assets' counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counts {
    /// Move the stored counts by the net change: constant time per asset. For notifications
    /// as they arrive.
    Adjust,
    /// Count the asset's mirrored assignments again: linear in them. For replays after a sync
    /// replaced the mirror, where the stored counts may already include the change.
    Recount,
    /// Leave the counts alone: the caller recounts every asset the notifications name once,
    /// after replaying them all.
    Defer,
}

impl Store {
    /// Adds `rows` to the stage of sync `sync_id` (one write job).
    pub async fn stage(&self, sync_id: u64, rows: StageRows) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| match &rows {
                    StageRows::Assets(r) => m::stage_assets(c, sync_id, r),
                    StageRows::Assignments(r) => m::stage_assignments(c, sync_id, r),
                    StageRows::Users(r) => m::stage_users(c, sync_id, r),
                })
                .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move {
                        match &rows {
                            StageRows::Assets(r) => pm::stage_assets(tx, sync_id, r).await,
                            StageRows::Assignments(r) => {
                                pm::stage_assignments(tx, sync_id, r).await
                            }
                            StageRows::Users(r) => pm::stage_users(tx, sync_id, r).await,
                        }
                    })
                })
                .await
            }
        }
    }

    /// The digest of the keys in the stage of sync `sync_id`.
    pub async fn stage_digest(
        &self,
        sync_id: u64,
        kind: SyncKind,
    ) -> Result<KeySetDigest, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |c| m::stage_digest(c, sync_id, kind)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pm::stage_digest(tx, sync_id, kind).await }))
                    .await
            }
        }
    }

    /// Deletes at most `limit` rows of the stage of sync `sync_id`; returns how many went.
    pub async fn discard_stage(
        &self,
        sync_id: u64,
        kind: SyncKind,
        limit: usize,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| m::discard_stage(c, sync_id, kind, limit))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move { pm::discard_stage(tx, sync_id, kind, limit).await })
                })
                .await
            }
        }
    }

    /// The final step of a streamed sync, in one transaction: moves the stage into the
    /// mirror (replacing the token's mirror of that kind when [`SyncCommit::replace`]),
    /// replays the notifications of the token received since the run started (after a
    /// replace: pages read before a notification must not undo it), stores the versionId and
    /// finishes the run row, stamped at the end of that step, right before its commit.
    /// Returns the number of records the stage held.
    pub async fn commit_sync(&self, sync: SyncCommit) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |c| m::commit_sync(c, sync)).await,
            Store::Postgres(p) => {
                let me = p.instance().map(str::to_string);
                p.write(move |tx| {
                    Box::pin(async move {
                        // A previous holder finishing late must not overwrite the mirror
                        // the new holder is keeping.
                        if let Some(me) = me {
                            use super::postgres::queries::handoffs;
                            if !handoffs::holds(tx, &me, &sync.token).await? {
                                return Err(StoreError::LeaseLost(sync.token));
                            }
                        }
                        pm::commit_sync(tx, sync).await
                    })
                })
                .await
            }
        }
    }

    /// The versionId kept for the next incremental read of `kind`, if any.
    pub async fn mirror_version(
        &self,
        token: &str,
        kind: SyncKind,
    ) -> Result<Option<String>, StoreError> {
        let token = token.to_string();
        match self {
            Store::Sqlite(s) => s.read(move |c| m::get_version(c, &token, kind)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pm::get_version(tx, &token, kind).await }))
                    .await
            }
        }
    }

    /// A page of the mirror of `token` (the records as Apple sent them).
    pub async fn list_mirror(
        &self,
        token: &str,
        what: MirrorKind,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, StoreError> {
        let token = token.to_string();
        match self {
            Store::Sqlite(s) => {
                s.read(move |c| m::list(c, &token, what, limit, offset))
                    .await
            }
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move { pm::list(tx, &token, what, limit, offset).await })
                })
                .await
            }
        }
    }
}

pub(crate) fn stage_table(kind: SyncKind) -> &'static str {
    match kind {
        SyncKind::Assets => "mirror_stage_assets",
        SyncKind::Assignments => "mirror_stage_assignments",
        SyncKind::Users => "mirror_stage_users",
    }
}

/// Deletes every staged row: at start no sync runs, so any stage is a crashed sync's. (With
/// several instances this must become "the stages of runs no live instance holds".)
pub(crate) async fn discard_all_stages(tx: &mut dyn Tx) -> Result<u64, StoreError> {
    let mut n = 0;
    for kind in [SyncKind::Assets, SyncKind::Assignments, SyncKind::Users] {
        let sql = format!("DELETE FROM {}", stage_table(kind));
        n += tx.execute(&sql, &[]).await?;
    }
    Ok(n)
}
