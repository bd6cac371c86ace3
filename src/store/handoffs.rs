//! Handing work to a token's holder (issue 10, docs/architecture.md, "Several instances").
//! An instance that does not hold a token's lease still commits what it receives for that
//! token (a tracked event, a notification, a sync request) and, in the same transaction,
//! leaves a handoff row; the holder takes the rows of its tokens ([`Store::take_handoffs`]).
//! A newly acquired token is loaded whole ([`Store::load_token`]), which covers its
//! handoffs. On PostgreSQL the turns' writes are fenced by the lease (see `commit_turn`).

use super::postgres::queries::handoffs as pq;
use super::sqlite::queries::handoffs as q;
use super::{Store, StoreError};
use crate::core::{Change, EventRecord, NotificationInput, SyncKind};
use crate::time::Timestamp;

/// Work left for a token's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// An event tracked by an instance that does not work its token.
    Event { event_id: String },
    /// An ASSET_MANAGEMENT / USER_MANAGEMENT notification received there.
    Notification {
        notification_id: String,
        event_id: String,
    },
    /// A sync asked for there.
    Sync {
        kind: SyncKind,
        full: bool,
        cause: String,
    },
}

type Columns<'a> = (
    &'static str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'static str>,
    bool,
    Option<&'a str>,
);

impl Handoff {
    /// (kind, event_id, notification_id, sync_kind, full, cause) as stored.
    pub(crate) fn columns(&self) -> Columns<'_> {
        match self {
            Handoff::Event { event_id } => ("event", Some(event_id), None, None, false, None),
            Handoff::Notification {
                notification_id,
                event_id,
            } => (
                "notification",
                Some(event_id),
                Some(notification_id),
                None,
                false,
                None,
            ),
            Handoff::Sync { kind, full, cause } => {
                ("sync", None, None, Some(kind.as_str()), *full, Some(cause))
            }
        }
    }
}

/// A handoff as taken by the holder, with what it points at as stored now. Events settled
/// and notifications applied meanwhile are left out.
#[derive(Clone, Debug)]
pub enum Taken {
    Event(Box<EventRecord>, Vec<NotificationInput>),
    Notification(NotificationInput),
    Sync {
        token: String,
        kind: SyncKind,
        full: bool,
        cause: String,
    },
}

/// A newly acquired token's unsettled events, each with its unapplied notifications.
#[derive(Debug, Default)]
pub struct Loaded {
    pub events: Vec<(EventRecord, Vec<NotificationInput>)>,
}

/// What [`Store::track_elsewhere`] did.
#[derive(Debug)]
pub enum TrackedElsewhere {
    /// Inserted, and handed to the token's holder.
    Inserted,
    /// The eventId was stored already: as it is.
    Exists(Box<EventRecord>),
}

/// Handoffs taken in one go at most.
pub const TAKE_LIMIT: i64 = 2_000;

impl Store {
    /// Fences this store's writes by the leases of instance `me` (PostgreSQL; SQLite has
    /// one instance and nothing to fence).
    pub fn join_cluster(&self, me: &str) {
        if let Store::Postgres(p) = self {
            p.join_cluster(me);
        }
    }

    /// Inserts a newly tracked event (the core's insert `change`) for a token this instance
    /// does not work, and hands it to the holder, in one transaction.
    pub async fn track_elsewhere(
        &self,
        change: Change,
        now: Timestamp,
    ) -> Result<TrackedElsewhere, StoreError> {
        let token = change.event.token.clone();
        let id = change.event.event_id.clone();
        let item = [Handoff::Event {
            event_id: id.clone(),
        }];
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| {
                    let changes = [change];
                    match super::sqlite::queries::apply_changes(c, &changes)
                        .pop()
                        .flatten()
                    {
                        None => {
                            q::hand_off(c, &token, &item, now)?;
                            Ok(TrackedElsewhere::Inserted)
                        }
                        Some(e) => match super::sqlite::queries::get_event(c, &id)? {
                            Some(rec) => Ok(TrackedElsewhere::Exists(Box::new(rec))),
                            None => Err(StoreError::Database(e)),
                        },
                    }
                })
                .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move {
                        let changes = [change];
                        let failed = super::postgres::queries::apply_changes(tx, &changes)
                            .await
                            .pop()
                            .flatten();
                        match failed {
                            None => {
                                pq::hand_off(tx, &token, &item, now).await?;
                                Ok(TrackedElsewhere::Inserted)
                            }
                            Some(e) => match super::postgres::queries::get_event(tx, &id).await? {
                                Some(rec) => Ok(TrackedElsewhere::Exists(Box::new(rec))),
                                None => Err(StoreError::Database(e)),
                            },
                        }
                    })
                })
                .await
            }
        }
    }

    /// Leaves `items` for the holder of `token`.
    pub async fn hand_off(
        &self,
        token: &str,
        items: Vec<Handoff>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let token = token.to_string();
        match self {
            Store::Sqlite(s) => s.write(move |c| q::hand_off(c, &token, &items, now)).await,
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(async move { pq::hand_off(tx, &token, &items, now).await })
                })
                .await
            }
        }
    }

    /// Takes (removes and returns) the oldest handoffs of `tokens`, at most [`TAKE_LIMIT`].
    pub async fn take_handoffs(&self, tokens: Vec<String>) -> Result<Vec<Taken>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::take_handoffs(c, &tokens, TAKE_LIMIT))
                    .await
            }
            Store::Postgres(p) => {
                p.write_snapshot(move |tx| {
                    Box::pin(async move { pq::take_handoffs(tx, &tokens, TAKE_LIMIT).await })
                })
                .await
            }
        }
    }

    /// Loads a newly acquired token in one snapshot: drops its handoffs (the load covers
    /// them), abandons the sync runs a previous holder left running and discards their
    /// stages, and returns its unsettled events with their unapplied notifications.
    pub async fn load_token(&self, token: &str, now: Timestamp) -> Result<Loaded, StoreError> {
        let token = token.to_string();
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| {
                    let mut out = Loaded::default();
                    q::load_token(c, &token, now, |rec, notes| out.events.push((rec, notes)))?;
                    Ok(out)
                })
                .await
            }
            Store::Postgres(p) => {
                p.write_snapshot(move |tx| {
                    Box::pin(async move {
                        let mut out = Loaded::default();
                        pq::load_token(tx, &token, now, |rec, notes| out.events.push((rec, notes)))
                            .await?;
                        Ok(out)
                    })
                })
                .await
            }
        }
    }

    /// The first sync id this instance's core may use: on PostgreSQL a block no other
    /// instance numbers its runs from; on SQLite the next id.
    pub async fn reserve_sync_ids(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(super::sqlite::queries::next_sync_id).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::reserve_sync_ids(tx).await }))
                    .await
            }
        }
    }
}
