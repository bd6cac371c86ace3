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
    /// The end of the last Retry-After Apple gave for the token (to any holder).
    pub paused_until: Option<Timestamp>,
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

    /// Whether writes are fenced by this instance's leases (PostgreSQL, several instances):
    /// only then is anything handed off.
    pub fn fences_writes(&self) -> bool {
        matches!(self, Store::Postgres(p) if p.instance().is_some())
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
                        let applied = super::postgres::queries::apply_each(tx, &changes)
                            .await
                            .pop()
                            .unwrap_or(Ok(()));
                        match applied {
                            Ok(()) => {
                                pq::hand_off(tx, &token, &item, now).await?;
                                Ok(TrackedElsewhere::Inserted)
                            }
                            // As it is: whose failure it was shows in the write health.
                            Err(e) => match super::postgres::queries::get_event(tx, &id).await? {
                                Some(rec) => Ok(TrackedElsewhere::Exists(Box::new(rec))),
                                None => Err(e),
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
                    let mut t = super::sql::sqlite::SqliteTx::new(c);
                    let paused = super::tokens::paused_until(&mut t, &token);
                    out.paused_until = futures::executor::block_on(paused)?;
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
                        let mut t = super::sql::postgres::PgTx::new(tx);
                        out.paused_until = super::tokens::paused_until(&mut t, &token).await?;
                        Ok(out)
                    })
                })
                .await
            }
        }
    }

    /// Records that Apple asked (Retry-After) for no request for `token` before `until`,
    /// keeping the later end, for whichever instance holds the token next.
    pub async fn record_pause(&self, token: &str, until: Timestamp) -> Result<(), StoreError> {
        let token = token.to_string();
        self.write(move |tx| {
            Box::pin(async move { super::tokens::record_pause(tx, &token, until).await })
        })
        .await
    }

    /// The first sync id this instance's core may use: on PostgreSQL a block no other
    /// instance numbers its runs from; on SQLite the next id.
    pub async fn reserve_sync_ids(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(_) => {
                self.read(|tx| Box::pin(super::syncs::next_sync_id(tx)))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::reserve_sync_ids(tx).await }))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::core::{EventType, Timings, TrackRequest};
    use crate::store::postgres::tests::TempDb;
    use crate::store::{SyncCommit, SyncEnd, SyncStart, TurnWrite};

    fn tracked(id: &str, token: &str) -> EventRecord {
        EventRecord::new_tracked(
            Timestamp(1_000),
            TrackRequest {
                event_id: id.into(),
                token: token.into(),
                event_type: EventType::Associate,
                submitted_at: None,
                num_requested: Some(1),
                has_request: false,
                supersedes: None,
            },
            &Timings::default(),
        )
    }

    fn insert(id: &str, token: &str) -> Change {
        crate::core::Core::insert_change(Timestamp(1_000), &tracked(id, token), None)
    }

    /// The same steps and answers on both backends.
    async fn hand_off_take_and_load(store: &Store) {
        let now = Timestamp(2_000);
        // Tracked on an instance that does not work the token: stored and handed off once.
        let r = store.track_elsewhere(insert("e1", "t"), now).await.unwrap();
        assert!(matches!(r, TrackedElsewhere::Inserted), "{r:?}");
        match store.track_elsewhere(insert("e1", "t"), now).await.unwrap() {
            TrackedElsewhere::Exists(rec) => assert_eq!(rec.token, "t"),
            other => panic!("{other:?}"),
        }
        let sync = Handoff::Sync {
            kind: SyncKind::Assets,
            full: true,
            cause: "asked".into(),
        };
        let missing = Handoff::Notification {
            notification_id: "n-missing".into(),
            event_id: "e1".into(),
        };
        store.hand_off("t", vec![sync, missing], now).await.unwrap();
        store
            .hand_off(
                "u",
                vec![Handoff::Event {
                    event_id: "e9".into(),
                }],
                now,
            )
            .await
            .unwrap();
        // Taken in order, only for the tokens asked; what no longer exists is left out.
        let taken = store.take_handoffs(vec!["t".into()]).await.unwrap();
        assert_eq!(taken.len(), 2, "{taken:?}");
        assert!(
            matches!(&taken[0], Taken::Event(rec, notes) if rec.event_id == "e1" && notes.is_empty())
        );
        assert!(
            matches!(&taken[1], Taken::Sync { token, kind: SyncKind::Assets, full: true, cause } if token == "t" && cause == "asked")
        );
        assert!(store
            .take_handoffs(vec!["t".into()])
            .await
            .unwrap()
            .is_empty());
        // Loading a token: its events, its handoffs dropped, its running runs abandoned.
        store
            .hand_off(
                "t",
                vec![Handoff::Event {
                    event_id: "e1".into(),
                }],
                now,
            )
            .await
            .unwrap();
        let run = SyncStart {
            id: 77,
            token: "t".into(),
            kind: SyncKind::Users,
            full: false,
            cause: "left running".into(),
        };
        store.sync_started(run, now).await.unwrap();
        // A Retry-After passes to the next holder: the later end is kept.
        store
            .upsert_tokens(
                vec![crate::store::TokenRow {
                    name: "t".into(),
                    org_name: None,
                    expires_at: None,
                }],
                now,
            )
            .await
            .unwrap();
        store.record_pause("t", Timestamp(9_000)).await.unwrap();
        store.record_pause("t", Timestamp(5_000)).await.unwrap();
        let loaded = store.load_token("t", now).await.unwrap();
        assert_eq!(loaded.paused_until, Some(Timestamp(9_000)));
        assert_eq!(loaded.events.len(), 1);
        assert_eq!(loaded.events[0].0.event_id, "e1");
        assert!(store
            .take_handoffs(vec!["t".into()])
            .await
            .unwrap()
            .is_empty());
        let runs = store.list_syncs(Some("t".into()), 10).await.unwrap();
        assert_eq!(runs[0].result, "abandoned");
        assert_eq!(
            store.take_handoffs(vec!["u".into()]).await.unwrap().len(),
            0
        );
        assert!(store.reserve_sync_ids().await.unwrap() > 77);
    }

    #[tokio::test]
    async fn handoffs_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        hand_off_take_and_load(&store).await;
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn handoffs_postgres() {
        let db = TempDb::new().await;
        let store = Store::connect_postgres(&db.url, None).await.unwrap();
        hand_off_take_and_load(&store).await;
        // Instances number their sync runs from blocks of their own.
        let (a, b) = (
            store.reserve_sync_ids().await.unwrap(),
            store.reserve_sync_ids().await.unwrap(),
        );
        assert!(b >= a + 1_000_000_000, "{a} {b}");
        store.close().await.unwrap();
        db.drop_now().await;
    }

    /// On PostgreSQL a turn's writes are fenced by the lease: the holder's commit; an insert
    /// for a token held elsewhere commits and is handed off; any other change for it, a run
    /// row, or a sync's final step, is refused.
    #[tokio::test]
    async fn writes_are_fenced_by_the_lease_postgres() {
        let db = TempDb::new().await;
        let store = Store::connect_postgres(&db.url, None).await.unwrap();
        let long = Duration::from_secs(600);
        assert!(store.acquire("a", "mine", long).await.unwrap());
        assert!(store.acquire("b", "theirs", long).await.unwrap());
        store.join_cluster("a");
        let now = Timestamp(2_000);
        let commit = |turn: TurnWrite| {
            let store = store.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                store.commit_turn(turn, now, tx).await.unwrap();
                rx.await.unwrap().unwrap()
            }
        };
        let run = |id: u64, token: &str| SyncStart {
            id,
            token: token.into(),
            kind: SyncKind::Assets,
            full: false,
            cause: "test".into(),
        };
        let r = commit(TurnWrite {
            changes: vec![insert("m1", "mine"), insert("t1", "theirs")],
            syncs: vec![run(1, "mine"), run(2, "theirs")],
        })
        .await;
        assert_eq!(r.errors, vec![None, None]);
        assert_eq!(r.syncs_written, vec![true, false]);
        let taken = store.take_handoffs(vec!["theirs".into()]).await.unwrap();
        assert!(matches!(&taken[..], [Taken::Event(rec, _)] if rec.event_id == "t1"));
        assert!(store
            .take_handoffs(vec!["mine".into()])
            .await
            .unwrap()
            .is_empty());
        // Updates: the holder's commit, the other's are refused.
        let mut m = crate::core::Change::of(&tracked("m1", "mine"));
        m.event.polls = 1;
        let mut t = crate::core::Change::of(&tracked("t1", "theirs"));
        t.event.polls = 1;
        let r = commit(TurnWrite {
            changes: vec![m, t],
            syncs: vec![],
        })
        .await;
        assert_eq!(r.errors[0], None);
        assert!(
            r.errors[1]
                .as_deref()
                .unwrap_or("")
                .contains("lease of token theirs"),
            "{:?}",
            r.errors
        );
        let end = |token: &str, sync_id: u64| SyncCommit {
            token: token.into(),
            sync_id,
            kind: SyncKind::Assets,
            started: now,
            replace: false,
            version_id: None,
            store_version: false,
            end: SyncEnd {
                ok: true,
                ..Default::default()
            },
        };
        store.commit_sync(end("mine", 1)).await.unwrap();
        assert!(matches!(
            store.commit_sync(end("theirs", 2)).await,
            Err(StoreError::LeaseLost(t)) if t == "theirs"
        ));
        store.close().await.unwrap();
        db.drop_now().await;
    }
}
