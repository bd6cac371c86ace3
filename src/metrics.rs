//! Prometheus metrics (design §8), exposed in text format 0.0.4 on the local API's `/metrics`.
//!
//! A deliberately small registry: a handful of fixed families, no dependency. Counters and
//! histograms live in a process-wide [`Metrics`] ([`global`]) so any module can record
//! without plumbing; gauges that mirror the database (`vppr_events`) are computed at scrape
//! time by the caller of [`Metrics::render`], so they can never drift from the store.
//!
//! Families:
//! - `vppr_events{state,outcome,token}` gauge, from the store at scrape time (`outcome="none"`
//!   while unknown).
//! - `vppr_api_requests_total{token,endpoint,status}` counter: calls to Apple's API
//!   ([`Metrics::api_request`]); `status` is the HTTP status or a short word such as
//!   `timeout` / `transport` when there was no response.
//! - `vppr_notifications_total{token,type,result}` counter ([`Metrics::notification`]).
//! - `vppr_syncs_total{token,kind,result}` counter ([`Metrics::sync`]).
//! - `vppr_token_expiry_seconds{token}` gauge: seconds until the content token expires
//!   (negative once expired), from [`Metrics::set_token_expiry`] or the store.
//! - `vppr_api_request_duration_seconds{endpoint}` histogram ([`Metrics::observe_api_latency`]).
//! - `vppr_webhook_ack_duration_seconds` histogram ([`Metrics::observe_webhook_ack`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::time::Timestamp;

/// Upper bounds (seconds) of the latency histograms: from a fast local commit to Apple's
/// slowest answers within a 30 s request timeout.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Handle to the registry; cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    api_requests: Mutex<BTreeMap<[String; 3], u64>>,
    notifications: Mutex<BTreeMap<[String; 3], u64>>,
    syncs: Mutex<BTreeMap<[String; 3], u64>>,
    token_expiry: Mutex<BTreeMap<String, Timestamp>>,
    api_latency: Mutex<BTreeMap<String, Histogram>>,
    webhook_ack: Mutex<Histogram>,
}

/// A cumulative histogram over [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    /// Non-cumulative counts per bucket; the `+Inf` bucket is `count`.
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        // A negative or NaN duration is a caller's bug; count it as zero rather than lose it.
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// One row of the `vppr_events` gauge, as counted from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventCount {
    pub token: String,
    pub state: String,
    pub outcome: Option<String>,
    pub count: u64,
}

/// What the store knows at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub events: Vec<EventCount>,
    /// Configured tokens and the expiry of their `.vpptoken`.
    pub token_expiry: Vec<(String, Timestamp)>,
}

/// Reads what `/metrics` exports from the store: one grouped count of events, and the expiry
/// of the configured tokens (`configured` filters out tokens removed by a reload).
pub fn snapshot(
    conn: &rusqlite::Connection,
    configured: &std::collections::HashSet<String>,
) -> Result<Snapshot, crate::store::StoreError> {
    let events = conn
        .prepare_cached(
            "SELECT token, state, outcome, COUNT(*) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )?
        .query_map([], |r| {
            Ok(EventCount {
                token: r.get(0)?,
                state: r.get(1)?,
                outcome: r.get(2)?,
                count: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    let token_expiry = conn
        .prepare_cached("SELECT name, expires_at FROM tokens WHERE expires_at IS NOT NULL")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, Timestamp(r.get(1)?))))?
        .filter(|r| r.as_ref().map_or(true, |(n, _)| configured.contains(n)))
        .collect::<Result<_, _>>()?;
    Ok(Snapshot {
        events,
        token_expiry,
    })
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::default)
}

// Poisoning only means another thread panicked mid-increment; the counts are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn inc(map: &Mutex<BTreeMap<[String; 3], u64>>, key: [&str; 3]) {
    let key = key.map(str::to_string);
    *lock(map).entry(key).or_insert(0) += 1;
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// One call to Apple's API answered (or failed) with `status`.
    pub fn api_request(&self, token: &str, endpoint: &str, status: &str) {
        inc(&self.inner.api_requests, [token, endpoint, status]);
    }

    /// One notification received: its `type` (ASSET_MANAGEMENT, …) and what became of it
    /// (e.g. `applied`, `duplicate`, `unauthorized`, `invalid`).
    pub fn notification(&self, token: &str, notification_type: &str, result: &str) {
        inc(
            &self.inner.notifications,
            [token, notification_type, result],
        );
    }

    /// One sync run finished with `result` (e.g. `ok`, `failed`, `abandoned`).
    pub fn sync(&self, token: &str, kind: &str, result: &str) {
        inc(&self.inner.syncs, [token, kind, result]);
    }

    /// The token's expiry as Apple last reported it (`tokenExpirationDate`); overrides the
    /// expiry read from the `.vpptoken` file.
    pub fn set_token_expiry(&self, token: &str, expires_at: Timestamp) {
        lock(&self.inner.token_expiry).insert(token.to_string(), expires_at);
    }

    /// Forgets a token removed by a reload.
    pub fn remove_token(&self, token: &str) {
        lock(&self.inner.token_expiry).remove(token);
    }

    /// Latency of one call to Apple's API.
    pub fn observe_api_latency(&self, endpoint: &str, seconds: f64) {
        lock(&self.inner.api_latency)
            .entry(endpoint.to_string())
            .or_default()
            .observe(seconds);
    }

    /// Time from receiving a notification to acknowledging it (after its commit).
    pub fn observe_webhook_ack(&self, seconds: f64) {
        lock(&self.inner.webhook_ack).observe(seconds);
    }

    /// The exposition text: the store's `snapshot` plus what was recorded, at `now`.
    pub fn render(&self, snapshot: &Snapshot, now: Timestamp) -> String {
        let mut out = String::with_capacity(4096);

        header(
            &mut out,
            "vppr_events",
            "Tracked events by state, outcome (none while unknown) and token.",
            "gauge",
        );
        for e in &snapshot.events {
            sample(
                &mut out,
                "vppr_events",
                &[
                    ("state", &e.state),
                    ("outcome", e.outcome.as_deref().unwrap_or("none")),
                    ("token", &e.token),
                ],
                e.count as f64,
            );
        }

        counter_family(
            &mut out,
            "vppr_api_requests_total",
            "Calls to Apple's API by token, endpoint and HTTP status.",
            ["token", "endpoint", "status"],
            &lock(&self.inner.api_requests),
        );
        counter_family(
            &mut out,
            "vppr_notifications_total",
            "Notifications received by token, type and result.",
            ["token", "type", "result"],
            &lock(&self.inner.notifications),
        );
        counter_family(
            &mut out,
            "vppr_syncs_total",
            "Finished sync runs by token, kind and result.",
            ["token", "kind", "result"],
            &lock(&self.inner.syncs),
        );

        header(
            &mut out,
            "vppr_token_expiry_seconds",
            "Seconds until the content token expires (negative once expired).",
            "gauge",
        );
        let mut expiry: BTreeMap<String, Timestamp> =
            snapshot.token_expiry.iter().cloned().collect();
        {
            let learned = lock(&self.inner.token_expiry);
            for (token, at) in learned.iter() {
                // Only tokens still configured; Apple's word wins over the file's.
                if let Some(slot) = expiry.get_mut(token) {
                    *slot = *at;
                }
            }
        }
        for (token, at) in &expiry {
            let secs = (at.0 - now.0) as f64 / 1000.0;
            sample(
                &mut out,
                "vppr_token_expiry_seconds",
                &[("token", token)],
                secs,
            );
        }

        header(
            &mut out,
            "vppr_api_request_duration_seconds",
            "Latency of calls to Apple's API by endpoint.",
            "histogram",
        );
        for (endpoint, h) in lock(&self.inner.api_latency).iter() {
            histogram(
                &mut out,
                "vppr_api_request_duration_seconds",
                &[("endpoint", endpoint)],
                h,
            );
        }

        header(
            &mut out,
            "vppr_webhook_ack_duration_seconds",
            "Time from receiving a notification to acknowledging it.",
            "histogram",
        );
        let ack = lock(&self.inner.webhook_ack).clone();
        histogram(&mut out, "vppr_webhook_ack_duration_seconds", &[], &ack);
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter_family(
    out: &mut String,
    name: &str,
    help: &str,
    labels: [&str; 3],
    values: &BTreeMap<[String; 3], u64>,
) {
    header(out, name, help, "counter");
    for (key, n) in values {
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .zip(key.iter())
            .map(|(l, v)| (*l, v.as_str()))
            .collect();
        sample(out, name, &pairs, *n as f64);
    }
}

fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
        cumulative += n;
        let le = format_value(*bound);
        let mut l = labels.to_vec();
        l.push(("le", &le));
        sample(out, &bucket, &l, cumulative as f64);
    }
    let mut l = labels.to_vec();
    l.push(("le", "+Inf"));
    sample(out, &bucket, &l, h.count as f64);
    sample(out, &format!("{name}_sum"), labels, h.sum);
    sample(out, &format!("{name}_count"), labels, h.count as f64);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(value));
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text escapes backslash and line feed only.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Sample values as Prometheus spells them (`+Inf`, `-Inf`, `NaN`; Rust prints `inf`).
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn every_family_has_help_and_type_even_when_empty() {
        let text = Metrics::new().render(&Snapshot::default(), Timestamp(0));
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
    }

    #[test]
    fn counters_count_per_label_set() {
        let m = Metrics::new();
        m.api_request("acme", "assets/associate", "200");
        m.api_request("acme", "assets/associate", "200");
        m.api_request("acme", "assets/associate", "429");
        m.notification("acme", "ASSET_MANAGEMENT", "applied");
        m.sync("beta", "users", "ok");
        let text = m.render(&Snapshot::default(), Timestamp(0));
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
    fn clones_share_the_registry() {
        let m = Metrics::new();
        m.clone().sync("acme", "assets", "ok");
        let text = m.render(&Snapshot::default(), Timestamp(0));
        assert!(text.contains("vppr_syncs_total{token=\"acme\",kind=\"assets\",result=\"ok\"} 1\n"));
    }

    #[test]
    fn label_values_are_escaped_and_round_trip() {
        let m = Metrics::new();
        let nasty = "a\\b\"c\nd";
        m.notification(nasty, "T", "r");
        let text = m.render(&Snapshot::default(), Timestamp(0));
        assert!(text.contains(r#"token="a\\b\"c\nd""#), "{text}");
        // Every line is either a comment or a well-formed sample, and no raw newline leaked.
        let labels = [("token", nasty), ("type", "T"), ("result", "r")];
        assert_eq!(
            value_of(&text, "vppr_notifications_total", &labels),
            Some(1.0)
        );
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn events_gauge_comes_from_the_snapshot() {
        let snap = Snapshot {
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
        let text = Metrics::new().render(&snap, Timestamp(0));
        let l = [("state", "pending"), ("outcome", "none"), ("token", "acme")];
        assert_eq!(value_of(&text, "vppr_events", &l), Some(3.0));
        let l = [
            ("state", "syncing"),
            ("outcome", "failed"),
            ("token", "acme"),
        ];
        assert_eq!(value_of(&text, "vppr_events", &l), Some(1.0));
    }

    #[test]
    fn token_expiry_is_seconds_from_now_and_apple_wins_over_the_file() {
        let m = Metrics::new();
        let snap = Snapshot {
            events: vec![],
            token_expiry: vec![
                ("acme".into(), Timestamp(100_000)),
                ("beta".into(), Timestamp(5_000)),
            ],
        };
        m.set_token_expiry("acme", Timestamp(200_000));
        // A token no longer configured is not exported even if it was learned earlier.
        m.set_token_expiry("gone", Timestamp(1));
        let text = m.render(&snap, Timestamp(10_000));
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
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let m = Metrics::new();
        for s in [0.001, 0.02, 0.02, 3.0, 100.0, f64::NAN, -1.0] {
            m.observe_api_latency("status", s);
        }
        m.observe_webhook_ack(0.2);
        let text = m.render(&Snapshot::default(), Timestamp(0));
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
        // Buckets never decrease.
        let mut last = 0.0;
        for (n, l, v) in samples(&text) {
            if n == name && l[0].1 == "status" {
                assert!(v >= last);
                last = v;
            }
        }
        assert_eq!(
            value_of(
                &text,
                "vppr_webhook_ack_duration_seconds_bucket",
                &[("le", "0.25")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn special_values_use_prometheus_spelling() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.005), "0.005");
        assert_eq!(format_value(30.0), "30");
    }

    #[test]
    fn global_is_one_registry() {
        global().sync("global-test", "assets", "ok");
        let text = global().render(&Snapshot::default(), Timestamp(0));
        assert!(text.contains("token=\"global-test\""));
        assert!(std::ptr::eq(global(), global()));
    }
}
