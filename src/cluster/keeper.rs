//! The adapter that keeps this instance's leases (docs/architecture.md, "Several
//! instances"): every `interval` (a third of the lease TTL) it heartbeats, reads a snapshot
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
    /// How long before `sent + ttl` calls stop: `ttl / 10`.
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
            margin: ttl / 10,
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
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping `config.me`'s leases on `store` until `shutdown` is cancelled (or
    /// [`Keeper::stop`]), then gives them all back ([`Store::leave`]).
    pub fn spawn(store: Store, config: KeeperConfig, shutdown: CancellationToken) -> Keeper {
        let (tx, rx) = watch::channel(HeldSet::new());
        let stop = shutdown.child_token();
        let task = tokio::spawn(run(store, config, tx, stop.clone()));
        Keeper {
            held: rx,
            stop,
            task: Some(task),
        }
    }

    /// The tokens held now; a token may be worked only while its `Held::may_call(local_now())`.
    pub fn held(&self) -> watch::Receiver<HeldSet> {
        self.held.clone()
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

async fn run(store: Store, cfg: KeeperConfig, tx: watch::Sender<HeldSet>, stop: CancellationToken) {
    let mut held = HeldSet::new();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = step(&store, &cfg, &mut held, &tx).await {
            tracing::warn!(instance = %cfg.me, error = %e, "lease step failed; keeping only unexpired leases");
        }
        // Keep nothing that could not be proved held.
        let now = local_now();
        held.retain(|_, h| h.may_call(now));
        tx.send_replace(held.clone());
    }
    // Stop working before giving the leases back.
    tx.send_replace(HeldSet::new());
    match bounded(&cfg, "leave", store.leave(&cfg.me)).await {
        Ok(()) => tracing::info!(instance = %cfg.me, "left: leases given back"),
        Err(e) => {
            tracing::warn!(instance = %cfg.me, error = %e, "leases not given back; they expire in lease_ttl")
        }
    }
}

/// One round: heartbeat, snapshot, plan, release, renew, acquire.
async fn step(
    store: &Store,
    cfg: &KeeperConfig,
    held: &mut HeldSet,
    tx: &watch::Sender<HeldSet>,
) -> Result<(), KeeperError> {
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
    Ok(())
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
