//! Client Config upkeep against the simulator: with `notification_url` set the daemon points
//! Apple's notifications at its own webhook (Apple's TEST_NOTIFICATION must pass its auth)
//! only on a location whose mdmInfo.id is the token's `mdm_id`, never replaces the MDM's
//! mdmInfo, reports another MDM's mdmInfo as a conflict without touching its configuration,
//! and claims a location without mdmInfo only with `claim_location = true`.

mod common;

use std::time::{Duration, Instant};

use common::{EnvOptions, Sim, TestEnv};
use serde_json::{json, Value};

async fn client_config(sim: &Sim, stoken: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}client/config", sim.base))
        .bearer_auth(stoken)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn set_mdm_info(sim: &Sim, stoken: &str, id: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}client/config", sim.base))
        .bearer_auth(stoken)
        .json(&json!({"mdmInfo": {"id": id, "name": "Some MDM", "metadata": "mdm.example.com"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_notifications_pointed_here_and_reports_foreign_mdm_info() {
    let sim = Sim::start(5);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "assets": [], "users": []}),
        )
        .await;
    let stoken = loc["sToken"].as_str().unwrap().to_string();
    // The MDM owns the location before the daemon starts.
    let r = set_mdm_info(&sim, &stoken, "mdm-a").await;
    assert!(r.get("errorNumber").is_none(), "{r}");
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![stoken.clone()],
        notification_url: true,
        service_config_refresh: "1s",
        token_extra: "mdm_id = \"mdm-a\"",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let ours = format!("http://{}/apple/notifications/acme", env.webhook);
    let start = Instant::now();
    loop {
        let cc = client_config(&sim, &stoken).await;
        if cc["notificationUrl"] == ours.as_str() {
            assert_eq!(cc["mdmInfo"]["id"], "mdm-a", "mdmInfo kept: {cc}");
            let types: Vec<&str> = cc["subscribedNotificationTypes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for t in [
                "ASSET_MANAGEMENT",
                "USER_MANAGEMENT",
                "ASSET_COUNT",
                "USER_ASSOCIATED",
            ] {
                assert!(types.contains(&t), "{t} subscribed: {cc}");
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never pointed here: {cc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Apple's TEST_NOTIFICATION reached the webhook with the right auth.
    let start = Instant::now();
    loop {
        let db = rusqlite::Connection::open_with_flags(
            env.path("state.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM notifications WHERE type = 'TEST_NOTIFICATION'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if n >= 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no TEST_NOTIFICATION stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another MDM takes the location over: reported, and its configuration left alone.
    let r = set_mdm_info(&sim, &stoken, "mdm-b").await;
    assert!(r.get("errorNumber").is_none(), "{r}");
    let start = Instant::now();
    loop {
        let out = env.cli(&["tokens", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let conflict = &v["tokens"][0]["mdmConflict"];
        if conflict.is_string() {
            assert!(conflict.as_str().unwrap().contains("mdm-b"), "{conflict}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no conflict reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cc = client_config(&sim, &stoken).await;
    assert_eq!(cc["mdmInfo"]["id"], "mdm-b", "never overwritten: {cc}");
    assert!(daemon.terminate().success());
}

async fn new_location(sim: &Sim) -> String {
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "assets": [], "users": []}),
        )
        .await;
    loc["sToken"].as_str().unwrap().to_string()
}

/// Waits until `tokens --json` shows an mdmConflict for the first token; returns it.
async fn wait_conflict(env: &TestEnv) -> String {
    let start = Instant::now();
    loop {
        let out = env.cli(&["tokens", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(c) = v["tokens"][0]["mdmConflict"].as_str() {
            return c.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no conflict reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn healthz(env: &TestEnv) -> Value {
    reqwest::get(env.api_url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_mdms_location_is_never_redirected() {
    let sim = Sim::start(6);
    let stoken = new_location(&sim).await;
    let r = set_mdm_info(&sim, &stoken, "mdm-other").await;
    assert!(r.get("errorNumber").is_none(), "{r}");
    let before = client_config(&sim, &stoken).await;
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![stoken.clone()],
        notification_url: true,
        service_config_refresh: "1s",
        token_extra: "mdm_id = \"mdm-ours\"\nclaim_location = true",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let conflict = wait_conflict(&env).await;
    assert!(
        conflict.contains("mdm-other") && conflict.contains("mdm-ours"),
        "{conflict}"
    );
    let h = healthz(&env).await;
    assert_eq!(h["status"], "degraded", "{h}");
    // Several refreshes later Apple's side is exactly as the other MDM left it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = client_config(&sim, &stoken).await;
    assert_eq!(after, before, "Client Config untouched");
    assert!(after.get("notificationUrl").is_none(), "{after}");
    // The conflict is logged once, not on every refresh.
    let log = daemon.log_text();
    assert_eq!(
        log.matches("not changing this location's Client Config")
            .count(),
        1,
        "{log}"
    );
    for s in env.secrets() {
        assert!(!log.contains(&s), "a secret in the log");
    }
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_without_mdm_info_is_claimed_only_with_the_opt_in() {
    let sim = Sim::start(7);
    // Without claim_location: left alone, and shown.
    let stoken = new_location(&sim).await;
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![stoken.clone()],
        notification_url: true,
        service_config_refresh: "1s",
        token_extra: "mdm_id = \"mdm-ours\"",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let conflict = wait_conflict(&env).await;
    assert!(conflict.contains("claim_location"), "{conflict}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cc = client_config(&sim, &stoken).await;
    assert!(cc.get("notificationUrl").is_none(), "not claimed: {cc}");
    assert!(cc.get("mdmInfo").is_none(), "not claimed: {cc}");
    assert!(daemon.terminate().success());

    // With claim_location: claimed, with our mdm_id, and then kept as ours.
    let stoken = new_location(&sim).await;
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![stoken.clone()],
        notification_url: true,
        service_config_refresh: "1s",
        token_extra: "mdm_id = \"mdm-ours\"\nclaim_location = true",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let ours = format!("http://{}/apple/notifications/acme", env.webhook);
    let start = Instant::now();
    loop {
        let cc = client_config(&sim, &stoken).await;
        if cc["notificationUrl"] == ours.as_str() {
            assert_eq!(cc["mdmInfo"]["id"], "mdm-ours", "{cc}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never claimed: {cc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = env.cli(&["tokens", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["tokens"][0]["mdmConflict"].is_null(), "{v}");
    let h = healthz(&env).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert!(daemon.terminate().success());
}
