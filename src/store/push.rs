//! The push outbox (README "Using it"): the durable cursor of what the MDM acknowledged, the
//! pinned batch in flight, and the parked changes. Every update of the batch is conditional
//! on the batch still being the one pinned (`false` when it is not), so a `push replay` that
//! happens while an attempt is in flight is never overwritten by that attempt's answer.

use serde::Serialize;

use super::postgres::queries as pq;
use super::sqlite::queries as q;
use super::{Store, StoreError};
use crate::time::Timestamp;

/// The `push_state` row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushRow {
    pub delivered: i64,
    /// (first, last, since) of the pinned batch.
    pub batch: Option<(i64, i64, Timestamp)>,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub replays: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
}

/// Why a replay was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayRefused {
    /// `after` is past the cursor: moving there would skip changes never delivered.
    PastCursor { delivered: i64 },
}

/// One parked change as `push` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParkedView {
    pub seq: i64,
    pub parked_at: Timestamp,
    pub failing_since: Timestamp,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub change: serde_json::Value,
}

/// The batch in flight as `push` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InFlightView {
    pub first_seq: i64,
    pub last_seq: i64,
    pub failing_since: Option<Timestamp>,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
}

/// The outbox for `push` and the status page.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PushStatusView {
    pub last_delivered_seq: i64,
    /// The highest seq handed out so far.
    pub last_seq: i64,
    /// Changes after the cursor.
    pub backlog: u64,
    pub in_flight: Option<InFlightView>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub replays: u32,
    pub parked: u64,
    /// The most recently parked changes (at most 20).
    pub recent_parked: Vec<ParkedView>,
}

impl Store {
    /// The outbox's state.
    pub async fn push_state(&self) -> Result<PushRow, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|c| q::push_state(c)).await,
            Store::Postgres(p) => p.read(|tx| Box::pin(pq::push_state(tx))).await,
        }
    }

    /// Pins the batch `first..=last` (failing since `since`) if the cursor is still at
    /// `delivered` and nothing is pinned.
    pub async fn push_pin(
        &self,
        delivered: i64,
        first: i64,
        last: i64,
        since: Timestamp,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::push_pin(c, delivered, first, last, since))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move { pq::push_pin(tx, delivered, first, last, since).await })
                })
                .await
            }
        }
    }

    /// The pinned batch was acknowledged: the cursor moves past it.
    pub async fn push_ack(
        &self,
        first: i64,
        last: i64,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |c| q::push_ack(c, first, last, now)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::push_ack(tx, first, last, now).await }))
                    .await
            }
        }
    }

    /// An attempt at the pinned batch failed; the next one is due at `next_at`.
    pub async fn push_failed(
        &self,
        first: i64,
        last: i64,
        attempts: u32,
        next_at: Timestamp,
        error: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let error = error.to_string();
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::push_failed(c, first, last, attempts, next_at, &error, now))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move {
                        pq::push_failed(tx, first, last, attempts, next_at, &error, now).await
                    })
                })
                .await
            }
        }
    }

    /// The pinned batch was undeliverable for `dead_after`: its changes are parked (`items`:
    /// seq and the JSON as it was sent) and the cursor moves past them.
    #[allow(clippy::too_many_arguments)]
    pub async fn push_park(
        &self,
        first: i64,
        last: i64,
        since: Timestamp,
        attempts: u32,
        error: &str,
        items: Vec<(i64, String)>,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let error = error.to_string();
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::push_park(c, first, last, since, attempts, &error, &items, now))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move {
                        pq::push_park(tx, first, last, since, attempts, &error, &items, now).await
                    })
                })
                .await
            }
        }
    }

    /// `push replay --after SEQ`: every change after `after` is delivered again; parked
    /// changes after it are re-queued too. Returns the number of replays so far.
    pub async fn push_replay(&self, after: i64) -> Result<Result<u32, ReplayRefused>, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |c| q::push_replay(c, after)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::push_replay(tx, after).await }))
                    .await
            }
        }
    }

    /// The outbox for `push` and the status page.
    pub async fn push_status(&self) -> Result<PushStatusView, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(|c| q::push_status(c)).await,
            Store::Postgres(p) => p.read(|tx| Box::pin(pq::push_status(tx))).await,
        }
    }

    /// (changes after `after`, the highest seq handed out so far).
    pub async fn backlog(&self, after: i64) -> Result<(u64, i64), StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |c| q::backlog(c, after)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::backlog(tx, after).await }))
                    .await
            }
        }
    }
}
