//! Push benchmark (design §10): `cargo bench --bench push [-- --quick]`.
//!
//! The real daemon binary (`CARGO_BIN_EXE_vpp-reconciler`, built with the bench) runs with
//! `[push]` pointed at a loopback axum receiver written here, which checks every batch's
//! Standard Webhooks signature, answers 200, and records per change its `seq`, its `eventId`
//! and when it arrived. No Apple: `base_url` is `http://127.0.0.1:9/mdm/v2/` and
//! `notification_grace` 24h, so nothing is polled and each tracked event is one feed change.
//! `max_batch` 100, the other `[push]` settings at their defaults.
//!
//! 1. **Throughput.** N events (10,000; 1,000 with `--quick`) tracked as fast as possible with
//!    `POST /v1/events` from 32 concurrent clients; changes/s delivered to the receiver from
//!    the first track request until all N have arrived.
//! 2. **Lag at load.** On the same (drained) daemon: events tracked at 100/s for 30 s (10 s
//!    with `--quick`), each in its own task at its scheduled time — about the change rate of
//!    the reconcile benchmark (10,000 events settling over ~110 s, ~90 changes/s). Lag: from
//!    the moment the track request was answered to the moment the receiver got the change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::Mac;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_vpp-reconciler");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MAX_BATCH: u32 = 100;
const CLIENTS: usize = 32;
const PACED_RATE: u64 = 100;
/// Longest wait for every change to arrive after the last track request.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(120);

// ---- the MDM's receiver ---------------------------------------------------------------------

#[derive(Default)]
struct RxState {
    /// eventId → (seq, first arrival) of its change.
    events: HashMap<String, (i64, Instant)>,
    changes: u64,
    batches: u64,
    bad: Vec<String>,
}

#[derive(Clone)]
struct Receiver {
    key: Arc<Vec<u8>>,
    state: Arc<Mutex<RxState>>,
}

/// Standard Webhooks verification: HMAC-SHA256 over `{id}.{timestamp}.{body}` with the
/// base64-decoded secret after `whsec_`; the header holds space-separated `v1,<base64>`.
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("missing {n}"))
    };
    let (id, ts, sigs) = (
        h("webhook-id")?,
        h("webhook-timestamp")?,
        h("webhook-signature")?,
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == want)
    {
        Ok(())
    } else {
        Err(format!("signature mismatch for {id}"))
    }
}

async fn handle(rx: Receiver, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    if let Err(e) = verify(&rx.key, &headers, &body) {
        rx.state.lock().unwrap().bad.push(e);
        return StatusCode::UNAUTHORIZED;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let changes = v["changes"].as_array().cloned().unwrap_or_default();
    let mut st = rx.state.lock().unwrap();
    st.batches += 1;
    for c in &changes {
        st.changes += 1;
        let seq = c["seq"].as_i64().unwrap_or(-1);
        if let Some(id) = c["eventId"].as_str() {
            st.events.entry(id.to_string()).or_insert((seq, at));
        }
    }
    StatusCode::OK
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(SECRET.strip_prefix("whsec_").unwrap())
            .unwrap();
        let rx = Receiver {
            key: Arc::new(key),
            state: Arc::new(Mutex::new(RxState::default())),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = rx.clone();
        let app =
            axum::Router::new().fallback(move |h: HeaderMap, b: Bytes| handle(r.clone(), h, b));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (rx, addr)
    }

    /// Arrival of each of `ids`' changes, waiting until all are in.
    async fn wait_for(&self, ids: &[String]) -> Vec<Instant> {
        let start = Instant::now();
        loop {
            {
                let st = self.state.lock().unwrap();
                assert!(st.bad.is_empty(), "bad signatures: {:?}", st.bad);
                if ids.iter().all(|id| st.events.contains_key(id)) {
                    return ids.iter().map(|id| st.events[id].1).collect();
                }
            }
            assert!(
                start.elapsed() < ARRIVAL_TIMEOUT,
                "not every change arrived within {ARRIVAL_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn counts(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap();
        (st.batches, st.changes)
    }
}

// ---- the daemon -----------------------------------------------------------------------------

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn write_config(dir: &Path, api: SocketAddr, webhook: SocketAddr, push: SocketAddr) -> PathBuf {
    let exp = (chrono::Utc::now() + chrono::Duration::days(3 * 365))
        .format("%Y-%m-%dT%H:%M:%S+0000")
        .to_string();
    let token = base64::engine::general_purpose::STANDARD
        .encode(json!({"token": "bench", "expDate": exp, "orgName": "Bench"}).to_string());
    std::fs::write(dir.join("acme.vpptoken"), token).unwrap();
    std::fs::write(dir.join("acme.notify"), "bench-notify-secret").unwrap();
    std::fs::write(dir.join("push.secret"), SECRET).unwrap();
    let toml = format!(
        r#"
[daemon]
database = "state.db"
api_listen = "{api}"
log_level = "error"
[apple]
base_url = "http://127.0.0.1:9/mdm/v2/"
[webhook]
listen = "{webhook}"
[reconcile]
notification_grace = "24h"
[[tokens]]
name = "acme"
token_file = "acme.vpptoken"
notification_auth_token_file = "acme.notify"
[push]
url = "http://{push}/"
secret_file = "push.secret"
max_batch = {MAX_BATCH}
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_daemon(
    dir: &Path,
    config: &Path,
    api: SocketAddr,
    http: &reqwest::Client,
) -> Daemon {
    let log = dir.join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn the daemon");
    let d = Daemon { child, log };
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("http://{api}/healthz")).send().await {
            if r.status().is_success() {
                return d;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon not healthy; log:\n{}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn track(http: &reqwest::Client, url: &str, id: &str) {
    let r = http
        .post(url)
        .json(&json!({"token": "acme", "eventId": id, "type": "ASSOCIATE"}))
        .send()
        .await
        .expect("track request");
    assert_eq!(r.status().as_u16(), 201, "track answer");
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

// ---- the runs -------------------------------------------------------------------------------

async fn throughput(rx: &Receiver, http: &reqwest::Client, url: &str, n: usize) {
    let (b0, c0) = rx.counts();
    let ids: Vec<String> = (0..n).map(|i| format!("tp-{i:06}")).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let http = http.clone();
        let url = url.to_string();
        let mine: Vec<String> = ids.iter().skip(c).step_by(CLIENTS).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for id in &mine {
                track(&http, &url, id).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let tracked = start.elapsed();
    let arrivals = rx.wait_for(&ids).await;
    let last = arrivals.iter().max().copied().unwrap_or(start);
    let delivered = last.duration_since(start);
    let (b1, c1) = rx.counts();
    let n = ids.len();
    println!(
        "== throughput ({n} events from {CLIENTS} concurrent clients, max_batch {MAX_BATCH}) =="
    );
    println!(
        "tracking: {:.2} s ({:.0} events/s answered)",
        tracked.as_secs_f64(),
        n as f64 / tracked.as_secs_f64()
    );
    println!(
        "all {n} changes at the receiver after {:.2} s: {:.0} changes/s delivered",
        delivered.as_secs_f64(),
        n as f64 / delivered.as_secs_f64()
    );
    println!(
        "last change arrived {:.0} ms after the last track answer",
        delivered.saturating_sub(tracked).as_secs_f64() * 1000.0
    );
    println!(
        "batches: {} for {} changes ({:.1} changes/batch)",
        b1 - b0,
        c1 - c0,
        (c1 - c0) as f64 / (b1 - b0).max(1) as f64
    );
}

async fn lag(rx: &Receiver, http: &reqwest::Client, url: &str, secs: u64) {
    let (b0, c0) = rx.counts();
    let total = (PACED_RATE * secs) as usize;
    let ids: Vec<String> = (0..total).map(|i| format!("lag-{i:06}")).collect();
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total);
    for (i, id) in ids.iter().enumerate() {
        let http = http.clone();
        let url = url.to_string();
        let id = id.clone();
        let due = t0 + Duration::from_micros(i as u64 * 1_000_000 / PACED_RATE);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            track(&http, &url, &id).await;
            (Instant::now(), tokio::time::Instant::now() - due)
        }));
    }
    let mut answered = Vec::with_capacity(total);
    let mut track_lat = Vec::with_capacity(total);
    for t in tasks {
        let (at, l) = t.await.expect("paced task");
        answered.push(at);
        track_lat.push(l);
    }
    let span = t0.elapsed();
    let arrivals = rx.wait_for(&ids).await;
    let mut lags: Vec<Duration> = arrivals
        .iter()
        .zip(&answered)
        .map(|(a, t)| a.saturating_duration_since(*t))
        .collect();
    lags.sort();
    track_lat.sort();
    let (b1, c1) = rx.counts();
    println!("== lag at load ({PACED_RATE} events/s for {secs} s, {total} changes) ==");
    println!(
        "achieved rate: {:.0} events/s; track answer p50 {:.1} ms, p99 {:.1} ms (from scheduled time)",
        total as f64 / span.as_secs_f64(),
        pct(&track_lat, 0.5),
        pct(&track_lat, 0.99)
    );
    println!(
        "lag (track answered -> change at the receiver): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&lags, 0.50),
        pct(&lags, 0.99),
        pct(&lags, 1.0)
    );
    println!(
        "batches: {} for {} changes ({:.1} changes/batch)",
        b1 - b0,
        c1 - c0,
        (c1 - c0) as f64 / (b1 - b0).max(1) as f64
    );
}

fn main() {
    // `cargo bench` passes --bench; only --quick matters.
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 1_000 } else { 10_000 };
    let secs = if quick { 10 } else { 30 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total = Instant::now();
    rt.block_on(async {
        let (rx, push_addr) = Receiver::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let api = free_addr();
        let config = write_config(dir.path(), api, free_addr(), push_addr);
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let daemon = start_daemon(dir.path(), &config, api, &http).await;
        // The daemon created its API token beside the database: every request carries it.
        let token = vpp_reconciler::api::token_file::read(&dir.path().join("api-token"))
            .expect("the API token");
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose())).unwrap();
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::AUTHORIZATION,
                auth,
            )]))
            .build()
            .unwrap();
        let url = format!("http://{api}/v1/events");
        println!("daemon: {BIN}");
        throughput(&rx, &http, &url, n).await;
        lag(&rx, &http, &url, secs).await;
        let (batches, changes) = rx.counts();
        println!("receiver total: {changes} changes in {batches} batches, every signature valid");
        drop(daemon);
    });
    println!("bench wall time: {:.0} s", total.elapsed().as_secs_f64());
}
