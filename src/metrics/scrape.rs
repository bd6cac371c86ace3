//! The exposition at scrape time: the gauges that mirror the database are cleared and set
//! from the store's [`StoreStats`] (and, among several instances, the lease snapshot) read for
//! this scrape, then the registry is encoded. So they can never drift from the store.

use prometheus_client::encoding::prometheus_text;

use super::{lock, EventLabels, HolderLabels, Metrics, TokenLabels};
use crate::store::{LeaseSnapshot, StoreStats};
use crate::time::Timestamp;

impl Metrics {
    /// The exposition text: the store's `stats` plus what was recorded, at `now`.
    ///
    /// The store-backed gauges are cleared and refilled on every scrape, so a label set the
    /// store no longer reports (a token removed by a reload, a state with no event left)
    /// disappears.
    pub fn render(&self, stats: &StoreStats, now: Timestamp) -> String {
        self.render_with_leases(stats, now, None)
    }

    /// [`Metrics::render`], plus the cluster's families from `leases` when given (see the
    /// module docs); without it they are left out, HELP and TYPE included.
    pub fn render_with_leases(
        &self,
        stats: &StoreStats,
        now: Timestamp,
        leases: Option<LeaseGauges<'_>>,
    ) -> String {
        let inner = &*self.inner;
        let _scrape = lock(&inner.scrape);

        inner.events.clear();
        for e in &stats.events {
            inner
                .events
                .get_or_create(&EventLabels {
                    state: e.state.clone(),
                    outcome: e.outcome.clone().unwrap_or_else(|| "none".into()),
                    token: e.token.clone(),
                })
                .set(i64::try_from(e.count).unwrap_or(i64::MAX));
        }

        inner.token_expiry.clear();
        {
            let learned = lock(&inner.learned_expiry);
            // Only tokens the store reports (still configured); Apple's word wins over the
            // file's.
            for t in &stats.token_expiry {
                let at = learned.get(&t.token).copied().unwrap_or(t.expires_at);
                inner
                    .token_expiry
                    .get_or_create(&TokenLabels {
                        token: t.token.clone(),
                    })
                    .set((at.0 - now.0) as f64 / 1000.0);
            }
        }

        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &inner.registry);
        if let Some(leases) = leases {
            inner.lease_held.clear();
            inner.lease_holder.clear();
            let holders = crate::cluster::view::holders(leases.snapshot);
            for token in leases.tokens {
                let mine = holders.get(token).is_some_and(|l| l.holder == leases.me);
                inner
                    .lease_held
                    .get_or_create(&TokenLabels {
                        token: token.clone(),
                    })
                    .set(i64::from(mine));
            }
            for l in holders.values() {
                inner
                    .lease_holder
                    .get_or_create(&HolderLabels {
                        token: l.token.clone(),
                        instance: l.holder.clone(),
                    })
                    .set(1);
            }
            inner
                .instances_live
                .set(i64::try_from(leases.snapshot.live.len()).unwrap_or(i64::MAX));
            let _ = prometheus_text::encode(&mut out, &inner.cluster);
        }
        out
    }
}

/// What the cluster's families are rendered from: a lease snapshot read at scrape time.
#[derive(Clone, Copy, Debug)]
pub struct LeaseGauges<'a> {
    /// This instance's id.
    pub me: &'a str,
    /// The configured tokens: each gets a `vppr_lease_held` sample.
    pub tokens: &'a [String],
    pub snapshot: &'a LeaseSnapshot,
}
