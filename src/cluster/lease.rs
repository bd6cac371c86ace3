//! Which tokens this instance should work, decided from a snapshot of the lease table: the
//! pure half of running several instances on one database (docs/architecture.md, "Several
//! instances"). No IO and no clock: the adapter reads the snapshot with the database's
//! clock and applies the plan with conditional writes, so two instances that plan from
//! stale snapshots still cannot both take one token.
//!
//! Rules:
//! - A lease that has not expired belongs to its holder; nobody else takes it, whatever
//!   the holder's heartbeat says (a slow instance may still be calling Apple).
//! - Each live instance aims at its fair share, `ceil(tokens / live instances)`: it takes
//!   free or expired tokens while below it, and gives back tokens above it only while
//!   another live instance is below the floor (so a balanced cluster never churns).
//! - Which token to take or give back is decided by rendezvous hashing of (token,
//!   instance), so instances planning at once mostly want different tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::core::backoff::{seed_for, splitmix64};
use crate::time::Timestamp;

/// One row of the lease table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub holder: String,
    /// On the database's clock.
    pub expires_at: Timestamp,
}

/// What the adapter read, all on the database's clock.
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    pub me: &'a str,
    pub now: Timestamp,
    /// The configured tokens (every instance has the same configuration).
    pub tokens: &'a [String],
    /// Instances whose heartbeat is younger than the lease TTL, `me` included.
    pub live: &'a BTreeSet<String>,
    pub leases: &'a [Lease],
}

/// What this instance should do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free or expired tokens to take (each a conditional write that may lose a race).
    pub acquire: Vec<String>,
    /// Tokens of ours to stop working and then release.
    pub release: Vec<String>,
}

fn score(token: &str, instance: &str) -> u64 {
    splitmix64(seed_for(0, token) ^ seed_for(1, instance).rotate_left(17))
}

/// Plans this instance's next step. See the module docs for the rules.
pub fn plan(s: &Snapshot<'_>) -> Plan {
    let configured: BTreeSet<&str> = s.tokens.iter().map(String::as_str).collect();
    let mut holder_of: BTreeMap<&str, &str> = BTreeMap::new();
    for l in s.leases {
        if l.expires_at > s.now && configured.contains(l.token.as_str()) {
            holder_of.insert(l.token.as_str(), l.holder.as_str());
        }
    }
    let mut live: BTreeSet<&str> = s.live.iter().map(String::as_str).collect();
    live.insert(s.me);
    let tokens = configured.len();
    let fair = tokens.div_ceil(live.len());
    let floor = tokens / live.len();
    let mut held: Vec<&str> = holder_of
        .iter()
        .filter(|(_, h)| **h == s.me)
        .map(|(t, _)| *t)
        .collect();
    let mut plan = Plan::default();
    if held.len() < fair {
        let mut free: Vec<&str> = configured
            .iter()
            .copied()
            .filter(|t| !holder_of.contains_key(t))
            .collect();
        free.sort_by_key(|t| std::cmp::Reverse(score(t, s.me)));
        plan.acquire = free
            .into_iter()
            .take(fair - held.len())
            .map(str::to_string)
            .collect();
    } else {
        // Above the fair share, give back the excess; above the floor, give back what
        // another live instance lacks to reach it. Lowest affinity first.
        let short = shortfalls(&holder_of, &live, floor, s.me);
        let give = held
            .len()
            .saturating_sub(fair)
            .max(held.len().saturating_sub(floor).min(short));
        held.sort_by_key(|t| score(t, s.me));
        plan.release = held.into_iter().take(give).map(str::to_string).collect();
    }
    plan
}

/// How many tokens the other live instances lack to reach `floor` each.
fn shortfalls(
    holder_of: &BTreeMap<&str, &str>,
    live: &BTreeSet<&str>,
    floor: usize,
    me: &str,
) -> usize {
    let mut count: BTreeMap<&str, usize> = live.iter().map(|i| (*i, 0)).collect();
    for h in holder_of.values() {
        if let Some(c) = count.get_mut(h) {
            *c += 1;
        }
    }
    count
        .iter()
        .filter(|(i, _)| **i != me)
        .map(|(_, c)| floor.saturating_sub(*c))
        .sum()
}

/// This instance's own view of a lease it holds, on its monotonic clock: Apple may be
/// called for the token only before `calls_until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub calls_until: Timestamp,
}

impl Held {
    /// A lease acquired or renewed by a write *sent* at `sent_at` (local clock): the
    /// database set its expiry at or after that moment plus `ttl`, so stopping `margin`
    /// before `sent_at + ttl` stops before the lease could have expired, whatever the
    /// write's latency.
    pub fn renewed(sent_at: Timestamp, ttl: Duration, margin: Duration) -> Held {
        Held {
            calls_until: sent_at.saturating_add(ttl.saturating_sub(margin)),
        }
    }

    pub fn may_call(&self, now: Timestamp) -> bool {
        now < self.calls_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tokens(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    /// Every instance plans and applies in turn, with the database's conditional writes,
    /// until nothing changes.
    fn settle(
        tokens: &[String],
        live: &BTreeSet<String>,
        leases: &mut Vec<Lease>,
        now: Timestamp,
        ttl: Duration,
    ) -> usize {
        for round in 0..50 {
            let mut changed = false;
            for me in live {
                let p = plan(&Snapshot {
                    me,
                    now,
                    tokens,
                    live,
                    leases,
                });
                for t in p.release {
                    let before = leases.len();
                    leases.retain(|l| !(l.token == t && l.holder == *me));
                    changed |= leases.len() != before;
                }
                for t in p.acquire {
                    // INSERT .. ON CONFLICT DO UPDATE .. WHERE expired: at most one wins.
                    match leases.iter_mut().find(|l| l.token == t) {
                        Some(l) if l.expires_at > now => {}
                        Some(l) => {
                            l.holder = me.clone();
                            l.expires_at = now.saturating_add(ttl);
                            changed = true;
                        }
                        None => {
                            leases.push(Lease {
                                token: t,
                                holder: me.clone(),
                                expires_at: now.saturating_add(ttl),
                            });
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                return round;
            }
        }
        panic!("lease plans did not converge: {leases:?}");
    }

    fn counts(leases: &[Lease], live: &BTreeSet<String>, now: Timestamp) -> Vec<usize> {
        live.iter()
            .map(|i| {
                leases
                    .iter()
                    .filter(|l| l.holder == *i && l.expires_at > now)
                    .count()
            })
            .collect()
    }

    #[test]
    fn a_lone_instance_takes_every_token() {
        let live: BTreeSet<String> = ["a".to_string()].into();
        let p = plan(&Snapshot {
            me: "a",
            now: Timestamp(0),
            tokens: &tokens(3),
            live: &live,
            leases: &[],
        });
        assert_eq!(p.acquire.len(), 3);
        assert!(p.release.is_empty());
    }

    #[test]
    fn an_unexpired_lease_of_a_silent_instance_is_not_taken() {
        let live: BTreeSet<String> = ["a".to_string()].into();
        let leases = [Lease {
            token: "t0".into(),
            holder: "dead".into(),
            expires_at: Timestamp(10),
        }];
        let p = plan(&Snapshot {
            me: "a",
            now: Timestamp(9),
            tokens: &tokens(1),
            live: &live,
            leases: &leases,
        });
        assert!(p.acquire.is_empty());
        let p = plan(&Snapshot {
            me: "a",
            now: Timestamp(10),
            tokens: &tokens(1),
            live: &live,
            leases: &leases,
        });
        assert_eq!(p.acquire, vec!["t0".to_string()]);
    }

    #[test]
    fn a_renewal_stops_calls_before_the_database_could_expire_it() {
        let h = Held::renewed(
            Timestamp(1_000),
            Duration::from_secs(15),
            Duration::from_secs(2),
        );
        assert!(h.may_call(Timestamp(13_999)));
        assert!(!h.may_call(Timestamp(14_000)));
    }

    proptest! {
        /// From any lease table, the instances converge to every token held by exactly one
        /// live instance, shares differing by at most one; a dead instance's tokens move
        /// only once its leases expire; a balanced cluster does not churn.
        #[test]
        fn plans_converge_to_a_balanced_cover(
            n_tokens in 0usize..40,
            n_live in 1usize..6,
            initial in proptest::collection::vec((0usize..40, 0usize..8, 0i64..30), 0..40),
        ) {
            let ttl = Duration::from_millis(15);
            let now = Timestamp(10);
            let tokens = tokens(n_tokens);
            let live: BTreeSet<String> = (0..n_live).map(|i| format!("i{i}")).collect();
            let mut leases: Vec<Lease> = Vec::new();
            for (t, h, exp) in initial {
                if t < n_tokens && !leases.iter().any(|l| l.token == tokens[t]) {
                    leases.push(Lease {
                        token: tokens[t].clone(),
                        holder: format!("i{h}"),
                        expires_at: Timestamp(exp),
                    });
                }
            }
            let dead_until: Option<Timestamp> = leases
                .iter()
                .filter(|l| !live.contains(&l.holder) && l.expires_at > now)
                .map(|l| l.expires_at)
                .max();
            let held_by_dead: BTreeSet<String> = leases
                .iter()
                .filter(|l| !live.contains(&l.holder) && l.expires_at > now)
                .map(|l| l.token.clone())
                .collect();
            settle(&tokens, &live, &mut leases, now, ttl);
            // Unexpired leases of dead instances are left alone.
            for t in &held_by_dead {
                prop_assert!(leases.iter().any(|l| &l.token == t && !live.contains(&l.holder)));
            }
            // Once they expire, everything is covered and balanced.
            let later = dead_until.map_or(now, |d| d.max(now));
            settle(&tokens, &live, &mut leases, later, ttl);
            let c = counts(&leases, &live, later);
            prop_assert_eq!(c.iter().sum::<usize>(), n_tokens);
            let (lo, hi) = (c.iter().min().copied().unwrap_or(0), c.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "unbalanced: {:?}", c);
            // Balanced: one more round changes nothing.
            let before = leases.clone();
            prop_assert_eq!(settle(&tokens, &live, &mut leases, later, ttl), 0);
            prop_assert_eq!(before, leases);
        }
    }
}
