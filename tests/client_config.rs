//! Client Config upkeep against the simulator: with `notification_url` set the daemon points
//! Apple's notifications at its own webhook (Apple's TEST_NOTIFICATION must pass its auth),
//! never replaces the MDM's mdmInfo, and reports another MDM's mdmInfo as a conflict without
//! touching its configuration.

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
