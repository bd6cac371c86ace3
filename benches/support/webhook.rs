//! Webhook load shared by the reconcile and backends benchmarks: synthetic ASSET_MANAGEMENT
//! notifications with Bearer auth, paced (latency from each request's due time) or as an
//! unpaced burst from many connections. Prints what it measures as it goes.
#![allow(dead_code)] // each benchmark uses a part

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

/// One notification: a new assignment of `adam_id`, unique notificationId and eventId.
pub fn notification(uid: &str, adam_id: &str, tag: &str, i: usize) -> Vec<u8> {
    json!({
        "notification": {"assignments": [{"adamId": adam_id, "pricingParam": "STDQ",
            "serialNumber": format!("WH-{tag}-{i:07}")}],
            "eventId": format!("wh-{tag}-{i:07}"), "result": "SUCCESS", "type": "ASSOCIATE"},
        "notificationId": format!("wh-{tag}-{}-{i:07}", uuid::Uuid::new_v4()),
        "notificationType": "ASSET_MANAGEMENT",
        "uId": uid,
    })
    .to_string()
    .into_bytes()
}

/// The `p` quantile of sorted latencies, in ms.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Makes notification `i` of a run named `tag`.
pub type Body = Arc<dyn Fn(&str, usize) -> Vec<u8> + Send + Sync>;

/// Where notifications go and how they are made.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub auth: String,
    pub body: Body,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(http: &reqwest::Client, t: &Target, body: Vec<u8>) {
    let r = http
        .post(&t.url)
        .header("authorization", t.auth.as_str())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("webhook POST");
    assert_eq!(r.status().as_u16(), 200, "webhook answer");
}

#[derive(Default)]
pub struct Paced {
    pub rate: usize,
    pub p50: f64,
    pub p99: f64,
}

/// `rate` notifications/s for `secs` s, each in its own task; latency from its scheduled send
/// time, so a stall is not hidden.
pub async fn paced(http: &reqwest::Client, t: &Target, rate: usize, secs: usize) -> Paced {
    let total = rate * secs;
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let http = http.clone();
        let t = t.clone();
        let body = (t.body)("paced", i);
        let due = t0 + Duration::from_micros((i as u64) * 1_000_000 / rate as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            post(&http, &t, body).await;
            let done = tokio::time::Instant::now();
            (done - due, done)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut end = t0;
    for task in tasks {
        let (l, done) = task.await.expect("webhook task");
        lat.push(l);
        end = end.max(done);
    }
    lat.sort();
    let span = (end - t0).as_secs_f64();
    println!("paced offered rate: {rate} notifications/s for {secs} s ({total} notifications)");
    println!(
        "paced achieved rate: {:.0} notifications/s",
        total as f64 / span
    );
    println!("paced latency p50: {:.1} ms", pct(&lat, 0.50));
    println!("paced latency p99: {:.1} ms", pct(&lat, 0.99));
    println!("paced latency max: {:.1} ms", pct(&lat, 1.0));
    Paced {
        rate,
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
    }
}

#[derive(Default)]
pub struct Burst {
    pub conns: usize,
    pub total: usize,
    pub rate: f64,
    pub p99: f64,
}

/// Connection `c`'s share of `total` over `conns`: (first index, count); all `total` are sent.
pub fn share(total: usize, conns: usize, c: usize) -> (usize, usize) {
    let (per, rem) = (total / conns, total % conns);
    (c * per + c.min(rem), per + usize::from(c < rem))
}

/// `total` notifications, unpaced, from `conns` concurrent connections.
pub async fn burst(http: &reqwest::Client, t: &Target, conns: usize, total: usize) -> Burst {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let http = http.clone();
        let t = t.clone();
        let (first, count) = share(total, conns, c);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            for i in first..first + count {
                let body = (t.body)("burst", i);
                let s = Instant::now();
                post(&http, &t, body).await;
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for task in tasks {
        lat.extend(task.await.expect("burst task"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    println!("burst: {total} notifications from {conns} concurrent connections");
    let rate = total as f64 / secs;
    println!("burst throughput: {rate:.0} notifications/s");
    println!("burst latency p50: {:.1} ms", pct(&lat, 0.50));
    println!("burst latency p99: {:.1} ms", pct(&lat, 0.99));
    println!("burst latency max: {:.1} ms", pct(&lat, 1.0));
    Burst {
        conns,
        total,
        rate,
        p99: pct(&lat, 0.99),
    }
}
