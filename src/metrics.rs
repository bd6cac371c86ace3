//! Prometheus metrics (README.md), exposed in text format 0.0.4 on the local API's `/metrics`.
//!
//! Built on `prometheus-client`: one [`Registry`] per [`Metrics`] handle, created once at
//! daemon start-up and handed to whoever records (the Apple client, the webhook, the API, the
//! effects). Counters and histograms are recorded as things happen; gauges that mirror the
//! database are set from a [`StoreStats`] read at scrape time ([`Metrics::render`]), so they
//! can never drift from the store.
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

use crate::store::{LeaseSnapshot, StoreStats};
use crate::time::Timestamp;

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

/// The Apple client reports each call here: its latency and its outcome.
impl crate::apple::CallObserver for Metrics {
    fn call_finished(&self, token: &str, endpoint: &str, status: &str, seconds: f64) {
        self.observe_api_latency(endpoint, seconds);
        self.api_request(token, endpoint, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventCount, TokenExpiry};

    /// A parsed sample: name, labels in order, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Parses a sample line, checking the syntax strictly.
    fn parse_sample(line: &str) -> Sample {
        let (name_labels, value) = line.rsplit_once(' ').expect("value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().expect("numeric value"),
        };
        let Some((name, rest)) = name_labels.split_once('{') else {
            return (name_labels.to_string(), vec![], value);
        };
        let rest = rest.strip_suffix('}').expect("closing brace");
        let mut labels = vec![];
        let mut chars = rest.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "label value opens with a quote");
            let mut v = String::new();
            loop {
                match chars.next().expect("unterminated label value") {
                    '\\' => match chars.next() {
                        Some('\\') => v.push('\\'),
                        Some('"') => v.push('"'),
                        Some('n') => v.push('\n'),
                        other => panic!("bad escape {other:?}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw newline in a label value"),
                    c => v.push(c),
                }
            }
            labels.push((key, v));
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        (name.to_string(), labels, value)
    }

    fn samples(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(parse_sample)
            .collect()
    }

    fn value_of(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples(text).into_iter().find_map(|(n, l, v)| {
            let want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (n == name && l == want).then_some(v)
        })
    }

    fn empty() -> StoreStats {
        StoreStats::default()
    }

    #[test]
    fn every_family_has_help_and_type_even_when_empty() {
        let text = Metrics::new().render(&empty(), Timestamp(0));
        for (name, kind) in [
            ("vppr_events", "gauge"),
            ("vppr_api_requests_total", "counter"),
            ("vppr_notifications_total", "counter"),
            ("vppr_syncs_total", "counter"),
            ("vppr_token_expiry_seconds", "gauge"),
            ("vppr_api_request_duration_seconds", "histogram"),
            ("vppr_webhook_ack_duration_seconds", "histogram"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        // The unlabelled histogram is always present, at zero.
        assert_eq!(
            value_of(&text, "vppr_webhook_ack_duration_seconds_count", &[]),
            Some(0.0)
        );
        assert!(text.ends_with('\n'));
        // Text format 0.0.4, not OpenMetrics: no `# EOF`, no doubled suffix.
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("_total_total"), "{text}");
        assert!(!text.contains(".."), "one period after a help text: {text}");
    }

    #[test]
    fn counters_count_per_label_set() {
        let m = Metrics::new();
        m.api_request("acme", "assets/associate", "200");
        m.api_request("acme", "assets/associate", "200");
        m.api_request("acme", "assets/associate", "429");
        m.notification("acme", "ASSET_MANAGEMENT", "applied");
        m.sync("beta", "users", "ok");
        let text = m.render(&empty(), Timestamp(0));
        let labels = [
            ("token", "acme"),
            ("endpoint", "assets/associate"),
            ("status", "200"),
        ];
        assert_eq!(
            value_of(&text, "vppr_api_requests_total", &labels),
            Some(2.0)
        );
        let labels = [
            ("token", "acme"),
            ("endpoint", "assets/associate"),
            ("status", "429"),
        ];
        assert_eq!(
            value_of(&text, "vppr_api_requests_total", &labels),
            Some(1.0)
        );
        let labels = [
            ("token", "acme"),
            ("type", "ASSET_MANAGEMENT"),
            ("result", "applied"),
        ];
        assert_eq!(
            value_of(&text, "vppr_notifications_total", &labels),
            Some(1.0)
        );
        let labels = [("token", "beta"), ("kind", "users"), ("result", "ok")];
        assert_eq!(value_of(&text, "vppr_syncs_total", &labels), Some(1.0));
    }

    #[test]
    fn clones_share_the_registry_and_new_ones_do_not() {
        let m = Metrics::new();
        m.clone().sync("acme", "assets", "ok");
        let text = m.render(&empty(), Timestamp(0));
        assert!(text.contains("vppr_syncs_total{token=\"acme\",kind=\"assets\",result=\"ok\"} 1\n"));
        let other = Metrics::new().render(&empty(), Timestamp(0));
        assert!(!other.contains("token=\"acme\""), "{other}");
    }

    #[test]
    fn label_values_are_escaped_and_round_trip() {
        let m = Metrics::new();
        let nasty = "a\\b\"c\nd";
        m.notification(nasty, "T", "r");
        let text = m.render(&empty(), Timestamp(0));
        assert!(text.contains(r#"token="a\\b\"c\nd""#), "{text}");
        // Every line is either a comment or a well-formed sample, and no raw newline leaked.
        let labels = [("token", nasty), ("type", "T"), ("result", "r")];
        assert_eq!(
            value_of(&text, "vppr_notifications_total", &labels),
            Some(1.0)
        );
    }

    #[test]
    fn events_gauge_comes_from_the_store_and_stale_label_sets_go() {
        let m = Metrics::new();
        let stats = StoreStats {
            events: vec![
                EventCount {
                    token: "acme".into(),
                    state: "pending".into(),
                    outcome: None,
                    count: 3,
                },
                EventCount {
                    token: "acme".into(),
                    state: "syncing".into(),
                    outcome: Some("failed".into()),
                    count: 1,
                },
            ],
            token_expiry: vec![],
        };
        let text = m.render(&stats, Timestamp(0));
        let pending = [("state", "pending"), ("outcome", "none"), ("token", "acme")];
        assert_eq!(value_of(&text, "vppr_events", &pending), Some(3.0));
        let l = [
            ("state", "syncing"),
            ("outcome", "failed"),
            ("token", "acme"),
        ];
        assert_eq!(value_of(&text, "vppr_events", &l), Some(1.0));
        // The next scrape shows only what the store reports then.
        let stats = StoreStats {
            events: stats.events[1..].to_vec(),
            token_expiry: vec![],
        };
        let text = m.render(&stats, Timestamp(0));
        assert_eq!(value_of(&text, "vppr_events", &pending), None, "{text}");
        assert_eq!(value_of(&text, "vppr_events", &l), Some(1.0));
    }

    #[test]
    fn token_expiry_is_seconds_from_now_and_apple_wins_over_the_file() {
        let m = Metrics::new();
        let expiry = |token: &str, at: i64| TokenExpiry {
            token: token.into(),
            expires_at: Timestamp(at),
        };
        let stats = StoreStats {
            events: vec![],
            token_expiry: vec![expiry("acme", 100_000), expiry("beta", 5_000)],
        };
        m.set_token_expiry("acme", Timestamp(200_000));
        // A token no longer configured is not exported even if it was learned earlier.
        m.set_token_expiry("gone", Timestamp(1));
        let text = m.render(&stats, Timestamp(10_000));
        assert_eq!(
            value_of(&text, "vppr_token_expiry_seconds", &[("token", "acme")]),
            Some(190.0)
        );
        assert_eq!(
            value_of(&text, "vppr_token_expiry_seconds", &[("token", "beta")]),
            Some(-5.0)
        );
        assert_eq!(
            value_of(&text, "vppr_token_expiry_seconds", &[("token", "gone")]),
            None
        );
        // A token removed by a reload disappears from the next scrape.
        let stats = StoreStats {
            events: vec![],
            token_expiry: vec![expiry("acme", 100_000)],
        };
        let text = m.render(&stats, Timestamp(10_000));
        assert_eq!(
            value_of(&text, "vppr_token_expiry_seconds", &[("token", "beta")]),
            None,
            "{text}"
        );
    }

    #[test]
    fn lease_families_only_with_a_snapshot_held_holder_and_live() {
        use crate::cluster::lease::Lease;
        let m = Metrics::new();
        let plain = m.render(&empty(), Timestamp(0));
        for name in [
            "vppr_lease_held",
            "vppr_lease_holder_info",
            "vppr_instances_live",
        ] {
            assert!(!plain.contains(name), "{name} without a cluster: {plain}");
        }
        let lease = |token: &str, holder: &str, expires_at: i64| Lease {
            token: token.into(),
            holder: holder.into(),
            expires_at: Timestamp(expires_at),
        };
        let nasty = "i\\\"x\ny";
        let snapshot = LeaseSnapshot {
            now: Timestamp(1_000),
            live: ["me".to_string(), nasty.to_string(), "c".to_string()].into(),
            leases: vec![
                lease("acme", "me", 5_000),
                lease("beta", nasty, 5_000),
                // Expired: nobody holds it.
                lease("gamma", "me", 1_000),
            ],
        };
        let tokens = ["acme".to_string(), "beta".to_string(), "gamma".to_string()];
        let gauges = LeaseGauges {
            me: "me",
            tokens: &tokens,
            snapshot: &snapshot,
        };
        let text = m.render_with_leases(&empty(), Timestamp(0), Some(gauges));
        for (name, kind) in [
            ("vppr_lease_held", "gauge"),
            ("vppr_lease_holder_info", "gauge"),
            ("vppr_instances_live", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        }
        let held = |t| value_of(&text, "vppr_lease_held", &[("token", t)]);
        assert_eq!(held("acme"), Some(1.0));
        assert_eq!(held("beta"), Some(0.0));
        assert_eq!(held("gamma"), Some(0.0), "expired");
        let info = |t, i| {
            value_of(
                &text,
                "vppr_lease_holder_info",
                &[("token", t), ("instance", i)],
            )
        };
        assert_eq!(info("acme", "me"), Some(1.0));
        assert_eq!(
            info("beta", nasty),
            Some(1.0),
            "escaped and round-trips: {text}"
        );
        assert_eq!(info("gamma", "me"), None);
        assert_eq!(value_of(&text, "vppr_instances_live", &[]), Some(3.0));
        // Every line parses (samples() is strict) and the rest of the text is unchanged.
        assert!(!samples(&text).is_empty());
        assert!(
            text.starts_with(&plain),
            "the cluster families come after the rest"
        );
        assert!(!text.contains("# EOF"));

        // Next scrape: a lease gone is gone, and without a snapshot the families go too.
        let snapshot = LeaseSnapshot {
            leases: vec![lease("beta", "me", 5_000)],
            ..snapshot.clone()
        };
        let gauges = LeaseGauges {
            snapshot: &snapshot,
            ..gauges
        };
        let text = m.render_with_leases(&empty(), Timestamp(0), Some(gauges));
        let info = |t, i| {
            value_of(
                &text,
                "vppr_lease_holder_info",
                &[("token", t), ("instance", i)],
            )
        };
        assert_eq!(info("acme", "me"), None, "{text}");
        assert_eq!(info("beta", "me"), Some(1.0));
        assert!(!m.render(&empty(), Timestamp(0)).contains("vppr_lease"));
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let m = Metrics::new();
        for s in [0.001, 0.02, 0.02, 3.0, 100.0, f64::NAN, -1.0] {
            m.observe_api_latency("status", s);
        }
        m.observe_webhook_ack(0.2);
        let text = m.render(&empty(), Timestamp(0));
        let name = "vppr_api_request_duration_seconds_bucket";
        let b = |le: &str| value_of(&text, name, &[("endpoint", "status"), ("le", le)]);
        // NaN and negative count as 0: in the first bucket.
        assert_eq!(b("0.005"), Some(3.0));
        assert_eq!(b("0.025"), Some(5.0));
        assert_eq!(b("2.5"), Some(5.0));
        assert_eq!(b("5"), Some(6.0));
        assert_eq!(b("30"), Some(6.0));
        assert_eq!(b("+Inf"), Some(7.0));
        let count = value_of(
            &text,
            "vppr_api_request_duration_seconds_count",
            &[("endpoint", "status")],
        );
        assert_eq!(count, Some(7.0));
        let sum = value_of(
            &text,
            "vppr_api_request_duration_seconds_sum",
            &[("endpoint", "status")],
        )
        .unwrap();
        assert!((sum - 103.041).abs() < 1e-9, "{sum}");
        // Buckets never decrease, and there is one per bound plus +Inf.
        let mut last = 0.0;
        let mut n_buckets = 0;
        for (n, l, v) in samples(&text) {
            if n == name && l[0].1 == "status" {
                assert!(v >= last);
                last = v;
                n_buckets += 1;
            }
        }
        assert_eq!(n_buckets, LATENCY_BUCKETS.len() + 1);
        assert_eq!(
            value_of(
                &text,
                "vppr_webhook_ack_duration_seconds_bucket",
                &[("le", "0.25")]
            ),
            Some(1.0)
        );
    }
}
