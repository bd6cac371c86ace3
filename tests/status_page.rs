//! The status page (`GET /`) of the real daemon, run against the simulator with real events,
//! loaded in headless Chromium: the rendered DOM shows the tokens, the events table, Apple's
//! failures and the SVG chart, and a screenshot is taken (kept as `target/status-page.png`).
//! Chromium is required: `.ci/run` installs Debian's `chromium` when it is missing, and this
//! test fails (never skips) without it (it opens the page with the API token as HTTP Basic's
//! password). Also: the token guards the page, as a bearer or Basic's password, and a
//! `?token=` query is not accepted in its place.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{EnvOptions, Sim, TestEnv};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

const FAST: &str = "notification_grace = \"2s\"\npoll_min = \"1s\"\npoll_max = \"4s\"\nresubmit_after = \"30s\"\ngive_up_after = \"10m\"";

fn location_body(name: &str) -> Value {
    let users: Vec<Value> = (1..=5)
        .map(|i| json!({"clientUserId": format!("u{i}"), "email": format!("u{i}@example.com")}))
        .collect();
    json!({"name": name, "pageSize": 50, "users": users, "assets": [
        {"adamId": "361304891", "pricingParam": "STDQ", "productType": "App", "total": 60, "deviceAssignable": true, "revocable": true},
        {"adamId": "408709785", "pricingParam": "STDQ", "productType": "App", "total": 2, "deviceAssignable": true, "revocable": true}
    ]})
}

fn associate(serials: &[&str], adam: &str) -> Value {
    json!({"assets": [{"adamId": adam, "pricingParam": "STDQ"}], "serialNumbers": serials})
}

/// Runs Chromium headless with `args` then `url`; the process is killed after `within`.
fn chromium(profile: &Path, args: &[String], url: &str, within: Duration) -> (bool, String) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test needs Chromium. `.ci/run` installs it \
         (apt-get install -y --no-install-recommends chromium); install it the same way to run \
         this test locally"
    );
    let out_path = profile.with_extension("stdout");
    let stdout = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let start = Instant::now();
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {within:?} for {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (ok, std::fs::read_to_string(&out_path).unwrap_or_default())
}

/// `<target>/status-page.png`, beside the test's temp dir (works with `CARGO_TARGET_DIR`).
fn kept_screenshot() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("status-page.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    // Fail first, before minutes of setup, when the browser is missing.
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `.ci/run` installs Debian's chromium; run \
         `apt-get install -y --no-install-recommends chromium` to run this test locally"
    );
    let sim = Sim::start(11);
    let names: &[&str] = &["acme", "beta"];
    let mut uids = Vec::new();
    let mut stokens = Vec::new();
    for t in names {
        let loc = sim.post("/_sim/locations", &location_body(t)).await;
        uids.push(loc["uId"].as_str().expect("uId").to_string());
        stokens.push(loc["sToken"].as_str().expect("sToken").to_string());
    }
    let env = TestEnv::new(EnvOptions {
        tokens: names,
        apple_base_url: Some(sim.base.clone()),
        reconcile: FAST,
        stokens,
        ..Default::default()
    });
    sim.put("/_sim/faults", &json!({"processingDelay": "100ms"}))
        .await;
    for (i, t) in env.tokens.iter().enumerate() {
        let url = format!("http://{}/apple/notifications/{}", env.webhook, t.name);
        sim.put(
            "/_sim/notify",
            &json!({"uId": uids[i], "url": url, "authToken": t.notify_secret}),
        )
        .await;
    }
    let _daemon = env.start_daemon();
    let c = env.http();

    // Apple writes as the MDM sends them, tracked through the daemon: successes on both
    // tokens, a partial failure (9709: 4 devices, 2 licences) and an unknown user (9609).
    let track = |token: usize, endpoint: &'static str, kind: &'static str, body: Value| {
        let t = env.tokens[token].clone();
        let (sim, c, api) = (&sim, &c, env.api_url("/v1/events"));
        async move {
            let r = sim.apple_write(&t.stoken, endpoint, &body).await;
            let id = r["eventId"].as_str().expect("eventId").to_string();
            let tracked = c
                .post(api)
                .json(&json!({"token": t.name, "eventId": id, "type": kind, "request": body}))
                .send()
                .await
                .unwrap();
            assert_eq!(tracked.status().as_u16(), 201);
            id
        }
    };
    let ids = [
        track(0, "assets/associate", "ASSOCIATE", associate(&["A1", "A2"], "361304891")).await,
        track(1, "assets/associate", "ASSOCIATE", associate(&["B1"], "361304891")).await,
        track(0, "assets/associate", "ASSOCIATE", associate(&["P1", "P2", "P3", "P4"], "408709785")).await,
        track(0, "assets/associate", "ASSOCIATE",
            json!({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}], "clientUserIds": ["ghost", "u3"]})).await,
    ];
    let start = Instant::now();
    loop {
        let r: Value = c
            .get(env.api_url("/v1/events?limit=100"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = r["events"].as_array().cloned().unwrap_or_default();
        let settled = events
            .iter()
            .filter(|e| ids.iter().any(|id| e["eventId"] == id.as_str()))
            .filter(|e| e["state"] == "settled")
            .count();
        if settled == ids.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "events did not settle: {r}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Plain HTTP first: the headers a browser relies on.
    let r = c.get(env.api_url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/html; charset=utf-8"
    );
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));

    let tmp = tempfile::tempdir().unwrap();
    // The token as HTTP Basic's password: Chromium answers the page's Basic challenge with
    // the credentials of the URL, as a person would type them into its prompt.
    let url = format!("http://status:{}@{}/", env.token(), env.api);
    let (ok, dom) = chromium(
        &tmp.path().join("profile-dom"),
        &["--dump-dom".into()],
        &url,
        Duration::from_secs(90),
    );
    assert!(ok, "chromium --dump-dom failed; output:\n{dom}");
    for want in [
        "<title>vpp-reconciler status</title>",
        "<table id=\"tokens\">",
        "<td class=\"name\">acme</td>",
        "<td class=\"name\">beta</td>",
        "<table id=\"events\">",
        "<table id=\"failures\">",
        "<table id=\"syncs\">",
        "<svg id=\"chart\"",
        "<rect class=\"settled\"",
        "9709",
        "9609",
    ] {
        assert!(
            dom.contains(want),
            "{want:?} not in the rendered DOM:\n{dom}"
        );
    }
    // The settled events are counted in the events table (4 settled in the last 24 h).
    let settled_row = dom
        .split("<tr>")
        .find(|row| row.contains("settled <small"))
        .expect("a settled row");
    assert!(
        settled_row.contains("<td class=\"num total\">4</td>"),
        "{settled_row}"
    );
    assert!(!dom.contains("<script"), "the page has no script");

    let shot = tmp.path().join("status-page.png");
    let (ok, out) = chromium(
        &tmp.path().join("profile-shot"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600".into(),
        ],
        &url,
        Duration::from_secs(90),
    );
    assert!(ok, "chromium --screenshot failed: {out}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    // A blank 1280x1600 page compresses to a few KB; the page with its tables is far more.
    assert!(png.len() > 30_000, "screenshot only {} bytes", png.len());
    let kept = kept_screenshot();
    std::fs::copy(&shot, &kept).expect("keep the screenshot");
    eprintln!("status page screenshot: {}", kept.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_needs_the_api_token_as_bearer_or_basic() {
    let env = TestEnv::new(EnvOptions {
        api_token: true,
        reconcile: "notification_grace = \"1h\"",
        ..Default::default()
    });
    let _daemon = env.start_daemon();
    let c = reqwest::Client::new();
    let secret = env.api_token.clone().unwrap();
    let r = c.get(env.api_url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The challenge makes a browser prompt for the token.
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"vpp-reconciler\", charset=\"UTF-8\""
    );
    for (user, ok) in [("anyone", 200), ("", 200)] {
        let r = c
            .get(env.api_url("/"))
            .basic_auth(user, Some(&secret))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), ok, "Basic as {user:?}");
    }
    let r = c
        .get(env.api_url("/"))
        .basic_auth(&secret, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the token is the password, not the user"
    );
    // No query-string token: it would leak into history and logs.
    let r = c
        .get(env.api_url(&format!("/?token={secret}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .get(env.api_url("/"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("<td class=\"name\">acme</td>"), "{page}");
    assert!(
        !page.contains(&secret),
        "the API token is never on the page"
    );
}
