//! Prometheus metrics (README.md), exposed in text format 0.0.4 on the local API's `/metrics`.
//!
//! Built on `prometheus-client`: one [`Registry`] per [`Metrics`] handle, created once at
//! daemon start-up and handed to whoever records (the Apple client, the webhook, the API, the
//! effects). Counters and histograms are recorded as things happen; gauges that mirror the
//! database are set from a [`StoreStats`](crate::store::StoreStats) read at scrape time
//! ([`Metrics::render`], in `scrape.rs`), so they can never drift from the store. The tests
//! are in `tests.rs`.
//!
//! Families:
//! - `vppr_events{state,outcome,token}` gauge, from the store at scrape time (`outcome="none"`
//!   while unknown).
//! - `vppr_api_requests_total{token,endpoint,status}` counter: calls to Apple's API
//!   ([`Metrics::api_request`]); `status` is `ok`, Apple's error number, or a short word such
//!   as `timeout` / `transport` when there was no response.
//! - `vppr_notifications_total{token,type,result}` counter ([`Metrics::notification`]).
//! - `vppr_syncs_total{token,kind,result}` counter ([`Metrics::sync`]).
//! - `vppr_token_expiry_seconds{token}` gauge: seconds until the content token expires
//!   (negative once expired), from [`Metrics::set_token_expiry`] or the store.
//! - `vppr_api_request_duration_seconds{endpoint}` histogram ([`Metrics::observe_api_latency`]).
//! - `vppr_webhook_ack_duration_seconds` histogram ([`Metrics::observe_webhook_ack`]).
//!
//! - `vppr_push_delivered_total`, `vppr_push_failed_total`, `vppr_push_parked_total` counters:
//!   changes delivered to the MDM, failed delivery attempts, changes parked after `dead_after`.
//! - `vppr_push_lag_seconds`, `vppr_push_lag_changes` gauges: how long the oldest undelivered
//!   change has waited (as seen by the deliverer) and how many changes wait.
//!
//! Only when the daemon runs among other instances (`ApiState::cluster`), read from the lease
//! table at scrape time ([`Metrics::render_with_leases`]; left out entirely, HELP and TYPE
//! included, when that read fails or is slow):
//! - `vppr_lease_held{token}` gauge: 1 while this instance holds the configured token's
//!   unexpired lease, else 0.
//! - `vppr_lease_holder_info{token,instance}` gauge, always 1: who holds each unexpired lease.
//! - `vppr_instances_live` gauge: instances whose heartbeat is younger than the lease TTL.
//!
//! Counters are registered without `_total`: the encoder appends it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::time::Timestamp;

mod scrape;

pub use scrape::LeaseGauges;

/// Upper bounds (seconds) of the latency histograms: from a fast local commit to Apple's
/// slowest answers within a 30 s request timeout.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The content type of the exposition (text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    state: String,
    outcome: String,
    token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    token: String,
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    token: String,
    r#type: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    token: String,
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    token: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

/// A family listed even while it has no label set: the registry leaves out empty families,
/// and a scraper (or a person) should see every family's HELP and TYPE from the start.
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A duration as observed: a negative or NaN duration is a caller's bug; count it as zero
/// rather than lose it.
fn duration(seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    }
}

/// Handle to the registry; cheap to clone (one `Arc`). Clones record into the same registry;
/// [`Metrics::new`] makes a separate one.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

struct Inner {
    registry: Registry,
    events: Family<EventLabels, Gauge>,
    api_requests: Family<ApiRequestLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    syncs: Family<SyncLabels, Counter>,
    token_expiry: Family<TokenLabels, Gauge<f64, AtomicU64>>,
    api_latency: Family<EndpointLabels, Histogram>,
    webhook_ack: Histogram,
    push_delivered: Counter,
    push_failed: Counter,
    push_parked: Counter,
    push_lag_seconds: Gauge<f64, AtomicU64>,
    push_lag_changes: Gauge,
    /// The cluster's families, encoded only when a scrape has a lease snapshot.
    cluster: Registry,
    lease_held: Family<TokenLabels, Gauge>,
    lease_holder: Family<HolderLabels, Gauge>,
    instances_live: Gauge,
    /// Expiry as Apple last reported it, per token; wins over the store's at scrape time.
    learned_expiry: Mutex<HashMap<String, Timestamp>>,
    /// Serializes scrapes: each clears and refills the store-backed gauges before encoding.
    scrape: Mutex<()>,
}

// Poisoning only means another thread panicked mid-update; the values are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new() -> Metrics {
        let events = Family::<EventLabels, Gauge>::default();
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        let notifications = Family::<NotificationLabels, Counter>::default();
        let syncs = Family::<SyncLabels, Counter>::default();
        let token_expiry = Family::<TokenLabels, Gauge<f64, AtomicU64>>::default();
        let api_latency = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let webhook_ack = latency_histogram();

        // Help texts carry no final period: the registry adds one.
        let mut registry = Registry::default();
        registry.register(
            "vppr_events",
            "Tracked events by state, outcome (none while unknown) and token",
            Listed(events.clone()),
        );
        registry.register(
            "vppr_api_requests",
            "Calls to Apple's API by token, endpoint and HTTP status",
            Listed(api_requests.clone()),
        );
        registry.register(
            "vppr_notifications",
            "Notifications received by token, type and result",
            Listed(notifications.clone()),
        );
        registry.register(
            "vppr_syncs",
            "Finished sync runs by token, kind and result",
            Listed(syncs.clone()),
        );
        registry.register(
            "vppr_token_expiry_seconds",
            "Seconds until the content token expires (negative once expired)",
            Listed(token_expiry.clone()),
        );
        registry.register(
            "vppr_api_request_duration_seconds",
            "Latency of calls to Apple's API by endpoint",
            Listed(api_latency.clone()),
        );
        registry.register(
            "vppr_webhook_ack_duration_seconds",
            "Time from receiving a notification to acknowledging it",
            webhook_ack.clone(),
        );
        let push_delivered = Counter::default();
        let push_failed = Counter::default();
        let push_parked = Counter::default();
        let push_lag_seconds = Gauge::<f64, AtomicU64>::default();
        let push_lag_changes = Gauge::default();
        registry.register(
            "vppr_push_delivered",
            "Changes of the feed delivered to the MDM (acknowledged with 2xx)",
            push_delivered.clone(),
        );
        registry.register(
            "vppr_push_failed",
            "Failed attempts to deliver a batch of changes to the MDM",
            push_failed.clone(),
        );
        registry.register(
            "vppr_push_parked",
            "Changes parked after being undeliverable for push.dead_after",
            push_parked.clone(),
        );
        registry.register(
            "vppr_push_lag_seconds",
            "How long the oldest undelivered change has waited",
            push_lag_seconds.clone(),
        );
        registry.register(
            "vppr_push_lag_changes",
            "Changes of the feed not yet delivered to the MDM",
            push_lag_changes.clone(),
        );
        let lease_held = Family::<TokenLabels, Gauge>::default();
        let lease_holder = Family::<HolderLabels, Gauge>::default();
        let instances_live = Gauge::default();
        let mut cluster = Registry::default();
        cluster.register(
            "vppr_lease_held",
            "1 while this instance holds the token's lease, else 0",
            Listed(lease_held.clone()),
        );
        cluster.register(
            "vppr_lease_holder_info",
            "The instance holding each token's unexpired lease (always 1)",
            Listed(lease_holder.clone()),
        );
        cluster.register(
            "vppr_instances_live",
            "Instances whose heartbeat is younger than store.lease_ttl",
            instances_live.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                cluster,
                lease_held,
                lease_holder,
                instances_live,
                push_delivered,
                push_failed,
                push_parked,
                push_lag_seconds,
                push_lag_changes,
                registry,
                events,
                api_requests,
                notifications,
                syncs,
                token_expiry,
                api_latency,
                webhook_ack,
                learned_expiry: Mutex::new(HashMap::new()),
                scrape: Mutex::new(()),
            }),
        }
    }

    /// One call to Apple's API answered (or failed) with `status`.
    pub fn api_request(&self, token: &str, endpoint: &str, status: &str) {
        self.inner
            .api_requests
            .get_or_create(&ApiRequestLabels {
                token: token.into(),
                endpoint: endpoint.into(),
                status: status.into(),
            })
            .inc();
    }

    /// One notification received: its `type` (ASSET_MANAGEMENT, …) and what became of it
    /// (e.g. `applied`, `duplicate`, `unauthorized`, `invalid`).
    pub fn notification(&self, token: &str, notification_type: &str, result: &str) {
        self.inner
            .notifications
            .get_or_create(&NotificationLabels {
                token: token.into(),
                r#type: notification_type.into(),
                result: result.into(),
            })
            .inc();
    }

    /// One sync run finished with `result` (e.g. `ok`, `failed`, `abandoned`).
    pub fn sync(&self, token: &str, kind: &str, result: &str) {
        self.inner
            .syncs
            .get_or_create(&SyncLabels {
                token: token.into(),
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }

    /// The token's expiry as Apple last reported it (`tokenExpirationDate`); overrides the
    /// expiry read from the `.vpptoken` file.
    pub fn set_token_expiry(&self, token: &str, expires_at: Timestamp) {
        lock(&self.inner.learned_expiry).insert(token.to_string(), expires_at);
    }

    /// Latency of one call to Apple's API.
    pub fn observe_api_latency(&self, endpoint: &str, seconds: f64) {
        self.inner
            .api_latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(duration(seconds));
    }

    /// `n` changes delivered to the MDM.
    pub fn push_delivered(&self, n: u64) {
        self.inner.push_delivered.inc_by(n);
    }

    /// One failed delivery attempt.
    pub fn push_failed(&self) {
        self.inner.push_failed.inc();
    }

    /// `n` changes parked.
    pub fn push_parked(&self, n: u64) {
        self.inner.push_parked.inc_by(n);
    }

    /// The delivery lag: seconds the oldest undelivered change has waited, and how many wait.
    pub fn set_push_lag(&self, seconds: f64, changes: u64) {
        self.inner.push_lag_seconds.set(seconds);
        self.inner
            .push_lag_changes
            .set(i64::try_from(changes).unwrap_or(i64::MAX));
    }

    /// Time from receiving a notification to acknowledging it (after its commit).
    pub fn observe_webhook_ack(&self, seconds: f64) {
        self.inner.webhook_ack.observe(duration(seconds));
    }
}

/// The Apple client reports each call here: its latency and its outcome.
impl crate::apple::CallObserver for Metrics {
    fn call_finished(&self, token: &str, endpoint: &str, status: &str, seconds: f64) {
        self.observe_api_latency(endpoint, seconds);
        self.api_request(token, endpoint, status);
    }
}

#[cfg(test)]
mod tests;
