//! Sync benchmark (issue 3): `cargo bench --bench sync [-- --quick]`.
//!
//! A full assignments sync of one location with 100,000 assignments (10,000 with `--quick`)
//! against the in-process simulator at Apple's 15 requests/s, page size 1000:
//! - set-up (not measured): the simulator's rate limit is raised, 1000-serial associate
//!   requests fill the location (processingDelay 0s), then the limit goes back to 15/s;
//! - measured: the streamed sync as `mirror::run::run` does it: the real client's traversal
//!   (`AppleClient::stream_assignments`) handing each page to the stage (one durable write
//!   job per page), then, separately, the final step (`mirror::run::finish`: the stage
//!   swapped into the mirror, replay, run row; one transaction); a second sync onto the full
//!   mirror; the longest wait of another writer meanwhile (a store ping every 5 ms) and the
//!   process's peak memory (VmHWM, the in-process simulator included);
//! - after: JSON decoding alone of the same pages (CPU bound, no rate limit), and
//!   `/_sim/stats` rate-limit violations and requests during Retry-After (both must be 0).
//!
//! The simulator runs on its own runtime (2 worker threads) so its work does not queue
//! behind the client's tasks; both share the machine's cores.
//!
//! Part 2, the daemon at district scale: the release daemon binary (a child process, one
//! token) makes its start-up full sync of a location with 1,000,000 assignments (100,000
//! with `--quick`) from the same simulator at 15 requests/s, while ASSET_MANAGEMENT
//! notifications arrive at its webhook at 200/s (acknowledgement latency from each one's
//! scheduled send time) and `/healthz` is asked every 100 ms (every non-200 or timeout
//! counted). Reported: the sync's time (its run row) against pages / 15 per s, and the
//! daemon's peak resident memory (VmHWM, whole life of the process).
//!
//! `run` returns the figures for `cargo bench --bench all`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/proc.rs"]
mod proc_util;
#[path = "support/sim.rs"]
mod sim_util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use vpp_reconciler::apple::model::GetAssignmentsResponse;
use vpp_reconciler::apple::{AppleClient, ClientOptions};
use vpp_reconciler::core::SyncKind;
use vpp_reconciler::mirror::run;
use vpp_reconciler::secret::Secret;
use vpp_reconciler::store::{Store, SyncStart};
use vpp_reconciler::time::Timestamp;

const RPS: u32 = 15;
const PAGE_SIZE: usize = 1000;
/// Serial numbers per associate request (Service Config's `maxSerialNumbers`).
const BATCH: usize = 1000;
/// Licences per asset.
const PER_ASSET: usize = 5000;
const TOKEN: &str = "bench";

struct SimCtl {
    base: String,
    http: reqwest::Client,
}

impl SimCtl {
    fn new(addr: std::net::SocketAddr) -> SimCtl {
        SimCtl {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.expect("simulator control request");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
    async fn put(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::PUT, path, Some(&body)).await
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, Some(&body)).await
    }
    async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, None).await
    }
}

fn adam_id(i: usize) -> String {
    format!("{}", 400_000_000 + i)
}

/// Creates the location and its `n` assignments (serial numbers, `PER_ASSET` per asset).
async fn set_up(ctl: &SimCtl, n: usize) -> (String, String) {
    ctl.put("/_sim/limits", json!({"maxRequestPerSecond": 100_000}))
        .await;
    ctl.put("/_sim/faults", json!({"processingDelay": "0s"}))
        .await;
    let assets_n = n.div_ceil(PER_ASSET);
    let assets: Vec<Value> = (0..assets_n)
        .map(|i| {
            json!({"adamId": adam_id(i), "pricingParam": "STDQ", "productType": "App",
                "total": PER_ASSET, "deviceAssignable": true, "revocable": true})
        })
        .collect();
    let loc = ctl
        .post(
            "/_sim/locations",
            json!({"name": "Bench", "assets": assets, "users": [], "pageSize": PAGE_SIZE}),
        )
        .await;
    let uid = loc["uId"].as_str().expect("uId").to_string();
    let stoken = loc["sToken"].as_str().expect("sToken").to_string();

    let mut bodies = Vec::new();
    let mut made = 0;
    for a in 0..assets_n {
        let mut s = 0;
        while s < PER_ASSET && made < n {
            let k = BATCH.min(PER_ASSET - s).min(n - made);
            let serials: Vec<String> = (s..s + k).map(|j| format!("SN{a:03}X{j:06}")).collect();
            bodies.push(
                json!({"assets": [{"adamId": adam_id(a), "pricingParam": "STDQ"}],
                "serialNumbers": serials}),
            );
            s += k;
            made += k;
        }
    }
    let url = format!("{}/mdm/v2/assets/associate", ctl.base);
    // A bounded number in flight: a million assignments are a thousand requests.
    let ids: Vec<String> = futures::stream::iter(bodies.iter().map(|b| {
        let http = ctl.http.clone();
        let url = url.clone();
        let stoken = stoken.clone();
        async move {
            let r = http
                .post(&url)
                .bearer_auth(&stoken)
                .json(b)
                .send()
                .await
                .expect("associate");
            let v: Value = r.json().await.expect("associate answer");
            v["eventId"]
                .as_str()
                .unwrap_or_else(|| panic!("associate refused: {v}"))
                .to_string()
        }
    }))
    .buffered(32)
    .collect()
    .await;
    // Processing is FIFO per location: wait until every event is COMPLETE.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut open = ids;
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "set-up events did not complete");
        let mut still = Vec::new();
        for id in open {
            let v: Value = ctl
                .http
                .get(format!("{}/mdm/v2/status?eventId={id}", ctl.base))
                .bearer_auth(&stoken)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("status body");
            match v["eventStatus"].as_str() {
                Some("COMPLETE") => {}
                Some("PENDING") => still.push(id),
                _ => panic!("set-up event {id}: {v}"),
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ctl.put("/_sim/limits", json!({"maxRequestPerSecond": RPS}))
        .await;
    // Let the simulator's one-second window forget the set-up traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (uid, stoken)
}

fn counter(stats: &Value, uid: &str, path: &[&str]) -> u64 {
    let mut v = &stats["tokens"][uid];
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

/// Peak resident memory of this process so far (`VmHWM` in /proc/self/status), in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Measures how long other writers wait while a sync writes: pings the store (an empty
/// committed write, like a webhook's) every 5 ms and keeps the longest round trip.
fn probe_writer(
    store: Store,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(Duration, u32)>,
) {
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut n = 0u32;
        loop {
            let t = Instant::now();
            store.ping().await.expect("ping");
            worst = worst.max(t.elapsed());
            n += 1;
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        (worst, n)
    });
    (stop_tx, task)
}

/// One full assignments sync (sync id `id`) as `mirror::run::run` does it, timed in parts:
/// the streamed read (fetch + parse + one staged write job per page) and the final step
/// (`run::finish`: swap, replay, run row; one transaction, durable commit). Returns (read
/// time, final step time, pages, records); the stage is discarded afterwards, untimed.
async fn sync_once(client: &AppleClient, store: &Store, id: u64) -> (Duration, Duration, u32, u64) {
    let started = Timestamp::now();
    let start = SyncStart {
        id,
        token: TOKEN.into(),
        kind: SyncKind::Assignments,
        full: true,
        cause: "bench".into(),
    };
    store.sync_started(start, started).await.expect("sync row");
    let start = Instant::now();
    let mut sink = run::StageSink::new(store.clone(), id, SyncKind::Assignments);
    let read = client
        .stream_assignments(TOKEN, None, &mut sink)
        .await
        .expect("assignments traversal");
    let read_time = start.elapsed();
    assert!(read.consistent, "traversal not consistent");
    let pages = read.pages;
    let final_start = Instant::now();
    let records = run::finish(store, TOKEN, id, SyncKind::Assignments, started, &read)
        .await
        .expect("final step");
    let final_time = final_start.elapsed();
    run::discard(store, id, SyncKind::Assignments)
        .await
        .expect("discard the stage");
    (read_time, final_time, pages, records)
}

/// Rows in the mirror, read from the SQLite file on a connection of its own.
fn mirror_rows(db: &std::path::Path) -> i64 {
    vpp_reconciler::store::open_read_only(db)
        .expect("open the database read-only")
        .query_row(
            "SELECT COUNT(*) FROM mirror_assignments WHERE token = ?1",
            [TOKEN],
            |r| r.get(0),
        )
        .expect("count")
}

/// What `cargo bench --bench all` tabulates.
pub struct SyncFigures {
    pub assignments: usize,
    pub pages: u64,
    pub read_secs: f64,
    pub final_secs: f64,
    pub worst_writer_wait_ms: f64,
    pub daemon: DaemonSync,
}

/// Part 2 (module docs).
pub struct DaemonSync {
    pub assignments: usize,
    pub pages: u64,
    pub secs: f64,
    pub peak_rss_mib: f64,
    pub rss_before_mib: f64,
    pub notifications: usize,
    pub ack_p50: f64,
    pub ack_p99: f64,
    pub ack_max: f64,
    pub healthz_total: u64,
    pub healthz_bad: u64,
    pub violations: u64,
}

#[allow(dead_code)] // the entry point of `--bench sync`, not of `--bench all`
fn main() {
    run(std::env::args().any(|a| a == "--quick"));
}

/// Both parts (module docs); prints as it goes and returns the figures.
pub fn run(quick: bool) -> SyncFigures {
    let (n, big) = if quick {
        (10_000, 100_000)
    } else {
        (100_000, 1_000_000)
    };
    let (addr, _sim_thread) = sim_util::start_sim(42);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut f = rt.block_on(in_process(addr, n));
    f.daemon = rt.block_on(daemon_sync(addr, big));
    f
}

async fn in_process(addr: std::net::SocketAddr, n: usize) -> SyncFigures {
    let ctl = SimCtl::new(addr);
    let setup_start = Instant::now();
    let (uid, stoken) = set_up(&ctl, n).await;
    let setup = setup_start.elapsed();

    let client = AppleClient::new(ClientOptions {
        base_url: format!("http://{addr}/mdm/v2/"),
        request_timeout: Duration::from_secs(30),
        max_requests_per_second: RPS,
        max_concurrent_requests: 5,
        read_retries: 3,
        metrics: Default::default(),
    })
    .expect("client");
    client.service_config().await.expect("service config");
    client.set_token(TOKEN, Secret::new(stoken.clone()), None);

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .expect("open task")
        .expect("open store");
    let hwm_before = vm_hwm_kib();

    let before = ctl.get("/_sim/stats").await;
    // The streamed sync as the daemon runs it: pages staged as they arrive (one small write
    // job per page), then one final transaction swaps the stage into the mirror.
    let (stop_probe, probe) = probe_writer(store.clone());
    let (fetch, store_time, pages, records) = sync_once(&client, &store, 1).await;
    let after = ctl.get("/_sim/stats").await;
    let _ = stop_probe.send(());
    let (worst_wait, probes) = probe.await.expect("probe");
    let hwm_after = vm_hwm_kib();
    assert_eq!(records as usize, n, "records traversed");
    let stored = mirror_rows(&dir.path().join("state.db"));
    assert_eq!(stored as usize, n, "rows in the mirror");
    // Again onto the full mirror (the steady state: nothing changed since).
    let (stop_probe, probe) = probe_writer(store.clone());
    let (again, again_final, _, _) = sync_once(&client, &store, 2).await;
    let _ = stop_probe.send(());
    let (worst_again, _) = probe.await.expect("probe");
    assert_eq!(
        mirror_rows(&dir.path().join("state.db")) as usize,
        n,
        "rows in the mirror"
    );

    // JSON decoding alone: fetch the raw pages again (limit lifted), decode them repeatedly.
    ctl.put("/_sim/limits", json!({"maxRequestPerSecond": 100_000}))
        .await;
    let mut raw = Vec::new();
    for p in 0..pages {
        let bytes = ctl
            .http
            .get(format!("{}/mdm/v2/assignments?pageIndex={p}", ctl.base))
            .bearer_auth(&stoken)
            .send()
            .await
            .expect("raw page")
            .bytes()
            .await
            .expect("raw page body");
        raw.push(bytes);
    }
    let reps = 5;
    let parse_start = Instant::now();
    let mut parsed = 0usize;
    for _ in 0..reps {
        for b in &raw {
            let r: GetAssignmentsResponse = serde_json::from_slice(b).expect("decode page");
            parsed += r.assignments.len();
        }
    }
    let parse_time = parse_start.elapsed();
    let bytes: usize = raw.iter().map(|b| b.len()).sum();

    let pages = counter(&after, &uid, &["requests", "getAssignments"])
        - counter(&before, &uid, &["requests", "getAssignments"]);
    let violations = counter(&after, &uid, &["rateLimitViolations"])
        - counter(&before, &uid, &["rateLimitViolations"]);
    let during_ra = counter(&after, &uid, &["requestsDuringRetryAfter"])
        - counter(&before, &uid, &["requestsDuringRetryAfter"]);
    let bound = pages as f64 / f64::from(RPS);
    let secs = fetch.as_secs_f64();

    println!("parameters: assignments {n}, page size {PAGE_SIZE}, rate limit {RPS} requests/s, 5 concurrent page fetches, full sync (no sinceVersionId)");
    println!("set-up (not measured): {:.1} s", setup.as_secs_f64());
    println!("sync read time (fetch + parse + staged page writes): {secs:.2} s");
    println!("pages requested: {pages}");
    println!("pages in traversal: {pages}");
    println!("rate-limit bound (pages / {RPS} rps): {bound:.2} s");
    println!("wall time / bound: {:.3}", secs / bound);
    // The simulator admits RPS requests in any sliding second, so P requests need at least
    // ceil(P / RPS) - 1 seconds (a burst at t=0, the next at t=1, ...).
    let window_min = (pages.div_ceil(u64::from(RPS)).saturating_sub(1)) as f64;
    println!("sliding-window minimum (ceil(pages / {RPS}) - 1): {window_min:.2} s");
    if window_min > 0.0 {
        println!(
            "wall time / sliding-window minimum: {:.3}",
            secs / window_min
        );
    }
    println!(
        "records fetched and parsed per second: {:.0} records/s",
        n as f64 / secs
    );
    println!(
        "records parsed per second (JSON decode only, {} MB): {:.0} records/s",
        bytes / 1_000_000,
        parsed as f64 / parse_time.as_secs_f64()
    );
    println!(
        "final step (swap the stage into the empty mirror, one transaction, durable commit): {:.3} s",
        store_time.as_secs_f64()
    );
    println!(
        "second sync onto the full mirror (nothing changed): read {:.2} s, final step {:.3} s, longest wait of another writer {:.1} ms",
        again.as_secs_f64(),
        again_final.as_secs_f64(),
        worst_again.as_secs_f64() * 1000.0
    );
    println!(
        "longest wait of another writer (store ping every 5 ms, {probes} pings): {:.1} ms",
        worst_wait.as_secs_f64() * 1000.0
    );
    println!(
        "peak memory (VmHWM, simulator included): {} MiB before the sync, {} MiB after (+{} MiB)",
        hwm_before / 1024,
        hwm_after / 1024,
        hwm_after.saturating_sub(hwm_before) / 1024
    );
    println!("rate-limit violations: {violations}");
    println!("requests during Retry-After: {during_ra}");
    assert_eq!(violations, 0, "the client broke the rate limit");
    SyncFigures {
        assignments: n,
        pages,
        read_secs: secs,
        final_secs: store_time.as_secs_f64(),
        worst_writer_wait_ms: worst_wait.as_secs_f64() * 1000.0,
        daemon: DaemonSync::default(),
    }
}

impl Default for DaemonSync {
    fn default() -> Self {
        DaemonSync {
            assignments: 0,
            pages: 0,
            secs: 0.0,
            peak_rss_mib: 0.0,
            rss_before_mib: 0.0,
            notifications: 0,
            ack_p50: 0.0,
            ack_p99: 0.0,
            ack_max: 0.0,
            healthz_total: 0,
            healthz_bad: 0,
            violations: 0,
        }
    }
}

/// Notifications per second at the webhook during the daemon's sync.
const NOTIFY_RATE: u64 = 200;

/// Part 2 (module docs).
async fn daemon_sync(addr: std::net::SocketAddr, n: usize) -> DaemonSync {
    let ctl = SimCtl::new(addr);
    let setup_start = Instant::now();
    let (uid, stoken) = set_up(&ctl, n).await;
    println!(
        "== daemon binary: full sync of {n} assignments ==\nset-up (not measured): {:.1} s",
        setup_start.elapsed().as_secs_f64()
    );
    let env = common::TestEnv::new(common::EnvOptions {
        tokens: &[TOKEN],
        apple_base_url: Some(format!("http://{addr}/mdm/v2/")),
        stokens: vec![stoken],
        log_level: "error",
        ..common::EnvOptions::default()
    });
    let db = env.path("state.db");
    let before = ctl.get("/_sim/stats").await;
    let (d, _) = tokio::task::block_in_place(|| proc_util::spawn_timed(&env, "sync"));
    let pid = d.child.id();
    let rss_before = proc_util::proc_status_kib(pid, "VmRSS:");
    let done = Arc::new(AtomicBool::new(false));

    // /healthz every 100 ms, on its own thread (blocking client, 5 s timeout).
    let (h_total, h_bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let health = {
        let (done, total, bad, api) = (done.clone(), h_total.clone(), h_bad.clone(), env.api);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                total.fetch_add(1, Ordering::Relaxed);
                if !proc_util::healthz_ok(api) {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Notifications at NOTIFY_RATE, each a new assignment of a mirrored asset.
    let url = format!("http://{}/apple/notifications/{TOKEN}", env.webhook);
    let auth = format!("Bearer {}", env.tokens[0].notify_secret);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let sender = {
        let done = done.clone();
        let uid = uid.clone();
        let assets = n.div_ceil(PER_ASSET);
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            let mut tasks = Vec::new();
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let due = t0 + Duration::from_micros(i * 1_000_000 / NOTIFY_RATE);
                tokio::time::sleep_until(due).await;
                // Wall-clock send time, to place slow acknowledgements against the run row.
                let sent_ms = Timestamp::now().0;
                let body = json!({
                    "notification": {"assignments": [{"adamId": adam_id(i as usize % assets),
                        "pricingParam": "STDQ", "serialNumber": format!("WH{i:08}")}],
                        "eventId": format!("wh-{i}"), "result": "SUCCESS", "type": "ASSOCIATE"},
                    "notificationId": format!("wh-{i}-{}", uuid::Uuid::new_v4()),
                    "notificationType": "ASSET_MANAGEMENT",
                    "uId": uid,
                })
                .to_string();
                let (http, url, auth) = (http.clone(), url.clone(), auth.clone());
                tasks.push(tokio::spawn(async move {
                    let r = http
                        .post(&url)
                        .header("authorization", auth)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let ok = matches!(&r, Ok(r) if r.status().as_u16() == 200);
                    (ok, sent_ms, due.elapsed().as_secs_f64() * 1000.0)
                }));
                i += 1;
            }
            let mut lat = Vec::new();
            let mut failed = 0;
            for t in tasks {
                let (ok, sent_ms, ms) = t.await.expect("notification task");
                if !ok {
                    failed += 1;
                }
                lat.push((sent_ms, ms));
            }
            (lat, failed)
        })
    };

    // Until the assignments sync's run row is finished; VmRSS sampled meanwhile.
    let mut peak_rss = rss_before;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let (started, finished, pages, result) = loop {
        peak_rss = peak_rss.max(proc_util::proc_status_kib(pid, "VmRSS:"));
        let row: Option<(i64, Option<i64>, i64, String)> = {
            let c = vpp_reconciler::store::open_read_only(&db).expect("open the store");
            c.query_row(
                "SELECT started_at, finished_at, pages, result FROM syncs \
                 WHERE kind = 'assignments' ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .ok()
        };
        if let Some((s, Some(f), p, r)) = row {
            if r != "running" {
                break (s, f, p, r);
            }
        }
        assert!(Instant::now() < deadline, "the sync did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // One more second of notifications after the commit, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    let (timed, failed) = sender.await.expect("sender");
    health.join().expect("health thread");
    let hwm = proc_util::proc_status_kib(pid, "VmHWM:");
    let after = ctl.get("/_sim/stats").await;
    let mirrored: i64 = {
        let c = vpp_reconciler::store::open_read_only(&db).expect("open the store");
        c.query_row("SELECT COUNT(*) FROM mirror_assignments", [], |r| r.get(0))
            .expect("count")
    };
    let status = tokio::task::block_in_place(|| proc_util::stop(d));
    assert!(status.success(), "daemon exit: {status}");
    assert_eq!(result, "ok", "sync result");
    assert_eq!(failed, 0, "notifications not acknowledged with 200");
    // Where the slow acknowledgements fall: the streamed read, or the last 5 s before the
    // run row's finish (the final step swaps the stage into the mirror in one job).
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let lat = sorted(timed.iter().map(|t| t.1).collect());
    let reading = sorted(
        timed
            .iter()
            .filter(|t| t.0 < finished - 5_000)
            .map(|t| t.1)
            .collect(),
    );
    let slowest = timed.iter().max_by(|a, b| a.1.total_cmp(&b.1)).copied();
    let api_pages = counter(&after, &uid, &["requests", "getAssignments"])
        - counter(&before, &uid, &["requests", "getAssignments"]);
    let violations = counter(&after, &uid, &["rateLimitViolations"])
        - counter(&before, &uid, &["rateLimitViolations"]);
    let secs = (finished - started) as f64 / 1000.0;
    let bound = pages as f64 / f64::from(RPS);
    let f = DaemonSync {
        assignments: n,
        pages: pages as u64,
        secs,
        peak_rss_mib: hwm.max(peak_rss) as f64 / 1024.0,
        rss_before_mib: rss_before as f64 / 1024.0,
        notifications: lat.len(),
        ack_p50: proc_util::quantile(&lat, 0.50),
        ack_p99: proc_util::quantile(&lat, 0.99),
        ack_max: proc_util::quantile(&lat, 1.0),
        healthz_total: h_total.load(Ordering::Relaxed),
        healthz_bad: h_bad.load(Ordering::Relaxed),
        violations,
    };
    println!("sync (run row started_at -> finished_at): {secs:.2} s for {pages} pages ({api_pages} getAssignments requests seen by the simulator)");
    println!(
        "rate-limit bound (pages / {RPS} rps): {bound:.2} s; time / bound: {:.3}",
        secs / bound
    );
    println!("mirror rows after the sync: {mirrored} (the sync's {n} + notifications applied)");
    println!(
        "daemon VmRSS: {:.0} MiB when ready, peak {:.0} MiB (VmHWM {:.0} MiB, sampled max {:.0} MiB)",
        f.rss_before_mib,
        f.peak_rss_mib,
        hwm as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!(
        "webhook at {NOTIFY_RATE}/s during the sync: {} notifications, ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, non-200 {failed}",
        f.notifications, f.ack_p50, f.ack_p99, f.ack_max
    );
    println!(
        "/healthz every 100 ms: {} asked, {} not 200",
        f.healthz_total, f.healthz_bad
    );
    println!(
        "  sent more than 5 s before the run row's finish ({}): p99 {:.1} ms, max {:.1} ms",
        reading.len(),
        proc_util::quantile(&reading, 0.99),
        proc_util::quantile(&reading, 1.0)
    );
    if let Some((at, ms)) = slowest {
        println!(
            "  slowest: {ms:.0} ms, sent {:.1} s before the run row's finish",
            (finished - at) as f64 / 1000.0
        );
    }
    println!("rate-limit violations: {violations}");
    f
}
