//! One sync run: read per the [`plan`](super::plan), write per the
//! [`judgement`](super::judge), replay the notifications that arrived meanwhile, store the
//! versionId and finish the run row, all in one transaction.

use crate::apple::model::{Assignment, ResponseAsset, ResponseUser};
use crate::apple::{ApiError, AppleClient, Traversal};
use crate::core::{SyncKind, SyncOutcome};
use crate::store::queries::{self, SyncEnd};
use crate::store::{mirror, Store};
use crate::time::Timestamp;

use super::{judge, notify, plan, Plan, Write};

enum Read {
    Assets(Traversal<ResponseAsset>),
    Assignments(Traversal<Assignment>),
    Users(Traversal<ResponseUser>),
}

impl Read {
    fn summary(&self) -> (u32, usize, Option<String>, bool, bool) {
        fn of<T>(t: &Traversal<T>) -> (u32, usize, Option<String>, bool, bool) {
            (
                t.pages,
                t.records.len(),
                t.version_id.clone(),
                t.incremental,
                t.consistent,
            )
        }
        match self {
            Read::Assets(t) => of(t),
            Read::Assignments(t) => of(t),
            Read::Users(t) => of(t),
        }
    }
}

async fn read(client: &AppleClient, token: &str, plan: &Plan) -> Result<Read, ApiError> {
    let since = plan.since.as_deref();
    Ok(match plan.kind {
        SyncKind::Assets => Read::Assets(client.get_assets(token).await?),
        SyncKind::Assignments => Read::Assignments(client.get_assignments(token, since).await?),
        SyncKind::Users => Read::Users(client.get_users(token, since).await?),
    })
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
        let t = token.to_string();
        store
            .read(move |c| mirror::get_version(c, &t, kind))
            .await
            .ok()
            .flatten()
    };
    let mut plan = plan(kind, full, stored);
    let mut result = read(client, token, &plan).await;
    if let Err(e) = &result {
        if let Some(full) = super::fallback(&plan, e) {
            tracing::info!(token = %token, sync_id, kind = %kind, "stored versionId refused (9721); falling back to a full sync");
            plan = full;
            result = read(client, token, &plan).await;
        }
    }
    let data = match result {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(token = %token, sync_id, kind = %kind, error = %e, "sync failed");
            let end = SyncEnd {
                ok: false,
                error: Some(e.to_string()),
                ..SyncEnd::default()
            };
            let _ = store
                .write(move |c| queries::sync_finished(c, sync_id, Timestamp::now(), &end))
                .await;
            return super::outcome_of(&e);
        }
    };
    let (pages, records, version, incremental, consistent) = data.summary();
    let judgement = judge(incremental, consistent);
    let t = token.to_string();
    let written = store
        .write(move |c| {
            let now = Timestamp::now();
            let replace = judgement.write == Write::Replace;
            match &data {
                Read::Assets(tr) => mirror::apply_assets(c, &t, &tr.records, replace, now)?,
                Read::Assignments(tr) => {
                    mirror::apply_assignments(c, &t, &tr.records, replace, now)?
                }
                Read::Users(tr) => mirror::apply_users(c, &t, &tr.records, replace, now)?,
            }
            if replace {
                // Pages read before a notification must not undo it.
                let replayed = notify::replay_since(c, &t, started, now)?;
                if replayed > 0 && kind == SyncKind::Assets {
                    mirror::recount_all(c, &t, now)?;
                }
            }
            if kind.supports_incremental() {
                mirror::set_version(c, &t, kind, version.as_deref())?;
            }
            queries::sync_finished(
                c,
                sync_id,
                now,
                &SyncEnd {
                    pages,
                    records: records as u64,
                    ok: judgement.reliable,
                    error: (!judgement.reliable).then(|| {
                        "Apple's data kept changing during the read; retrying".to_string()
                    }),
                    version_id: version,
                },
            )?;
            Ok(())
        })
        .await;
    match written {
        Ok(()) => {
            tracing::info!(token = %token, sync_id, kind = %kind, pages, records, incremental,
                reliable = judgement.reliable, "sync finished");
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
