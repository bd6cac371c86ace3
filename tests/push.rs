//! Push (design §10) end to end: the real daemon binary POSTs its feed to a loopback receiver
//! written here, which checks every signature with its own implementation of the Standard
//! Webhooks scheme (HMAC-SHA256 over "{id}.{timestamp}.{body}", keyed with the base64-decoded
//! secret after "whsec_"), and records what it got. Scenarios: kill -9 at seeded random
//! points, a receiver that is down and comes back, 500 with Retry-After, 4xx until parked,
//! and the licence / token feed items and licence report against the simulator.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::{free_addr, Daemon, EnvOptions, Sim, TestEnv};
use hmac::Mac;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// The MDM's receiver
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Mode {
    Ok,
    /// Answer `status` (with `Retry-After: retry_after` when set) to the first `n` requests
    /// from now, then 200.
    Fail {
        n: u32,
        status: u16,
        retry_after: Option<u64>,
    },
}

#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    at: Instant,
    status: u16,
    changes: Vec<Value>,
}

impl Delivery {
    fn seqs(&self) -> Vec<i64> {
        self.changes
            .iter()
            .map(|c| c["seq"].as_i64().unwrap())
            .collect()
    }
}

struct RxState {
    mode: Mode,
    deliveries: Vec<Delivery>,
    bad: Vec<String>,
    delay: Duration,
}

#[derive(Clone)]
struct Receiver {
    key: Arc<Vec<u8>>,
    state: Arc<Mutex<RxState>>,
    addr: SocketAddr,
    stop: Arc<Mutex<Option<Running>>>,
}

/// The running server: its stop signal and task.
type Running = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Standard Webhooks verification, written from the spec: the signed content is
/// `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 with the secret's base64-decoded
/// bytes after `whsec_`; the header holds space-separated `v1,<base64>` signatures.
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(String, i64), String> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or(format!("missing {n}"))
    };
    let id = h("webhook-id")?;
    let ts = h("webhook-timestamp")?;
    let sigs = h("webhook-signature")?;
    let ts_n: i64 = ts.parse().map_err(|_| "bad timestamp".to_string())?;
    let now = chrono::Utc::now().timestamp();
    if (now - ts_n).abs() > 300 {
        return Err(format!("timestamp {ts_n} too far from now {now}"));
    }
    let mut content = Vec::new();
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(ts.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(&content);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let ok = sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == want);
    if ok {
        Ok((id, ts_n))
    } else {
        Err(format!("signature mismatch for {id}"))
    }
}

async fn handle(rx: Receiver, headers: HeaderMap, body: Bytes) -> Response {
    let (id, _) = match verify(&rx.key, &headers, &body) {
        Ok(v) => v,
        Err(e) => {
            rx.state.lock().unwrap().bad.push(e);
            return StatusCode::UNAUTHORIZED.into_response();
        }
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let changes = v["changes"].as_array().cloned().unwrap_or_default();
    let (status, retry_after, delay) = {
        let mut st = rx.state.lock().unwrap();
        let (status, retry_after) = match &mut st.mode {
            Mode::Ok => (200, None),
            Mode::Fail {
                n,
                status,
                retry_after,
            } => {
                if *n == 0 {
                    (200, None)
                } else {
                    *n -= 1;
                    (*status, *retry_after)
                }
            }
        };
        st.deliveries.push(Delivery {
            id,
            at: Instant::now(),
            status,
            changes,
        });
        (status, retry_after, st.delay)
    };
    tokio::time::sleep(delay).await;
    let mut r = (StatusCode::from_u16(status).unwrap(), "{}").into_response();
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    r
}

impl Receiver {
    fn new(addr: SocketAddr) -> (Receiver, String) {
        let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&key)
        );
        (
            Receiver {
                key: Arc::new(key),
                state: Arc::new(Mutex::new(RxState {
                    mode: Mode::Ok,
                    deliveries: vec![],
                    bad: vec![],
                    delay: Duration::ZERO,
                })),
                addr,
                stop: Arc::new(Mutex::new(None)),
            },
            secret,
        )
    }

    async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let rx = self.clone();
        let app =
            axum::Router::new().fallback(move |h: HeaderMap, b: Bytes| handle(rx.clone(), h, b));
        let (tx, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await;
        });
        *self.stop.lock().unwrap() = Some((tx, task));
    }

    /// Down: stops listening and closes its connections.
    async fn stop(&self) {
        let s = self.stop.lock().unwrap().take();
        if let Some((tx, task)) = s {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn deliveries(&self) -> Vec<Delivery> {
        let st = self.state.lock().unwrap();
        assert!(st.bad.is_empty(), "bad signatures: {:?}", st.bad);
        st.deliveries.clone()
    }

    /// Seqs acknowledged with a 2xx.
    fn acked(&self) -> BTreeSet<i64> {
        self.deliveries()
            .iter()
            .filter(|d| d.status < 300)
            .flat_map(|d| d.seqs())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn push_section(url: &str, secret: &str, env: &TestEnv, extra: &str) {
    std::fs::write(env.path("push.secret"), secret).unwrap();
    let mut toml = std::fs::read_to_string(&env.config).unwrap();
    toml.push_str(&format!(
        "\n[push]\nurl = \"{url}\"\nsecret_file = \"push.secret\"\n{extra}\n"
    ));
    std::fs::write(&env.config, toml).unwrap();
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn track(c: &reqwest::Client, env: &TestEnv, n: usize) {
    for _ in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let r = c
            .post(env.api_url("/v1/events"))
            .bearer_auth(env.token())
            .json(&json!({"token": "acme", "eventId": id, "type": "ASSOCIATE"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
}

async fn feed_seqs(c: &reqwest::Client, env: &TestEnv) -> BTreeSet<i64> {
    let v: Value = c
        .get(env.api_url("/v1/changes?limit=1000"))
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect()
}

fn push_status(env: &TestEnv) -> Value {
    let out = env.cli(&["push", "--json"]);
    assert!(
        out.status.success(),
        "push --json: {}",
        common::stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn wait_for<F: FnMut() -> bool>(what: &str, within: Duration, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// In order, without gaps, duplicates under one id: each delivery ascending; a seq seen for
/// the first time is above every seq seen before; a seq delivered twice carries one id.
fn check_order(deliveries: &[Delivery]) {
    let mut max_seen = 0i64;
    let mut ids: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for d in deliveries {
        let seqs = d.seqs();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "not ascending in {}: {seqs:?}",
            d.id
        );
        for s in &seqs {
            let first_time = !ids.contains_key(s);
            if first_time {
                assert!(
                    *s > max_seen,
                    "seq {s} first delivered after {max_seen} ({})",
                    d.id
                );
                max_seen = *s;
            }
            ids.entry(*s).or_default().insert(d.id.clone());
        }
    }
    for (s, set) in &ids {
        assert_eq!(set.len(), 1, "seq {s} delivered under several ids: {set:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_and_reorders_nothing() {
    let (rx, secret) = Receiver::new(free_addr());
    rx.state.lock().unwrap().delay = Duration::from_millis(30);
    rx.start().await;
    let env = TestEnv::new(EnvOptions::default());
    push_section(
        &format!("http://{}/hooks", rx.addr),
        &secret,
        &env,
        "max_batch = 4\ntimeout = \"2s\"",
    );
    let c = client();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261127);
    let mut daemon: Daemon = env.start_daemon();
    for round in 0..4 {
        track(&c, &env, 10).await;
        let wait = rng.gen_range(0..400u64);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        daemon.kill9();
        daemon = env.start_daemon();
        eprintln!("round {round}: killed after {wait} ms");
    }
    let want = feed_seqs(&c, &env).await;
    assert!(want.len() >= 40);
    wait_for("every change delivered", Duration::from_secs(60), || {
        rx.acked().is_superset(&want)
    })
    .await;
    let deliveries = rx.deliveries();
    check_order(&deliveries);
    wait_for("the cursor to catch up", Duration::from_secs(10), || {
        push_status(&env)["backlog"] == 0
    })
    .await;
    let s = push_status(&env);
    assert_eq!(s["parked"], 0, "{s}");
    // The secret never shows.
    assert!(!s.to_string().contains(secret.trim_start_matches("whsec_")));
    assert!(!daemon
        .log_text()
        .contains(secret.trim_start_matches("whsec_")));
    let metrics = c
        .get(env.api_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("vppr_push_delivered_total"), "{metrics}");
    assert!(metrics.contains("vppr_push_lag_changes 0"), "{metrics}");
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_then_back_gets_everything_in_order() {
    let (rx, secret) = Receiver::new(free_addr());
    let env = TestEnv::new(EnvOptions::default());
    push_section(
        &format!("http://{}/hooks", rx.addr),
        &secret,
        &env,
        "max_batch = 3\ntimeout = \"1s\"",
    );
    let c = client();
    let daemon = env.start_daemon();
    track(&c, &env, 7).await;
    let want = feed_seqs(&c, &env).await;
    wait_for("the failure to show", Duration::from_secs(10), || {
        push_status(&env)["lastError"].is_string()
    })
    .await;
    let s = push_status(&env);
    assert_eq!(s["lastDeliveredSeq"], 0, "{s}");
    assert_eq!(s["backlog"], 7, "{s}");
    assert!(s["endpoint"].as_str().unwrap().contains("/hooks"), "{s}");
    let text = common::stdout(&env.cli(&["push"]));
    assert!(
        text.contains("backlog") && text.contains("last error"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    rx.start().await;
    wait_for("every change delivered", Duration::from_secs(30), || {
        rx.acked().is_superset(&want)
    })
    .await;
    check_order(&rx.deliveries());
    wait_for("the cursor to move", Duration::from_secs(10), || {
        push_status(&env)["backlog"] == 0
    })
    .await;
    // New changes keep flowing.
    track(&c, &env, 2).await;
    let want = feed_seqs(&c, &env).await;
    wait_for("the new changes", Duration::from_secs(10), || {
        rx.acked().is_superset(&want)
    })
    .await;
    check_order(&rx.deliveries());
    rx.stop().await;
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let (rx, secret) = Receiver::new(free_addr());
    rx.set_mode(Mode::Fail {
        n: 2,
        status: 500,
        retry_after: Some(2),
    });
    rx.start().await;
    let env = TestEnv::new(EnvOptions::default());
    push_section(&format!("http://{}/", rx.addr), &secret, &env, "");
    let c = client();
    let _daemon = env.start_daemon();
    track(&c, &env, 1).await;
    wait_for("delivery", Duration::from_secs(20), || {
        !rx.acked().is_empty()
    })
    .await;
    let d = rx.deliveries();
    assert_eq!(d.len(), 3, "{d:?}");
    for w in d.windows(2) {
        let gap = w[1].at.duration_since(w[0].at);
        assert!(
            gap >= Duration::from_millis(1950),
            "attempt inside Retry-After: {gap:?}"
        );
        assert_eq!(w[0].id, w[1].id, "a redelivery keeps its webhook-id");
    }
    assert_eq!(d[2].status, 200);
    let s = push_status(&env);
    assert!(s["lastError"].as_str().unwrap().contains("HTTP 500"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_gets_parked_after_dead_after_and_replay_requeues() {
    let (rx, secret) = Receiver::new(free_addr());
    rx.set_mode(Mode::Fail {
        n: u32::MAX,
        status: 410,
        retry_after: None,
    });
    rx.start().await;
    let env = TestEnv::new(EnvOptions::default());
    push_section(
        &format!("http://{}/", rx.addr),
        &secret,
        &env,
        "dead_after = \"3s\"\ntimeout = \"1s\"",
    );
    let c = client();
    let _daemon = env.start_daemon();
    track(&c, &env, 2).await;
    let parked_seqs = feed_seqs(&c, &env).await;
    wait_for("the batch parked", Duration::from_secs(20), || {
        push_status(&env)["parked"] == 2
    })
    .await;
    let d = rx.deliveries();
    let first = d.first().unwrap().at;
    let last = d.last().unwrap().at;
    assert!(
        // The deadline runs from when the batch was pinned, a few ms before the first
        // request reached the receiver.
        last.duration_since(first) >= Duration::from_millis(2900),
        "parked before dead_after: {:?}",
        d.iter()
            .map(|x| (x.id.clone(), x.at.duration_since(first)))
            .collect::<Vec<_>>()
    );
    assert!(d.iter().all(|x| x.status == 410));
    let s = push_status(&env);
    assert_eq!(
        s["lastDeliveredSeq"].as_i64().unwrap(),
        *parked_seqs.last().unwrap(),
        "{s}"
    );
    let shown: BTreeSet<i64> = s["recentParked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(shown, parked_seqs);
    let text = common::stdout(&env.cli(&["push"]));
    assert!(text.contains("parked              2"), "{text}");
    // The receiver is fixed: later changes flow; the parked ones are not skipped silently
    // (shown above) and a replay delivers them under new ids.
    rx.set_mode(Mode::Ok);
    track(&c, &env, 1).await;
    let all = feed_seqs(&c, &env).await;
    let newest = *all.last().unwrap();
    wait_for("the new change", Duration::from_secs(15), || {
        rx.acked().contains(&newest)
    })
    .await;
    assert!(rx.acked().is_disjoint(&parked_seqs));
    // A replay past the cursor is refused; one behind it re-queues.
    let out = env.cli(&["push", "replay", "--after", "999999"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let out = env.cli(&["push", "replay", "--after", "0"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_for("the replay", Duration::from_secs(15), || {
        rx.acked().is_superset(&all)
    })
    .await;
    let replayed: Vec<Delivery> = rx
        .deliveries()
        .into_iter()
        .filter(|d| d.status == 200 && d.id.ends_with("_r1"))
        .collect();
    let got: BTreeSet<i64> = replayed.iter().flat_map(|d| d.seqs()).collect();
    assert_eq!(got, all);
    assert_eq!(push_status(&env)["parked"], 0);
}

// ---------------------------------------------------------------------------------------------
// Serving the MDM with the simulator: licence and token items, the licence report
// ---------------------------------------------------------------------------------------------

const FAST: &str = "notification_grace = \"2s\"\npoll_min = \"1s\"\npoll_max = \"4s\"\nresubmit_after = \"30s\"\ngive_up_after = \"60s\"";
const SCARCE: &str = "361304891";
const PLENTY: &str = "408709785";

async fn settle(c: &reqwest::Client, env: &TestEnv, ids: &[String]) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let mut out = vec![];
        for id in ids {
            let v: Value = c
                .get(env.api_url(&format!("/v1/events/{id}")))
                .bearer_auth(env.token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            out.push(v);
        }
        if out.iter().all(|e| e["state"] == "settled") {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not settled: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn submit(c: &reqwest::Client, env: &TestEnv, kind: &str, body: Value) -> Vec<String> {
    let r = c
        .post(env.api_url(&format!("/v1/tokens/acme/requests/{kind}")))
        .bearer_auth(env.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v["eventIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect()
}

fn users(adam: &str, ids: &[&str]) -> Value {
    json!({"assets": [{"adamId": adam, "pricingParam": "STDQ"}], "clientUserIds": ids})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licences_run_out_and_free_up_tokens_get_revoked_and_the_report_matches_the_truth() {
    let sim = Sim::start(11);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "pageSize": 50,
                "users": (1..=4).map(|i| json!({"clientUserId": format!("u{i}"), "email": format!("u{i}@example.com")})).collect::<Vec<_>>(),
                "assets": [
                    {"adamId": SCARCE, "pricingParam": "STDQ", "productType": "App", "total": 1, "deviceAssignable": true, "revocable": true},
                    {"adamId": PLENTY, "pricingParam": "STDQ", "productType": "App", "total": 5, "deviceAssignable": true, "revocable": true}
                ]}),
        )
        .await;
    let uid = loc["uId"].as_str().unwrap().to_string();
    let stoken = loc["sToken"].as_str().unwrap().to_string();
    let (rx, secret) = Receiver::new(free_addr());
    rx.start().await;
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        reconcile: FAST,
        stokens: vec![stoken.clone()],
        ..Default::default()
    });
    push_section(&format!("http://{}/", rx.addr), &secret, &env, "");
    sim.put(
        "/_sim/notify",
        &json!({"uId": uid, "url": format!("http://{}/apple/notifications/acme", env.webhook),
            "authToken": env.tokens[0].notify_secret}),
    )
    .await;
    let c = client();
    let _daemon = env.start_daemon();
    // The mirror holds the scarce asset with its one licence.
    wait_for_json(&c, &env, "/v1/tokens/acme/assets", |v| {
        v["assets"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["adamId"] == SCARCE && x["availableCount"] == 1)
        })
    })
    .await;
    // Two associations of the one licence: the second fails with 9709.
    let a1 = submit(&c, &env, "associate", users(SCARCE, &["u1"])).await;
    settle(&c, &env, &a1).await;
    let a2 = submit(&c, &env, "associate", users(SCARCE, &["u2"])).await;
    let e2 = settle(&c, &env, &a2).await;
    assert_eq!(e2[0]["outcome"], "failed", "{e2:?}");
    assert!(e2[0]["failures"].to_string().contains("9709"), "{e2:?}");
    // A disassociation frees it.
    let d1 = submit(&c, &env, "disassociate", users(SCARCE, &["u1"])).await;
    settle(&c, &env, &d1).await;
    // One tracked assignment of the plentiful asset, one made directly at Apple.
    let a3 = submit(&c, &env, "associate", users(PLENTY, &["u1"])).await;
    settle(&c, &env, &a3).await;
    let direct = sim
        .apple_write(&stoken, "assets/associate", &users(PLENTY, &["u3"]))
        .await;
    assert!(direct["eventId"].is_string(), "{direct}");
    // The simulator processes it asynchronously.
    let start = Instant::now();
    while !sim.get(&format!("/_sim/truth/{uid}")).await["assignments"]
        .to_string()
        .contains("\"u3\"")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "u3 never assigned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The daemon learns it from the notification or a sync.
    for kind in ["assignments", "assets"] {
        c.post(env.api_url("/v1/tokens/acme/sync"))
            .bearer_auth(env.token())
            .json(&json!({"kind": kind, "full": true}))
            .send()
            .await
            .unwrap();
    }
    let truth = sim.get(&format!("/_sim/truth/{uid}")).await;
    let want_assigned: BTreeSet<(String, String)> = truth["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["adamId"].as_str().unwrap().to_string(),
                a["clientUserId"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(want_assigned.contains(&(PLENTY.to_string(), "u3".to_string())));
    wait_for_json(&c, &env, "/v1/tokens/acme/licences", |v| {
        v["assets"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["adamId"] == PLENTY && x["unknownOrigin"] == 1 && x["assigned"] == 2)
        })
    })
    .await;
    // The report equals what the truth implies.
    let out = env.cli(&["report", "licences", "--token", "acme", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for a in truth["assets"].as_array().unwrap() {
        let adam = a["adamId"].as_str().unwrap();
        let line = report["assets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["adamId"] == adam)
            .unwrap_or_else(|| panic!("{adam} not in {report}"));
        assert_eq!(line["total"], a["totalCount"], "{line} vs {a}");
        assert_eq!(line["assigned"], a["assignedCount"], "{line} vs {a}");
        assert_eq!(line["available"], a["availableCount"], "{line} vs {a}");
        let at_apple: Vec<&str> = want_assigned
            .iter()
            .filter(|(x, _)| x == adam)
            .map(|(_, u)| u.as_str())
            .collect();
        let unknown: Vec<&str> = at_apple.iter().copied().filter(|u| *u == "u3").collect();
        assert_eq!(
            line["tracked"].as_u64().unwrap() as usize,
            at_apple.len() - unknown.len(),
            "{line}"
        );
        assert_eq!(
            line["unknownOrigin"].as_u64().unwrap() as usize,
            unknown.len()
        );
        let listed: Vec<&str> = line["unknownOriginAssignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["clientUserId"].as_str().unwrap())
            .collect();
        assert_eq!(listed, unknown);
    }
    let csv = common::stdout(&env.cli(&["report", "licences", "--csv"]));
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&format!("acme,{PLENTY},STDQ,App,5,2,3,1,1,,u3"))),
        "{csv}"
    );
    // The token is revoked mid-run: a token change follows the next call to Apple.
    let mut state = serde_json::Map::new();
    state.insert(uid.clone(), json!("revoked"));
    sim.put("/_sim/faults", &json!({"tokenState": state})).await;
    c.post(env.api_url("/v1/tokens/acme/sync"))
        .bearer_auth(env.token())
        .json(&json!({"kind": "assets", "full": true}))
        .send()
        .await
        .unwrap();
    wait_for("the token change", Duration::from_secs(30), || {
        rx.deliveries()
            .iter()
            .flat_map(|d| d.changes.clone())
            .any(|c| c["kind"] == "token" && c["health"] == "revoked")
    })
    .await;
    // What the MDM received: licence changes and event outcomes in seq order.
    let d = rx.deliveries();
    check_order(&d);
    let mut first: BTreeMap<i64, Value> = BTreeMap::new();
    for x in d.iter().filter(|x| x.status == 200) {
        for ch in &x.changes {
            first
                .entry(ch["seq"].as_i64().unwrap())
                .or_insert(ch.clone());
        }
    }
    let licence: Vec<(i64, String)> = first
        .iter()
        .filter(|(_, v)| v["kind"] == "licence" && v["adamId"] == SCARCE)
        .map(|(s, v)| (*s, v["change"].as_str().unwrap().to_string()))
        .collect();
    let changes: Vec<&str> = licence.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(changes, ["exhausted", "available"], "{licence:?}");
    let outcome_seq = |id: &str, outcome: &str| -> i64 {
        *first
            .iter()
            .find(|(_, v)| v["kind"] == "event" && v["eventId"] == id && v["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} item for {id}"))
            .0
    };
    // Old consumers: event items are the event JSON plus `kind`.
    assert!(first
        .values()
        .any(|v| v["kind"] == "event" && v["numCompleted"].is_number()));
    let s1 = outcome_seq(&a1[0], "complete");
    let s2 = outcome_seq(&a2[0], "failed");
    let s3 = outcome_seq(&d1[0], "complete");
    assert!(s1 < s2 && s2 < s3);
    assert!(
        licence[0].0 < s2,
        "exhausted before the failed association's outcome"
    );
    assert!(
        licence[1].0 > s2,
        "available again after the disassociation"
    );
}

async fn wait_for_json(
    c: &reqwest::Client,
    env: &TestEnv,
    path: &str,
    ok: impl Fn(&Value) -> bool,
) {
    let start = Instant::now();
    loop {
        let v: Value = c
            .get(env.api_url(path))
            .bearer_auth(env.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        if ok(&v) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{path}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
