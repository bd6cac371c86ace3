//! One sync run, streamed (docs/architecture.md, "The mirror"): read per the
//! [`plan`](super::plan), handing each page to the store as it arrives, into the stage of
//! this sync (`mirror_stage_*`, keyed by the sync id), in write jobs of at most
//! [`STAGE_CHUNK`] rows, so the writer interleaves webhook commits and executor turns between
//! them and memory holds only the pages in flight. Then one final transaction, per the
//! [`judgement`](super::judge) ([`Store::commit_sync`]): move the stage into the mirror
//! (replace or upsert, SQL set operations), replay the notifications that arrived meanwhile,
//! store the versionId and finish the run row, stamped at the end of that transaction. The
//! stage is discarded in small steps afterwards. A failed read, a failed stage write or a
//! crash leaves the mirror as it was (a crash's stage is discarded at the next start).

use std::future::Future;

use crate::apple::model::{Assignment, ResponseAsset, ResponseUser};
use crate::apple::pagination::Record;
use crate::apple::{AppleClient, KeySetDigest, PageSink, StreamError, Streamed};
use crate::core::{SyncKind, SyncOutcome};
use crate::store::{StageRows, Store, StoreError, SyncCommit, SyncEnd};
use crate::time::Timestamp;

use super::{judge, plan, Plan, Write};

/// Rows per write job while staging: a page of up to 1000 records is one job.
pub const STAGE_CHUNK: usize = 1000;
/// Staged rows deleted per write job when a stage is discarded.
pub const DISCARD_CHUNK: usize = 5000;

/// A record type the stage takes.
pub trait Stage: Record + Sized + Send + 'static {
    fn rows(rows: Vec<Self>) -> StageRows;
}

impl Stage for ResponseAsset {
    fn rows(rows: Vec<Self>) -> StageRows {
        StageRows::Assets(rows)
    }
}

impl Stage for Assignment {
    fn rows(rows: Vec<Self>) -> StageRows {
        StageRows::Assignments(rows)
    }
}

impl Stage for ResponseUser {
    fn rows(rows: Vec<Self>) -> StageRows {
        StageRows::Users(rows)
    }
}

/// Where a streamed read goes: the stage of sync `sync_id`, one small committed write job per
/// chunk of a page.
pub struct StageSink {
    store: Store,
    sync_id: u64,
    kind: SyncKind,
    /// Something may be staged (a new pass must discard it first).
    dirty: bool,
}

impl StageSink {
    pub fn new(store: Store, sync_id: u64, kind: SyncKind) -> StageSink {
        StageSink {
            store,
            sync_id,
            kind,
            dirty: false,
        }
    }
}

impl<T: Stage> PageSink<T> for StageSink {
    type Error = StoreError;

    fn begin_pass(&mut self, _pass: u32) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (store, id, kind, dirty) = (self.store.clone(), self.sync_id, self.kind, self.dirty);
        self.dirty = false;
        async move {
            if dirty {
                discard(&store, id, kind).await?;
            }
            Ok(())
        }
    }

    fn page(&mut self, records: Vec<T>) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.dirty = true;
        let (store, id) = (self.store.clone(), self.sync_id);
        async move {
            let mut records = records;
            while !records.is_empty() {
                let rest = records.split_off(records.len().min(STAGE_CHUNK));
                let chunk = std::mem::replace(&mut records, rest);
                store.stage(id, T::rows(chunk)).await?;
            }
            Ok(())
        }
    }

    fn digest(&mut self) -> impl Future<Output = Result<KeySetDigest, StoreError>> + Send {
        let (store, id, kind) = (self.store.clone(), self.sync_id, self.kind);
        async move { store.stage_digest(id, kind).await }
    }
}

/// Deletes the stage of sync `sync_id`, [`DISCARD_CHUNK`] rows per write job.
pub async fn discard(store: &Store, sync_id: u64, kind: SyncKind) -> Result<(), StoreError> {
    loop {
        let n = store.discard_stage(sync_id, kind, DISCARD_CHUNK).await?;
        if n < DISCARD_CHUNK {
            return Ok(());
        }
    }
}

/// Discards the stage in the background: the run's answer does not wait for it (a crash
/// meanwhile leaves it to the next start).
fn discard_later(store: &Store, sync_id: u64, kind: SyncKind) {
    let store = store.clone();
    tokio::spawn(async move {
        if let Err(e) = discard(&store, sync_id, kind).await {
            tracing::warn!(sync_id, error = %e, "cannot discard a sync's stage; the next start will");
        }
    });
}

async fn read(
    client: &AppleClient,
    token: &str,
    plan: &Plan,
    sink: &mut StageSink,
) -> Result<Streamed, StreamError<StoreError>> {
    let since = plan.since.as_deref();
    match plan.kind {
        SyncKind::Assets => client.stream_assets(token, sink).await,
        SyncKind::Assignments => client.stream_assignments(token, since, sink).await,
        SyncKind::Users => client.stream_users(token, since, sink).await,
    }
}

/// The final step of a streamed sync, per the [`judge`]ment of the read: moves the stage of
/// `sync_id` into the mirror (replacing it when the read proves removals), replays the
/// notifications of `token` received since `started` (after a replace), stores the versionId
/// and finishes the run row, in one transaction ([`Store::commit_sync`]). Returns the number
/// of records the read held.
pub async fn finish(
    store: &Store,
    token: &str,
    sync_id: u64,
    kind: SyncKind,
    started: Timestamp,
    read: &Streamed,
) -> Result<u64, StoreError> {
    store
        .commit_sync(sync_commit(token, sync_id, kind, started, read))
        .await
}

/// What [`finish`] has the store commit for a read.
pub fn sync_commit(
    token: &str,
    sync_id: u64,
    kind: SyncKind,
    started: Timestamp,
    read: &Streamed,
) -> SyncCommit {
    let judgement = judge(read.incremental, read.consistent, read.complete());
    SyncCommit {
        token: token.to_string(),
        sync_id,
        kind,
        started,
        replace: judgement.write == Write::Replace,
        version_id: read.version_id.clone(),
        store_version: judgement.reliable,
        end: SyncEnd {
            pages: read.pages,
            records: 0,
            ok: judgement.reliable,
            error: (!judgement.reliable).then(|| unreliable_reason(read)),
            version_id: read.version_id.clone(),
        },
    }
}

/// Why a read did not count, for the run row: the first record that did not decode (no
/// secret: Apple's ids), else data that kept changing.
fn unreliable_reason(read: &Streamed) -> String {
    match read.undecodable_samples.first() {
        Some(first) if read.undecodable > 0 => format!(
            "{} record(s) of Apple's answer could not be decoded, first {first}; nothing was \
             removed and the versionId was kept; retrying",
            read.undecodable
        ),
        _ if read.undecodable > 0 => format!(
            "{} record(s) of Apple's answer could not be decoded; nothing was removed and the \
             versionId was kept; retrying",
            read.undecodable
        ),
        _ if read.cut_short => "Apple's pages ended early (an empty page pointing to a next \
             one, or a nextPageIndex that does not advance); nothing was removed; retrying"
            .to_string(),
        _ => "Apple's data kept changing during the read; retrying".to_string(),
    }
}

/// Runs sync `sync_id` (its run row exists) and returns how it ended.
pub async fn run(
    client: &AppleClient,
    store: &Store,
    sync_id: u64,
    token: &str,
    kind: SyncKind,
    full: bool,
) -> SyncOutcome {
    let started = Timestamp::now();
    let stored = if full || !kind.supports_incremental() {
        None
    } else {
        store.mirror_version(token, kind).await.ok().flatten()
    };
    let mut plan = plan(kind, full, stored);
    let mut sink = StageSink::new(store.clone(), sync_id, kind);
    let mut result = read(client, token, &plan, &mut sink).await;
    if let Err(StreamError::Api(e)) = &result {
        if let Some(full) = super::fallback(&plan, e) {
            tracing::info!(token = %token, sync_id, kind = %kind, "stored versionId refused (9721); falling back to a full sync");
            plan = full;
            // The new read's first pass discards whatever the refused one staged.
            result = read(client, token, &plan, &mut sink).await;
        }
    }
    let data = match result {
        Ok(d) => d,
        Err(e) => {
            let (error, outcome) = match &e {
                StreamError::Api(e) => (e.to_string(), super::outcome_of(e)),
                StreamError::Sink(e) => (
                    format!("cannot store the sync: {e}"),
                    SyncOutcome::Transient(format!("cannot store the sync: {e}")),
                ),
            };
            tracing::warn!(token = %token, sync_id, kind = %kind, error = %error, "sync failed");
            discard_later(store, sync_id, kind);
            let end = SyncEnd {
                ok: false,
                error: Some(error),
                ..SyncEnd::default()
            };
            let _ = store.sync_finished(sync_id, Timestamp::now(), end).await;
            return outcome;
        }
    };
    let judgement = judge(data.incremental, data.consistent, data.complete());
    let written = finish(store, token, sync_id, kind, started, &data).await;
    discard_later(store, sync_id, kind);
    match written {
        Ok(records) => {
            tracing::info!(token = %token, sync_id, kind = %kind, pages = data.pages, records,
                incremental = data.incremental, reliable = judgement.reliable, "sync finished");
            if !data.complete() {
                tracing::warn!(token = %token, sync_id, kind = %kind,
                    undecodable = data.undecodable, reason = %unreliable_reason(&data),
                    "sync unreliable: records of Apple's answer could not be decoded");
            }
            if judgement.reliable {
                SyncOutcome::Ok
            } else {
                SyncOutcome::Unreliable
            }
        }
        Err(e) => {
            tracing::error!(token = %token, sync_id, error = %e, "cannot store a sync");
            SyncOutcome::Transient(format!("cannot store the sync: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(incremental: bool, consistent: bool) -> Streamed {
        Streamed {
            version_id: Some("v-page-0".into()),
            pages: 3,
            records: 10,
            consistent,
            incremental,
            ..Streamed::default()
        }
    }

    /// A full read that lost one record to decoding removes nothing, keeps the old versionId,
    /// does not count as a sync, and its run row names the record.
    #[test]
    fn an_undecodable_record_makes_the_sync_unreliable_and_named() {
        for incremental in [false, true] {
            let mut r = read(incremental, true);
            r.undecodable = 1;
            r.undecodable_samples = vec![crate::apple::model::Undecodable {
                page: Some(2),
                index: 7,
                id: Some("adamId=361304891, serialNumber=SN7".into()),
                detail: "at pricingParam: invalid type".into(),
            }];
            let c = sync_commit("acme", 1, SyncKind::Assignments, Timestamp(0), &r);
            assert!(!c.replace && !c.store_version && !c.end.ok, "{c:?}");
            let e = c.end.error.unwrap();
            assert!(
                e.contains("record 7 of page 2") && e.contains("serialNumber=SN7"),
                "{e}"
            );
        }
    }

    #[test]
    fn only_a_reliable_read_moves_the_stored_version() {
        let c = sync_commit(
            "acme",
            1,
            SyncKind::Assignments,
            Timestamp(0),
            &read(false, true),
        );
        assert!(c.replace && c.store_version && c.end.ok);
        let c = sync_commit("acme", 1, SyncKind::Users, Timestamp(0), &read(true, false));
        assert!(!c.replace && c.store_version && c.end.ok);
        // A full read whose pages kept changing: page 0's versionId would make the next
        // incremental read skip what changed during this one.
        let c = sync_commit(
            "acme",
            1,
            SyncKind::Assignments,
            Timestamp(0),
            &read(false, false),
        );
        assert!(!c.replace && !c.store_version && !c.end.ok);
    }
}
