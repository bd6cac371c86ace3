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
    let r = req
        .bearer_auth(env.token())
        .send()
        .await
        .expect("request to the local API");
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
    if ticket["queued"] == false {
        // The ticket names our own run (otherwise one the daemon started itself, with ours
        // queued after it).
        assert_eq!(run["full"], true);
        assert_eq!(run["cause"], "requested through the local API");
    }
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
    // Each token's lease: both fields present (null while no instance holds it).
    for t in tokens {
        let t = t.as_object().unwrap();
        assert!(
            t.contains_key("holder") && t.contains_key("leaseExpiresAt"),
            "{t:?}"
        );
    }
    let (status, body) = get(&c, &env, "/v1/instances").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["instances"].is_array(), "{body}");
    assert!(body.as_object().unwrap().contains_key("me"), "{body}");

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
async fn submit_checks_kind_token_and_body_and_answers_502_when_apple_is_unreachable() {
    // The default test config points at 127.0.0.1:9: nothing listens there.
    let env = quiet_env(&["acme"]);
    let _daemon = env.start_daemon();
    let c = client();
    let body = json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["A"]});

    let (s, a) = post(&c, &env, "/v1/tokens/acme/requests/frobnicate", &body).await;
    assert_error(s, &a, 400, "invalid_request", "\"frobnicate\"");
    let (s, a) = post(&c, &env, "/v1/tokens/nope/requests/associate", &body).await;
    assert_error(s, &a, 404, "unknown_token", "\"nope\"");
    let (s, a) = post(&c, &env, "/v1/tokens/acme/requests/associate", &json!([1])).await;
    assert_error(s, &a, 400, "invalid_request", "JSON object");
    // Split validation names the offending value.
    let (s, a) = post(
        &c,
        &env,
        "/v1/tokens/acme/requests/create-users",
        &json!({"users": [{"clientUserId": ""}]}),
    )
    .await;
    assert_error(s, &a, 400, "invalid_request", "users[0].clientUserId");
    let (s, a) = post(&c, &env, "/v1/tokens/acme/requests/associate", &json!({})).await;
    assert_error(s, &a, 400, "invalid_request", "assets");

    let (s, a) = post(&c, &env, "/v1/tokens/acme/requests/associate", &body).await;
    assert_error(s, &a, 502, "apple_error", "associate request 1 of 1");
    assert_eq!(a["eventIds"], json!([]), "{a}");
    let (_, events) = get(&c, &env, "/v1/events").await;
    assert_eq!(events["events"], json!([]), "nothing tracked");
}

/// The API served in-process over a temp store, with the given Apple client (or none).
/// The API token of an in-process API whose test chose none (every API has one).
const IN_PROCESS_TOKEN: &str = "in-process-api-token";

struct InProcess {
    addr: std::net::SocketAddr,
    /// Sent when the test passes no bearer: the token it did not choose.
    auto_bearer: Option<String>,
    store: vpp_reconciler::store::Store,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A configured token as the config loader would produce it.
fn token_config(name: &str) -> vpp_reconciler::config::TokenConfig {
    use vpp_reconciler::secret::Secret;
    vpp_reconciler::config::TokenConfig {
        name: name.to_string(),
        token_file: format!("{name}.vpptoken").into(),
        content_token: vpp_reconciler::config::ContentToken {
            raw: Secret::new(format!("raw-{name}")),
            org_name: "Org".into(),
            exp_date: vpp_reconciler::time::Timestamp::now()
                .saturating_add(Duration::from_secs(86_400 * 365)),
            inner_token: Secret::new("inner"),
        },
        notification_auth_token_file: format!("{name}.notify").into(),
        notification_auth_token: Secret::new("notify"),
        notification_url: None,
        max_requests_per_second: None,
        mdm_id: None,
        claim_location: false,
    }
}

impl InProcess {
    async fn start(apple: Option<vpp_reconciler::apple::AppleClient>) -> InProcess {
        InProcess::start_with(apple, &["acme"], None, None).await
    }

    /// With these configured tokens, this instance in a cluster (or alone), and an API token.
    async fn start_with(
        apple: Option<vpp_reconciler::apple::AppleClient>,
        tokens: &[&str],
        cluster: Option<vpp_reconciler::cluster::ClusterInfo>,
        api_token: Option<&str>,
    ) -> InProcess {
        use std::sync::Arc;
        use vpp_reconciler::api::{router, ApiState};
        use vpp_reconciler::core::{Core, Timings};
        use vpp_reconciler::executor::{Executor, NoApple};
        use vpp_reconciler::store::Store;

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let (executor, handle) = Executor::new(
            Core::new(Timings::default(), 1),
            store.clone(),
            Arc::new(NoApple {
                store: store.clone(),
                retention: Duration::from_secs(86_400),
            }),
            Default::default(),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let exec = tokio::spawn(executor.run(shutdown.clone(), Duration::from_secs(1)));
        let state = ApiState {
            store: store.clone(),
            executor: handle,
            tokens: vpp_reconciler::tokens::Registry::new(
                &tokens.iter().map(|t| token_config(t)).collect::<Vec<_>>(),
            ),
            timings: Timings::default(),
            access: vpp_reconciler::api::Access::new(vpp_reconciler::api::AccessPolicy {
                tokens: vpp_reconciler::api::ApiTokens {
                    full: vpp_reconciler::secret::Secret::new(
                        api_token.unwrap_or(IN_PROCESS_TOKEN),
                    ),
                    read: None,
                },
                hosts: Default::default(),
            }),
            writes: Arc::new(tokio::sync::Semaphore::new(8)),
            apple,
            metrics: Default::default(),
            push_configured: false,
            cluster,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router(state))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        InProcess {
            addr,
            auto_bearer: api_token.is_none().then(|| IN_PROCESS_TOKEN.to_string()),
            store,
            shutdown,
            tasks: vec![exec, server],
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = client()
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(self.auto_bearer.as_deref().unwrap_or_default())
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// GET `path` (with `bearer` if given, else the token the test did not choose): status
    /// and body text.
    async fn get_text(&self, path: &str, bearer: Option<&str>) -> (u16, String) {
        let mut req = client().get(format!("http://{}{path}", self.addr));
        if let Some(b) = bearer.or(self.auto_bearer.as_deref()) {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn get_json(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        let (status, text) = self.get_text(path, bearer).await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, v)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Without an Apple client (not reachable through the binary, which always builds one when a
/// token is configured), the API itself: 503 `apple_unavailable` after the kind and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_without_an_apple_client_is_503() {
    let api = InProcess::start(None).await;
    let body = json!({"users": [{"clientUserId": "u1"}]});
    let (s, a) = api
        .post("/v1/tokens/acme/requests/create-users", &body)
        .await;
    assert_error(s, &a, 503, "apple_unavailable", "no Apple client");
    let (s, _) = api.post("/v1/tokens/acme/requests/nope", &body).await;
    assert_eq!(s, 400);
    let (s, _) = api
        .post("/v1/tokens/beta/requests/create-users", &body)
        .await;
    assert_eq!(s, 404);
    api.stop().await;
}

/// Apple accepts the first chunk and refuses the second: 502, and the first eventId is both
/// in the answer and tracked with its chunk (never lost); the third chunk is not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_keeps_the_event_ids_apple_gave_before_a_refusal() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use vpp_reconciler::apple::{AppleClient, ClientOptions};
    use vpp_reconciler::secret::Secret;

    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let fake = axum::Router::new().route(
        "/mdm/v2/users/create",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let users = serde_json::from_slice::<Value>(&body).unwrap()["users"]
                    .as_array()
                    .map_or(0, Vec::len);
                assert!(users <= 100, "chunk of {users} users");
                if n == 0 {
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"eventId": "fake-event-1",
                            "tokenExpirationDate": "2031-01-01T00:00:00+0000", "uId": "1"})),
                    )
                } else {
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(json!({"errorNumber": 9700, "errorMessage": "Nope."})),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = listener.local_addr().unwrap();
    let fake_server = tokio::spawn(async move {
        let _ = axum::serve(listener, fake).await;
    });
    let apple = AppleClient::new(ClientOptions {
        base_url: format!("http://{fake_addr}/mdm/v2/"),
        ..Default::default()
    })
    .unwrap();
    apple.set_token("acme", Secret::new("fake-stoken"), None);
    let api = InProcess::start(Some(apple)).await;

    let users: Vec<Value> = (0..250)
        .map(|i| json!({"clientUserId": format!("u{i}")}))
        .collect();
    let (s, a) = api
        .post(
            "/v1/tokens/acme/requests/create-users",
            &json!({ "users": users }),
        )
        .await;
    assert_error(s, &a, 502, "apple_error", "create-users request 2 of 3");
    assert_eq!(a["errorNumber"], 9700, "{a}");
    assert_eq!(a["eventIds"], json!(["fake-event-1"]), "{a}");
    assert_eq!(a["events"][0]["numRequested"], 100, "{a}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the third chunk is not sent"
    );
    let record = api.store.get_event("fake-event-1").await.unwrap();
    let body = api.store.request_body("fake-event-1").await.unwrap();
    let record = record.expect("tracked");
    assert_eq!(record.token, "acme");
    assert_eq!(record.num_requested, Some(100));
    let body: Value = serde_json::from_str(&body.expect("chunk kept")).unwrap();
    assert_eq!(body["users"].as_array().unwrap().len(), 100);
    api.stop().await;
    fake_server.abort();
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

    for route in ["/v1/changes", "/v1/instances"] {
        let r = c.get(env.api_url(route)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{route} is guarded");
    }
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
    // The daemon never ran: no API token yet, one clear sentence naming the file, exit 1.
    let out = env.cli(&["sync", "--token", "acme", "--kind", "users"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&env.path("api-token").display().to_string()) && err.contains("first start"),
        "{err}"
    );

    // Daemon down (it ran once, so the token exists): one clear sentence, exit 1.
    let daemon = env.start_daemon();
    daemon.terminate();
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

/// Submitting through the daemon against the simulator: a body over Apple's `maxUsers` is
/// split, every chunk is tracked with its body, the events settle with the simulator's
/// outcome, and a token Apple refuses answers 502 with Apple's error number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_through_the_simulator_splits_tracks_and_settles() {
    let sim = common::Sim::start(11);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "assets": [], "users": [], "pageSize": 100}),
        )
        .await;
    let uid = loc["uId"].as_str().expect("uId").to_string();
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme"],
        apple_base_url: Some(sim.base.clone()),
        reconcile: "notification_grace = \"2s\"\npoll_min = \"1s\"\npoll_max = \"4s\"",
        stokens: vec![loc["sToken"].as_str().expect("sToken").to_string()],
        ..Default::default()
    });
    let t = &env.tokens[0];
    sim.put(
        "/_sim/notify",
        &json!({"uId": uid, "url": format!("http://{}/apple/notifications/acme", env.webhook),
                "authToken": t.notify_secret}),
    )
    .await;
    let daemon = env.start_daemon();
    let c = client();

    // 250 users (one listed twice: deduped) over maxUsers 100: three requests.
    let mut users: Vec<Value> = (0..250)
        .map(|i| json!({"clientUserId": format!("u{i:03}"), "email": format!("u{i}@example.com")}))
        .collect();
    users.push(users[7].clone());
    let (status, answer) = post(
        &c,
        &env,
        "/v1/tokens/acme/requests/create-users",
        &json!({ "users": users }),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let ids: Vec<String> = answer["eventIds"]
        .as_array()
        .expect("eventIds")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{answer}");
    let events = answer["events"].as_array().expect("events");
    let requested: Vec<u64> = events
        .iter()
        .map(|e| e["numRequested"].as_u64().unwrap())
        .collect();
    assert_eq!(requested, [100, 100, 50]);
    for (e, id) in events.iter().zip(&ids) {
        assert_eq!(&e["eventId"], id);
        assert_eq!(e["type"], "CREATE");
        assert_eq!(e["token"], "acme");
    }
    // Tracked with the body, so the daemon can resubmit.
    let (_, detail) = get(&c, &env, &format!("/v1/events/{}", ids[0])).await;
    assert_eq!(detail["hasRequest"], true, "{detail}");
    let truth = sim.get(&format!("/_sim/truth/{uid}")).await;
    let known: HashSet<&str> = truth["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["eventId"].as_str())
        .collect();
    assert!(ids.iter().all(|id| known.contains(id.as_str())), "{truth}");

    // They settle with the simulator's outcome (every user created).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut settled = 0;
        for id in &ids {
            let (_, e) = get(&c, &env, &format!("/v1/events/{id}")).await;
            if e["state"] == "settled" {
                assert_eq!(e["outcome"], "complete", "{e}");
                settled += 1;
            }
        }
        if settled == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled in 60s; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The feed has them, and the users mirror got filled (by a sync or the notifications),
    // paged by offset cursor.
    let (_, feed) = get(&c, &env, "/v1/changes?limit=1000").await;
    let fed: HashSet<&str> = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["eventId"].as_str())
        .collect();
    assert!(ids.iter().all(|id| fed.contains(id.as_str())));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, page) = get(&c, &env, "/v1/tokens/acme/users?limit=200").await;
        assert_eq!(s, 200, "{page}");
        let first = page["users"].as_array().unwrap().len();
        if first == 200 {
            // A full page: the cursor (an offset) leads to the remaining 50.
            let cursor = page["nextCursor"]
                .as_str()
                .expect("nextCursor on a full page");
            assert_eq!(cursor, "200");
            let (_, rest) = get(
                &c,
                &env,
                &format!("/v1/tokens/acme/users?limit=200&cursor={cursor}"),
            )
            .await;
            assert_eq!(rest["users"].as_array().unwrap().len(), 50, "{rest}");
            assert!(rest.get("nextCursor").is_none());
            break;
        }
        assert!(Instant::now() < deadline, "users mirror has {first} of 250");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A revoked token: Apple's error number comes back, nothing is tracked.
    sim.put(
        "/_sim/faults",
        &json!({"tokenState": {uid.as_str(): "revoked"}}),
    )
    .await;
    let (s, a) = post(
        &c,
        &env,
        "/v1/tokens/acme/requests/create-users",
        &json!({"users": [{"clientUserId": "late"}]}),
    )
    .await;
    assert_error(s, &a, 502, "apple_error", "create-users request 1 of 1");
    assert_eq!(a["errorNumber"], 9625, "{a}");
    assert_eq!(a["eventIds"], json!([]));
}

/// Records `names` as configured tokens in the store, as the daemon does at start.
async fn record_tokens(store: &vpp_reconciler::store::Store, names: &[&str]) {
    let rows = names
        .iter()
        .map(|n| vpp_reconciler::store::TokenRow {
            name: n.to_string(),
            org_name: Some(format!("Org {n}")),
            expires_at: None,
        })
        .collect();
    store
        .upsert_tokens(rows, vpp_reconciler::time::Timestamp::now())
        .await
        .unwrap();
}

/// This instance ("i-1") among others: leases taken through the store's own operations, then
/// `/v1/instances`, the holders in `/v1/tokens`, the lease series on `/metrics` and the
/// "Instances" section of the status page; all behind the bearer but `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_lease_holders_on_the_api_metrics_and_status_page() {
    use vpp_reconciler::cluster::ClusterInfo;
    let ttl = Duration::from_secs(600);
    let tokens = ["acme", "beta", "gamma", "<b>x</b>"];
    let cluster = ClusterInfo {
        me: "i-1".into(),
        lease_ttl: ttl,
    };
    let api = InProcess::start_with(None, &tokens, Some(cluster), Some("sekret")).await;
    record_tokens(&api.store, &tokens).await;
    let s = &api.store;
    s.heartbeat("i-1").await.unwrap();
    s.heartbeat("i-2").await.unwrap();
    s.heartbeat("\"i-3\"").await.unwrap();
    assert!(s.acquire("i-1", "acme", ttl).await.unwrap());
    assert!(s.acquire("i-2", "beta", ttl).await.unwrap());
    assert!(s.acquire("\"i-3\"", "<b>x</b>", ttl).await.unwrap());
    // Expired at once: gamma has no holder.
    assert!(s.acquire("i-2", "gamma", Duration::ZERO).await.unwrap());
    let bearer = Some("sekret");

    // The bearer guards the new route like the others.
    let (status, body) = api.get_json("/v1/instances", None).await;
    assert_error(status, &body, 401, "unauthorized", "bearer");

    let (status, body) = api.get_json("/v1/instances", bearer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["me"], "i-1", "{body}");
    let instances = body["instances"].as_array().expect("instances");
    let ids: Vec<&str> = instances
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["\"i-3\"", "i-1", "i-2"], "by id");
    assert_eq!(instances[1]["tokens"], json!(["acme"]));
    assert_eq!(instances[2]["tokens"], json!(["beta"]), "gamma expired");
    for i in instances {
        assert_eq!(i["live"], true, "{i}");
        let seen = i["lastSeen"].as_str().expect("lastSeen");
        assert!(vpp_reconciler::time::Timestamp::parse_rfc3339(seen).is_some());
        assert_eq!(
            i.as_object().unwrap().len(),
            4,
            "id, lastSeen, live, tokens: {i}"
        );
    }

    let (status, body) = api.get_json("/v1/tokens", bearer).await;
    assert_eq!(status, 200, "{body}");
    let by_name = |n: &str| {
        body["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap_or_else(|| panic!("{n} in {body}"))
            .clone()
    };
    let acme = by_name("acme");
    assert_eq!(acme["holder"], "i-1");
    let until = acme["leaseExpiresAt"].as_str().expect("leaseExpiresAt");
    let until = vpp_reconciler::time::Timestamp::parse_rfc3339(until).unwrap();
    assert!(until > vpp_reconciler::time::Timestamp::now());
    assert_eq!(acme["orgName"], "Org acme", "the token's own fields stay");
    assert_eq!(by_name("beta")["holder"], "i-2");
    assert_eq!(by_name("gamma")["holder"], Value::Null);
    assert_eq!(by_name("gamma")["leaseExpiresAt"], Value::Null);

    // /metrics: unauthenticated, valid exposition, this instance's leases and the holders.
    let (status, text) = api.get_text("/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    let (types, samples) = parse_exposition(&text);
    for name in [
        "vppr_lease_held",
        "vppr_lease_holder_info",
        "vppr_instances_live",
    ] {
        assert!(
            types.contains(&(name.to_string(), "gauge".to_string())),
            "{name} in\n{text}"
        );
    }
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|s| s.2)
    };
    assert_eq!(
        value("vppr_lease_held", r#"token="acme""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value("vppr_lease_held", r#"token="beta""#), Some(0.0));
    assert_eq!(value("vppr_lease_held", r#"token="gamma""#), Some(0.0));
    assert_eq!(
        value("vppr_lease_holder_info", r#"token="beta",instance="i-2""#),
        Some(1.0)
    );
    assert_eq!(
        value(
            "vppr_lease_holder_info",
            r#"token="<b>x</b>",instance="\"i-3\"""#
        ),
        Some(1.0),
        "label values escaped: {text}"
    );
    assert_eq!(value("vppr_instances_live", ""), Some(3.0));

    // The status page: the instances, this one marked, the holders, all escaped.
    let (status, _) = api.get_text("/", None).await;
    assert_eq!(status, 401);
    let (status, page) = api.get_text("/", bearer).await;
    assert_eq!(status, 200);
    assert!(page.contains("<h2>Instances</h2>"), "{page}");
    assert!(page
        .contains("<td class=\"name\">i-1 <span class=\"badge muted\">this instance</span></td>"));
    assert!(page.contains("<td class=\"name\">i-2</td>"));
    assert!(page.contains("&quot;i-3&quot;"));
    assert!(!page.contains("\"i-3\"") && !page.contains("<b>x</b>"));
    assert!(page.contains("<th>holder</th>"));
    assert!(page.contains("3 of 3 live"));

    // An instance that leaves is gone from every view at once.
    s.leave("i-2").await.unwrap();
    let (_, body) = api.get_json("/v1/instances", bearer).await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 2, "{body}");
    let (_, text) = api.get_text("/metrics", None).await;
    assert!(!text.contains(r#"instance="i-2""#), "{text}");
    assert!(text.contains("vppr_instances_live 2\n"), "{text}");
    api.stop().await;
}

/// One daemon alone (no cluster, no lease rows): `/v1/instances` is empty with `me` null, the
/// tokens' lease fields are null, and neither `/metrics` nor the status page shows leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_the_cluster_views_stay_empty() {
    let api = InProcess::start_with(None, &["acme"], None, None).await;
    record_tokens(&api.store, &["acme"]).await;
    let (status, body) = api.get_json("/v1/instances", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"instances": [], "me": null}));
    let (_, body) = api.get_json("/v1/tokens", None).await;
    assert_eq!(body["tokens"][0]["name"], "acme", "{body}");
    assert_eq!(body["tokens"][0]["holder"], Value::Null);
    assert_eq!(body["tokens"][0]["leaseExpiresAt"], Value::Null);
    let (_, text) = api.get_text("/metrics", None).await;
    parse_exposition(&text);
    assert!(
        !text.contains("vppr_lease") && !text.contains("vppr_instances"),
        "{text}"
    );
    let (_, page) = api.get_text("/", None).await;
    assert!(
        !page.contains("Instances") && !page.contains("<th>holder</th>"),
        "{page}"
    );

    // Lease rows without a cluster (a keeper on this file): the page shows them, `me` stays
    // null, /metrics still leaves the series out (they describe *this* instance's leases).
    api.store.heartbeat("solo").await.unwrap();
    assert!(api
        .store
        .acquire("solo", "acme", Duration::from_secs(600))
        .await
        .unwrap());
    let (_, page) = api.get_text("/", None).await;
    assert!(page.contains("<h2>Instances</h2>") && page.contains("<th>holder</th>"));
    assert!(!page.contains("this instance"));
    let (_, body) = api.get_json("/v1/instances", None).await;
    assert_eq!(body["me"], Value::Null);
    assert_eq!(body["instances"][0]["tokens"], json!(["acme"]));
    let (_, body) = api.get_json("/v1/tokens", None).await;
    assert_eq!(body["tokens"][0]["holder"], "solo");
    api.stop().await;
}

/// A lease read that fails leaves the lease series out of `/metrics` (HELP and TYPE too); the
/// rest of the scrape is served. `/v1/instances` answers 503 `store_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_leave_the_lease_series_out_when_the_lease_read_fails() {
    let cluster = vpp_reconciler::cluster::ClusterInfo {
        me: "i-1".into(),
        lease_ttl: Duration::from_secs(600),
    };
    let api = InProcess::start_with(None, &["acme"], Some(cluster), None).await;
    api.store.heartbeat("i-1").await.unwrap();
    let (_, text) = api.get_text("/metrics", None).await;
    assert!(text.contains("vppr_instances_live 1\n"), "{text}");
    assert!(
        text.contains("vppr_lease_held{token=\"acme\"} 0\n"),
        "{text}"
    );

    // The lease table gone behind the store's back: the snapshot fails.
    let db = rusqlite::Connection::open(api._dir.path().join("state.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch("DROP TABLE leases").unwrap();
    drop(db);
    let (status, text) = api.get_text("/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    parse_exposition(&text);
    assert!(text.contains("# TYPE vppr_events gauge\n"), "{text}");
    assert!(
        !text.contains("vppr_lease") && !text.contains("vppr_instances"),
        "{text}"
    );
    let (status, body) = api.get_json("/v1/instances", None).await;
    assert_error(status, &body, 503, "store_unavailable", "leases");
    api.stop().await;
}

/// Each scenario runs on both backends: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::common::Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(submissions_are_bounded_and_idempotent);

/// A submission with its headers and an optional `Idempotency-Key`: (status, answer,
/// replayed header).
async fn submit(
    c: &reqwest::Client,
    env: &TestEnv,
    kind: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value, bool) {
    let mut req = env
        .api_request(
            c,
            reqwest::Method::POST,
            &format!("/v1/tokens/acme/requests/{kind}"),
        )
        .json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await.expect("submit");
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

/// On PostgreSQL, waits (bounded) until this daemon holds the lease of `acme`: only the
/// holder submits to Apple.
async fn wait_holding(c: &reqwest::Client, env: &TestEnv, backend: common::Backend) {
    if backend != common::Backend::Postgres {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = env
            .api_request(c, reqwest::Method::GET, "/v1/tokens")
            .send()
            .await
            .expect("tokens");
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let held = v["tokens"].as_array().is_some_and(|ts| {
            ts.iter()
                .any(|t| t["name"] == "acme" && t["holder"].is_string())
        });
        if held {
            return;
        }
        assert!(Instant::now() < deadline, "acme's lease not taken: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Apple requests the simulator counted for the location, by endpoint.
async fn apple_requests(sim: &common::Sim, uid: &str, endpoint: &str) -> u64 {
    let stats = sim.get("/_sim/stats").await;
    stats["tokens"][uid]["requests"][endpoint]
        .as_u64()
        .unwrap_or(0)
}

/// Submissions are bounded and idempotent, against the real binary and simulator:
/// - a 2 MB body is refused (413) from its Content-Length before it is sent, and bodies that
///   would make more than 100 Apple requests or name more than 100,000 entities are refused
///   (413, naming the limit and the value), all before any request reaches Apple;
/// - with an `Idempotency-Key`, the same submission twice makes one set of Apple requests
///   and answers the same eventIds, also after a restart (the key is in the store); the same
///   key with another body is refused (422); and two at once with one key never submit
///   twice.
async fn submissions_are_bounded_and_idempotent(backend: common::Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = common::Sim::start(21);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "assets": [{"adamId": "361304891", "pricingParam": "STDQ",
                "productType": "App", "total": 10, "deviceAssignable": true, "revocable": true}],
                "users": [], "pageSize": 100}),
        )
        .await;
    let uid = loc["uId"].as_str().expect("uId").to_string();
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme"],
        apple_base_url: Some(sim.base.clone()),
        // Nothing becomes due during the test.
        reconcile: "notification_grace = \"1h\"",
        stokens: vec![loc["sToken"].as_str().expect("sToken").to_string()],
        log_level: "warn",
        backend,
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let c = client();
    wait_holding(&c, &env, backend).await;

    // 2 MB announced: 413 without the body being sent (the read never starts).
    let mut s = tokio::net::TcpStream::connect(env.api).await.unwrap();
    let head = format!(
        "POST /v1/tokens/acme/requests/associate HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
        env.api_auth_lines()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"too_large\"") && answer.contains("1048576"),
        "{answer}"
    );
    drop(s);

    // Under the byte cap but 104 Apple requests (2,600 assets at maxAssets 25).
    let assets: Vec<Value> = (0..2_600)
        .map(|i| json!({"adamId": format!("{}", 1_000_000 + i), "pricingParam": "STDQ"}))
        .collect();
    let (st, a, _) = submit(
        &c,
        &env,
        "associate",
        None,
        &json!({"assets": assets, "serialNumbers": ["SN1"]}),
    )
    .await;
    assert_error(st, &a, 413, "too_large", "104");
    assert!(a["error"].as_str().unwrap().contains("100"), "{a}");
    // 5 requests but 125,000 entities.
    let assets: Vec<Value> = (0..25)
        .map(|i| json!({"adamId": format!("{}", 1_000_000 + i), "pricingParam": "STDQ"}))
        .collect();
    let serials: Vec<String> = (0..5_000).map(|i| format!("SN{i:05}")).collect();
    let (st, a, _) = submit(
        &c,
        &env,
        "associate",
        None,
        &json!({"assets": assets, "serialNumbers": serials}),
    )
    .await;
    assert_error(st, &a, 413, "too_large", "125000");
    assert_eq!(apple_requests(&sim, &uid, "associateAssets").await, 0);

    // A bad key is refused, naming it.
    let users = |prefix: &str, n: usize| -> Value {
        let users: Vec<Value> = (0..n)
            .map(|i| json!({"clientUserId": format!("{prefix}{i:03}")}))
            .collect();
        json!({ "users": users })
    };
    let (st, a, _) = submit(&c, &env, "create-users", Some("has space"), &users("x", 1)).await;
    assert_error(st, &a, 400, "invalid_request", "has space");

    // One key, the same body twice: one set of Apple requests, the same eventIds.
    let body = users("u", 150);
    let (st, first, replayed) = submit(&c, &env, "create-users", Some("k-1"), &body).await;
    assert_eq!(st, 201, "{first}");
    assert!(!replayed);
    assert_eq!(first["eventIds"].as_array().unwrap().len(), 2, "{first}");
    let (st, again, replayed) = submit(&c, &env, "create-users", Some("k-1"), &body).await;
    assert_eq!(st, 201, "{again}");
    assert!(replayed);
    assert_eq!(again["eventIds"], first["eventIds"]);
    assert_eq!(apple_requests(&sim, &uid, "createUsers").await, 2);
    // The same key with another body: refused, naming the key.
    let (st, a, _) = submit(&c, &env, "create-users", Some("k-1"), &users("v", 3)).await;
    assert_error(st, &a, 422, "idempotency_mismatch", "\"k-1\"");
    // Another kind is another key space.
    assert_eq!(apple_requests(&sim, &uid, "createUsers").await, 2);

    // Durable: after a restart the key still answers the first submission.
    assert_eq!(daemon.terminate().code(), Some(0));
    let daemon = env.start_daemon();
    wait_holding(&c, &env, backend).await;
    let (st, after, replayed) = submit(&c, &env, "create-users", Some("k-1"), &body).await;
    assert_eq!(st, 201, "{after}");
    assert!(replayed);
    assert_eq!(after["eventIds"], first["eventIds"]);
    assert_eq!(apple_requests(&sim, &uid, "createUsers").await, 2);

    // Two at once with one key: Apple sees one submission; the other waits its turn (409)
    // or, if it came after, gets the same answer.
    let body = users("w", 150);
    let (a, b) = tokio::join!(
        submit(&c, &env, "create-users", Some("k-2"), &body),
        submit(&c, &env, "create-users", Some("k-2"), &body),
    );
    assert_eq!(apple_requests(&sim, &uid, "createUsers").await, 4);
    let winners: Vec<&(u16, Value, bool)> = [&a, &b].into_iter().filter(|r| r.0 == 201).collect();
    assert!(!winners.is_empty(), "{a:?} {b:?}");
    for r in [&a, &b] {
        match r.0 {
            201 => assert_eq!(r.1["eventIds"], winners[0].1["eventIds"]),
            409 => assert_eq!(r.1["code"], "idempotency_in_progress", "{:?}", r.1),
            other => panic!("unexpected {other}: {:?}", r.1),
        }
    }
    assert_eq!(daemon.terminate().code(), Some(0));
}
