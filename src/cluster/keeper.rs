//! The adapter that keeps this instance's leases (docs/architecture.md, "Several
//! instances"): every `interval` (a third of the lease TTL; sooner when another instance's
//! lease is about to expire) it heartbeats, reads a snapshot
//! of the lease table, asks [`lease::plan`] what to take and give back, applies that, and
//! renews the rest; it publishes the leases it can prove through a `watch` channel.
//!
//! Each [`Held`] counts from the LOCAL moment the acquiring or renewing write was *sent*
//! ([`local_now`], a monotonic clock), never from the answer, so its `calls_until` falls
//! before the database could expire the lease whatever the write's latency. A token is
//! removed from the published set before its lease is released, and a failed step keeps the
//! previous deadlines, which then pass on their own: the set never claims what the database
//! might already have given to another instance. Every database call has a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lease::{self, Held, Snapshot};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;

/// The tokens this instance may work, each with its local deadline.
pub type HeldSet = BTreeMap<String, Held>;

/// Milliseconds on this process's monotonic clock: the clock of [`Held::calls_until`]. (Not
/// the wall clock: a clock step must not stretch a deadline.)
pub fn local_now() -> Timestamp {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    Timestamp(i64::try_from(base.elapsed().as_millis()).unwrap_or(i64::MAX))
}

#[derive(Clone, Debug)]
pub struct KeeperConfig {
    /// This instance's id, unique among the instances on the database.
    pub me: String,
    /// The configured tokens (the same on every instance).
    pub tokens: Vec<String>,
    /// `[store] lease_ttl`.
    pub ttl: Duration,
    /// Between steps: `ttl / 3`, so two renewals may fail before a lease expires.
    pub interval: Duration,
    /// How long before `sent + ttl` calls stop: `ttl / 10`, at least 1 s (at most `ttl / 2`).
    pub margin: Duration,
    /// Each database call at most: `ttl / 3`.
    pub call_timeout: Duration,
}

impl KeeperConfig {
    pub fn new(me: impl Into<String>, tokens: Vec<String>, ttl: Duration) -> KeeperConfig {
        KeeperConfig {
            me: me.into(),
            tokens,
            ttl,
            interval: ttl / 3,
            // At least a second: Apple's rate limit counts requests per second, so the last
            // request of one holder and the first of the next never share a second.
            margin: (ttl / 10).max(Duration::from_secs(1)).min(ttl / 2),
            call_timeout: ttl / 3,
        }
    }
}

#[derive(Debug, Error)]
pub enum KeeperError {
    #[error("lease {what}: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("lease {what}: no answer within {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
}

/// A running keeper. Dropping it aborts the task without giving the leases back (as a
/// crash would: the others take the tokens once the leases expire); [`Keeper::stop`] is the
/// clean way.
pub struct Keeper {
    held: watch::Receiver<HeldSet>,
    tokens: std::sync::Arc<watch::Sender<Vec<String>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping `config.me`'s leases on `store` until `shutdown` is cancelled (or
    /// [`Keeper::stop`]), then gives them all back ([`Store::leave`]).
    pub fn spawn(store: Store, config: KeeperConfig, shutdown: CancellationToken) -> Keeper {
        let (tx, rx) = watch::channel(HeldSet::new());
        let (tokens, tokens_rx) = watch::channel(config.tokens.clone());
        let stop = shutdown.child_token();
        let task = tokio::spawn(run(store, config, tokens_rx, tx, stop.clone()));
        Keeper {
            held: rx,
            tokens: std::sync::Arc::new(tokens),
            stop,
            task: Some(task),
        }
    }

    /// The tokens held now; a token may be worked only while its `Held::may_call(local_now())`.
    pub fn held(&self) -> watch::Receiver<HeldSet> {
        self.held.clone()
    }

    /// Where to set the tokens to bid for from the next step on (a configuration reload): a
    /// token no longer listed is not renewed, so its lease lapses.
    pub fn tokens(&self) -> std::sync::Arc<watch::Sender<Vec<String>>> {
        self.tokens.clone()
    }

    /// Stops keeping and waits until the leases are given back (or the attempt timed out).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    store: Store,
    mut cfg: KeeperConfig,
    tokens: watch::Receiver<Vec<String>>,
    tx: watch::Sender<HeldSet>,
    stop: CancellationToken,
) {
    let mut held = HeldSet::new();
    let mut next_step = tokio::time::Instant::now();
    loop {
        cfg.tokens.clone_from(&tokens.borrow());
        let now = tokio::time::Instant::now();
        // Between full steps, a look at the lease table: a lease another instance gave back
        // (it stopped, or rebalanced) is taken at once, not at the next renewal.
        if now < next_step && !matches!(look(&store, &cfg).await, Ok(true)) {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(LOOK_EVERY.min(next_step - now)) => {}
            }
            continue;
        }
        let wait = match step(&store, &cfg, &mut held, &tx).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(instance = %cfg.me, error = %e, "lease step failed; keeping only unexpired leases");
                cfg.interval
            }
        };
        next_step = tokio::time::Instant::now() + wait;
        // Keep nothing that could not be proved held.
        let now = local_now();
        held.retain(|_, h| h.may_call(now));
        tx.send_replace(held.clone());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait.min(LOOK_EVERY)) => {}
        }
    }
    // Stop working before giving the leases back, a margin before (see `step`).
    tx.send_replace(HeldSet::new());
    tokio::time::sleep(cfg.margin).await;
    match bounded(&cfg, "leave", store.leave(&cfg.me)).await {
        Ok(()) => tracing::info!(instance = %cfg.me, "left: leases given back"),
        Err(e) => {
            tracing::warn!(instance = %cfg.me, error = %e, "leases not given back; they expire in lease_ttl")
        }
    }
}

/// How often the lease table is looked at between full steps.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Whether the plan would take or give back a token now (one read, no write).
async fn look(store: &Store, cfg: &KeeperConfig) -> Result<bool, KeeperError> {
    let snap = bounded(cfg, "snapshot", store.lease_snapshot(cfg.ttl)).await?;
    let plan = lease::plan(&Snapshot {
        me: &cfg.me,
        now: snap.now,
        tokens: &cfg.tokens,
        live: &snap.live,
        leases: &snap.leases,
    });
    Ok(!plan.acquire.is_empty() || !plan.release.is_empty())
}

/// One round: heartbeat, snapshot, plan, release, renew, acquire. Answers when to step
/// again: after `interval`, or sooner when another instance's lease expires before that
/// (a live holder renews long before, so that is a dead one's: taking it over then, not at
/// the next tick, keeps the takeover within the lease TTL).
async fn step(
    store: &Store,
    cfg: &KeeperConfig,
    held: &mut HeldSet,
    tx: &watch::Sender<HeldSet>,
) -> Result<Duration, KeeperError> {
    let me = cfg.me.as_str();
    bounded(cfg, "heartbeat", store.heartbeat(me)).await?;
    let snap = bounded(cfg, "snapshot", store.lease_snapshot(cfg.ttl)).await?;
    let plan = lease::plan(&Snapshot {
        me,
        now: snap.now,
        tokens: &cfg.tokens,
        live: &snap.live,
        leases: &snap.leases,
    });
    if !plan.release.is_empty() {
        for t in &plan.release {
            held.remove(t);
        }
        tx.send_replace(held.clone());
        // The last request sent for these tokens and the next holder's first stay a margin
        // (at least a second) apart, as when a lease expires: Apple's rate limit counts
        // per second.
        tokio::time::sleep(cfg.margin).await;
        bounded(cfg, "release", store.release(me, plan.release.clone())).await?;
    }
    // Ours by our record or by the database's (an acquire whose answer was lost).
    let configured: BTreeSet<&str> = cfg.tokens.iter().map(String::as_str).collect();
    let mine: BTreeSet<String> = held
        .keys()
        .cloned()
        .chain(
            snap.leases
                .iter()
                .filter(|l| l.holder == me && l.expires_at > snap.now)
                .map(|l| l.token.clone()),
        )
        .filter(|t| configured.contains(t.as_str()) && !plan.release.contains(t))
        .collect();
    if !mine.is_empty() {
        let sent = local_now();
        let kept: BTreeSet<String> = bounded(
            cfg,
            "renew",
            store.renew(me, mine.into_iter().collect(), cfg.ttl),
        )
        .await?
        .into_iter()
        .collect();
        held.retain(|t, _| kept.contains(t));
        for t in kept {
            held.insert(t, Held::renewed(sent, cfg.ttl, cfg.margin));
        }
        tx.send_replace(held.clone());
    }
    for t in plan.acquire {
        let sent = local_now();
        if bounded(cfg, "acquire", store.acquire(me, &t, cfg.ttl)).await? {
            held.insert(t, Held::renewed(sent, cfg.ttl, cfg.margin));
            tx.send_replace(held.clone());
        }
    }
    let next_expiry = snap
        .leases
        .iter()
        .filter(|l| l.holder != me && l.expires_at > snap.now)
        .map(|l| l.expires_at.since(snap.now))
        .min();
    // A few milliseconds after the expiry, so the database's clock has passed it.
    Ok(next_expiry.map_or(cfg.interval, |d| {
        cfg.interval.min(d + Duration::from_millis(5))
    }))
}

async fn bounded<T>(
    cfg: &KeeperConfig,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, KeeperError> {
    match tokio::time::timeout(cfg.call_timeout, call).await {
        Ok(r) => r.map_err(|source| KeeperError::Store { what, source }),
        Err(_) => Err(KeeperError::Timeout {
            what,
            limit: cfg.call_timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::tests::TempDb;

    const TTL: Duration = Duration::from_secs(3);
    /// The bound of every wait: generous, so a loaded machine does not fail the test; the
    /// measured times are printed.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn tokens() -> Vec<String> {
        (0..5).map(|i| format!("token-{i}")).collect()
    }

    /// Samples every keeper's published set at one local instant, asserting that no two
    /// may call Apple for one token; answers who may call for each token.
    fn sample(held: &[(String, watch::Receiver<HeldSet>)]) -> BTreeMap<String, String> {
        let now = local_now();
        let mut who: BTreeMap<String, String> = BTreeMap::new();
        for (id, rx) in held {
            for (t, h) in rx.borrow().iter() {
                if h.may_call(now) {
                    if let Some(other) = who.insert(t.clone(), id.clone()) {
                        panic!("{other} and {id} may both call Apple for {t}");
                    }
                }
            }
        }
        who
    }

    /// Waits (sampling all the while) until every token is held by one of `expected`, the
    /// shares differing by at most one; answers how long that took.
    async fn until_balanced(
        held: &[(String, watch::Receiver<HeldSet>)],
        expected: &[&str],
    ) -> Duration {
        let start = Instant::now();
        loop {
            let who = sample(held);
            let counts: Vec<usize> = expected
                .iter()
                .map(|e| who.values().filter(|h| h == e).count())
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            if who.len() == tokens().len()
                && counts.iter().sum::<usize>() == who.len()
                && hi - lo <= 1
            {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < PATIENCE,
                "not balanced over {expected:?} within {PATIENCE:?}: {who:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn keeper(url: &str, me: &str, shutdown: &CancellationToken) -> Keeper {
        let store = Store::connect_postgres(url, None).await.unwrap();
        Keeper::spawn(
            store,
            KeeperConfig::new(me, tokens(), TTL),
            shutdown.clone(),
        )
    }

    /// Three instances share five tokens, one crashes and its tokens move to the others
    /// once its leases expire, one leaves and hands its tokens over at once; at no sampled
    /// moment may two call Apple for one token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keepers_share_tokens_take_over_from_a_crash_and_hand_over_on_leave() {
        let db = TempDb::new().await;
        let shutdown = CancellationToken::new();
        let a = keeper(&db.url, "a", &shutdown).await;
        let b = keeper(&db.url, "b", &shutdown).await;
        let c = keeper(&db.url, "c", &shutdown).await;
        let held = vec![
            ("a".to_string(), a.held()),
            ("b".to_string(), b.held()),
            ("c".to_string(), c.held()),
        ];
        let t = until_balanced(&held, &["a", "b", "c"]).await;
        eprintln!("balanced over a, b, c after {t:?}");

        // A crash: no leave; c's last deadlines stay in its (sampled) set until they pass.
        let crashed_at = Instant::now();
        drop(c);
        let t = until_balanced(&held, &["a", "b"]).await;
        eprintln!(
            "c's tokens taken over {:?} after the crash (lease_ttl {TTL:?})",
            t
        );
        // Nobody may take a lease before it expires: c held 1 or 2 tokens whose leases
        // were renewed at most `interval` before the crash.
        assert!(
            crashed_at.elapsed() >= TTL / 3,
            "taken over before c's leases expired"
        );

        // A clean stop gives the leases back at once: none is left to expire.
        let left_at = Instant::now();
        b.stop().await;
        let store = Store::connect_postgres(&db.url, None).await.unwrap();
        let snap = store.lease_snapshot(TTL).await.unwrap();
        assert!(
            snap.leases.iter().all(|l| l.holder != "b") && !snap.live.contains("b"),
            "{snap:?}"
        );
        let t = until_balanced(&held, &["a"]).await;
        eprintln!(
            "b's tokens handed over {t:?} after leave (started {:?} ago)",
            left_at.elapsed()
        );

        shutdown.cancel();
        a.stop().await;
        let snap = store.lease_snapshot(TTL).await.unwrap();
        assert!(snap.leases.is_empty() && snap.live.is_empty(), "{snap:?}");
        store.close().await.unwrap();
        db.drop_now().await;
    }

    /// When the database stops answering, the keeper keeps only what it proved: every
    /// deadline counts from a write sent before the failure, and the set empties.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keeper_that_cannot_renew_stops_before_its_leases_expire() {
        let db = TempDb::new().await;
        let store = Store::connect_postgres(&db.url, None).await.unwrap();
        let k = Keeper::spawn(
            store.clone(),
            KeeperConfig::new("a", tokens(), TTL),
            CancellationToken::new(),
        );
        let held = vec![("a".to_string(), k.held())];
        until_balanced(&held, &["a"]).await;
        // Every later operation fails (the pool is closed).
        store.close().await.unwrap();
        let cut = local_now();
        let start = Instant::now();
        loop {
            let set = held[0].1.borrow().clone();
            for (t, h) in &set {
                assert!(
                    h.calls_until <= cut.saturating_add(TTL - TTL / 10),
                    "{t} claimed past what was proved: {h:?}"
                );
            }
            if set.is_empty() {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "still holding {set:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sample(&held).is_empty());
        drop(k);
        db.drop_now().await;
    }

    /// With SQLite the one instance holds every token, and gives them back on stop.
    #[tokio::test]
    async fn a_lone_keeper_on_sqlite_holds_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let k = Keeper::spawn(
            store.clone(),
            KeeperConfig::new("solo", tokens(), TTL),
            CancellationToken::new(),
        );
        let held = vec![("solo".to_string(), k.held())];
        until_balanced(&held, &["solo"]).await;
        k.stop().await;
        assert!(store.lease_snapshot(TTL).await.unwrap().leases.is_empty());
        store.close().await.unwrap();
    }
}
