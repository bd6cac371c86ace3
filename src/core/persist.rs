//! What is durable: the store answers every [`Action::Persist`]; a change that did not
//! commit is kept, merged with the event's later changes, and retried with backoff, so one
//! event's failed write never holds up or rolls back another's (docs/architecture.md,
//! "The write-ahead rule").

use std::time::Duration;

use super::backoff;
use super::record::{Action, Change, Persisted};
use super::Core;
use crate::time::Timestamp;

/// Commit attempts of one change before the core gives up on it (and on the event, if it
/// never became durable).
pub const MAX_PERSIST_ATTEMPTS: u32 = 8;
/// Longest wait between two attempts to commit a failed change.
const PERSIST_RETRY_MAX: Duration = Duration::from_secs(60);

/// Changes of one event whose commit failed, merged, waiting for another attempt.
#[derive(Debug)]
pub(super) struct Unpersisted {
    pub(super) change: Change,
    /// A later change of the event committed: its row is newer than `change.event`, so only
    /// the appended rows are retried.
    pub(super) row_is_newer: bool,
}

impl Core {
    /// The store's answer to one [`Action::Persist`]. A failed change is kept, merged with
    /// the event's later changes, and retried with backoff (bounded by
    /// [`MAX_PERSIST_ATTEMPTS`]); it never holds up other events.
    pub fn persisted(&mut self, now: Timestamp, p: Persisted) {
        self.end_recovery();
        let id = p.change.event.event_id.clone();
        match p.error {
            None => {
                if let Some(mut t) = self.events.get(&id) {
                    if !t.durable {
                        t.durable = true;
                        self.events.put(&t);
                    }
                }
                if let Some(u) = self.unpersisted.get_mut(&id) {
                    if !p.change.rows_only {
                        u.row_is_newer = true;
                    }
                } else {
                    self.persist_attempts.remove(&id);
                }
            }
            Some(_) => {
                let attempts = self.persist_attempts.entry(id.clone()).or_insert(0);
                *attempts = attempts.saturating_add(1);
                let attempts = *attempts;
                match self.unpersisted.get_mut(&id) {
                    Some(entry) => {
                        entry.row_is_newer &= p.change.rows_only;
                        entry.change.absorb(p.change);
                    }
                    None => {
                        self.unpersisted.insert(
                            id,
                            Unpersisted {
                                change: p.change,
                                row_is_newer: false,
                            },
                        );
                    }
                }
                let delay = backoff::delay(
                    attempts.saturating_sub(1),
                    Duration::from_secs(1),
                    PERSIST_RETRY_MAX,
                    self.timings.jitter_seed,
                );
                let at = now.saturating_add(delay);
                self.persist_retry_at = Some(self.persist_retry_at.map_or(at, |r| r.min(at)));
            }
        }
    }

    /// Events the core stopped tracking because their changes could not be committed after
    /// [`MAX_PERSIST_ATTEMPTS`]; for the executor to log.
    pub fn take_abandoned(&mut self) -> Vec<String> {
        std::mem::take(&mut self.abandoned)
    }

    /// Queues a change, or folds it into a failed one of the same event that awaits its retry
    /// (so the retry carries everything, in order).
    pub(super) fn emit_persist(&mut self, change: Change) {
        match self.unpersisted.get_mut(&change.event.event_id) {
            Some(u) => {
                u.row_is_newer = false;
                u.change.absorb(change);
            }
            None => self.actions.push_back(Action::Persist(Box::new(change))),
        }
    }

    pub(super) fn retry_persists(&mut self, now: Timestamp) {
        if self.persist_retry_at.is_none_or(|r| r > now) {
            return;
        }
        self.persist_retry_at = None;
        for (id, u) in std::mem::take(&mut self.unpersisted) {
            let mut change = u.change;
            if self.persist_attempts.get(&id).copied().unwrap_or(0) >= MAX_PERSIST_ATTEMPTS {
                self.persist_attempts.remove(&id);
                // Bounded: a store that refuses this long is broken; the event's row (if it
                // has one) is recovered from the store after a restart.
                if self.events.get(&id).is_some_and(|t| !t.durable) {
                    self.forget(&id);
                }
                self.abandoned.push(id);
                continue;
            }
            match self.events.get(&id) {
                Some(t) => {
                    change.event = t.rec.clone();
                    change.insert = !t.durable;
                    change.rows_only = false;
                }
                None => change.rows_only = u.row_is_newer,
            }
            self.actions.push_back(Action::Persist(Box::new(change)));
        }
    }

    /// Drops an event from memory (never durable, given up on).
    fn forget(&mut self, id: &str) {
        let slot = self.events.slot_of(id);
        if let (Some(t), Some(slot)) = (self.events.remove(id), slot) {
            if let Some(q) = self.queues.get_mut(&t.rec.token) {
                if let Some(at) = t.rec.next_check_at {
                    q.due.remove(&(at, slot));
                }
                if t.in_flight {
                    q.in_flight = q.in_flight.saturating_sub(1);
                }
            }
            self.remove_waiting(&t.rec);
        }
    }
}
