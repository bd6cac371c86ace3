//! Periodic chores (retention, Apple upkeep) on the executor's clock: a pure schedule, so
//! the one loop decides when they run and no separate loop reads the clock.

use std::time::Duration;

use crate::time::Timestamp;

/// Work that comes round on a timer rather than from an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Chore {
    /// Prune settled events older than the retention period.
    Retention,
    /// Service Config, Client Config, token expiry warnings and health.
    Upkeep,
}

#[derive(Debug)]
struct Entry {
    chore: Chore,
    every: Duration,
    next_at: Option<Timestamp>,
    running: bool,
}

/// When each chore is next due. A chore never overlaps itself: the next run is scheduled
/// when the current one reports back through [`Periodic::done`].
#[derive(Debug, Default)]
pub struct Periodic {
    entries: Vec<Entry>,
}

impl Periodic {
    /// Adds a chore, first due at `first`.
    pub fn every(&mut self, chore: Chore, every: Duration, first: Timestamp) {
        self.entries.push(Entry {
            chore,
            every,
            next_at: Some(first),
            running: false,
        });
    }

    /// Chores due at `now`; each is marked running until [`Periodic::done`].
    pub fn due(&mut self, now: Timestamp) -> Vec<Chore> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if !e.running && e.next_at.is_some_and(|t| t <= now) {
                e.running = true;
                e.next_at = None;
                out.push(e.chore);
            }
        }
        out
    }

    /// A chore finished at `now`: due again one interval later.
    pub fn done(&mut self, chore: Chore, now: Timestamp) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.chore == chore) {
            e.running = false;
            e.next_at = Some(now.saturating_add(e.every));
        }
    }

    pub fn next_at(&self) -> Option<Timestamp> {
        self.entries.iter().filter_map(|e| e.next_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chore_is_due_once_until_done_then_one_interval_later() {
        let mut p = Periodic::default();
        let t0 = Timestamp(1_000_000);
        p.every(Chore::Retention, Duration::from_secs(3600), t0);
        p.every(
            Chore::Upkeep,
            Duration::from_secs(300),
            t0.saturating_add(Duration::from_secs(5)),
        );
        assert_eq!(p.next_at(), Some(t0));
        assert_eq!(p.due(t0), vec![Chore::Retention]);
        assert!(p.due(t0).is_empty(), "not twice while running");
        let t1 = t0.saturating_add(Duration::from_secs(10));
        assert_eq!(p.due(t1), vec![Chore::Upkeep]);
        p.done(Chore::Retention, t1);
        p.done(Chore::Upkeep, t1);
        assert_eq!(
            p.next_at(),
            Some(t1.saturating_add(Duration::from_secs(300)))
        );
        assert!(p
            .due(t1.saturating_add(Duration::from_secs(299)))
            .is_empty());
    }
}
