//! The deliverer: one task, one batch in flight. Each round reads the outbox from the store,
//! pins the next batch if none is pinned (write-ahead: the range is durable before the first
//! attempt), waits until the attempt is due, POSTs it signed, and records the decision of
//! [`super::after_attempt`]. Every wait is bounded and ends on shutdown; an attempt cut short
//! by shutdown is simply repeated (same range, same id) after the next start.

use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{after_attempt, due, Attempt, Batch, Next, Policy, PushConfig, SigningKey};
use crate::cluster::held::Leases;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::time::Timestamp;

/// How often an idle deliverer looks for new changes.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Longest single sleep, so a `push replay` or a shutdown is noticed promptly.
const MAX_NAP: Duration = Duration::from_secs(1);
/// Longest error text kept from a response body.
const MAX_ERROR: usize = 300;

pub struct Deliverer {
    store: Store,
    policy: Policy,
    url: String,
    key: SigningKey,
    timeout: Duration,
    http: reqwest::Client,
    metrics: Metrics,
    /// The oldest undelivered seq and when this task first saw it waiting (for the lag).
    head_seen: Option<(i64, Timestamp)>,
    /// Several instances: only the holder of the [`PUSH_LEASE`] delivers.
    leases: Leases,
}

/// The lease whose holder pushes the feed when several instances share a database (a name
/// no token can have: token names are `[a-z0-9-]+`).
pub const PUSH_LEASE: &str = "_push";

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Key(#[from] super::PushError),
    #[error("cannot build the push HTTP client: {0}")]
    Client(String),
}

impl Deliverer {
    pub fn new(
        config: &PushConfig,
        store: Store,
        metrics: Metrics,
        seed: u64,
    ) -> Result<Deliverer, DeliverError> {
        let key = SigningKey::parse(config.secret.expose())?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .user_agent(concat!("vpp-reconciler/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DeliverError::Client(e.to_string()))?;
        Ok(Deliverer {
            store,
            policy: Policy::new(config.max_batch, config.dead_after, seed),
            url: config.url.clone(),
            key,
            timeout: config.timeout,
            http,
            metrics,
            head_seen: None,
            leases: Leases::All,
        })
    }

    /// Delivers only while `leases` holds [`PUSH_LEASE`] (several instances); the default
    /// is always.
    pub fn with_leases(mut self, leases: Leases) -> Deliverer {
        self.leases = leases;
        self
    }

    /// Delivers until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(url = %self.url, "pushing feed changes to the MDM");
        while !shutdown.is_cancelled() {
            let nap = match self.round(&shutdown).await {
                Ok(nap) => nap,
                Err(e) => {
                    tracing::error!(error = %e, "push: store error; retrying");
                    Some(MAX_NAP)
                }
            };
            if let Some(nap) = nap {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(nap) => {}
                }
            }
        }
    }

    /// One step; returns how long to nap before the next (None: go on at once).
    async fn round(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Duration>, StoreError> {
        if !self.leases.may_call(PUSH_LEASE) {
            // Another instance pushes; this one takes over if that one stops.
            return Ok(Some(IDLE_POLL));
        }
        let now = Timestamp::now();
        let st = self.store.push_state().await?;
        self.update_lag(st.delivered, now).await?;
        let (batch, items) = match st.batch {
            Some((first, last, since)) => {
                let b = Batch { first, last, since };
                let items = self.store.changes_between(first - 1, last, 10_000).await?;
                (b, items)
            }
            None => {
                let after = st.delivered;
                let max = self.policy.max_batch;
                let items = self.store.changes_after(after, max).await?;
                let seqs: Vec<i64> = items.iter().map(|c| c.seq).collect();
                let Some(b) = super::select_batch(&seqs, max, now) else {
                    return Ok(Some(IDLE_POLL));
                };
                let pinned = self.store.push_pin(after, b.first, b.last, b.since).await?;
                if !pinned {
                    // A replay moved the cursor meanwhile: start over from the store.
                    return Ok(None);
                }
                (b, items)
            }
        };
        if items.is_empty() {
            // Every change of the range moved on to a later seq (an event changed again):
            // nothing to send for it, and the later seq will be delivered.
            self.store.push_ack(batch.first, batch.last, now).await?;
            return Ok(None);
        }
        if !due(st.next_attempt_at, now) {
            let wait = st.next_attempt_at.map_or(MAX_NAP, |at| at.since(now));
            return Ok(Some(wait.min(MAX_NAP)));
        }
        let body = match serde_json::to_vec(&json!({ "changes": items })) {
            Ok(b) => b,
            Err(e) => return Err(StoreError::Corrupt(format!("cannot encode changes: {e}"))),
        };
        let id = batch.webhook_id(st.replays);
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            a = self.send(&id, body) => a,
        };
        let now = Timestamp::now();
        let n = items.len() as u64;
        match after_attempt(&self.policy, &batch, st.attempts, now, &attempt) {
            Next::Acknowledged => {
                let acked = self.store.push_ack(batch.first, batch.last, now).await?;
                if acked {
                    self.metrics.push_delivered(n);
                    tracing::debug!(webhook_id = %id, changes = n, "push: batch delivered");
                }
            }
            Next::Retry { at, attempts } => {
                let error = error_text(&attempt);
                self.metrics.push_failed();
                tracing::warn!(webhook_id = %id, attempts, error = %error,
                    next_attempt_at = %at, "push: delivery failed; retrying");
                self.store
                    .push_failed(batch.first, batch.last, attempts, at, &error, now)
                    .await?;
            }
            Next::Park { attempts } => {
                let error = error_text(&attempt);
                self.metrics.push_failed();
                let rows: Vec<(i64, String)> = items
                    .iter()
                    .map(|c| (c.seq, serde_json::to_string(c).unwrap_or_default()))
                    .collect();
                tracing::error!(webhook_id = %id, attempts, changes = n, error = %error,
                    failing_since = %batch.since,
                    "push: undeliverable for push.dead_after; changes parked (see `vpp-reconciler push`)");
                let since = batch.since;
                let parked = self
                    .store
                    .push_park(batch.first, batch.last, since, attempts, &error, rows, now)
                    .await?;
                if parked {
                    self.metrics.push_parked(n);
                }
            }
        }
        Ok(None)
    }

    /// POSTs one batch, signed; never longer than the configured timeout.
    async fn send(&self, id: &str, body: Vec<u8>) -> Attempt {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = self.key.sign(id, timestamp, &body);
        let req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send();
        // reqwest's own timeout covers the whole exchange; this bounds it once more.
        let resp = match tokio::time::timeout(self.timeout + Duration::from_secs(1), req).await {
            Err(_) => {
                return Attempt::Failed {
                    retry_after: None,
                    error: "timed out".into(),
                }
            }
            Ok(Err(e)) => {
                let error = if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    format!("transport error: {}", truncate(&e.to_string()))
                };
                return Attempt::Failed {
                    retry_after: None,
                    error,
                };
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::apple::parse_retry_after(v, SystemTime::now()));
        let text = tokio::time::timeout(Duration::from_secs(2), resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut error = format!("HTTP {}", status.as_u16());
        if !text.trim().is_empty() {
            error.push_str(": ");
            error.push_str(&truncate(text.trim()));
        }
        Attempt::Failed { retry_after, error }
    }

    async fn update_lag(&mut self, delivered: i64, now: Timestamp) -> Result<(), StoreError> {
        let (backlog, _) = self.store.backlog(delivered).await?;
        if backlog == 0 {
            self.head_seen = None;
            self.metrics.set_push_lag(0.0, 0);
            return Ok(());
        }
        let head = match self.head_seen {
            Some((seq, at)) if seq == delivered => at,
            _ => {
                self.head_seen = Some((delivered, now));
                now
            }
        };
        self.metrics
            .set_push_lag(now.since(head).as_secs_f64(), backlog);
        Ok(())
    }
}

fn error_text(a: &Attempt) -> String {
    match a {
        Attempt::Delivered => String::new(),
        Attempt::Failed { error, .. } => error.clone(),
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ERROR) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
