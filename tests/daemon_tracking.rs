//! The real daemon binary with a temp database: tracking through the API and the CLI,
//! idempotency and conflicts, durability across `kill -9`, read-only inspection while the
//! daemon is down, graceful SIGTERM, and no secret in any output.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{stderr, stdout, EnvOptions, TestEnv};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(c: &reqwest::Client, env: &TestEnv, body: &Value) -> (u16, Value) {
    let mut req = c.post(env.api_url("/v1/events")).json(body);
    req = req.bearer_auth(env.token());
    let r = req.send().await.expect("POST /v1/events");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(c: &reqwest::Client, env: &TestEnv, path: &str) -> (u16, Value) {
    let mut req = c.get(env.api_url(path));
    req = req.bearer_auth(env.token());
    let r = req.send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn associate_body(n_serials: usize) -> Value {
    let serials: Vec<String> = (0..n_serials).map(|i| format!("SN{i}")).collect();
    json!({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}], "serialNumbers": serials})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_events_survive_kill_9_and_read_back_with_daemon_down() {
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme", "beta"],
        // Long grace: nothing is due during the test, so due times must persist unchanged.
        reconcile: "notification_grace = \"1h\"\ngive_up_after = \"24h\"",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let c = client();

    // 980 through the API from 16 concurrent clients, 20 through the CLI.
    let mut handles = Vec::new();
    for w in 0..16 {
        let c = c.clone();
        let api = env.api_url("/v1/events");
        let bearer = env.token();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (w..980).step_by(16) {
                let id = format!("evt-{i:05}");
                let token = if i % 2 == 0 { "acme" } else { "beta" };
                let body = json!({"token": token, "eventId": id, "type": "ASSOCIATE",
                    "request": associate_body(1 + i % 3)});
                let r = c
                    .post(&api)
                    .bearer_auth(&bearer)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201, "track {id}");
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids: Vec<String> = Vec::new();
    for h in handles {
        ids.extend(h.await.unwrap());
    }
    for i in 980..1000 {
        let id = format!("evt-{i:05}");
        let out = env.cli(&[
            "track",
            "--token",
            "acme",
            "--event-id",
            &id,
            "--type",
            "CREATE",
        ]);
        assert!(out.status.success(), "cli track: {}", stderr(&out));
        assert!(stdout(&out).contains(&format!("tracking {id}")));
        ids.push(id);
    }
    assert_eq!(ids.len(), 1000);

    // What the daemon says before the crash: every event with its due time.
    let (status, before) = get(&c, &env, "/v1/events?limit=2000").await;
    assert_eq!(status, 200);
    let before: HashMap<String, Value> = before["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["eventId"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(before.len(), 1000);
    for e in before.values() {
        assert_eq!(e["state"], "pending");
        assert!(e["nextCheckAt"].is_string(), "due time missing: {e}");
    }
    assert_eq!(before["evt-00004"]["numRequested"], 2);

    daemon.kill9();

    // Daemon down: the read-only CLI sees all of them.
    let out = env.cli(&["events", "--json", "--limit", "5000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    let listed = listed["events"].as_array().unwrap();
    assert_eq!(listed.len(), 1000);
    for e in listed {
        let id = e["eventId"].as_str().unwrap();
        assert_eq!(e, &before[id], "event {id} changed across kill -9");
    }
    let out = env.cli(&["events", "--token", "beta", "--json", "--limit", "5000"]);
    let beta: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(beta["events"].as_array().unwrap().len(), 490);
    let out = env.cli(&["event", "evt-00990", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let detail: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(detail["type"], "CREATE");
    assert_eq!(detail["history"][0]["cause"], "tracked");
    assert_eq!(detail["history"][0]["to"], "pending");
    let out = env.cli(&["event", "evt-00990"]);
    assert!(stdout(&out).contains("history:"), "{}", stdout(&out));
    let out = env.cli(&["event", "no-such-event"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("\"no-such-event\" is not tracked"));
    let out = env.cli(&["events", "--state", "done"]);
    assert_eq!(out.status.code(), Some(2), "bad filter is a usage error");
    let out = env.cli(&["tokens", "--json"]);
    let tokens: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let acme = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme")
        .unwrap()
        .clone();
    assert_eq!(acme["pending"], 510);
    assert_eq!(acme["orgName"], "Org acme");

    // Restart: everything recovered with history and the same due time.
    let daemon = env.start_daemon();
    for id in ["evt-00000", "evt-00511", "evt-00999"] {
        let (status, e) = get(&c, &env, &format!("/v1/events/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(e["nextCheckAt"], before[id]["nextCheckAt"]);
        assert_eq!(e["history"].as_array().unwrap().len(), 1);
    }
    let (_, after) = get(&c, &env, "/v1/events?limit=2000").await;
    assert_eq!(after["events"].as_array().unwrap().len(), 1000);
    assert_eq!(daemon.terminate().code(), Some(0), "SIGTERM exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_is_idempotent_and_conflicts_are_409() {
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme", "beta"],
        api_token: true,
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let c = client();
    // Relative to now: a fixed date ages past `give_up_after` and the event times out.
    let submitted_at = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({"token": "acme", "eventId": "e-1", "type": "ASSOCIATE",
        "submittedAt": submitted_at});
    let (s, first) = post(&c, &env, &body).await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["state"], "pending");
    assert!(first["outcome"].is_null());
    let (s, again) = post(&c, &env, &body).await;
    assert_eq!(s, 200, "same token and type is idempotent");
    assert_eq!(again["eventId"], "e-1");
    let (s, e) = post(
        &c,
        &env,
        &json!({"token": "beta", "eventId": "e-1", "type": "ASSOCIATE"}),
    )
    .await;
    assert_eq!(s, 409);
    assert_eq!(e["code"], "conflict");
    let (s, _) = post(
        &c,
        &env,
        &json!({"token": "acme", "eventId": "e-1", "type": "REVOKE"}),
    )
    .await;
    assert_eq!(s, 409);
    let (s, e) = post(
        &c,
        &env,
        &json!({"token": "nope", "eventId": "e-2", "type": "REVOKE"}),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(e["code"], "unknown_token");
    let (s, e) = post(
        &c,
        &env,
        &json!({"token": "acme", "eventId": "e-2", "type": "INSTALL"}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("\"INSTALL\""), "{e}");
    let (s, _) = post(
        &c,
        &env,
        &json!({"token": "acme", "eventId": "has space", "type": "CREATE"}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = post(
        &c,
        &env,
        &json!({"token": "acme", "eventId": "e-3", "type": "CREATE", "color": 1}),
    )
    .await;
    assert_eq!(s, 400, "unknown fields are rejected");
    let (s, _) = post(
        &c,
        &env,
        &json!({"token": "acme", "eventId": "e-3", "type": "CREATE", "submittedAt": "yesterday"}),
    )
    .await;
    assert_eq!(s, 400);
    // Without the API token: 401.
    let r = c.get(env.api_url("/v1/events")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Filters.
    let (s, l) = get(
        &c,
        &env,
        "/v1/events?state=pending&token=acme&type=ASSOCIATE",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(l["events"].as_array().unwrap().len(), 1);
    let (s, _) = get(&c, &env, "/v1/events?outcome=great").await;
    assert_eq!(s, 400);
    // CLI: conflict exits 1, bad type exits 2.
    let out = env.cli(&[
        "track",
        "--token",
        "beta",
        "--event-id",
        "e-1",
        "--type",
        "ASSOCIATE",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already tracked"));
    let out = env.cli(&[
        "track",
        "--token",
        "acme",
        "--event-id",
        "e-9",
        "--type",
        "BOGUS",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Pagination by cursor.
    for i in 0..5 {
        post(
            &c,
            &env,
            &json!({"token": "acme", "eventId": format!("p-{i}"), "type": "UPDATE"}),
        )
        .await;
    }
    let (_, page1) = get(&c, &env, "/v1/events?limit=4").await;
    assert_eq!(page1["events"].as_array().unwrap().len(), 4);
    let cursor = page1["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, page2) = get(&c, &env, &format!("/v1/events?limit=4&cursor={cursor}")).await;
    assert_eq!(page2["events"].as_array().unwrap().len(), 2);
    assert!(page2.get("nextCursor").is_none());
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output_or_log() {
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme"],
        api_token: true,
        log_level: "trace",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let c = client();
    let (s, _) = post(
        &c,
        &env,
        &json!({"token": "acme", "eventId": "s-1", "type": "CREATE",
        "request": {"users": [{"clientUserId": "u1", "email": "u1@example.com"}]}}),
    )
    .await;
    assert_eq!(s, 201);
    let mut outputs = vec![];
    for args in [
        vec!["check-config"],
        vec!["events", "--json"],
        vec!["event", "s-1"],
        vec!["tokens"],
        vec!["tokens", "--json"],
        vec!["syncs"],
        vec![
            "track",
            "--token",
            "acme",
            "--event-id",
            "s-1",
            "--type",
            "CREATE",
        ],
    ] {
        let o = env.cli(&args);
        outputs.push(format!("{args:?}: {}{}", stdout(&o), stderr(&o)));
    }
    let status = daemon.terminate();
    assert!(status.success());
    let mut all = outputs.join("\n");
    for entry in std::fs::read_dir(env.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            all.push_str(&common::log_text(&p));
        }
    }
    assert!(all.contains("s-1"), "outputs were captured");
    for secret in env.secrets() {
        assert!(
            !all.contains(&secret),
            "a planted secret leaked into the output"
        );
    }
}
