//! The local API is closed by default (design §12), against the real binary and the real
//! simulator over loopback: the generated token file (0600 under umask 022, reused on
//! restart, read by the CLI), every refusal (421 foreign Host, 401 no/wrong token or Basic
//! off the status page, 403 cross-site Origin or the read-only token on a write, 415 a body
//! that is not JSON) with nothing reaching Apple, the open `/healthz` and `/metrics`, a reload
//! that swaps the token, and slow connections closed by the server.
//! The browser's view of the same is in tests/api_browser.rs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{stderr, stdout, Daemon, EnvOptions, Sim, TestEnv, BIN};
use serde_json::{json, Value};

fn quiet() -> EnvOptions<'static> {
    EnvOptions {
        reconcile: "notification_grace = \"1h\"",
        ..Default::default()
    }
}

/// `run` under `umask 022` (a common login default), logging to `log_name`.
fn spawn_with_umask_022(env: &TestEnv, log_name: &str) -> Daemon {
    let log = env.path(log_name);
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new("sh")
        .args(["-c", "umask 022; exec \"$0\" --config \"$1\" run", BIN])
        .arg(&env.config)
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn the daemon under sh");
    let d = Daemon {
        child,
        log,
        api: env.api,
    };
    d.wait_healthy(Duration::from_secs(30));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_token_is_0600_under_umask_022_reused_and_read_by_the_cli() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(quiet());
    let file = env.path("api-token");
    assert!(!file.exists());
    let out = stdout(&env.cli(&["check-config"]));
    assert!(
        out.contains(&format!(
            "api_token_file: (none) the daemon's own token, {} (created at its first start",
            file.display()
        )),
        "{out}"
    );

    let daemon = spawn_with_umask_022(&env, "first.log");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o} under umask 022");
    let token = env.token();
    assert!(
        token.starts_with("vppr_") && token.len() >= 45,
        "a long random token"
    );
    let names: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "no temporary file left: {names:?}"
    );

    let c = reqwest::Client::new();
    let r = c.get(env.api_url("/v1/tokens")).send().await.unwrap();
    assert_eq!(r.status(), 401, "closed without the token");
    let r = c
        .get(env.api_url("/v1/tokens"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The CLI reads the same file.
    let out = env.cli(&["sync", "--token", "acme", "--kind", "users"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    assert!(daemon.terminate().success());
    let first_log = common::log_text(&env.path("first.log"));
    assert!(
        first_log.contains("created the local API token file"),
        "{first_log}"
    );
    assert!(!first_log.contains(&token), "the token is never logged");

    // Reused on restart: same content, not created again.
    let daemon = spawn_with_umask_022(&env, "second.log");
    assert_eq!(env.token(), token);
    let r = c
        .get(env.api_url("/v1/tokens"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(daemon.terminate().success());
    let second_log = common::log_text(&env.path("second.log"));
    assert!(!second_log.contains("created the local API token file"));
    assert!(!second_log.contains(&token));
}

/// One request to the local API with exactly these headers (no defaults but reqwest's).
async fn send(
    env: &TestEnv,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut req = c.request(method, env.api_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let r = req.send().await.expect("request to the local API");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.text().await.unwrap_or_default())
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Request headers, the status and the error code they should get.
type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);

/// Requests to a successful associate made through the daemon, per the simulator.
async fn associates(sim: &Sim, uid: &str) -> u64 {
    let stats = sim.get("/_sim/stats").await;
    stats["tokens"][uid]["requests"]["associateAssets"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_apple_untouched() {
    let sim = Sim::start(5);
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
        ..quiet()
    });
    // A read-only token for dashboards, and one more name the API answers to.
    let read = format!("read-{}", uuid::Uuid::new_v4());
    std::fs::write(env.path("api-read"), &read).unwrap();
    let toml = std::fs::read_to_string(&env.config).unwrap().replacen(
        "[daemon]\n",
        "[daemon]\napi_read_token_file = \"api-read\"\napi_hosts = [\"vppr.test\"]\n",
        1,
    );
    std::fs::write(&env.config, toml).unwrap();
    let daemon = env.start_daemon();
    let token = env.token();
    let bearer = format!("Bearer {token}");
    let read_bearer = format!("Bearer {read}");
    let basic_token = basic("me", &token);
    let same_origin = format!("http://{}", env.api);
    let associate = "/v1/tokens/acme/requests/associate";
    let body =
        r#"{"assets":[{"adamId":"361304891","pricingParam":"STDQ"}],"serialNumbers":["S1"]}"#;
    let json_ct = ("content-type", "application/json");
    let text_ct = ("content-type", "text/plain;charset=UTF-8");
    let form_ct = ("content-type", "application/x-www-form-urlencoded");
    let post = reqwest::Method::POST;

    // (headers, expected status, expected code) for a write that would assign a licence.
    let cases: Vec<Case> = vec![
        // What a DNS-rebinding page sends: refused on its Host before anything else.
        (
            vec![
                text_ct,
                ("origin", "http://evil.example"),
                ("host", "rebind.evil.example"),
            ],
            421,
            "misdirected_request",
        ),
        (
            vec![
                json_ct,
                ("authorization", &bearer),
                ("host", "attacker.example"),
            ],
            421,
            "misdirected_request",
        ),
        // A browser's simple requests from another page: no token.
        (
            vec![text_ct, ("origin", "http://evil.example")],
            401,
            "unauthorized",
        ),
        (vec![form_ct, ("origin", "null")], 401, "unauthorized"),
        (
            vec![json_ct, ("authorization", "Bearer not-the-token")],
            401,
            "unauthorized",
        ),
        // Basic is for the status page only (a browser replays it cross-site).
        (
            vec![json_ct, ("authorization", &basic_token)],
            401,
            "unauthorized",
        ),
        // The right token, but sent from another origin.
        (
            vec![
                json_ct,
                ("authorization", &bearer),
                ("origin", "http://evil.example"),
            ],
            403,
            "cross_site",
        ),
        (
            vec![json_ct, ("authorization", &bearer), ("origin", "null")],
            403,
            "cross_site",
        ),
        (
            vec![
                json_ct,
                ("authorization", &bearer),
                ("origin", "http://127.0.0.2:1"),
            ],
            403,
            "cross_site",
        ),
        (
            vec![
                json_ct,
                ("authorization", &bearer),
                ("sec-fetch-site", "cross-site"),
            ],
            403,
            "cross_site",
        ),
        // The read-only token does not write.
        (
            vec![json_ct, ("authorization", &read_bearer)],
            403,
            "read_only",
        ),
        // Only JSON bodies: text and forms are what pages can send without a preflight.
        (
            vec![text_ct, ("authorization", &bearer)],
            415,
            "unsupported_media_type",
        ),
        (
            vec![form_ct, ("authorization", &bearer)],
            415,
            "unsupported_media_type",
        ),
        (
            vec![("authorization", &bearer)],
            415,
            "unsupported_media_type",
        ),
    ];
    for (headers, want, code) in &cases {
        let (status, h, text) = send(&env, post.clone(), associate, headers, Some(body)).await;
        assert_eq!(status, *want, "{headers:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["code"], *code, "{headers:?}: {v}");
        assert!(!text.contains(&token) && !text.contains(&read), "{text}");
        if status == 401 {
            assert_eq!(h["www-authenticate"], "Bearer realm=\"vpp-reconciler\"");
        }
    }
    // The form body and the text body of the same refusals on the tracking route too.
    for ct in [text_ct, form_ct] {
        let (status, _, _) = send(
            &env,
            post.clone(),
            "/v1/events",
            &[ct, ("authorization", &bearer)],
            Some(r#"{"token":"acme","eventId":"x-1","type":"ASSOCIATE"}"#),
        )
        .await;
        assert_eq!(status, 415);
    }

    // Reads: a foreign Host learns nothing, even with the token.
    let get = reqwest::Method::GET;
    let users = "/v1/tokens/acme/users";
    let (status, _, text) = send(
        &env,
        get.clone(),
        users,
        &[("authorization", &bearer), ("host", "attacker.example")],
        None,
    )
    .await;
    assert_eq!(status, 421, "{text}");
    assert!(!text.contains("example.com"), "{text}");
    let (status, _, _) = send(&env, get.clone(), users, &[], None).await;
    assert_eq!(status, 401);
    let (status, _, _) = send(
        &env,
        get.clone(),
        users,
        &[("authorization", &basic("", &token))],
        None,
    )
    .await;
    assert_eq!(status, 401, "no Basic on /v1, reads included");
    let port = env.api.port().to_string();
    for (host, want) in [
        (format!("vppr.test:{port}"), 200),
        (format!("localhost:{port}"), 200),
        (format!("[::1]:{port}"), 200),
        (format!("127.0.0.7:{port}"), 200),
        (format!("vppr.test.evil.example:{port}"), 421),
    ] {
        let (status, _, _) = send(
            &env,
            get.clone(),
            "/v1/tokens",
            &[("authorization", &read_bearer), ("host", &host)],
            None,
        )
        .await;
        assert_eq!(status, want, "Host {host}");
    }
    // The status page: Basic with either token, any user name; a challenge without.
    for auth in [basic("anyone", &token), basic("", &read), bearer.clone()] {
        let (status, _, page) =
            send(&env, get.clone(), "/", &[("authorization", &auth)], None).await;
        assert_eq!(status, 200);
        assert!(page.contains("<td class=\"name\">acme</td>"));
    }
    let (status, h, _) = send(&env, get.clone(), "/", &[], None).await;
    assert_eq!(status, 401);
    assert_eq!(
        h["www-authenticate"],
        "Basic realm=\"vpp-reconciler\", charset=\"UTF-8\""
    );
    // /healthz and /metrics need no token (but a right Host).
    for path in ["/healthz", "/metrics"] {
        let (status, _, _) = send(&env, get.clone(), path, &[], None).await;
        assert_eq!(status, 200, "{path}");
        let (status, _, _) = send(
            &env,
            get.clone(),
            path,
            &[("host", "rebind.evil.example")],
            None,
        )
        .await;
        assert_eq!(status, 421, "{path}");
    }

    // Nothing of the above reached Apple.
    assert_eq!(associates(&sim, &uid).await, 0);
    assert!(sim
        .get(&format!("/_sim/truth/{uid}"))
        .await
        .to_string()
        .contains("361304891"));
    // The control: the same write, done right (the API's own origin is fine), is submitted.
    let (status, _, text) = send(
        &env,
        post.clone(),
        associate,
        &[
            json_ct,
            ("authorization", &bearer),
            ("origin", &same_origin),
            ("sec-fetch-site", "same-origin"),
        ],
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(associates(&sim, &uid).await, 1);

    assert!(daemon.terminate().success());
    let log = common::log_text(&daemon_log(&env));
    for want in ["421", "401", "403", "415"] {
        assert!(
            log.lines().any(|l| l.contains("local API request refused")
                && l.contains(&format!("\"status\":{want}"))),
            "a refusal {want} is logged:\n{log}"
        );
    }
    assert!(
        !log.contains(&token) && !log.contains(&read),
        "no token in the log"
    );
}

/// The log of the one daemon an environment started with `start_daemon`.
fn daemon_log(env: &TestEnv) -> std::path::PathBuf {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("daemon-"))
        })
        .expect("a daemon log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_api_token_and_keeps_it_when_the_new_file_is_bad() {
    let env = TestEnv::new(EnvOptions {
        api_token: true,
        ..quiet()
    });
    let daemon = env.start_daemon();
    let old = env.token();
    let status = |t: String| {
        let url = env.api_url("/v1/tokens");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(old.clone()).await, 200);
    let hup = || unsafe {
        libc::kill(daemon.child.id() as i32, libc::SIGHUP);
    };
    // An empty file is refused: the running token stays.
    std::fs::write(env.path("api-token"), "").unwrap();
    hup();
    let start = Instant::now();
    while !daemon.log_text().contains("reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(old.clone()).await, 200);
    // A new token applies on reload; the old one is refused from then on.
    let new = format!("api-secret-{}", uuid::Uuid::new_v4());
    std::fs::write(env.path("api-token"), &new).unwrap();
    hup();
    let start = Instant::now();
    while status(new.clone()).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(old.clone()).await, 401);
    let log = daemon.log_text();
    assert!(
        log.contains("local API tokens or api_hosts reloaded"),
        "{log}"
    );
    assert!(!log.contains(&new) && !log.contains(&old));
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_to_the_api_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new(EnvOptions {
        log_level: "warn",
        ..quiet()
    });
    let _daemon = env.start_daemon();
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(env.api).await.unwrap();
        // Half a request line, or nothing at all.
        if i % 2 == 0 {
            s.write_all(b"GET /v1/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthori")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    let opened = Instant::now();
    // Meanwhile the API answers.
    let r = env
        .http()
        .get(env.api_url("/v1/tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The daemon closes them after its header timeout (10 s); a generous bound.
    let deadline = opened + Duration::from_secs(30);
    for (i, s) in slow.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(left, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "slow connection {i} still open after 30 s");
    }
}
