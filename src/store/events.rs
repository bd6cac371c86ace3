//! Events: tracking, the core's turns (every change of a turn, the sync runs it starts, and
//! the notifications that arrived before the events it inserts, in one job), recovery at
//! start, retention, and the reads of the API and the CLI.

use tokio::sync::oneshot;

use super::postgres::queries as pq;
use super::postgres::{refusal as pg_refusal, Ran};
use super::sqlite::queries as q;
use super::views::{EventDetail, EventView};
use super::{Store, StoreError, SyncStart};
use crate::core::{Change, EventRecord, EventType, NotificationInput, Outcome, State};
use crate::time::Timestamp;

/// Filters of `events` / `GET /v1/events`.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub state: Option<State>,
    pub outcome: Option<Outcome>,
    pub token: Option<String>,
    pub event_type: Option<EventType>,
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// What one turn of the core writes, in one job.
#[derive(Clone, Debug, Default)]
pub struct TurnWrite {
    pub changes: Vec<Change>,
    /// The sync runs the turn starts.
    pub syncs: Vec<SyncStart>,
}

/// What a committed turn answers.
#[derive(Debug)]
pub struct TurnCommit {
    pub changes: Vec<Change>,
    /// Per change: `None` committed, or why not (that change alone was rolled back).
    pub errors: Vec<Option<String>>,
    /// Per started sync: whether its run row was written.
    pub syncs_written: Vec<bool>,
    /// Notifications that arrived before the events this turn inserted.
    pub early: Vec<NotificationInput>,
}

impl TurnCommit {
    /// The turn's work was done but its transaction did not commit (a full disk, an I/O
    /// error, SQLite rolling the batch back, PostgreSQL unreachable or refusing the work):
    /// every change is answered failed, so the core
    /// retries it and a tracker waiting for an insert hears the error, rather than the
    /// changes being lost with the turn.
    fn undone(self, e: StoreError) -> Result<TurnCommit, StoreError> {
        let why = e.to_string();
        Ok(TurnCommit {
            errors: vec![Some(why); self.changes.len()],
            syncs_written: vec![false; self.syncs_written.len()],
            early: Vec::new(),
            changes: self.changes,
        })
    }
}

/// What a PostgreSQL turn's work gives, to be joined with the turn it ran
/// ([`TurnCommit::of_turn`]).
struct TurnParts {
    errors: Vec<Option<String>>,
    syncs_written: Vec<bool>,
    early: Vec<NotificationInput>,
}

impl TurnCommit {
    /// A PostgreSQL turn's answer: what its work gave once committed; if its work failed or
    /// its transaction did not commit, the turn [`TurnCommit::undone`].
    fn of_turn(
        turn: TurnWrite,
        ran: Result<TurnParts, StoreError>,
    ) -> Result<TurnCommit, StoreError> {
        match ran {
            Ok(p) => Ok(TurnCommit {
                changes: turn.changes,
                errors: p.errors,
                syncs_written: p.syncs_written,
                early: p.early,
            }),
            Err(e) => TurnCommit {
                errors: Vec::new(),
                syncs_written: vec![false; turn.syncs.len()],
                early: Vec::new(),
                changes: turn.changes,
            }
            .undone(e),
        }
    }
}

/// What the core needs at start before its events: the notifications not yet applied to
/// unsettled events, the next sync id, and how many unsettled events follow.
#[derive(Debug, Default)]
pub struct RecoveryStart {
    pub notifications: Vec<NotificationInput>,
    pub next_sync_id: u64,
    pub unsettled: usize,
}

impl Store {
    /// Queues the writes of one turn without waiting for them (the executor's loop never
    /// waits on disk); `on_commit` gets the answer once committed. Turns commit, and answer,
    /// in the order they were queued. Each change is applied in a savepoint of its own: one
    /// that fails is rolled back alone and reported in [`TurnCommit::errors`].
    pub async fn commit_turn(
        &self,
        turn: TurnWrite,
        now: Timestamp,
        on_commit: oneshot::Sender<Result<TurnCommit, StoreError>>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write_detached(
                    move |conn| {
                        let TurnWrite { changes, syncs } = turn;
                        let errors = q::apply_changes(conn, &changes);
                        let syncs_written = syncs
                            .iter()
                            .map(|s| {
                                q::sync_started(conn, s.id, &s.token, s.kind, s.full, &s.cause, now)
                                    .is_ok()
                            })
                            .collect();
                        // Notifications may arrive before we know an event's id: hand them to
                        // the core once the event is committed.
                        let mut early = Vec::new();
                        for (c, e) in changes.iter().zip(&errors) {
                            if c.insert && e.is_none() {
                                early.extend(q::unapplied_notifications_for(
                                    conn,
                                    &c.event.event_id,
                                )?);
                            }
                        }
                        Ok(TurnCommit {
                            changes,
                            errors,
                            syncs_written,
                            early,
                        })
                    },
                    on_commit,
                    TurnCommit::undone,
                )
                .await
            }
            Store::Postgres(p) => {
                let me = p.instance().map(str::to_string);
                p.write_ordered(
                    turn,
                    move |tx, turn| {
                        Box::pin(async move {
                            let TurnWrite { changes, syncs } = turn;
                            // With leases, only the holder's changes of a token commit; an
                            // insert commits anyway and is handed to the holder.
                            let held = match &me {
                                Some(me) => {
                                    let mut tokens: Vec<String> = changes
                                        .iter()
                                        .map(|c| c.event.token.clone())
                                        .chain(syncs.iter().map(|s| s.token.clone()))
                                        .collect();
                                    tokens.sort();
                                    tokens.dedup();
                                    Some(pq::handoffs::fence(tx, me, &tokens).await?)
                                }
                                None => None,
                            };
                            let holds = |t: &str| held.as_ref().is_none_or(|h| h.contains(t));
                            let applied = apply_fenced(tx, changes, &holds, now).await;
                            // A change the database refused (a read-only server) fails alone,
                            // yet writes are failing.
                            let mut refused = applied
                                .iter()
                                .filter_map(|r| r.as_ref().err())
                                .find_map(pg_refusal);
                            let errors: Vec<Option<String>> = applied
                                .into_iter()
                                .map(|r| r.err().map(|e| e.to_string()))
                                .collect();
                            let mut syncs_written = Vec::with_capacity(syncs.len());
                            for s in syncs {
                                if !holds(&s.token) {
                                    syncs_written.push(false);
                                    continue;
                                }
                                // A failed statement would abort the whole transaction here:
                                // each run row in a savepoint of its own.
                                tx.batch_execute("SAVEPOINT sync").await?;
                                let started = pq::sync_started(
                                    tx, s.id, &s.token, s.kind, s.full, &s.cause, now,
                                )
                                .await;
                                tx.batch_execute(if started.is_ok() {
                                    "RELEASE SAVEPOINT sync"
                                } else {
                                    "ROLLBACK TO SAVEPOINT sync; RELEASE SAVEPOINT sync"
                                })
                                .await?;
                                if let Err(e) = &started {
                                    refused = refused.or_else(|| pg_refusal(e));
                                }
                                syncs_written.push(started.is_ok());
                            }
                            // One query for all the events inserted.
                            let inserted: Vec<&str> = changes
                                .iter()
                                .zip(&errors)
                                .filter(|(c, e)| c.insert && e.is_none())
                                .map(|(c, _)| c.event.event_id.as_str())
                                .collect();
                            let early = pq::unapplied_notifications_for_all(tx, &inserted).await?;
                            Ok(Ran {
                                result: TurnParts {
                                    errors,
                                    syncs_written,
                                    early,
                                },
                                refused,
                            })
                        })
                    },
                    TurnCommit::of_turn,
                    on_commit,
                )
                .await
            }
        }
    }

    /// Recovery at start, streamed: `start` gets the [`RecoveryStart`] and builds the
    /// receiver, then `each` gets every unsettled event as it is read, so a million events
    /// never exist as whole records at once (docs/architecture.md, "Memory"). Runs off the
    /// runtime threads; returns the receiver and the number of events.
    pub async fn recover<T, S, E>(&self, start: S, mut each: E) -> Result<(T, usize), StoreError>
    where
        T: Send + 'static,
        S: FnOnce(RecoveryStart) -> T + Send + 'static,
        E: FnMut(&mut T, EventRecord) + Send + 'static,
    {
        match self {
            Store::Sqlite(s) => {
                s.read(move |conn| {
                    let mut target = start(RecoveryStart {
                        notifications: q::unapplied_for_unsettled(conn)?,
                        next_sync_id: q::next_sync_id(conn)?,
                        unsettled: q::count_unsettled(conn)?,
                    });
                    let n = q::for_each_unsettled(conn, |rec| each(&mut target, rec))?;
                    Ok((target, n))
                })
                .await
            }
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move {
                        let mut target = start(RecoveryStart {
                            notifications: pq::unapplied_for_unsettled(tx).await?,
                            next_sync_id: pq::next_sync_id(tx).await?,
                            unsettled: pq::count_unsettled(tx).await?,
                        });
                        let n = pq::for_each_unsettled(tx, |rec| each(&mut target, rec)).await?;
                        Ok((target, n))
                    })
                })
                .await
            }
        }
    }

    /// One event as stored.
    pub async fn get_event(&self, event_id: &str) -> Result<Option<EventRecord>, StoreError> {
        let id = event_id.to_string();
        match self {
            Store::Sqlite(s) => s.read(move |c| q::get_event(c, &id)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::get_event(tx, &id).await }))
                    .await
            }
        }
    }

    /// One event as listed.
    pub async fn event_view(&self, event_id: &str) -> Result<Option<EventView>, StoreError> {
        let id = event_id.to_string();
        match self {
            Store::Sqlite(s) => s.read(move |c| q::list_event_view(c, &id)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::list_event_view(tx, &id).await }))
                    .await
            }
        }
    }

    /// One event with everything known about it.
    pub async fn event_detail(&self, event_id: &str) -> Result<Option<EventDetail>, StoreError> {
        let id = event_id.to_string();
        match self {
            Store::Sqlite(s) => s.read(move |c| q::event_detail(c, &id)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::event_detail(tx, &id).await }))
                    .await
            }
        }
    }

    /// The stored request body of an event (what it submitted to Apple), if kept.
    pub async fn request_body(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        let id = event_id.to_string();
        match self {
            Store::Sqlite(s) => s.read(move |c| q::request_body(c, &id)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::request_body(tx, &id).await }))
                    .await
            }
        }
    }

    /// Events newest first, with the cursor of the next page when there is one.
    pub async fn list_events(
        &self,
        filter: EventFilter,
    ) -> Result<(Vec<EventView>, Option<String>), StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |c| q::list_events(c, &filter)).await,
            Store::Postgres(p) => {
                p.read(move |tx| Box::pin(async move { pq::list_events(tx, &filter).await }))
                    .await
            }
        }
    }

    /// Deletes at most `batch` events settled before `before`, with their rows; returns how
    /// many went.
    pub async fn prune_settled(&self, before: Timestamp, batch: u32) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.write(move |c| q::prune(c, before, batch)).await,
            Store::Postgres(p) => {
                p.write(move |tx| Box::pin(async move { pq::prune(tx, before, batch).await }))
                    .await
            }
        }
    }
}

/// Applies a turn's changes on PostgreSQL, each in a savepoint: those of tokens this
/// instance holds (per `holds`) as they are; an insert for another token is applied and
/// handed to its holder; any other change for another token is refused (a stale holder's
/// write must not overwrite what the new holder does).
async fn apply_fenced(
    tx: &super::postgres::Transaction<'_>,
    changes: &[Change],
    holds: &(dyn Fn(&str) -> bool + Sync),
    now: Timestamp,
) -> Vec<Result<(), StoreError>> {
    if changes.iter().all(|c| holds(&c.event.token)) {
        return pq::apply_each(tx, changes).await;
    }
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        let token = &c.event.token;
        if holds(token) {
            out.extend(pq::apply_each(tx, std::slice::from_ref(c)).await);
        } else if c.insert {
            // The insert and its handoff stand or fall together.
            if let Err(e) = tx.batch_execute("SAVEPOINT handoff").await {
                out.push(Err(StoreError::from(e)));
                continue;
            }
            let mut r = pq::apply_each(tx, std::slice::from_ref(c))
                .await
                .pop()
                .unwrap_or(Ok(()));
            if r.is_ok() {
                let item = [super::Handoff::Event {
                    event_id: c.event.event_id.clone(),
                }];
                r = pq::handoffs::hand_off(tx, token, &item, now).await;
            }
            let end = if r.is_ok() {
                "RELEASE SAVEPOINT handoff"
            } else {
                "ROLLBACK TO SAVEPOINT handoff; RELEASE SAVEPOINT handoff"
            };
            let _ = tx.batch_execute(end).await;
            out.push(r);
        } else {
            out.push(Err(StoreError::LeaseLost(token.clone())));
        }
    }
    out
}
