//! The local API routes beyond tracking, against the real binary: the changes feed, sync
//! requests and runs, tokens, the mirror, `/metrics`, submitting without an Apple client, the
//! bearer guard, and the `sync` command's exit codes.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{stderr, stdout, EnvOptions, TestEnv};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn send(
    c: &reqwest::Client,
    env: &TestEnv,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = c.request(method, env.api_url(path));
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(t) = &env.api_token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("request to the local API");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(c: &reqwest::Client, env: &TestEnv, path: &str) -> (u16, Value) {
    send(c, env, reqwest::Method::GET, path, None).await
}

async fn post(c: &reqwest::Client, env: &TestEnv, path: &str, body: &Value) -> (u16, Value) {
    send(c, env, reqwest::Method::POST, path, Some(body)).await
}

async fn track(c: &reqwest::Client, env: &TestEnv, token: &str, id: &str) {
    let body = json!({"token": token, "eventId": id, "type": "ASSOCIATE",
        "request": {"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}],
                    "serialNumbers": ["SN1", "SN2"]}});
    let (status, answer) = post(c, env, "/v1/events", &body).await;
    assert_eq!(status, 201, "track {id}: {answer}");
}

/// An error answer: the status, `code`, and an `error` sentence naming `names`.
fn assert_error(status: u16, answer: &Value, want: u16, code: &str, names: &str) {
    assert_eq!(status, want, "{answer}");
    assert_eq!(answer["code"], code, "{answer}");
    let msg = answer["error"].as_str().expect("error sentence");
    assert!(msg.contains(names), "{msg:?} should name {names:?}");
}

fn quiet_env(tokens: &'static [&'static str]) -> TestEnv {
    TestEnv::new(EnvOptions {
        tokens,
        // Nothing becomes due during a test: events stay pending, the feed stays put.
        reconcile: "notification_grace = \"1h\"",
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_feed_is_in_commit_order_and_pages_with_after() {
    let env = quiet_env(&["acme", "beta"]);
    let _daemon = env.start_daemon();
    let c = client();
    let mut ids = Vec::new();
    for i in 0..25 {
        let id = format!("feed-{i:02}");
        track(&c, &env, if i % 2 == 0 { "acme" } else { "beta" }, &id).await;
        ids.push(id);
    }

    // Page through with `after`, following nextCursor.
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut after = "0".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = get(&c, &env, &format!("/v1/changes?after={after}&limit=10")).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["changes"].as_array().expect("changes array");
        for item in items {
            let seq = item["seq"].as_i64().expect("seq");
            let id = item["eventId"].as_str().expect("eventId").to_string();
            assert_eq!(item["state"], "pending");
            assert!(item["token"].is_string() && item["type"] == "ASSOCIATE");
            seen.push((seq, id));
        }
        match page.get("nextCursor") {
            Some(next) => {
                assert_eq!(items.len(), 10, "nextCursor only on a full page");
                after = next.as_str().expect("cursor is a string").to_string();
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "seq strictly increasing: {seen:?}"
    );
    let unique: HashSet<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(seen.len(), 25, "each event once");
    assert_eq!(unique.len(), 25);
    // Commit order is the order they were tracked in (one client, one at a time).
    let order: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(order, ids.iter().map(String::as_str).collect::<Vec<_>>());

    // `cursor` is a synonym of `after`; defaults give everything from the start.
    let third = seen[2].0;
    let (_, by_after) = get(&c, &env, &format!("/v1/changes?after={third}&limit=5")).await;
    let (_, by_cursor) = get(&c, &env, &format!("/v1/changes?cursor={third}&limit=5")).await;
    assert_eq!(by_after, by_cursor);
    assert_eq!(by_after["changes"][0]["seq"], seen[3].0);
    let (_, all) = get(&c, &env, "/v1/changes").await;
    assert_eq!(all["changes"].as_array().unwrap().len(), 25);
    assert!(all.get("nextCursor").is_none());
    let last = seen[24].0;
    let (_, tail) = get(&c, &env, &format!("/v1/changes?after={last}")).await;
    assert_eq!(tail, json!({"changes": []}));

    let (s, a) = get(&c, &env, "/v1/changes?after=abc").await;
    assert_error(s, &a, 400, "invalid_request", "\"abc\"");
    let (s, a) = get(&c, &env, "/v1/changes?limit=0").await;
    assert_error(s, &a, 400, "invalid_request", "limit \"0\"");
    let (s, a) = get(&c, &env, "/v1/changes?after=1&cursor=2").await;
    assert_error(s, &a, 400, "invalid_request", "disagree");
    // Over the maximum is clamped, not refused.
    let (s, _) = get(&c, &env, "/v1/changes?limit=5000").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_route_answers_202_with_a_ticket_and_runs_are_listed() {
    let env = quiet_env(&["acme", "beta"]);
    let _daemon = env.start_daemon();
    let c = client();

    let (status, ticket) = post(
        &c,
        &env,
        "/v1/tokens/acme/sync",
        &json!({"kind": "assignments", "full": true}),
    )
    .await;
    assert_eq!(status, 202, "{ticket}");
    let sync_id = ticket["syncId"].as_u64().expect("a run serves the request");
    assert!(ticket["queued"].is_boolean(), "{ticket}");
    // `full` is optional.
    let (status, t2) = post(&c, &env, "/v1/tokens/beta/sync", &json!({"kind": "users"})).await;
    assert_eq!(status, 202, "{t2}");

    let (s, a) = post(&c, &env, "/v1/tokens/nope/sync", &json!({"kind": "users"})).await;
    assert_error(s, &a, 404, "unknown_token", "\"nope\"");
    let (s, a) = post(&c, &env, "/v1/tokens/acme/sync", &json!({"kind": "apps"})).await;
    assert_error(s, &a, 400, "invalid_request", "\"apps\"");
    let (s, a) = post(
        &c,
        &env,
        "/v1/tokens/acme/sync",
        &json!({"kind": "users", "fast": true}),
    )
    .await;
    assert_error(s, &a, 400, "invalid_request", "fast");

    // The run is recorded once its turn commits.
    let deadline = Instant::now() + Duration::from_secs(10);
    let syncs = loop {
        let (status, body) = get(&c, &env, "/v1/syncs").await;
        assert_eq!(status, 200, "{body}");
        let syncs = body["syncs"].as_array().expect("syncs array").clone();
        if syncs.len() >= 2 || Instant::now() > deadline {
            break syncs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let run = syncs
        .iter()
        .find(|s| s["id"].as_u64() == Some(sync_id))
        .unwrap_or_else(|| panic!("sync {sync_id} listed: {syncs:?}"));
    assert_eq!(run["token"], "acme");
    assert_eq!(run["kind"], "assignments");
    assert_eq!(run["full"], true);
    assert_eq!(run["cause"], "requested through the local API");
    for key in ["startedAt", "pages", "records", "result"] {
        assert!(run.get(key).is_some(), "{key} in {run}");
    }
    // Newest first, filtered by token, paged by cursor.
    let ids: Vec<u64> = syncs.iter().map(|s| s["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let (_, acme) = get(&c, &env, "/v1/syncs?token=acme").await;
    assert!(acme["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["token"] == "acme"));
    let (_, first) = get(&c, &env, "/v1/syncs?limit=1").await;
    assert_eq!(first["syncs"].as_array().unwrap().len(), 1);
    let cursor = first["nextCursor"]
        .as_str()
        .expect("full page has a cursor");
    let (_, second) = get(&c, &env, &format!("/v1/syncs?limit=1&cursor={cursor}")).await;
    assert_eq!(second["syncs"][0]["id"].as_u64(), Some(ids[1]));
    let (s, a) = get(&c, &env, "/v1/syncs?limit=x").await;
    assert_error(s, &a, 400, "invalid_request", "\"x\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_mirror_routes() {
    let env = quiet_env(&["acme", "beta"]);
    let _daemon = env.start_daemon();
    let c = client();
    track(&c, &env, "acme", "tok-1").await;

    let (status, body) = get(&c, &env, "/v1/tokens").await;
    assert_eq!(status, 200, "{body}");
    let tokens = body["tokens"].as_array().expect("tokens array");
    let names: Vec<&str> = tokens.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "beta"]);
    assert_eq!(tokens[0]["pending"], 1);
    assert_eq!(tokens[0]["orgName"], "Org acme");
    assert!(tokens[0]["expiresAt"].is_string());
    assert!(tokens[0]["health"].is_string());
    assert!(tokens[0]["lastSyncs"].is_array());

    for what in ["assets", "assignments", "users"] {
        let (status, body) = get(&c, &env, &format!("/v1/tokens/acme/{what}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({ what: [] }), "empty mirror, no cursor");
        let (s, a) = get(&c, &env, &format!("/v1/tokens/nope/{what}")).await;
        assert_error(s, &a, 404, "unknown_token", "\"nope\"");
        let (s, a) = get(&c, &env, &format!("/v1/tokens/acme/{what}?cursor=-1")).await;
        assert_error(s, &a, 400, "invalid_request", "cursor \"-1\"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_without_an_apple_client_is_503_after_checking_kind_and_token() {
    let env = quiet_env(&["acme"]);
    let _daemon = env.start_daemon();
    let c = client();
    let body = json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["A"]});

    let (s, a) = post(&c, &env, "/v1/tokens/acme/requests/frobnicate", &body).await;
    assert_error(s, &a, 400, "invalid_request", "\"frobnicate\"");
    let (s, a) = post(&c, &env, "/v1/tokens/nope/requests/associate", &body).await;
    assert_error(s, &a, 404, "unknown_token", "\"nope\"");
    for kind in [
        "associate",
        "disassociate",
        "revoke",
        "create-users",
        "update-users",
        "retire-users",
    ] {
        let (s, a) = post(&c, &env, &format!("/v1/tokens/acme/requests/{kind}"), &body).await;
        assert_eq!(s, 503, "{kind}: {a}");
        assert_eq!(a["code"], "apple_unavailable", "{a}");
    }
}

/// (family, type) from `# TYPE` lines.
type Families = Vec<(String, String)>;
/// (name, raw labels, value) of sample lines.
type Samples = Vec<(String, String, f64)>;

/// Parses the exposition line by line: comments are HELP/TYPE, everything else a sample
/// `name{labels} value`.
fn parse_exposition(text: &str) -> (Families, Samples) {
    let mut types = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "no blank lines");
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.push((name.to_string(), kind.to_string()));
        } else if line.starts_with("# HELP ") {
        } else {
            assert!(!line.starts_with('#'), "unknown comment {line}");
            let (head, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
                None => (head, ""),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            let family = types.last().map(|(n, _)| n.as_str()).unwrap_or("");
            assert!(name.starts_with(family), "{name} under # TYPE {family}");
            samples.push((name.to_string(), labels.to_string(), value));
        }
    }
    (types, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exposition_parses_and_counts_events() {
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme"],
        reconcile: "notification_grace = \"1h\"",
        api_token: true,
        ..Default::default()
    });
    let _daemon = env.start_daemon();
    let c = client();
    for i in 0..3 {
        track(&c, &env, "acme", &format!("m-{i}")).await;
    }
    // Unauthenticated like /healthz, while the API itself wants the bearer.
    let r = c.get(env.api_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = r.text().await.unwrap();
    let (types, samples) = parse_exposition(&text);
    for (name, kind) in [
        ("vppr_events", "gauge"),
        ("vppr_api_requests_total", "counter"),
        ("vppr_notifications_total", "counter"),
        ("vppr_syncs_total", "counter"),
        ("vppr_token_expiry_seconds", "gauge"),
        ("vppr_api_request_duration_seconds", "histogram"),
        ("vppr_webhook_ack_duration_seconds", "histogram"),
    ] {
        assert!(
            types.contains(&(name.to_string(), kind.to_string())),
            "{name} {kind} in\n{text}"
        );
    }
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|s| s.2)
    };
    assert_eq!(
        value(
            "vppr_events",
            r#"state="pending",outcome="none",token="acme""#
        ),
        Some(3.0),
        "{text}"
    );
    // The test token expires in 2030.
    let expiry = value("vppr_token_expiry_seconds", r#"token="acme""#).expect("expiry");
    assert!(expiry > 86_400.0 * 365.0, "{expiry}");

    let r = c.get(env.api_url("/v1/changes")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "new routes are guarded");
    let r = c
        .post(env.api_url("/v1/tokens/acme/sync"))
        .json(&json!({"kind": "users"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, _) = get(&c, &env, "/v1/changes").await;
    assert_eq!(s, 200, "with the bearer");
}

#[test]
fn cli_sync_exit_codes() {
    let env = quiet_env(&["acme"]);
    // Usage mistakes need no daemon.
    let out = env.cli(&["sync", "--token", "acme", "--kind", "apps"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"apps\""), "{}", stderr(&out));
    // Daemon down: one clear sentence, exit 1.
    let out = env.cli(&["sync", "--token", "acme", "--kind", "users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not reachable"), "{}", stderr(&out));

    let _daemon = env.start_daemon();
    let out = env.cli(&["sync", "--token", "acme", "--kind", "assignments", "--full"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(
        (line.starts_with("sync ") && line.contains(" started for acme (assignments, full)"))
            || line.starts_with("queued after sync "),
        "{line}"
    );
    let out = env.cli(&["sync", "--token", "acme", "--kind", "users", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    assert!(answer["syncId"].is_u64() && answer["queued"].is_boolean());
    let out = env.cli(&["sync", "--token", "nope", "--kind", "users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("\"nope\""), "{}", stderr(&out));
}
