//! Sync coalescing: at most one run per (token, kind); requests while one runs fold into a
//! single follow-up run; runs of one (token, kind) start at least `sync_min_interval` apart;
//! failed runs are retried with backoff. Pure, like the rest of the core: the events that wait
//! on a run are the caller's business, this only keeps their ids (see docs/lifecycle.md).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::backoff;
use super::model::SyncKind;
use super::record::{Action, SyncOutcome};
use crate::time::Timestamp;

/// Attempts of a failed sync that no event waits on, before it is left to the next request.
pub const MAX_UNWAITED_SYNC_ATTEMPTS: u32 = 5;

pub type SyncKey = (String, SyncKind);

#[derive(Clone, Copy, Debug)]
pub struct RunningSync {
    pub id: u64,
    pub full: bool,
}

#[derive(Default, Debug)]
struct SyncSlot {
    running: Option<RunningSync>,
    /// Another run is wanted after the current one (`Some(full)`).
    queued: Option<bool>,
    queued_cause: String,
    /// After a failed run, or too soon after the last start, the next may not start before
    /// this.
    retry_at: Option<Timestamp>,
    last_started: Option<Timestamp>,
    /// A run held back while its token was busy starts by this time at the latest.
    deferred_until: Option<Timestamp>,
    failures: u32,
    waiting: BTreeSet<String>,
}

/// What a caller learns about a (token, kind) after asking for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncState {
    pub running: Option<u64>,
    pub queued: bool,
    /// When the queued run may start, if it has to wait (min interval or retry backoff).
    pub queued_not_before: Option<Timestamp>,
    pub waiting: usize,
}

/// The coalescer. Ordered maps: what it emits never depends on hash order.
#[derive(Debug)]
pub struct Syncs {
    slots: BTreeMap<SyncKey, SyncSlot>,
    index: BTreeMap<u64, SyncKey>,
    next_id: u64,
    min_interval: Duration,
    /// While a token's polls use its rate limit, runs wait up to this long after the last
    /// start, so one run covers many outcomes instead of competing with the polls.
    max_staleness: Duration,
    retry_min: Duration,
    retry_max: Duration,
    jitter_seed: u64,
}

impl Syncs {
    pub fn new(
        next_id: u64,
        min_interval: Duration,
        max_staleness: Duration,
        retry_min: Duration,
        retry_max: Duration,
        jitter_seed: u64,
    ) -> Syncs {
        Syncs {
            slots: BTreeMap::new(),
            index: BTreeMap::new(),
            next_id: next_id.max(1),
            min_interval,
            max_staleness: max_staleness.max(min_interval),
            retry_min,
            retry_max,
            jitter_seed,
        }
    }

    /// The token of a running sync.
    pub fn token_of(&self, sync_id: u64) -> Option<String> {
        self.index.get(&sync_id).map(|k| k.0.clone())
    }

    /// The id the next run will get: a run with an id at or above this starts after now.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Asks for a run; `full` wins over incremental when requests fold together. `busy`:
    /// the token's polls are using its rate limit (see `max_staleness`).
    pub fn request(
        &mut self,
        now: Timestamp,
        key: &SyncKey,
        full: bool,
        cause: &str,
        busy: bool,
        out: &mut Vec<Action>,
    ) {
        let slot = self.slots.entry(key.clone()).or_default();
        let full = full || !key.1.supports_incremental();
        match slot.queued {
            Some(f) => slot.queued = Some(f || full),
            None => {
                slot.queued = Some(full);
                slot.queued_cause = cause.to_string();
            }
        }
        self.maybe_start(now, key, busy, out);
    }

    /// Forgets every (token, kind) of `token`: its runs' answers are then ignored.
    pub fn forget_token(&mut self, token: &str) {
        self.slots.retain(|k, _| k.0 != token);
        self.index.retain(|_, k| k.0 != token);
    }

    /// Marks `event_id` as waiting for the next successful run of `key`.
    pub fn wait(&mut self, key: &SyncKey, event_id: &str) {
        self.slots
            .entry(key.clone())
            .or_default()
            .waiting
            .insert(event_id.to_string());
    }

    pub fn unwait(&mut self, key: &SyncKey, event_id: &str) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.waiting.remove(event_id);
        }
    }

    fn maybe_start(&mut self, now: Timestamp, key: &SyncKey, busy: bool, out: &mut Vec<Action>) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.running.is_some() || slot.retry_at.is_some_and(|r| r > now) || slot.queued.is_none()
        {
            return;
        }
        // Outcomes trickle in; starting runs back to back would fetch the same pages again and
        // again. Waiting out the min interval lets one run cover all of them.
        if let Some(last) = slot.last_started {
            let earliest = last.saturating_add(self.min_interval);
            if now < earliest && now >= last {
                slot.retry_at = Some(earliest);
                return;
            }
            // A busy token: outcomes keep coming in, and every sync page is a request not
            // spent on a poll. Wait up to the staleness bound, so one run covers them all (a
            // request once the token is no longer busy starts it sooner).
            let stale_at = last.saturating_add(self.max_staleness);
            if busy && now < stale_at && now >= last {
                slot.deferred_until = Some(stale_at);
                return;
            }
        }
        let Some(full) = slot.queued.take() else {
            return;
        };
        slot.retry_at = None;
        slot.deferred_until = None;
        slot.last_started = Some(now);
        let id = self.next_id;
        self.next_id += 1;
        slot.running = Some(RunningSync { id, full });
        self.index.insert(id, key.clone());
        out.push(Action::StartSync {
            sync_id: id,
            token: key.0.clone(),
            kind: key.1,
            full,
            cause: std::mem::take(&mut slot.queued_cause),
        });
    }

    /// A run ended. On success returns the run and the events that were waiting on its
    /// (token, kind), for the caller to decide which it covers; on failure schedules a retry.
    pub fn finished(
        &mut self,
        now: Timestamp,
        sync_id: u64,
        outcome: &SyncOutcome,
        busy: bool,
        out: &mut Vec<Action>,
    ) -> Option<(SyncKey, RunningSync, Vec<String>)> {
        let key = self.index.remove(&sync_id)?;
        let slot = self.slots.get_mut(&key)?;
        let run = slot.running.filter(|r| r.id == sync_id)?;
        slot.running = None;
        let result = if outcome.is_ok() {
            slot.failures = 0;
            Some((key.clone(), run, slot.waiting.iter().cloned().collect()))
        } else {
            slot.failures = slot.failures.saturating_add(1);
            // A refused token will not heal within seconds: wait the longest backoff.
            let delay = if matches!(outcome, SyncOutcome::TokenProblem(_)) {
                self.retry_max
            } else {
                backoff::delay(
                    slot.failures - 1,
                    self.retry_min,
                    self.retry_max,
                    backoff::seed_for(self.jitter_seed, &key.0) ^ sync_id,
                )
            };
            slot.retry_at = Some(now.saturating_add(delay));
            // Run again later, keeping the fuller of the two: always while events wait on it;
            // otherwise (an assets sync for counts, a hint) a bounded number of times.
            if !slot.waiting.is_empty()
                || slot.queued.is_some()
                || slot.failures < MAX_UNWAITED_SYNC_ATTEMPTS
            {
                slot.queued = Some(slot.queued.unwrap_or(false) || run.full);
                if slot.queued_cause.is_empty() {
                    slot.queued_cause = format!("retry after failed sync {sync_id}");
                }
            }
            None
        };
        self.maybe_start(now, &key, busy, out);
        result
    }

    /// Starts runs whose retry or min-interval wait is over.
    pub fn timeout(&mut self, now: Timestamp, busy: impl Fn(&str) -> bool, out: &mut Vec<Action>) {
        let keys: Vec<SyncKey> = self
            .slots
            .iter()
            .filter(|(k, s)| {
                s.running.is_none()
                    && (s.retry_at.is_some_and(|r| r <= now)
                        || s.deferred_until.is_some_and(|r| r <= now)
                        // Held back only while its token was busy: once the polls are done
                        // it goes on the next turn, not at the staleness bound.
                        || (s.deferred_until.is_some()
                            && s.retry_at.is_none_or(|r| r <= now)
                            && !busy(&k.0)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let mut stale = false;
            if let Some(s) = self.slots.get_mut(&k) {
                if s.retry_at.is_some_and(|r| r <= now) {
                    s.retry_at = None;
                }
                stale = s.deferred_until.is_some_and(|r| r <= now);
            }
            // At the staleness bound a deferred run goes, busy or not.
            let b = !stale && busy(&k.0);
            self.maybe_start(now, &k, b, out);
        }
    }

    /// The next time [`Syncs::timeout`] has work.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        self.slots
            .values()
            .filter(|s| s.running.is_none())
            .filter_map(|s| match (s.retry_at, s.deferred_until) {
                (Some(r), Some(d)) => Some(r.max(d)),
                (r, d) => r.or(d),
            })
            .min()
    }

    pub fn state(&self, key: &SyncKey) -> Option<SyncState> {
        self.slots.get(key).map(|s| SyncState {
            running: s.running.map(|r| r.id),
            queued: s.queued.is_some(),
            queued_not_before: s.queued.and(s.retry_at.or(s.deferred_until)),
            waiting: s.waiting.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_within_the_min_interval_says_when_its_run_starts() {
        let min = Duration::from_secs(30);
        let mut s = Syncs::new(1, min, min, min, Duration::from_secs(600), 0);
        let key = ("acme".to_string(), SyncKind::Users);
        let mut out = Vec::new();
        let t0 = Timestamp(1_000_000);
        s.request(t0, &key, false, "first", false, &mut out);
        assert_eq!(out.len(), 1, "the first run starts at once");
        s.finished(
            t0.saturating_add(Duration::from_secs(2)),
            1,
            &SyncOutcome::Ok,
            false,
            &mut out,
        );
        let t1 = t0.saturating_add(Duration::from_secs(5));
        s.request(t1, &key, false, "second", false, &mut out);
        assert_eq!(out.len(), 1, "too soon: queued, not started");
        let st = s.state(&key).unwrap();
        assert_eq!(st.running, None);
        assert!(st.queued);
        assert_eq!(st.queued_not_before, Some(t0.saturating_add(min)));
        s.timeout(t0.saturating_add(min), |_| false, &mut out);
        assert_eq!(out.len(), 2, "and it starts then");
    }

    #[test]
    fn a_busy_token_defers_runs_up_to_the_staleness_bound() {
        let (min, stale) = (Duration::from_secs(1), Duration::from_secs(10));
        let mut s = Syncs::new(1, min, stale, min, Duration::from_secs(60), 0);
        let key = ("acme".to_string(), SyncKind::Assignments);
        let mut out = Vec::new();
        let t0 = Timestamp(1_000_000);
        s.request(t0, &key, false, "first", true, &mut out);
        assert_eq!(out.len(), 1, "a first run never waits");
        s.finished(t0, 1, &SyncOutcome::Ok, true, &mut out);
        let at = |secs: u64| t0.saturating_add(Duration::from_secs(secs));
        s.request(at(2), &key, false, "outcome", true, &mut out);
        for sec in 2..10 {
            s.timeout(at(sec), |_| true, &mut out);
            assert_eq!(out.len(), 1, "deferred at {sec} s while busy");
        }
        s.timeout(at(10), |_| true, &mut out);
        assert_eq!(out.len(), 2, "started at the staleness bound");
        // Not busy: only the min interval holds.
        s.finished(at(10), 2, &SyncOutcome::Ok, false, &mut out);
        s.request(at(11), &key, false, "outcome", false, &mut out);
        assert_eq!(out.len(), 3);
        // Deferred while busy, then a request once the token is quiet starts it at once.
        s.finished(at(11), 3, &SyncOutcome::Ok, false, &mut out);
        s.request(at(13), &key, false, "outcome", true, &mut out);
        assert_eq!(out.len(), 3, "deferred");
        s.request(at(14), &key, false, "outcome", false, &mut out);
        assert_eq!(out.len(), 4, "quiet again: starts");
        // Deferred while busy, then the next turn once the token is quiet starts it.
        s.finished(at(14), 4, &SyncOutcome::Ok, false, &mut out);
        s.request(at(15), &key, false, "outcome", true, &mut out);
        assert_eq!(out.len(), 4, "deferred again");
        s.timeout(at(16), |_| false, &mut out);
        assert_eq!(out.len(), 5, "quiet: started on the next turn");
    }
}
