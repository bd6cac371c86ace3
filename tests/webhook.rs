//! The webhook of docs/architecture.md#webhook on the real daemon: authentication, body limit, quarantine of
//! unparseable bodies, the uId check, duplicates, and a notification for an event tracked
//! later.

mod common;

use std::time::{Duration, Instant};

use common::{EnvOptions, Sim, TestEnv};
use serde_json::{json, Value};

async fn setup() -> (Sim, TestEnv, common::Daemon, String) {
    let sim = Sim::start(3);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "assets": [{"adamId": "1", "pricingParam": "STDQ", "productType": "App", "total": 10, "deviceAssignable": true, "revocable": true}], "users": []}),
        )
        .await;
    let uid = loc["uId"].as_str().unwrap().to_string();
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![loc["sToken"].as_str().unwrap().to_string()],
        ..Default::default()
    });
    let daemon = env.start_daemon();
    // Wait until the daemon has learned the location's uId from Client Config.
    let start = Instant::now();
    loop {
        let out = env.cli(&["tokens", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["tokens"][0]["uId"] == uid.as_str() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "uId never learned: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (sim, env, daemon, uid)
}

fn notification(id: &str, uid: &str, event: &str) -> Value {
    json!({"notificationId": id, "notificationType": "ASSET_MANAGEMENT", "uId": uid,
        "notification": {"eventId": event, "result": "SUCCESS", "type": "ASSOCIATE",
            "assignments": [{"adamId": "1", "pricingParam": "STDQ", "serialNumber": "S1"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_rules() {
    let (_sim, env, daemon, uid) = setup().await;
    let c = reqwest::Client::new();
    let url = format!("http://{}/apple/notifications/acme", env.webhook);
    let secret = env.tokens[0].notify_secret.clone();
    let post = |body: Vec<u8>, auth: Option<String>| {
        let mut r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let body = serde_json::to_vec(&notification("n-1", &uid, "ev-1")).unwrap();

    // Wrong or missing auth: 401, nothing stored.
    assert_eq!(post(body.clone(), None).await.unwrap().status(), 401);
    assert_eq!(
        post(body.clone(), Some("Bearer nope".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(body.clone(), Some(secret.clone()))
            .await
            .unwrap()
            .status(),
        401,
        "Bearer prefix required"
    );
    // Unknown token name: the same 401 as a wrong bearer (names cannot be probed), even
    // with this token's own bearer.
    for auth in [None, Some(format!("Bearer {secret}"))] {
        let mut r = c
            .post(format!("http://{}/apple/notifications/other", env.webhook))
            .body("{}");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
    }

    // Accepted (the scheme name is case-insensitive), committed, then a duplicate with no
    // second effect.
    let auth = Some(format!("Bearer {secret}"));
    let lower = Some(format!("bearer {secret}"));
    assert_eq!(post(body.clone(), lower).await.unwrap().status(), 200);
    assert_eq!(
        post(body.clone(), auth.clone()).await.unwrap().status(),
        200
    );
    // Another location's uId: 400.
    let other = serde_json::to_vec(&notification("n-2", "999", "ev-2")).unwrap();
    let r = post(other, auth.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    let msg: Value = r.json().await.unwrap();
    assert!(msg["error"].as_str().unwrap().contains("\"999\""), "{msg}");
    // Not a notification: 400 and quarantined.
    let r = post(b"{\"hello\": 1}".to_vec(), auth.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(b"not json".to_vec(), auth.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    // Over max_body_bytes (1 MiB): 413.
    let big = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(post(big, auth.clone()).await.unwrap().status(), 413);

    // The event tracked after its notification arrived: applied on tracking, settled without
    // a poll (1 entity requested, 1 SUCCESS).
    let api = env.http();
    let r = api
        .post(env.api_url("/v1/events"))
        .json(&json!({"token": "acme", "eventId": "ev-1", "type": "ASSOCIATE",
            "request": {"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["S1"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let start = Instant::now();
    loop {
        let e: Value = api
            .get(env.api_url("/v1/events/ev-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if e["state"] == "settled" {
            assert_eq!(e["outcome"], "complete");
            assert_eq!(e["polls"], 0);
            assert_eq!(
                e["notifications"].as_array().unwrap().len(),
                1,
                "duplicate stored once: {e}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not settled: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(daemon);
    let db = rusqlite::Connection::open(env.path("state.db")).unwrap();
    let stored: i64 = db
        .query_row("SELECT COUNT(*) FROM notifications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stored, 1,
        "only the authenticated, valid notification is stored"
    );
    let quarantined: Vec<String> = db
        .prepare("SELECT reason FROM quarantine ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let mirrored: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM mirror_assignments WHERE serial_number = 'S1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        mirrored, 1,
        "the notification's assignment is in the mirror"
    );
}
