//! Reconcile benchmark (issue 4): `cargo bench --bench reconcile [-- --quick]`.
//!
//! 1. **Daemon.** 10,000 ASSOCIATE events (1,000 with `--quick`) on 2 tokens, against the
//!    in-process simulator at 15 requests/s per token with 30% of notifications dropped and
//!    `processingDelay` 2s. The daemon (`daemon::serve`, in-process) receives the notifications
//!    on its webhook (`PUT /_sim/notify`). Bench timings: notification_grace 5s, poll_min 1s,
//!    poll_max 30s, resubmit_after 10m, give_up_after 1h.
//!
//!    The MDM's own writes are sent straight to the simulator (as an MDM would) and tracked
//!    with `POST /v1/events` (with the request body and `submittedAt`). They are *not*
//!    counted: while they are sent the simulator's `maxRequestPerSecond` is raised so that
//!    set-up takes seconds, not 6 minutes; the daemon's own client stays capped at 15/s by its
//!    configuration throughout, and the limit goes back to 15 one second after the last write.
//!    **Counted**: every Apple call the daemon makes from just before the first write until
//!    every event is settled: Event Status, Get Assignments/Assets/Users pages and Client
//!    Config, taken from `/_sim/stats` deltas.
//!
//!    Lower bound = one Event Status call per event whose notification was lost (each event
//!    here has exactly one notification: ≤100 entities, all succeed or all fail) + the pages
//!    of one final assignments sync (incremental, so ceil(assignments / 1000) pages) and one
//!    assets sync (1 page) per token.
//! 2. **Naive.** A fresh simulator, same seed, same workload, same faults, no webhook: a
//!    polling-only MDM that polls every event with `AppleClient::event_status` from
//!    notification_grace on, every poll_min, until it is no longer PENDING (5 concurrent
//!    requests and 15/s per token, the same client gate). It does no syncs at all, so its
//!    count is a floor for that strategy.
//! 3. **Webhook.** On the daemon of part 1: synthetic ASSET_MANAGEMENT notifications (unique
//!    notificationIds, Bearer auth, one new assignment each of one of token t0's 4 mirrored
//!    assets, so the mirror and the asset counts change with each) paced at 1,000/s for 10 s (3 s with
//!    `--quick`), each in its own task, latency measured from its scheduled send time (so a
//!    stall is not hidden); then an unpaced burst from 64 connections.
//! 4. **One-commit-per-notification baseline.** After the daemon stops, on a copy of its
//!    store: the webhook's own work for the same kind of notification (parse, row,
//!    `store::sqlite::notify::record_notification`), each notification in its own durable transaction on a
//!    connection opened as the daemon opens its own (`store::open_write_connection`: WAL,
//!    synchronous=FULL), one after the other (SQLite has one writer, so concurrent senders
//!    would queue for the same commits). No HTTP, so the ratio to the daemon's burst
//!    understates the gain of group commit.
//!
//! `run` returns the figures for `cargo bench --bench all`.

#[path = "support/webhook.rs"]
mod webhook_load;

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use vpp_reconciler::apple::model::EventStatus;
use vpp_reconciler::apple::{AppleClient, ClientOptions};
use vpp_reconciler::daemon::{self, Listeners};
use vpp_reconciler::secret::Secret;
use vpp_reconciler::sim::{self, SimOptions};
use vpp_reconciler::time::Timestamp;

const SEED: u64 = 7;
const RPS: u32 = 15;
const TOKENS: [&str; 2] = ["t0", "t1"];
const PAGE_SIZE: usize = 1000;
const DROP_RATE: f64 = 0.3;
const PROCESSING_DELAY: &str = "2s";
const GRACE: Duration = Duration::from_secs(5);
const POLL_MIN: Duration = Duration::from_secs(1);
const ASSETS_PER_TOKEN: usize = 4;
/// Every FAIL_EVERY-th event of a token associates an unknown user (9609, FAILURE).
const FAIL_EVERY: usize = 20;
/// The MDM's writes in flight.
const SUBMIT_CONCURRENCY: usize = 16;

// ---- simulator ------------------------------------------------------------------------------

struct SimHandle {
    addr: SocketAddr,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimHandle {
    /// The simulator on its own runtime, so its work does not queue behind the daemon's.
    fn start(seed: u64) -> SimHandle {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("simulator runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the simulator");
                tx.send(listener.local_addr().expect("simulator address"))
                    .expect("report the simulator address");
                let _ = sim::serve(listener, SimOptions { seed }, async move {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        SimHandle {
            addr: rx.recv().expect("simulator address"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rb = self.http.request(method, self.url(path));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("simulator control request");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
    async fn put(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, None).await
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Location {
    uid: String,
    stoken: String,
}

fn adam_id(token: usize, a: usize) -> String {
    format!("{}", 500_000_000 + token * 100 + a)
}

/// Two locations with enough licences, the faults, and page size 1000.
async fn set_up_sim(sim: &SimHandle, n: usize) -> Vec<Location> {
    let per_token = n.div_ceil(TOKENS.len());
    let mut locs = Vec::new();
    for (t, name) in TOKENS.iter().enumerate() {
        let assets: Vec<Value> = (0..ASSETS_PER_TOKEN)
            .map(|a| {
                json!({"adamId": adam_id(t, a), "pricingParam": "STDQ", "productType": "App",
                    "total": per_token, "deviceAssignable": true, "revocable": true})
            })
            .collect();
        let users: Vec<Value> = (0..10)
            .map(|u| json!({"clientUserId": format!("u{u}"), "email": format!("u{u}@example.com")}))
            .collect();
        let loc = sim
            .post(
                "/_sim/locations",
                json!({"name": name, "assets": assets, "users": users, "pageSize": PAGE_SIZE}),
            )
            .await;
        locs.push(Location {
            uid: loc["uId"].as_str().expect("uId").to_string(),
            stoken: loc["sToken"].as_str().expect("sToken").to_string(),
        });
    }
    sim.put(
        "/_sim/faults",
        json!({"dropNotificationRate": DROP_RATE, "processingDelay": PROCESSING_DELAY}),
    )
    .await;
    locs
}

// ---- workload -------------------------------------------------------------------------------

struct Job {
    token: usize,
    body: Value,
}

/// Events alternate between the tokens; per token, every 20th associates an unknown user
/// (one FAILURE notification), the others one asset to two serial numbers (one SUCCESS).
fn workload(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let token = i % TOKENS.len();
            let j = i / TOKENS.len();
            let asset = json!([{"adamId": adam_id(token, j % ASSETS_PER_TOKEN), "pricingParam": "STDQ"}]);
            let body = if j.is_multiple_of(FAIL_EVERY) {
                json!({"assets": asset, "clientUserIds": [format!("ghost-{j}")]})
            } else {
                json!({"assets": asset, "serialNumbers": [format!("T{token}S{j:06}A"), format!("T{token}S{j:06}B")]})
            };
            Job { token, body }
        })
        .collect()
}

struct Submitted {
    token: usize,
    event_id: String,
    at: Instant,
}

/// Sends the workload at the simulator as the MDM would (limit raised meanwhile, see the
/// module docs), tracking each event through the daemon's API when `api` is given.
async fn submit(
    sim: &SimHandle,
    locs: &[Location],
    jobs: &[Job],
    api: Option<(SocketAddr, &str)>,
) -> (Vec<Submitted>, Duration) {
    sim.put("/_sim/limits", json!({"maxRequestPerSecond": 100_000}))
        .await;
    let start = Instant::now();
    let url = sim.url("/mdm/v2/assets/associate");
    let out: Vec<Submitted> = futures::stream::iter(jobs.iter())
        .map(|job| {
            let http = sim.http.clone();
            let url = url.clone();
            let stoken = locs[job.token].stoken.clone();
            async move {
                let at = Instant::now();
                let submitted_at = Timestamp::now().to_rfc3339();
                let r = http
                    .post(&url)
                    .bearer_auth(&stoken)
                    .json(&job.body)
                    .send()
                    .await
                    .expect("associate");
                let v: Value = r.json().await.expect("associate answer");
                let event_id = v["eventId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("associate refused: {v}"))
                    .to_string();
                if let Some((api, token)) = api {
                    let r = http
                        .post(format!("http://{api}/v1/events"))
                        .bearer_auth(token)
                        .json(&json!({"token": TOKENS[job.token], "eventId": event_id,
                            "type": "ASSOCIATE", "submittedAt": submitted_at, "request": job.body}))
                        .send()
                        .await
                        .expect("track");
                    assert_eq!(r.status().as_u16(), 201, "track {event_id}");
                }
                Submitted {
                    token: job.token,
                    event_id,
                    at,
                }
            }
        })
        .buffered(SUBMIT_CONCURRENCY)
        .collect()
        .await;
    let took = start.elapsed();
    // Only the daemon's own requests remain in the simulator's one-second window after this.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.put("/_sim/limits", json!({"maxRequestPerSecond": RPS}))
        .await;
    (out, took)
}

// ---- stats ----------------------------------------------------------------------------------

const READS: [&str; 5] = [
    "eventStatus",
    "getAssignments",
    "getAssets",
    "getUsers",
    "clientConfig",
];

#[derive(Default, Debug, Clone)]
struct Calls {
    by_endpoint: HashMap<String, u64>,
    violations: u64,
    during_retry_after: u64,
    dropped: u64,
    sent: u64,
}

impl Calls {
    fn from(stats: &Value) -> Calls {
        let mut c = Calls::default();
        if let Some(tokens) = stats["tokens"].as_object() {
            for t in tokens.values() {
                if let Some(reqs) = t["requests"].as_object() {
                    for (k, v) in reqs {
                        *c.by_endpoint.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0);
                    }
                }
                c.violations += t["rateLimitViolations"].as_u64().unwrap_or(0);
                c.during_retry_after += t["requestsDuringRetryAfter"].as_u64().unwrap_or(0);
            }
        }
        c.dropped = stats["notifications"]["dropped"].as_u64().unwrap_or(0);
        c.sent = stats["notifications"]["sent"].as_u64().unwrap_or(0);
        c
    }
    fn minus(&self, earlier: &Calls) -> Calls {
        let mut c = self.clone();
        for (k, v) in c.by_endpoint.iter_mut() {
            *v -= earlier.by_endpoint.get(k).copied().unwrap_or(0);
        }
        c.violations -= earlier.violations;
        c.during_retry_after -= earlier.during_retry_after;
        c.dropped -= earlier.dropped;
        c.sent -= earlier.sent;
        c
    }
    fn get(&self, k: &str) -> u64 {
        self.by_endpoint.get(k).copied().unwrap_or(0)
    }
    fn reads(&self) -> u64 {
        READS.iter().map(|k| self.get(k)).sum()
    }
}

// ---- the daemon -----------------------------------------------------------------------------

fn write_config(dir: &std::path::Path, sim: SocketAddr, locs: &[Location]) -> PathBuf {
    let mut toml = format!(
        r#"
[daemon]
database = "state.db"
api_listen = "127.0.0.1:0"
log_level = "error"
[apple]
base_url = "http://{sim}/mdm/v2/"
request_timeout = "30s"
max_requests_per_second = {RPS}
max_concurrent_requests = 5
[webhook]
listen = "127.0.0.1:0"
[reconcile]
notification_grace = "5s"
poll_min = "1s"
poll_max = "30s"
resubmit_after = "10m"
give_up_after = "1h"
"#
    );
    for (t, name) in TOKENS.iter().enumerate() {
        std::fs::write(dir.join(format!("{name}.vpptoken")), &locs[t].stoken).unwrap();
        std::fs::write(dir.join(format!("{name}.notify")), notify_secret(name)).unwrap();
        toml.push_str(&format!(
            "[[tokens]]\nname = \"{name}\"\ntoken_file = \"{name}.vpptoken\"\nnotification_auth_token_file = \"{name}.notify\"\n"
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn notify_secret(name: &str) -> String {
    format!("bench-notify-secret-{name}")
}

fn db_query<T>(db: &std::path::Path, f: impl FnOnce(&rusqlite::Connection) -> T) -> T {
    let c = vpp_reconciler::store::open_read_only(db).expect("open the database read-only");
    f(&c)
}

fn count(c: &rusqlite::Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .expect(sql)
        .unwrap_or(0)
}

struct DaemonResult {
    calls: Calls,
    settle: Duration,
    settle_after_last: Duration,
    submit: Duration,
    bound: u64,
    time_bound: f64,
    lag_p50: f64,
    lag_p95: f64,
    webhook: WebhookFigures,
    baseline: f64,
}

/// What `cargo bench --bench all` tabulates.
pub struct ReconcileFigures {
    pub events: usize,
    pub calls: u64,
    pub bound: u64,
    pub settle_secs: f64,
    pub time_bound_secs: f64,
    pub lag_p50: f64,
    pub lag_p95: f64,
    pub violations: u64,
    pub during_retry_after: u64,
    pub webhook: WebhookFigures,
    /// Notifications/s, one durable commit each (module docs, part 4).
    pub baseline_rate: f64,
    pub naive_calls: u64,
    pub naive_secs: f64,
}

pub struct WebhookFigures {
    pub paced_rate: usize,
    pub paced_p50: f64,
    pub paced_p99: f64,
    pub burst_conns: usize,
    pub burst_total: usize,
    pub burst_rate: f64,
    pub burst_p99: f64,
}

async fn run_daemon(n: usize, quick: bool) -> DaemonResult {
    let sim = SimHandle::start(SEED);
    let locs = set_up_sim(&sim, n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = vpp_reconciler::config::load(&write_config(dir.path(), sim.addr, &locs))
        .expect("config")
        .config;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let webhook_addr = webhook.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(daemon::serve(
        config,
        Listeners {
            api,
            webhook: Some(webhook),
        },
        shutdown.clone(),
        move |_| {
            let _ = ready_tx.send(());
        },
    ));
    ready_rx.await.expect("daemon ready");
    // The daemon created its API token beside the database.
    let api_token = vpp_reconciler::api::token_file::read(&dir.path().join("api-token"))
        .expect("the API token")
        .expose()
        .to_string();
    for (t, name) in TOKENS.iter().enumerate() {
        sim.put(
            "/_sim/notify",
            json!({"uId": locs[t].uid, "authToken": notify_secret(name),
                "url": format!("http://{webhook_addr}/apple/notifications/{name}")}),
        )
        .await;
    }
    let db = dir.path().join("state.db");
    // The start-up syncs (3 kinds x 2 tokens) are not part of the measurement.
    let wait = Instant::now();
    loop {
        let done = db_query(&db, |c| {
            count(
                c,
                "SELECT COUNT(*) FROM syncs WHERE result != 'running' AND finished_at IS NOT NULL",
            )
        });
        if done >= (3 * TOKENS.len()) as i64 {
            break;
        }
        assert!(wait.elapsed() < Duration::from_secs(60), "start-up syncs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_sync = db_query(&db, |c| count(c, "SELECT MAX(id) FROM syncs")) + 1;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let jobs = workload(n);
    let before = Calls::from(&sim.get("/_sim/stats").await);
    let start = Instant::now();
    let (_submitted, submit_time) = submit(&sim, &locs, &jobs, Some((api_addr, &api_token))).await;
    let last = start + submit_time;
    let limit = Duration::from_secs(if quick { 300 } else { 900 });
    let settle = loop {
        let (total, open) = db_query(&db, |c| {
            (
                count(c, "SELECT COUNT(*) FROM events"),
                count(c, "SELECT COUNT(*) FROM events WHERE state != 'settled'"),
            )
        });
        if total as usize == n && open == 0 {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{open} of {total} events not settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let settle_after_last = Instant::now() - last;
    let after = Calls::from(&sim.get("/_sim/stats").await);
    let calls = after.minus(&before);

    // What the daemon recorded.
    let (polled, polls, no_note, complete, failed, other) = db_query(&db, |c| {
        (
            count(c, "SELECT COUNT(*) FROM events WHERE polls > 0"),
            count(c, "SELECT SUM(polls) FROM events"),
            count(
                c,
                "SELECT COUNT(*) FROM events WHERE notified_success = 0 AND notified_failure = 0",
            ),
            count(c, "SELECT COUNT(*) FROM events WHERE outcome = 'complete'"),
            count(c, "SELECT COUNT(*) FROM events WHERE outcome = 'failed'"),
            count(
                c,
                "SELECT COUNT(*) FROM events WHERE outcome IS NULL OR outcome NOT IN ('complete', 'failed')",
            ),
        )
    });
    let syncs: Vec<(String, i64, i64)> = db_query(&db, |c| {
        let mut st = c
            .prepare("SELECT kind, COUNT(*), SUM(pages) FROM syncs WHERE id >= ?1 GROUP BY kind ORDER BY kind")
            .unwrap();
        st.query_map([first_sync], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    });
    // Ground truth: outcomes and the assignments each token ends with.
    let mut truth_failed = 0;
    let mut bound_pages = 0u64;
    for loc in &locs {
        let truth = sim.get(&format!("/_sim/truth/{}", loc.uid)).await;
        let events = truth["events"].as_array().cloned().unwrap_or_default();
        truth_failed += events
            .iter()
            .filter(|e| e["eventStatus"] == "FAILED")
            .count();
        let assignments = truth["assignments"].as_array().map_or(0, |a| a.len());
        // One incremental assignments sync covering the workload, one assets page.
        bound_pages += assignments.div_ceil(PAGE_SIZE).max(1) as u64 + 1;
    }
    let lost = calls.dropped;
    let bound = lost + bound_pages;
    let reads = calls.reads();
    // From the outcome learned to the event settled, for events that needed a sync (their
    // outcome came from Event Status or a FAILURE notification).
    let mut lag: Vec<f64> = db_query(&db, |c| {
        let mut st = c
            .prepare(
                "SELECT settled_at - outcome_at FROM events WHERE settled_at IS NOT NULL \
                 AND outcome_at IS NOT NULL AND (polls > 0 OR notified_failure > 0)",
            )
            .unwrap();
        st.query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|v| v.unwrap() as f64 / 1000.0)
            .collect()
    });
    lag.sort_by(|a, b| a.total_cmp(b));
    let lag_pct = |p: f64| -> f64 {
        if lag.is_empty() {
            0.0
        } else {
            lag[((lag.len() - 1) as f64 * p).round() as usize]
        }
    };
    // What the rate limit allows: the bound's calls spread over the tokens at RPS each.
    let time_bound = bound as f64 / (TOKENS.len() as f64 * RPS as f64);

    println!("== daemon ==");
    println!(
        "parameters: events {n}, tokens {}, rate limit {RPS} requests/s per token, dropNotificationRate {DROP_RATE}, processingDelay {PROCESSING_DELAY}, page size {PAGE_SIZE}",
        TOKENS.len()
    );
    println!("parameters: notification_grace 5s, poll_min 1s, poll_max 30s, resubmit_after 10m, give_up_after 1h; MDM writes sent at the simulator (not counted), tracked via POST /v1/events");
    println!(
        "submission of {n} events (writes + tracking): {:.1} s",
        submit_time.as_secs_f64()
    );
    println!(
        "time to settle everything (from first write): {:.1} s",
        settle.as_secs_f64()
    );
    println!(
        "time to settle everything (from last write): {:.1} s",
        settle_after_last.as_secs_f64()
    );
    println!("outcomes: complete {complete}, failed {failed}, other {other} (truth: failed {truth_failed})");
    println!("notifications sent: {}", calls.sent);
    println!("notifications dropped (lost): {lost}");
    println!("events with no notification received (daemon's record): {no_note}");
    println!("events polled: {polled}");
    println!("Event Status calls recorded by the daemon: {polls}");
    for (kind, runs, pages) in &syncs {
        println!("{kind} syncs: {runs} runs, {pages} pages");
    }
    for k in READS {
        println!("calls {k}: {}", calls.get(k));
    }
    println!("reconciliation calls: {reads}");
    println!(
        "reconciliation calls per event: {:.3}",
        reads as f64 / n as f64
    );
    println!("lower bound (lost notifications {lost} + sync pages {bound_pages}): {bound}");
    println!("calls / lower bound: {:.3}", reads as f64 / bound as f64);
    println!(
        "rate-limit time bound (lower bound calls / ({} tokens x {RPS} rps)): {time_bound:.1} s",
        TOKENS.len()
    );
    println!(
        "time to settle / rate-limit bound: {:.3}",
        settle.as_secs_f64() / time_bound
    );
    println!(
        "outcome learned -> settled, events that needed a sync ({}): p50 {:.1} s, p95 {:.1} s, max {:.1} s",
        lag.len(),
        lag_pct(0.50),
        lag_pct(0.95),
        lag_pct(1.0)
    );
    println!("rate-limit violations: {}", calls.violations);
    println!("requests during Retry-After: {}", calls.during_retry_after);

    let webhook = webhook_bench(webhook_addr, &locs[0].uid, quick).await;

    shutdown.cancel();
    let _ = server.await;
    let baseline = baseline(&db, &locs[0].uid, if quick { 500 } else { 3000 }).await;
    DaemonResult {
        calls,
        settle,
        settle_after_last,
        submit: submit_time,
        bound,
        time_bound,
        lag_p50: lag_pct(0.50),
        lag_p95: lag_pct(0.95),
        webhook,
        baseline,
    }
}

/// The one-commit-per-notification baseline (module docs, part 4) on a copy of the stopped
/// daemon's store `db`; returns notifications/s.
async fn baseline(db: &std::path::Path, uid: &str, total: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("state.db");
    std::fs::copy(db, &copy).expect("copy the store");
    let wal = db.with_extension("db-wal");
    if wal.exists() {
        std::fs::copy(&wal, dir.path().join("state.db-wal")).expect("copy the WAL");
    }
    let bodies: Vec<Vec<u8>> = (0..total).map(|i| notification(uid, "base", i)).collect();
    let token = TOKENS[0];
    tokio::task::spawn_blocking(move || {
        let mut conn = vpp_reconciler::store::open_write_connection(&copy).expect("open the copy");
        let start = Instant::now();
        for body in &bodies {
            let now = Timestamp::now();
            let note = vpp_reconciler::apple::model::parse_notification(body).expect("parse");
            let row = vpp_reconciler::webhook::stored(token, &note, body, now);
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .expect("begin");
            let new =
                vpp_reconciler::store::sqlite::notify::record_notification(&tx, &row, &note, now)
                    .expect("write");
            assert!(new, "baseline notification stored");
            tx.commit().expect("commit");
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        drop(dir);
        rate
    })
    .await
    .expect("baseline task")
}

// ---- naive ----------------------------------------------------------------------------------

async fn run_naive(n: usize) -> (u64, Duration, Calls) {
    let sim = SimHandle::start(SEED);
    let locs = set_up_sim(&sim, n).await;
    let client = AppleClient::new(ClientOptions {
        base_url: format!("http://{}/mdm/v2/", sim.addr),
        request_timeout: Duration::from_secs(30),
        max_requests_per_second: RPS,
        max_concurrent_requests: 5,
        read_retries: 3,
        metrics: Default::default(),
    })
    .expect("client");
    client.service_config().await.expect("service config");
    for (t, name) in TOKENS.iter().enumerate() {
        client.set_token(name, Secret::new(locs[t].stoken.clone()), None);
    }
    let jobs = workload(n);
    let before = Calls::from(&sim.get("/_sim/stats").await);
    let start = Instant::now();
    let submitted = Arc::new(submit(&sim, &locs, &jobs, None).await.0);
    // Per token: a min-heap of (due, index), drained by 5 workers (the client's own
    // concurrency and rate gates apply on top).
    type Heap = BinaryHeap<std::cmp::Reverse<(Instant, usize)>>;
    let heaps: Vec<Arc<Mutex<Heap>>> = (0..TOKENS.len())
        .map(|_| Arc::new(Mutex::new(BinaryHeap::new())))
        .collect();
    for (i, s) in submitted.iter().enumerate() {
        heaps[s.token]
            .lock()
            .unwrap()
            .push(std::cmp::Reverse((s.at + GRACE, i)));
    }
    let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (t, heap) in heaps.iter().enumerate() {
        for _ in 0..5 {
            let heap = heap.clone();
            let client = client.clone();
            let submitted = submitted.clone();
            let polls = polls.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = heap.lock().unwrap().pop();
                    let Some(std::cmp::Reverse((due, i))) = next else {
                        break;
                    };
                    tokio::time::sleep_until(due.into()).await;
                    let r = client.event_status(TOKENS[t], &submitted[i].event_id).await;
                    polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let pending = match r {
                        Ok(s) => s.event_status == EventStatus::Pending,
                        Err(e) => {
                            assert!(e.is_retryable(), "naive poll: {e}");
                            true
                        }
                    };
                    if pending {
                        heap.lock()
                            .unwrap()
                            .push(std::cmp::Reverse((Instant::now() + POLL_MIN, i)));
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("naive worker");
    }
    let elapsed = start.elapsed();
    let after = Calls::from(&sim.get("/_sim/stats").await);
    let calls = after.minus(&before);
    (
        polls.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        calls,
    )
}

// ---- webhook throughput ---------------------------------------------------------------------

fn notification(uid: &str, tag: &str, i: usize) -> Vec<u8> {
    webhook_load::notification(uid, &adam_id(0, i % ASSETS_PER_TOKEN), tag, i)
}

async fn webhook_bench(addr: SocketAddr, uid: &str, quick: bool) -> WebhookFigures {
    let uid = uid.to_string();
    let target = webhook_load::Target {
        url: format!("http://{addr}/apple/notifications/{}", TOKENS[0]),
        auth: format!("Bearer {}", notify_secret(TOKENS[0])),
        body: Arc::new(move |tag, i| notification(&uid, tag, i)),
    };
    let http = webhook_load::client();
    println!("== webhook (durable acknowledgements) ==");
    let p = webhook_load::paced(&http, &target, 1000, if quick { 3 } else { 10 }).await;
    let b = webhook_load::burst(&http, &target, 64, if quick { 6_400 } else { 32_000 }).await;
    WebhookFigures {
        paced_rate: p.rate,
        paced_p50: p.p50,
        paced_p99: p.p99,
        burst_conns: b.conns,
        burst_total: b.total,
        burst_rate: b.rate,
        burst_p99: b.p99,
    }
}

// ---- main -----------------------------------------------------------------------------------

#[allow(dead_code)] // the entry point of `--bench reconcile`, not of `--bench all`
fn main() {
    // `cargo bench` passes --bench; only --quick matters.
    run(std::env::args().any(|a| a == "--quick"));
}

/// The whole benchmark (module docs); prints as it goes and returns the figures.
pub fn run(quick: bool) -> ReconcileFigures {
    let n = if quick { 1_000 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total = Instant::now();
    let d = rt.block_on(run_daemon(n, quick));
    let (naive_polls, naive_time, naive) = rt.block_on(run_naive(n));
    let daemon_calls = d.calls.reads();
    println!("== naive (polling only, no notifications, no syncs) ==");
    println!(
        "naive time to final status for every event: {:.1} s",
        naive_time.as_secs_f64()
    );
    println!("naive Event Status calls: {naive_polls}");
    println!("naive calls counted by the simulator: {}", naive.reads());
    println!("naive rate-limit violations: {}", naive.violations);
    println!(
        "naive / daemon calls: {:.2}",
        naive.reads() as f64 / daemon_calls as f64
    );
    println!(
        "naive / daemon time to settle (from first write): {:.2}",
        naive_time.as_secs_f64() / d.settle.as_secs_f64()
    );
    println!(
        "daemon: submission {:.1} s, settled {:.1} s after the last write",
        d.submit.as_secs_f64(),
        d.settle_after_last.as_secs_f64()
    );
    println!(
        "== one commit per notification (baseline) ==\nbaseline: {:.0} notifications/s; burst / baseline: {:.1}",
        d.baseline,
        d.webhook.burst_rate / d.baseline
    );
    println!("bench wall time: {:.0} s", total.elapsed().as_secs_f64());
    assert_eq!(d.calls.violations, 0, "the daemon broke the rate limit");
    assert_eq!(naive.violations, 0, "the naive poller broke the rate limit");
    ReconcileFigures {
        events: n,
        calls: daemon_calls,
        bound: d.bound,
        settle_secs: d.settle.as_secs_f64(),
        time_bound_secs: d.time_bound,
        lag_p50: d.lag_p50,
        lag_p95: d.lag_p95,
        violations: d.calls.violations,
        during_retry_after: d.calls.during_retry_after,
        webhook: d.webhook,
        baseline_rate: d.baseline,
        naive_calls: naive.reads(),
        naive_secs: naive_time.as_secs_f64(),
    }
}
