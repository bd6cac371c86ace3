use super::*;
use crate::store::{EventCount, LeaseSnapshot, StoreStats, TokenExpiry};

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
