//! The real daemon against the real simulator binary over loopback: each scenario submits a
//! workload at the simulator as an MDM would, tracks the eventIds through the daemon, and
//! checks that every event ends with the simulator's true outcome, that the mirror equals
//! `/_sim/truth`, and that the daemon never broke the rate limit or a Retry-After.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Backend, Daemon, EnvOptions, Sim, TestEnv};
use serde_json::{json, Value};

/// Each scenario runs on both backends: `NAME::sqlite` and `NAME::postgres` (a database of
/// its own on the test PostgreSQL server).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(
    all_notifications_delivered_needs_no_status_poll,
    half_the_notifications_lost,
    duplicated_and_reordered_notifications,
    notifications_arriving_before_tracking,
    failed_events_record_every_failure,
    server_errors_with_retry_after_are_honoured,
    apple_rate_limit_from_service_config_is_respected,
    an_expired_token_stops_while_the_other_carries_on,
    version_churn_during_syncs,
    pending_too_long_is_resubmitted_once,
    kill_9_mid_run_then_restart,
    gives_up_after_give_up_after_and_unknown_events_are_not_found,
    sigterm_mid_run_exits_cleanly_and_loses_nothing,
);

struct World {
    sim: Sim,
    env: TestEnv,
    daemon: Option<Daemon>,
    uids: Vec<String>,
    c: reqwest::Client,
}

const FAST: &str = "notification_grace = \"2s\"\npoll_min = \"1s\"\npoll_max = \"4s\"\nresubmit_after = \"30s\"\ngive_up_after = \"60s\"";

fn location_body(name: &str) -> Value {
    let users: Vec<Value> = (1..=20)
        .map(|i| json!({"clientUserId": format!("u{i}"), "email": format!("u{i}@example.com")}))
        .collect();
    json!({"name": name, "pageSize": 50, "users": users, "assets": [
        {"adamId": "361304891", "pricingParam": "STDQ", "productType": "App", "total": 60, "deviceAssignable": true, "revocable": true},
        {"adamId": "408709785", "pricingParam": "STDQ", "productType": "App", "total": 5, "deviceAssignable": true, "revocable": true}
    ]})
}

impl World {
    async fn new(backend: Backend, tokens: &[&str], reconcile: &str, faults: Value) -> World {
        World::with_refresh(backend, tokens, reconcile, faults, "5m").await
    }

    async fn with_refresh(
        backend: Backend,
        tokens: &[&str],
        reconcile: &str,
        faults: Value,
        refresh: &str,
    ) -> World {
        let sim = Sim::start(7);
        let mut uids = Vec::new();
        let mut stokens = Vec::new();
        for t in tokens {
            let loc = sim.post("/_sim/locations", &location_body(t)).await;
            uids.push(loc["uId"].as_str().expect("uId").to_string());
            stokens.push(loc["sToken"].as_str().expect("sToken").to_string());
        }
        let env = TestEnv::new(EnvOptions {
            tokens,
            apple_base_url: Some(sim.base.clone()),
            reconcile,
            stokens,
            log_level: "info,vpp_reconciler=debug",
            service_config_refresh: refresh,
            backend,
            ..Default::default()
        });
        sim.put("/_sim/faults", &faults).await;
        for (i, t) in env.tokens.iter().enumerate() {
            let url = format!("http://{}/apple/notifications/{}", env.webhook, t.name);
            sim.put(
                "/_sim/notify",
                &json!({"uId": uids[i], "url": url, "authToken": t.notify_secret}),
            )
            .await;
        }
        let daemon = env.start_daemon();
        World {
            sim,
            env,
            daemon: Some(daemon),
            uids,
            c: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// Sends an Apple write as the MDM would and tracks its eventId (with the body).
    async fn submit(&self, token: usize, endpoint: &str, event_type: &str, body: Value) -> String {
        let t = &self.env.tokens[token];
        let r = self.sim.apple_write(&t.stoken, endpoint, &body).await;
        let id = r["eventId"]
            .as_str()
            .unwrap_or_else(|| panic!("no eventId from {endpoint}: {r}"))
            .to_string();
        let tracked = self
            .c
            .post(self.env.api_url("/v1/events"))
            .bearer_auth(self.env.token())
            .json(&json!({"token": t.name, "eventId": id, "type": event_type, "request": body}))
            .send()
            .await
            .unwrap();
        assert_eq!(tracked.status().as_u16(), 201);
        id
    }

    /// Submits through the daemon (`POST /v1/tokens/{token}/requests/{kind}`), so every Apple
    /// call on this token goes through its rate limiter.
    async fn submit_via_daemon(&self, token: usize, kind: &str, body: Value) -> Vec<String> {
        let t = &self.env.tokens[token];
        let r = self
            .c
            .post(
                self.env
                    .api_url(&format!("/v1/tokens/{}/requests/{kind}", t.name)),
            )
            .bearer_auth(self.env.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "submit {kind}: {v}");
        v["eventIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect()
    }

    async fn events(&self) -> Vec<Value> {
        let r: Value = self
            .c
            .get(self.env.api_url("/v1/events?limit=10000"))
            .bearer_auth(self.env.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["events"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_settled(&self, within: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let events = self.events().await;
            if !events.is_empty() && events.iter().all(|e| e["state"] == "settled") {
                return events;
            }
            if start.elapsed() > within {
                let open: Vec<&Value> = events.iter().filter(|e| e["state"] != "settled").collect();
                panic!(
                    "{} events not settled within {within:?}: {open:#?}\nlog tail:\n{}",
                    open.len(),
                    tail(
                        &self
                            .daemon
                            .as_ref()
                            .map(|d| d.log_text())
                            .unwrap_or_default()
                    )
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every event's outcome is the simulator's truth; the mirror equals the truth.
    async fn check_truth(&self, events: &[Value]) {
        for (i, t) in self.env.tokens.iter().enumerate() {
            if !events.iter().any(|e| e["token"] == t.name.as_str()) {
                continue;
            }
            let truth = self.sim.get(&format!("/_sim/truth/{}", self.uids[i])).await;
            for e in events.iter().filter(|e| e["token"] == t.name.as_str()) {
                let id = e["eventId"].as_str().unwrap();
                let Some(te) = truth["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["eventId"] == id)
                else {
                    assert_eq!(e["outcome"], "not_found", "{id} unknown to the simulator");
                    continue;
                };
                let want = match te["eventStatus"].as_str().unwrap() {
                    "COMPLETE" => "complete",
                    "FAILED" => "failed",
                    other => panic!("simulator event {id} still {other}"),
                };
                assert_eq!(e["outcome"], want, "event {id}: daemon {e} vs truth {te}");
                if want == "failed" {
                    let failures = e["failures"].as_array().unwrap();
                    assert!(!failures.is_empty(), "failures of {id} not recorded");
                    let mut got: BTreeSet<i64> = BTreeSet::new();
                    for f in failures {
                        got.insert(f["errorNumber"].as_i64().unwrap());
                    }
                    for f in te["failures"].as_array().unwrap() {
                        assert!(
                            got.contains(&f["errorNumber"].as_i64().unwrap()),
                            "{id}: {f} not recorded"
                        );
                    }
                }
            }
            // The mirror converges: an event settles on its assignments sync while the assets
            // sync for counts may still be retrying after a 5xx.
            let start = Instant::now();
            let mut truth = truth;
            while let Err(why) = self.check_mirror(&t.name, &truth).await {
                assert!(start.elapsed() < Duration::from_secs(30), "{why}");
                tokio::time::sleep(Duration::from_millis(250)).await;
                truth = self.sim.get(&format!("/_sim/truth/{}", self.uids[i])).await;
            }
        }
    }

    /// One kind of the daemon's mirror of `token`, read through the local API (the same on
    /// both backends).
    async fn mirror(&self, token: &str, what: &str) -> Vec<Value> {
        let url = self
            .env
            .api_url(&format!("/v1/tokens/{token}/{what}?limit=10000"));
        let v: Value = self
            .c
            .get(url)
            .bearer_auth(self.env.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v[what].as_array().cloned().unwrap_or_default()
    }

    async fn check_mirror(&self, token: &str, truth: &Value) -> Result<(), String> {
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
        let n = |v: &Value, k: &str| v[k].as_i64().unwrap_or(-1);
        let assignment = |a: &Value| {
            (
                s(a, "adamId"),
                s(a, "pricingParam"),
                s(a, "clientUserId"),
                s(a, "serialNumber"),
            )
        };
        let asset = |a: &Value| {
            (
                s(a, "adamId"),
                n(a, "assignedCount"),
                n(a, "availableCount"),
                n(a, "totalCount"),
            )
        };
        let user = |u: &Value| (s(u, "clientUserId"), s(u, "status"));
        let truth_of = |k: &str| truth[k].as_array().cloned().unwrap_or_default();
        let got: BTreeSet<_> = self
            .mirror(token, "assignments")
            .await
            .iter()
            .map(assignment)
            .collect();
        let want: BTreeSet<_> = truth_of("assignments").iter().map(assignment).collect();
        if got != want {
            return Err(format!(
                "assignments mirror of {token}: {got:?} != truth {want:?}"
            ));
        }
        let got: BTreeSet<_> = self
            .mirror(token, "assets")
            .await
            .iter()
            .map(asset)
            .collect();
        let want: BTreeSet<_> = truth_of("assets").iter().map(asset).collect();
        if got != want {
            return Err(format!(
                "assets mirror of {token}: {got:?} != truth {want:?}"
            ));
        }
        let got: BTreeSet<_> = self.mirror(token, "users").await.iter().map(user).collect();
        let want: BTreeSet<_> = truth_of("users").iter().map(user).collect();
        if got != want {
            return Err(format!(
                "users mirror of {token}: {got:?} != truth {want:?}"
            ));
        }
        Ok(())
    }

    async fn stats(&self) -> Value {
        self.sim.get("/_sim/stats").await
    }

    /// No request over the rate limit and none inside a Retry-After window, for any token.
    async fn check_well_behaved(&self) {
        let stats = self.stats().await;
        for uid in &self.uids {
            let t = &stats["tokens"][uid];
            assert_eq!(t["rateLimitViolations"], 0, "rate limit broken: {stats}");
            assert_eq!(
                t["requestsDuringRetryAfter"], 0,
                "Retry-After ignored: {stats}"
            );
        }
    }

    fn status_calls(stats: &Value, uid: &str) -> i64 {
        stats["tokens"][uid]["requests"]["eventStatus"]
            .as_i64()
            .unwrap_or(0)
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn associate(serials: &[&str], adam: &str) -> Value {
    json!({"assets": [{"adamId": adam, "pricingParam": "STDQ"}], "serialNumbers": serials})
}

/// A mixed workload on one token: device and user associations, user creation, a
/// disassociation.
async fn workload(w: &World, token: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..4 {
        let serials: Vec<String> = (0..3).map(|j| format!("T{token}-D{i}-{j}")).collect();
        let s: Vec<&str> = serials.iter().map(String::as_str).collect();
        ids.push(
            w.submit(
                token,
                "assets/associate",
                "ASSOCIATE",
                associate(&s, "361304891"),
            )
            .await,
        );
    }
    ids.push(
        w.submit(token, "users/create", "CREATE",
            json!({"users": [{"clientUserId": "n1", "email": "n1@example.com"}, {"clientUserId": "n2", "email": "n2@example.com"}]}))
            .await,
    );
    ids.push(
        w.submit(token, "assets/associate", "ASSOCIATE",
            json!({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}], "clientUserIds": ["u1", "u2"]}))
            .await,
    );
    ids.push(
        w.submit(
            token,
            "assets/disassociate",
            "DISASSOCIATE",
            associate(&[&format!("T{token}-D0-0")], "361304891"),
        )
        .await,
    );
    ids
}

async fn all_notifications_delivered_needs_no_status_poll(backend: Backend) {
    let w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "100ms"}),
    )
    .await;
    let ids = workload(&w, 0).await;
    let events = w.wait_settled(Duration::from_secs(60)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    let stats = w.stats().await;
    assert_eq!(
        World::status_calls(&stats, &w.uids[0]),
        0,
        "no Event Status call needed: {stats}"
    );
    w.check_well_behaved().await;
}

async fn half_the_notifications_lost(backend: Backend) {
    let w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "100ms", "dropNotificationRate": 0.5}),
    )
    .await;
    let ids = workload(&w, 0).await;
    let events = w.wait_settled(Duration::from_secs(90)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    w.check_well_behaved().await;
    let stats = w.stats().await;
    assert!(
        stats["notifications"]["dropped"].as_i64().unwrap() > 0,
        "the fault was on: {stats}"
    );
    // The work shows in the metrics.
    let metrics =
        w.c.get(w.env.api_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    for needle in [
        "vppr_api_requests_total{token=\"acme\",endpoint=\"status\",status=\"ok\"}",
        "vppr_notifications_total{token=\"acme\",type=\"ASSET_MANAGEMENT\",result=\"SUCCESS\"}",
        "vppr_syncs_total{token=\"acme\",kind=\"assignments\",result=\"ok\"}",
        "vppr_events{state=\"settled\",outcome=\"complete\",token=\"acme\"}",
        "vppr_webhook_ack_duration_seconds_count",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    // A debug log of real Apple traffic carries no secret.
    let log = w.daemon.as_ref().unwrap().log_text();
    assert!(log.contains("sync finished"), "log captured");
    for secret in w.env.secrets() {
        assert!(
            !log.contains(&secret),
            "a secret leaked into the daemon log"
        );
    }
}

async fn duplicated_and_reordered_notifications(backend: Backend) {
    let w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "100ms", "duplicateNotificationRate": 0.6, "notificationDelay": "400ms"}),
    )
    .await;
    let ids = workload(&w, 0).await;
    let events = w.wait_settled(Duration::from_secs(60)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    let stats = w.stats().await;
    assert!(
        stats["notifications"]["duplicated"].as_i64().unwrap() > 0,
        "{stats}"
    );
    // Duplicates had no second effect: every event's completed count is its requested count.
    for e in &events {
        if e["outcome"] == "complete" {
            assert_eq!(e["numCompleted"], e["numRequested"], "{e}");
        }
    }
}

async fn notifications_arriving_before_tracking(backend: Backend) {
    let w = World::new(backend, &["acme"], FAST, json!({"processingDelay": "10ms"})).await;
    let t = &w.env.tokens[0];
    let mut ids = Vec::new();
    let body = associate(&["EARLY-1", "EARLY-2"], "361304891");
    for _ in 0..3 {
        let r = w
            .sim
            .apple_write(&t.stoken, "assets/associate", &body)
            .await;
        ids.push(r["eventId"].as_str().unwrap().to_string());
    }
    // Let Apple finish and notify before anyone tells the daemon about the events.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for id in &ids {
        let r = w
            .c
            .post(w.env.api_url("/v1/events"))
            .bearer_auth(w.env.token())
            .json(&json!({"token": t.name, "eventId": id, "type": "ASSOCIATE", "request": body}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let events = w.wait_settled(Duration::from_secs(30)).await;
    w.check_truth(&events).await;
    let stats = w.stats().await;
    assert_eq!(
        World::status_calls(&stats, &w.uids[0]),
        0,
        "early notifications were applied: {stats}"
    );
}

async fn failed_events_record_every_failure(backend: Backend) {
    let w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "100ms", "dropNotificationRate": 0.3}),
    )
    .await;
    // 8 devices for an app with 5 licences: 9709 for the last 3 (partial completion).
    let serials: Vec<String> = (0..8).map(|i| format!("P{i}")).collect();
    let s: Vec<&str> = serials.iter().map(String::as_str).collect();
    let partial = w
        .submit(
            0,
            "assets/associate",
            "ASSOCIATE",
            associate(&s, "408709785"),
        )
        .await;
    // An unknown user: 9609.
    let unknown = w
        .submit(0, "assets/associate", "ASSOCIATE",
            json!({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}], "clientUserIds": ["ghost", "u3"]}))
        .await;
    // A user that exists already: 9716.
    let exists = w
        .submit(
            0,
            "users/create",
            "CREATE",
            json!({"users": [{"clientUserId": "u1", "email": "u1@example.com"}]}),
        )
        .await;
    let events = w.wait_settled(Duration::from_secs(60)).await;
    w.check_truth(&events).await;
    let by_id = |id: &str| events.iter().find(|e| e["eventId"] == id).unwrap().clone();
    let p = by_id(&partial);
    assert_eq!(p["outcome"], "failed");
    assert!(
        p["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["errorNumber"] == 9709),
        "{p}"
    );
    assert!(by_id(&unknown)["failures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["errorNumber"] == 9609));
    assert!(by_id(&exists)["failures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["errorNumber"] == 9716));
    w.check_well_behaved().await;
}

async fn server_errors_with_retry_after_are_honoured(backend: Backend) {
    let w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "100ms", "dropNotificationRate": 0.6}),
    )
    .await;
    let ids = workload(&w, 0).await;
    // The MDM's own writes are in; from now on Apple answers 30% of requests with 5xx.
    w.sim
        .put(
            "/_sim/faults",
            &json!({"error5xxRate": 0.3, "retryAfter": "1s"}),
        )
        .await;
    let events = w.wait_settled(Duration::from_secs(120)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    w.check_well_behaved().await;
}

async fn apple_rate_limit_from_service_config_is_respected(backend: Backend) {
    let w = World::with_refresh(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "100ms", "dropNotificationRate": 1.0}),
        "1s",
    )
    .await;
    // Apple lowers the limit below the configured 15/s; the daemon follows it once it has
    // re-read Service Config (every second here). The MDM submits through the daemon, so
    // every call on the token shares the daemon's limiter.
    // (Start-up syncs first: a limit lowered under requests already on their way cannot be
    // known to any client.)
    tokio::time::sleep(Duration::from_millis(2000)).await;
    w.sim
        .put("/_sim/limits", &json!({"maxRequestPerSecond": 3}))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let serials: Vec<String> = (0..3).map(|j| format!("RL{i}-{j}")).collect();
        let s: Vec<&str> = serials.iter().map(String::as_str).collect();
        ids.extend(
            w.submit_via_daemon(0, "associate", associate(&s, "361304891"))
                .await,
        );
    }
    ids.extend(
        w.submit_via_daemon(
            0,
            "create-users",
            json!({"users": [{"clientUserId": "r1", "email": "r1@example.com"}]}),
        )
        .await,
    );
    let events = w.wait_settled(Duration::from_secs(120)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    w.check_well_behaved().await;
}

async fn an_expired_token_stops_while_the_other_carries_on(backend: Backend) {
    let w = World::new(
        backend,
        &["acme", "beta"],
        FAST,
        json!({"processingDelay": "100ms", "dropNotificationRate": 1.0}),
    )
    .await;
    let a = workload(&w, 0).await;
    let b = workload(&w, 1).await;
    let mut state = serde_json::Map::new();
    state.insert(w.uids[1].clone(), json!("expired"));
    w.sim
        .put("/_sim/faults", &json!({"tokenState": state}))
        .await;
    // acme settles; beta cannot (its token expired), and says so.
    let start = Instant::now();
    loop {
        let events = w.events().await;
        let acme: Vec<&Value> = events.iter().filter(|e| e["token"] == "acme").collect();
        if acme.len() == a.len() && acme.iter().all(|e| e["state"] == "settled") {
            w.check_truth(&acme.into_iter().cloned().collect::<Vec<_>>())
                .await;
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "acme did not settle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    loop {
        let out = w.env.cli(&["tokens", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let beta = v["tokens"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "beta").cloned());
        if let Some(beta) = beta {
            if beta["health"] == "unhealthy" {
                assert!(
                    beta["healthReason"].as_str().unwrap().contains("expired"),
                    "{beta}"
                );
                assert!(beta["healthSince"].is_string());
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "beta never marked unhealthy: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // /healthz: up, but degraded, naming the token and why.
    let health: Value = reqwest::get(w.env.api_url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["tokens"]["beta"]["health"], "unhealthy", "{health}");
    assert!(health["tokens"].get("acme").is_none(), "{health}");
    let stats = w.stats().await;
    let before = stats["tokens"][&w.uids[1]]["requests"].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = w.stats().await["tokens"][&w.uids[1]]["requests"].clone();
    assert_eq!(before, after, "no traffic for an expired token");
    // The operator installs a new token file and reloads: beta resumes and settles.
    let mut state = serde_json::Map::new();
    state.insert(w.uids[1].clone(), json!("valid"));
    w.sim
        .put("/_sim/faults", &json!({"tokenState": state}))
        .await;
    let pid = w.daemon.as_ref().unwrap().child.id() as i32;
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    // Right after the reload `tokens` and /healthz tell the truth: the renewed token is
    // healthy again (not "unknown" until some later change).
    let start = Instant::now();
    loop {
        let out = w.env.cli(&["tokens", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let healthy = v["tokens"].as_array().is_some_and(|t| {
            t.iter()
                .filter(|t| t["name"] == "beta")
                .all(|t| t["health"] == "healthy")
        });
        let hz: Value = reqwest::get(w.env.api_url("/healthz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if healthy && hz["status"] == "ok" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "after reload: {v} {hz}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = w.wait_settled(Duration::from_secs(90)).await;
    assert_eq!(events.len(), a.len() + b.len());
    w.check_truth(&events).await;
    w.check_well_behaved().await;
}

async fn version_churn_during_syncs(backend: Backend) {
    let w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "100ms", "dropNotificationRate": 0.7, "versionChurn": true}),
    )
    .await;
    let ids = workload(&w, 0).await;
    let events = w.wait_settled(Duration::from_secs(90)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    w.check_well_behaved().await;
}

async fn pending_too_long_is_resubmitted_once(backend: Backend) {
    let reconcile = "notification_grace = \"1s\"\npoll_min = \"1s\"\npoll_max = \"2s\"\nresubmit_after = \"2s\"\ngive_up_after = \"120s\"";
    let w = World::new(
        backend,
        &["acme"],
        reconcile,
        json!({"processingDelay": "5s", "dropNotificationRate": 1.0}),
    )
    .await;
    let id = w
        .submit(
            0,
            "assets/associate",
            "ASSOCIATE",
            associate(&["R1", "R2"], "361304891"),
        )
        .await;
    let events = w.wait_settled(Duration::from_secs(60)).await;
    let old = events.iter().find(|e| e["eventId"] == id.as_str()).unwrap();
    let new_id = old["supersededBy"]
        .as_str()
        .expect("resubmitted")
        .to_string();
    let new = events
        .iter()
        .find(|e| e["eventId"] == new_id.as_str())
        .expect("new event tracked");
    assert_eq!(new["supersedes"], id.as_str());
    assert!(new["supersededBy"].is_null(), "resubmitted once only");
    assert_eq!(events.len(), 2);
    w.check_truth(&events).await;
    w.check_well_behaved().await;
}

async fn kill_9_mid_run_then_restart(backend: Backend) {
    let mut w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "1500ms", "dropNotificationRate": 0.5}),
    )
    .await;
    let ids = workload(&w, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.daemon.take().unwrap().kill9();
    // Notifications sent while the daemon is down are lost to it; polling must recover them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.daemon = Some(w.env.start_daemon());
    let events = w.wait_settled(Duration::from_secs(90)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    w.check_well_behaved().await;
}

async fn gives_up_after_give_up_after_and_unknown_events_are_not_found(backend: Backend) {
    let reconcile = "notification_grace = \"1s\"\npoll_min = \"1s\"\npoll_max = \"2s\"\nresubmit_after = \"1h\"\ngive_up_after = \"5s\"";
    // Apple never finishes within the test.
    let w = World::new(
        backend,
        &["acme"],
        reconcile,
        json!({"processingDelay": "1h"}),
    )
    .await;
    let t = &w.env.tokens[0];
    let r = w
        .sim
        .apple_write(
            &t.stoken,
            "assets/associate",
            &associate(&["G1"], "361304891"),
        )
        .await;
    let slow = r["eventId"].as_str().unwrap().to_string();
    for (id, ty) in [
        (slow.as_str(), "ASSOCIATE"),
        ("00000000-dead-beef-0000-000000000000", "CREATE"),
    ] {
        let r =
            w.c.post(w.env.api_url("/v1/events"))
                .bearer_auth(w.env.token())
                .json(&json!({"token": "acme", "eventId": id, "type": ty}))
                .send()
                .await
                .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let events = w.wait_settled(Duration::from_secs(60)).await;
    let outcome = |id: &str| {
        events
            .iter()
            .find(|e| e["eventId"] == id)
            .map(|e| e["outcome"].clone())
            .unwrap()
    };
    assert_eq!(outcome(&slow), "timed_out");
    assert_eq!(outcome("00000000-dead-beef-0000-000000000000"), "not_found");
    let detail: Value =
        w.c.get(w.env.api_url(&format!("/v1/events/{slow}")))
            .bearer_auth(w.env.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let causes: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cause"].as_str().unwrap())
        .collect();
    assert!(
        causes.iter().any(|c| c.contains("still pending")),
        "{causes:?}"
    );
    assert!(
        causes.iter().any(|c| c.contains("sync")),
        "settled by a sync: {causes:?}"
    );
    w.check_well_behaved().await;
}

async fn sigterm_mid_run_exits_cleanly_and_loses_nothing(backend: Backend) {
    let mut w = World::new(
        backend,
        &["acme"],
        FAST,
        json!({"processingDelay": "500ms", "dropNotificationRate": 0.5}),
    )
    .await;
    let ids = workload(&w, 0).await;
    w.sim
        .put(
            "/_sim/faults",
            &json!({"error5xxRate": 0.2, "retryAfter": "1s"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let status = w.daemon.take().unwrap().terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "shutdown is bounded"
    );
    // Everything tracked is still there, and a restart finishes the job.
    w.daemon = Some(w.env.start_daemon());
    let events = w.wait_settled(Duration::from_secs(90)).await;
    assert_eq!(events.len(), ids.len());
    w.check_truth(&events).await;
    w.check_well_behaved().await;
}

/// Crash harness: a mixed workload (MDM writes tracked through the API, submissions through
/// the daemon, notifications from the simulator with half of them lost, extra notifications
/// from several webhook clients) while the daemon is `kill -9`ed at seeded random points and
/// restarted each time. Afterwards nothing acknowledged is missing, the database is intact,
/// every event has the simulator's true outcome and the mirror equals the truth.
/// `CRASH_POINTS=200` for a longer run (50 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_harness_kill_9_at_random_points() {
    use rand::{Rng, SeedableRng};
    let points: usize = std::env::var("CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261127);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // SQLite only: it inspects the file afterwards (integrity_check, rows by SQL).
    let mut w = World::new(
        Backend::Sqlite,
        &["acme", "beta"],
        FAST,
        json!({"processingDelay": "400ms", "dropNotificationRate": 0.5}),
    )
    .await;
    let mut tracked: BTreeSet<String> = BTreeSet::new();
    let mut acked_notes: Vec<String> = Vec::new();
    let mut user = 0u32;
    for point in 0..points {
        let kill_after = Duration::from_millis(rng.gen_range(0..1_200));
        let token = point % 2;
        let t = w.env.tokens[token].clone();
        let serial = format!("C{point}");
        let user_id = {
            user += 1;
            format!("crash-u{user}")
        };
        // The workload of this point, racing the kill.
        let work = async {
            let mut ids = Vec::new();
            let mut notes = Vec::new();
            // An MDM write at Apple, then tracked with its body.
            let body = associate(&[&serial], "361304891");
            let r = w
                .sim
                .apple_write(&t.stoken, "assets/associate", &body)
                .await;
            if let Some(id) = r["eventId"].as_str() {
                let ok = w
                    .c
                    .post(w.env.api_url("/v1/events"))
                    .bearer_auth(w.env.token())
                    .json(&json!({"token": t.name, "eventId": id, "type": "ASSOCIATE", "request": body}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 201);
                if ok {
                    ids.push(id.to_string());
                }
            }
            // A submission through the daemon.
            let r = w
                .c
                .post(w.env.api_url(&format!("/v1/tokens/{}/requests/create-users", t.name)))
                .bearer_auth(w.env.token())
                .json(&json!({"users": [{"clientUserId": user_id, "email": format!("{user_id}@example.com")}]}))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().as_u16() == 201 {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    for id in v["eventIds"].as_array().into_iter().flatten() {
                        ids.push(id.as_str().unwrap_or_default().to_string());
                    }
                }
            }
            // Notifications from three clients at once; only those answered 200 count.
            let url = format!("http://{}/apple/notifications/{}", w.env.webhook, t.name);
            let sends = (0..3).map(|c| {
                let id = format!("crash-n{point}-{c}");
                let body = json!({"notificationId": id, "notificationType": "TEST_NOTIFICATION",
                    "uId": w.uids[token], "notification": {}});
                let req =
                    w.c.post(&url)
                        .header("authorization", format!("Bearer {}", t.notify_secret))
                        .json(&body)
                        .send();
                async move { (id, req.await.is_ok_and(|r| r.status().as_u16() == 200)) }
            });
            for (id, ok) in futures::future::join_all(sends).await {
                if ok {
                    notes.push(id);
                }
            }
            (ids, notes)
        };
        let (ids, notes) = tokio::select! {
            r = work => r,
            _ = tokio::time::sleep(kill_after) => (Vec::new(), Vec::new()),
        };
        tracked.extend(ids);
        acked_notes.extend(notes);
        w.daemon.take().unwrap().kill9();
        let d = w.env.start_daemon();
        d.wait_healthy(Duration::from_secs(20));
        w.daemon = Some(d);
    }
    let events = w.wait_settled(Duration::from_secs(240)).await;
    let known: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["eventId"].as_str())
        .collect();
    for id in &tracked {
        assert!(known.contains(id.as_str()), "acknowledged event {id} lost");
    }
    w.check_truth(&events).await;
    let db = rusqlite::Connection::open_with_flags(
        w.env.path("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    for id in &acked_notes {
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM notifications WHERE notification_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "notification {id} was answered 200 but is not stored");
    }
    eprintln!(
        "crash harness: {points} kill points (seed {seed}), {} events tracked, {} notifications acknowledged",
        tracked.len(),
        acked_notes.len()
    );
}
