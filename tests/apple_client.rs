//! AppleClient against local servers on 127.0.0.1 (bounded in time):
//! - `fake`: a scripted axum server per test, for exact assertions on what was sent when
//!   (headers, paths, retries, Retry-After, rate, redaction).
//! - `sim`: the Apple simulator (`crate::sim::serve`) end to end: faults, `/_sim/stats`,
//!   `/_sim/truth`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use vpp_reconciler::apple::{
    ApiError, AppleClient, ClientConfigRequest, ClientOptions, RequestKind, TokenHealth,
};
use vpp_reconciler::secret::Secret;

const TOKEN: &str = "eyJ0b2tlbiI6IlBMQU5URUQtU0VDUkVULVRPS0VOIn0=";

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    content_type: Option<String>,
    body: String,
    at: Instant,
}

/// (status, headers, body) for the n-th request (0-based) `seen`.
type Script = dyn Fn(usize, &Seen) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

struct Fake {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Per-request delay before answering, by request index.
    _addr: SocketAddr,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn fake(
    script: impl Fn(usize, &Seen) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync + 'static,
) -> Fake {
    fake_with_delay(script, |_| Duration::ZERO).await
}

async fn fake_with_delay(
    script: impl Fn(usize, &Seen) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync + 'static,
    delay: impl Fn(usize) -> Duration + Send + Sync + 'static,
) -> Fake {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    let delay: Arc<dyn Fn(usize) -> Duration + Send + Sync> = Arc::new(delay);
    let s2 = seen.clone();
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let seen = s2.clone();
        let script = script.clone();
        let delay = delay.clone();
        async move {
            let h = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let rec = Seen {
                method: method.to_string(),
                path: uri.path().to_string(),
                query: uri.query().unwrap_or_default().to_string(),
                auth: h("authorization"),
                content_type: h("content-type"),
                body: String::from_utf8_lossy(&body).into_owned(),
                at: Instant::now(),
            };
            let n = {
                let mut s = seen.lock().unwrap();
                s.push(rec.clone());
                s.len() - 1
            };
            tokio::time::sleep(delay(n)).await;
            let (status, hdrs, body) = script(n, &rec);
            let mut resp: Response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            for (k, v) in hdrs {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
    };
    let app = Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Fake {
        base: format!("http://{addr}/mdm/v2/"),
        seen,
        _addr: addr,
    }
}

fn opts(base: &str) -> ClientOptions {
    ClientOptions {
        base_url: base.to_string(),
        request_timeout: Duration::from_secs(5),
        max_requests_per_second: 15,
        max_concurrent_requests: 5,
        read_retries: 2,
        metrics: Default::default(),
    }
}

fn client(base: &str) -> AppleClient {
    let c = AppleClient::new(opts(base)).unwrap();
    c.set_token("acme", Secret::new(TOKEN), None);
    c
}

fn ok(body: Value) -> (u16, Vec<(&'static str, String)>, String) {
    (200, vec![], body.to_string())
}

fn apple_err(status: u16, n: i32) -> (u16, Vec<(&'static str, String)>, String) {
    (
        status,
        vec![],
        json!({"errorNumber": n, "errorMessage": "m"}).to_string(),
    )
}

fn status_body() -> Value {
    json!({"eventStatus":"COMPLETE","eventType":"ASSOCIATE","numRequested":1,"numCompleted":1,"uId":"1"})
}

fn cc_body() -> Value {
    json!({"uId":"1","locationName":"L"})
}

/// Bounds every test: a hang is a failure, not a stuck CI job.
async fn bounded<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn sends_whole_token_as_bearer_and_uses_apple_paths() {
    bounded(20, async {
        let f = fake(|_, s| match (s.method.as_str(), s.path.as_str()) {
            ("GET", "/mdm/v2/service/config") => ok(json!({"limits":{"maxRequestPerSecond":10}})),
            ("GET", "/mdm/v2/client/config") | ("POST", "/mdm/v2/client/config") => ok(cc_body()),
            ("GET", "/mdm/v2/status") => ok(status_body()),
            ("GET", "/mdm/v2/assets") => {
                ok(json!({"assets":[],"currentPageIndex":0,"totalPages":1,"versionId":"a"}))
            }
            ("GET", "/mdm/v2/assignments") => {
                ok(json!({"assignments":[],"totalPages":1,"versionId":"b"}))
            }
            ("GET", "/mdm/v2/users") => ok(json!({"users":[],"totalPages":1,"versionId":"c"})),
            ("POST", _) => ok(json!({"eventId":"e1","uId":"1"})),
            _ => (404, vec![], String::new()),
        })
        .await;
        let c = client(&f.base);
        let sc = c.service_config().await.unwrap();
        assert_eq!(sc.limits.max_request_per_second(), Some(10));
        assert_eq!(c.limits().unwrap().max_request_per_second(), Some(10));
        c.client_config("acme").await.unwrap();
        c.set_client_config(
            "acme",
            &ClientConfigRequest {
                notification_url: Some("https://x/y".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let st = c.event_status("acme", "ev 1").await.unwrap();
        assert_eq!(st.num_completed, Some(1));
        assert_eq!(
            c.get_assets("acme").await.unwrap().version_id.as_deref(),
            Some("a")
        );
        let t = c.get_assignments("acme", Some("v0")).await.unwrap();
        assert!(t.incremental);
        assert!(!c.get_users("acme", None).await.unwrap().incremental);
        for k in RequestKind::ALL {
            let r = c
                .submit("acme", k, &json!({"users":[{"clientUserId":"u"}]}))
                .await
                .unwrap();
            assert_eq!(r.event_id, "e1");
        }
        let seen = f.seen();
        assert_eq!(seen[0].auth, None, "Service Config is called without auth");
        for s in &seen[1..] {
            assert_eq!(
                s.auth.as_deref(),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{s:?}"
            );
            if s.method == "POST" {
                assert_eq!(s.content_type.as_deref(), Some("application/json"));
                assert!(serde_json::from_str::<Value>(&s.body).is_ok());
            }
        }
        let paths: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        for p in [
            "POST /mdm/v2/assets/associate",
            "POST /mdm/v2/assets/disassociate",
            "POST /mdm/v2/assets/revoke",
            "POST /mdm/v2/users/create",
            "POST /mdm/v2/users/update",
            "POST /mdm/v2/users/retire",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
        }
        let status = seen.iter().find(|s| s.path == "/mdm/v2/status").unwrap();
        assert_eq!(status.query, "eventId=ev+1");
        let asg = seen
            .iter()
            .find(|s| s.path == "/mdm/v2/assignments")
            .unwrap();
        assert_eq!(asg.query, "pageIndex=0&sinceVersionId=v0");
    })
    .await;
}

#[tokio::test]
async fn service_config_urls_override_base_paths() {
    bounded(20, async {
        let f = fake(|_, s| match s.path.as_str() {
            "/moved/status" => ok(status_body()),
            "/moved/users/create" => ok(json!({"eventId":"e"})),
            _ => (404, vec![], String::new()),
        })
        .await;
        // Service Config (from a second server) points two URLs at the first one, and one
        // at another scheme, which must be ignored.
        let root = f.base.trim_end_matches("mdm/v2/").to_string();
        let f2 = {
            let root = root.clone();
            fake(move |_, s| match s.path.as_str() {
                "/mdm/v2/service/config" => ok(json!({"urls": {
                    "eventStatus": format!("{root}moved/status"),
                    "createUsers": format!("{root}moved/users/create"),
                    "getUsers": "ftp://example.com/users"
                }})),
                _ => (404, vec![], String::new()),
            })
            .await
        };
        let c = client(&f2.base);
        c.service_config().await.unwrap();
        c.event_status("acme", "e").await.unwrap();
        c.submit("acme", RequestKind::CreateUsers, &json!({"users":[]}))
            .await
            .unwrap();
        let paths: Vec<String> = f.seen().iter().map(|s| s.path.clone()).collect();
        assert_eq!(paths, vec!["/moved/status", "/moved/users/create"]);
        // The ftp URL was ignored: getUsers still goes to the base.
        let _ = c.get_users("acme", None).await;
        assert!(f2.seen().iter().any(|s| s.path == "/mdm/v2/users"));
    })
    .await;
}

#[tokio::test]
async fn error_inside_http_200_is_caught_and_stops_the_token() {
    bounded(20, async {
        let f = fake(|_, _| apple_err(200, 9622)).await;
        let c = client(&f.base);
        let e = c.client_config("acme").await.unwrap_err();
        assert_eq!(
            e,
            ApiError::Unauthorized {
                number: Some(9622),
                status: 200
            }
        );
        assert!(matches!(
            c.token_health("acme"),
            Some(TokenHealth::Unhealthy { .. })
        ));
        let e = c.get_users("acme", None).await.unwrap_err();
        assert_eq!(
            e,
            ApiError::TokenUnhealthy {
                token: "acme".into()
            }
        );
        assert_eq!(f.seen().len(), 1, "second call refused locally");
        // A reload clears it.
        c.set_token("acme", Secret::new(TOKEN), None);
        assert_eq!(c.token_health("acme"), Some(TokenHealth::Healthy));
        let _ = c.client_config("acme").await;
        assert_eq!(f.seen().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn expired_and_revoked_tokens_stop_traffic() {
    bounded(20, async {
        for (n, want) in [
            (9621, ApiError::TokenExpired),
            (9625, ApiError::TokenRevoked),
        ] {
            let f = fake(move |_, _| apple_err(401, n)).await;
            let c = client(&f.base);
            assert_eq!(c.event_status("acme", "e").await.unwrap_err(), want);
            let e = c
                .submit("acme", RequestKind::Associate, &json!({}))
                .await
                .unwrap_err();
            assert!(matches!(e, ApiError::TokenUnhealthy { .. }));
            assert!(e.is_token_problem());
            assert_eq!(f.seen().len(), 1);
            match c.token_health("acme") {
                Some(TokenHealth::Unhealthy { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{other:?}"),
            }
        }
        let c = client("http://127.0.0.1:9/");
        assert!(matches!(
            c.client_config("nobody").await.unwrap_err(),
            ApiError::UnknownToken { .. }
        ));
        assert_eq!(c.token_health("nobody"), None);
    })
    .await;
}

#[tokio::test]
async fn simple_errors_classified() {
    bounded(20, async {
        let f = fake(|_, s| match s.path.as_str() {
            "/mdm/v2/status" => apple_err(400, 9708),
            "/mdm/v2/users" => apple_err(400, 9721),
            "/mdm/v2/assets" => ok(json!({"assets": 5})),
            _ => apple_err(400, 9602),
        })
        .await;
        let c = client(&f.base);
        assert_eq!(c.event_status("acme", "x").await.unwrap_err(), ApiError::EventNotFound);
        assert_eq!(
            c.get_users("acme", Some("old")).await.unwrap_err(),
            ApiError::InvalidVersion
        );
        let e = c.get_assets("acme").await.unwrap_err();
        assert!(matches!(&e, ApiError::Decode { endpoint, detail } if endpoint == "assets" && detail.contains("assets")), "{e}");
        let e = c.client_config("acme").await.unwrap_err();
        assert_eq!(e.error_number(), Some(9602));
        // None of these are retried or mark the token.
        assert_eq!(f.seen().len(), 4);
        assert_eq!(c.token_health("acme"), Some(TokenHealth::Healthy));
    })
    .await;
}

/// A server that answers every request with status 200 and a body without
/// `Content-Length` that never ends (chunks of 64 KiB until the client hangs up), or with a
/// `Content-Length` larger than any cap and no body at all. Returns the base URL and the
/// bytes it managed to send.
async fn endless(declared: bool) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                if declared {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1099511627776\r\n\r\n")
                        .await;
                    // Holds the connection; the client must not wait for the body.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("{:x}\r\n{}\r\n", 65536, " ".repeat(65536));
                while s.write_all(chunk.as_bytes()).await.is_ok() {
                    counter.fetch_add(65536, Ordering::Relaxed);
                }
            });
        }
    });
    (format!("http://{addr}/mdm/v2/"), sent)
}

/// Every Apple answer is read with a cap: a page body that never ends stops at 16 MiB with
/// a typed error naming the endpoint and the cap (no growing buffer), a declared length over
/// the cap is refused unread, and the cap of a small endpoint is 1 MiB. Not retried, and the
/// token stays healthy (a bad answer, not a token problem).
#[tokio::test]
async fn oversized_bodies_are_a_typed_error_naming_endpoint_and_cap() {
    use vpp_reconciler::apple::{LARGE_BODY_CAP, SMALL_BODY_CAP};
    bounded(60, async {
        let (base, sent) = endless(false).await;
        let c = client(&base);
        let e = c.get_assets("acme").await.unwrap_err();
        assert_eq!(
            e,
            ApiError::TooLarge {
                endpoint: "assets".into(),
                cap: LARGE_BODY_CAP
            }
        );
        assert!(
            e.to_string().contains("assets") && e.to_string().contains("16777216"),
            "{e}"
        );
        let e = c.client_config("acme").await.unwrap_err();
        assert_eq!(
            e,
            ApiError::TooLarge {
                endpoint: "client/config".into(),
                cap: SMALL_BODY_CAP
            }
        );
        assert_eq!(c.token_health("acme"), Some(TokenHealth::Healthy));
        // The server could push only what the client read plus the socket buffers: far
        // less than an endless body (this would grow without bound otherwise).
        let pushed = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(pushed < 64 * 1024 * 1024, "{pushed} bytes pushed");

        let (base, _) = endless(true).await;
        let c = client(&base);
        let started = Instant::now();
        let e = c.get_users("acme", None).await.unwrap_err();
        assert_eq!(
            e,
            ApiError::TooLarge {
                endpoint: "users".into(),
                cap: LARGE_BODY_CAP
            }
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused without waiting for the body"
        );
    })
    .await;
}

/// Over HTTP: a server whose `totalPages` says 1000 while page 1 is the last (no
/// `nextPageIndex`) gets no request past what was in flight, and a record on page 1 that does
/// not decode is counted, not dropped silently.
#[tokio::test]
async fn pager_stops_at_the_last_real_page_and_counts_undecodable_records() {
    bounded(20, async {
        let f = fake(|_, s| {
            let page: u32 = s
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("pageIndex="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match page {
                0 => ok(json!({"assignments": [{"adamId": "1", "pricingParam": "STDQ", "serialNumber": "a"}],
                    "currentPageIndex": 0, "nextPageIndex": 1, "totalPages": 1000, "size": 1, "versionId": "v"})),
                1 => ok(json!({"assignments": [{"adamId": "1", "pricingParam": "STDQ", "serialNumber": "b"},
                        {"adamId": "2", "pricingParam": "STDQ", "serialNumber": {"odd": true}}],
                    "currentPageIndex": 1, "totalPages": 1000, "size": 2, "versionId": "v"})),
                _ => apple_err(400, 9650),
            }
        })
        .await;
        let c = client(&f.base);
        let t = c.get_assignments("acme", None).await.unwrap();
        assert_eq!(t.records.len(), 2);
        assert_eq!(t.pages, 2);
        assert_eq!(t.undecodable, 1);
        assert!(t.consistent);
        let asked = f.seen().len();
        // Page 0, then pages 1..=5 in flight at most (5 concurrent requests).
        assert!(asked <= 6, "{asked} requests for 2 real pages");
    })
    .await;
}

#[tokio::test]
async fn retry_after_is_honoured_by_retries_and_queued_requests() {
    bounded(30, async {
        // Request 0 answers 503 Retry-After: 1 after 200 ms, while two more wait for the only
        // permit; none of them may arrive before the Retry-After ends.
        let f = fake_with_delay(
            |n, _| {
                if n == 0 {
                    (
                        503,
                        vec![("retry-after", "1".into())],
                        json!({"errorNumber":9729,"errorMessage":"later"}).to_string(),
                    )
                } else {
                    ok(status_body())
                }
            },
            |n| {
                if n == 0 {
                    Duration::from_millis(200)
                } else {
                    Duration::ZERO
                }
            },
        )
        .await;
        let mut o = opts(&f.base);
        o.max_concurrent_requests = 1;
        let c = AppleClient::new(o).unwrap();
        c.set_token("acme", Secret::new(TOKEN), None);
        let calls = (0..3).map(|i| {
            let c = c.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20 * i)).await;
                c.event_status("acme", "e").await
            }
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let seen = f.seen();
        assert_eq!(
            seen.len(),
            4,
            "one 503, then the retry and the two queued calls"
        );
        let answered = seen[0].at + Duration::from_millis(200);
        for s in &seen[1..] {
            assert!(
                s.at >= answered + Duration::from_millis(1000),
                "{:?}",
                s.at - seen[0].at
            );
        }
    })
    .await;
}

#[tokio::test]
async fn rate_limited_read_backs_off_then_succeeds() {
    bounded(30, async {
        let f = fake(|n, _| {
            if n < 2 {
                apple_err(429, 9646)
            } else {
                ok(cc_body())
            }
        })
        .await;
        let c = client(&f.base);
        c.client_config("acme").await.unwrap();
        let seen = f.seen();
        assert_eq!(seen.len(), 3);
        // Backoff 1 s then 2 s (+ up to 20% jitter).
        let d1 = seen[1].at - seen[0].at;
        let d2 = seen[2].at - seen[1].at;
        assert!(
            d1 >= Duration::from_millis(1000) && d1 < Duration::from_millis(1900),
            "{d1:?}"
        );
        assert!(
            d2 >= Duration::from_millis(2000) && d2 < Duration::from_millis(3500),
            "{d2:?}"
        );
        // read_retries = 2: a third 429 would be returned.
        let f = fake(|_, _| (429, vec![("retry-after", "0".into())], String::new())).await;
        let c = client(&f.base);
        let e = c.client_config("acme").await.unwrap_err();
        assert!(matches!(e, ApiError::RateLimited { .. }));
        assert_eq!(f.seen().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn writes_retry_only_when_apple_provably_did_not_process() {
    bounded(30, async {
        let body = json!({"assets":[{"adamId":"1","pricingParam":"STDQ"}],"serialNumbers":["s"]});
        // 5xx with an ErrorResponse: nothing was processed -> retried.
        let f = fake(|n, _| {
            if n == 0 {
                apple_err(503, 9729)
            } else {
                ok(json!({"eventId":"e"}))
            }
        })
        .await;
        let c = client(&f.base);
        assert_eq!(
            c.submit("acme", RequestKind::Associate, &body)
                .await
                .unwrap()
                .event_id,
            "e"
        );
        assert_eq!(f.seen().len(), 2);
        // 429 -> retried.
        let f = fake(|n, _| {
            if n == 0 {
                apple_err(429, 9646)
            } else {
                ok(json!({"eventId":"e"}))
            }
        })
        .await;
        let c = client(&f.base);
        c.submit("acme", RequestKind::Associate, &body)
            .await
            .unwrap();
        assert_eq!(f.seen().len(), 2);
        // Bare 502 (a proxy?) — may have reached Apple: not retried.
        let f = fake(|_, _| (502, vec![], String::new())).await;
        let c = client(&f.base);
        let e = c
            .submit("acme", RequestKind::Associate, &body)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            ApiError::Unavailable {
                status: 502,
                number: None,
                ..
            }
        ));
        assert_eq!(f.seen().len(), 1);
        // Timeout: not retried.
        let f = fake_with_delay(
            |_, _| ok(json!({"eventId":"e"})),
            |_| Duration::from_secs(3),
        )
        .await;
        let mut o = opts(&f.base);
        o.request_timeout = Duration::from_millis(300);
        let c = AppleClient::new(o).unwrap();
        c.set_token("acme", Secret::new(TOKEN), None);
        let e = c
            .submit("acme", RequestKind::Associate, &body)
            .await
            .unwrap_err();
        assert_eq!(e, ApiError::Timeout);
        assert_eq!(f.seen().len(), 1);
        // Reads do retry timeouts.
        let e = c.client_config("acme").await.unwrap_err();
        assert_eq!(e, ApiError::Timeout);
        assert_eq!(f.seen().len(), 4);
        // Synchronous validation error: returned as-is, once.
        let f = fake(|_, _| apple_err(400, 9709)).await;
        let c = client(&f.base);
        let e = c
            .submit("acme", RequestKind::Associate, &body)
            .await
            .unwrap_err();
        assert_eq!(e.error_number(), Some(9709));
        assert_eq!(f.seen().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn connect_errors_are_transport_and_bounded() {
    bounded(30, async {
        // Bind then drop to get a port with (almost certainly) nobody listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = client(&format!("http://127.0.0.1:{port}/mdm/v2/"));
        let e = c
            .submit(
                "acme",
                RequestKind::RetireUsers,
                &json!({"users":[{"clientUserId":"u"}]}),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Transport(_)), "{e:?}");
        assert!(e.is_retryable());
        assert!(!e.to_string().contains(TOKEN));
        assert_eq!(c.token_health("acme"), Some(TokenHealth::Healthy));
    })
    .await;
}

#[tokio::test]
async fn no_more_than_rps_in_any_second_under_20_callers() {
    bounded(60, async {
        let f = fake(|_, _| ok(status_body())).await;
        let mut o = opts(&f.base);
        o.max_requests_per_second = 8;
        let c = AppleClient::new(o).unwrap();
        c.set_token("acme", Secret::new(TOKEN), None);
        let calls = (0..20).map(|_| {
            let c = c.clone();
            async move {
                for _ in 0..2 {
                    c.event_status("acme", "e").await.unwrap();
                }
            }
        });
        futures::future::join_all(calls).await;
        let times: Vec<Instant> = f.seen().iter().map(|s| s.at).collect();
        assert_eq!(times.len(), 40);
        let mut sorted = times.clone();
        sorted.sort();
        for (i, t) in sorted.iter().enumerate() {
            let n = sorted[i..]
                .iter()
                .take_while(|&&s| s < *t + Duration::from_secs(1))
                .count();
            assert!(n <= 8, "{n} arrivals within 1 s");
        }
        // 40 requests at 8/s: at least four full windows.
        assert!(*sorted.last().unwrap() - sorted[0] >= Duration::from_secs(4));
    })
    .await;
}

#[tokio::test]
async fn token_never_appears_in_errors() {
    bounded(30, async {
        // A hostile server echoing the Authorization header everywhere it can.
        let f = fake(|n, s| {
            let auth = s.auth.clone().unwrap_or_default();
            match n {
                0 => (
                    400,
                    vec![],
                    json!({"errorNumber":9602,"errorMessage":auth}).to_string(),
                ),
                1 => (200, vec![], json!({"eventStatus": {"x": auth}}).to_string()),
                2 => (401, vec![], auth),
                3 => (429, vec![("retry-after", "0".into())], auth),
                4 => (
                    500,
                    vec![],
                    json!({"errorNumber":9603,"errorMessage":auth}).to_string(),
                ),
                5 => (404, vec![], auth),
                _ => (200, vec![], format!("{{\"eventId\": {auth}")),
            }
        })
        .await;
        let mut o = opts(&f.base);
        o.read_retries = 0;
        let c = AppleClient::new(o).unwrap();
        let mut errors = vec![];
        for _ in 0..7 {
            c.set_token("acme", Secret::new(TOKEN), None);
            errors.push(c.event_status("acme", "e").await.unwrap_err());
        }
        errors.push(
            c.submit("acme", RequestKind::Associate, &json!({}))
                .await
                .unwrap_err(),
        );
        errors.push(ApiError::TokenUnhealthy {
            token: "acme".into(),
        });
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dead = client(&format!("http://127.0.0.1:{port}/"));
        errors.push(dead.client_config("acme").await.unwrap_err());
        errors.push(dead.service_config().await.unwrap_err());
        let inner = "PLANTED-SECRET-TOKEN";
        for e in &errors {
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(!text.contains(TOKEN) && !text.contains(inner), "{text}");
            }
        }
        for text in [format!("{c:?}"), format!("{:?}", c.token_health("acme"))] {
            assert!(!text.contains(TOKEN), "{text}");
        }
        // Sanity: the paths really produced distinct error kinds.
        assert!(matches!(errors[0], ApiError::Apple { number: 9602, .. }));
        assert!(matches!(errors[1], ApiError::Decode { .. }));
        assert!(matches!(errors[2], ApiError::Unauthorized { .. }));
        assert!(matches!(errors[3], ApiError::RateLimited { .. }));
        assert!(matches!(errors[4], ApiError::Unavailable { .. }));
        assert!(matches!(
            errors[5],
            ApiError::UnexpectedStatus { status: 404 }
        ));
        assert!(matches!(errors[6], ApiError::Decode { .. }));
    })
    .await;
}

/// End to end against the Apple simulator, in-process on 127.0.0.1:0.
mod sim {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use serde_json::{json, Value};
    use tokio::sync::oneshot;
    use vpp_reconciler::apple::model::{Assignee, Assignment, EventStatus, ResponseUser};
    use vpp_reconciler::apple::{split_request, ApiError, AppleClient, RequestKind, TokenHealth};
    use vpp_reconciler::secret::Secret;
    use vpp_reconciler::sim::{serve, SimOptions};

    use super::{bounded, opts};

    struct Sim {
        root: String,
        http: reqwest::Client,
        _stop: oneshot::Sender<()>,
    }

    async fn start() -> Sim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, SimOptions { seed: 11 }, async {
            let _ = rx.await;
        }));
        Sim {
            root: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _stop: tx,
        }
    }

    impl Sim {
        async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
            let mut rb = self
                .http
                .request(method, format!("{}/_sim/{path}", self.root));
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let r = rb.send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json().await.unwrap()
        }
        async fn location(&self, body: Value) -> (String, String) {
            let v = self
                .control(reqwest::Method::POST, "locations", Some(body))
                .await;
            (
                v["uId"].as_str().unwrap().to_string(),
                v["sToken"].as_str().unwrap().to_string(),
            )
        }
        async fn faults(&self, body: Value) {
            self.control(reqwest::Method::PUT, "faults", Some(body))
                .await;
        }
        async fn limits(&self, body: Value) {
            self.control(reqwest::Method::PUT, "limits", Some(body))
                .await;
        }
        async fn stats(&self, uid: &str) -> Value {
            let v = self.control(reqwest::Method::GET, "stats", None).await;
            v["tokens"][uid].clone()
        }
        async fn truth(&self, uid: &str) -> Value {
            self.control(reqwest::Method::GET, &format!("truth/{uid}"), None)
                .await
        }
        async fn client(&self, name: &str, stoken: &str) -> AppleClient {
            let mut o = opts(&format!("{}/mdm/v2/", self.root));
            o.read_retries = 10;
            let c = AppleClient::new(o).unwrap();
            c.service_config().await.unwrap();
            c.set_token(name, Secret::new(stoken), None);
            c
        }
    }

    fn total_requests(stats: &Value) -> u64 {
        stats["requests"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }

    fn keys(records: &[Assignment]) -> BTreeSet<(String, Assignee)> {
        records
            .iter()
            .map(|a| (a.adam_id.clone(), a.assignee()))
            .collect()
    }

    async fn wait_complete(c: &AppleClient, token: &str, event_id: &str) {
        loop {
            let s = c.event_status(token, event_id).await.unwrap();
            match s.event_status {
                EventStatus::Pending => tokio::time::sleep(Duration::from_millis(100)).await,
                EventStatus::Complete => return,
                other => panic!("event {event_id} ended {other:?}: {:?}", s.failures),
            }
        }
    }

    /// Submits `body` split by the Service Config limits; waits for every part.
    async fn submit_all(c: &AppleClient, token: &str, kind: RequestKind, body: Value) {
        let parts = split_request(kind, &body, &c.limits().unwrap()).unwrap();
        for p in parts.iter() {
            let e = c.submit(token, kind, &p).await.unwrap();
            wait_complete(c, token, &e.event_id).await;
        }
    }

    fn serials(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:05}")).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pagination_over_5000_assignments_with_version_churn_matches_truth() {
        bounded(120, async {
            let sim = start().await;
            let assets: Vec<Value> = (1..=5)
                .map(|i| json!({"adamId": format!("10{i}"), "pricingParam": "STDQ", "total": 1000, "deviceAssignable": true}))
                .collect();
            let (uid, tok) = sim.location(json!({"assets": assets, "pageSize": 500})).await;
            let c = sim.client("acme", &tok).await;
            let asset_refs: Vec<Value> = (1..=5)
                .map(|i| json!({"adamId": format!("10{i}"), "pricingParam": "STDQ"}))
                .collect();
            submit_all(&c, "acme", RequestKind::Associate,
                json!({"assets": asset_refs, "serialNumbers": serials("S", 1000)})).await;

            sim.faults(json!({"versionChurn": true})).await;
            let t = c.get_assignments("acme", None).await.unwrap();
            let truth: Vec<Assignment> =
                serde_json::from_value(sim.truth(&uid).await["assignments"].clone()).unwrap();
            assert_eq!(truth.len(), 5000);
            assert_eq!(t.records.len(), 5000);
            assert_eq!(keys(&t.records), keys(&truth));
            // versionChurn moves the versionId after every page but leaves the data alone: the
            // second pass reads the same records, which makes the read consistent.
            assert!(t.consistent, "two passes with the same records are a stable read");
            assert_eq!(t.pages, 10);
            assert!(!t.incremental);

            sim.faults(json!({"versionChurn": false})).await;
            let t = c.get_assignments("acme", None).await.unwrap();
            assert!(t.consistent);
            assert_eq!(keys(&t.records), keys(&truth));
            let s = sim.stats(&uid).await;
            assert_eq!(s["rateLimitViolations"], 0, "{s}");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn incremental_after_changes_gives_exactly_the_changed_records() {
        bounded(120, async {
            let sim = start().await;
            let (_uid, tok) = sim
                .location(json!({
                    "assets": [{"adamId": "201", "pricingParam": "STDQ", "total": 100, "deviceAssignable": true}],
                    "users": [{"clientUserId": "u1"}, {"clientUserId": "u2"}],
                    "pageSize": 5
                }))
                .await;
            let c = sim.client("acme", &tok).await;
            let asset = json!([{"adamId": "201", "pricingParam": "STDQ"}]);
            submit_all(&c, "acme", RequestKind::Associate,
                json!({"assets": asset, "serialNumbers": serials("A", 12)})).await;
            let full = c.get_assignments("acme", None).await.unwrap();
            assert_eq!(full.records.len(), 12);
            assert!(full.consistent);
            let v = full.version_id.clone().unwrap();
            let users_full = c.get_users("acme", None).await.unwrap();
            let vu = users_full.version_id.clone().unwrap();

            submit_all(&c, "acme", RequestKind::Associate,
                json!({"assets": asset, "serialNumbers": serials("B", 7)})).await;
            submit_all(&c, "acme", RequestKind::CreateUsers,
                json!({"users": [{"clientUserId": "u10", "email": "u10@example.com"}, {"clientUserId": "u11"}]})).await;

            let inc = c.get_assignments("acme", Some(&v)).await.unwrap();
            assert!(inc.incremental && inc.consistent);
            let want: BTreeSet<_> = serials("B", 7)
                .into_iter()
                .map(|s| ("201".to_string(), Assignee::Device(s)))
                .collect();
            assert_eq!(keys(&inc.records), want);
            assert_ne!(inc.version_id.as_deref(), Some(v.as_str()));

            let inc_users = c.get_users("acme", Some(&vu)).await.unwrap();
            let ids: BTreeSet<String> = inc_users.records.iter().map(|u: &ResponseUser| u.client_user_id.clone()).collect();
            assert_eq!(ids, ["u10".to_string(), "u11".to_string()].into_iter().collect());

            // Nothing changed since the newest version: zero records is normal.
            let none = c.get_assignments("acme", inc.version_id.as_deref()).await.unwrap();
            assert!(none.records.is_empty());
            assert_eq!(
                c.get_users("acme", Some("not-a-version")).await.unwrap_err(),
                ApiError::InvalidVersion
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retry_after_and_rate_limit_respected_by_20_concurrent_callers() {
        bounded(120, async {
            let sim = start().await;
            sim.limits(json!({"maxRequestPerSecond": 10})).await;
            let (uid, tok) = sim.location(json!({})).await;
            let c = sim.client("acme", &tok).await;
            sim.faults(json!({"error5xxRate": 0.15, "retryAfter": "1s"}))
                .await;
            let calls = (0..20).map(|i| {
                let c = c.clone();
                async move {
                    for _ in 0..2 {
                        if i % 2 == 0 {
                            c.client_config("acme").await?;
                        } else {
                            c.get_users("acme", None).await?;
                        }
                    }
                    Ok::<_, ApiError>(())
                }
            });
            let results = futures::future::join_all(calls).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let s = sim.stats(&uid).await;
            assert_eq!(s["rateLimitViolations"], 0, "{s}");
            assert_eq!(s["requestsDuringRetryAfter"], 0, "{s}");
            assert!(
                total_requests(&s) > 40,
                "some 5xx were injected and retried: {s}"
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_and_revoked_tokens_stop_traffic() {
        bounded(60, async {
            let sim = start().await;
            let (u1, t1) = sim.location(json!({})).await;
            let (u2, t2) = sim.location(json!({})).await;
            let c = sim.client("one", &t1).await;
            c.set_token("two", Secret::new(&t2), None);
            sim.faults(json!({"tokenState": {u1.clone(): "expired", u2.clone(): "revoked"}}))
                .await;
            assert_eq!(
                c.client_config("one").await.unwrap_err(),
                ApiError::TokenExpired
            );
            assert_eq!(
                c.get_users("two", None).await.unwrap_err(),
                ApiError::TokenRevoked
            );
            for name in ["one", "two"] {
                let e = c
                    .submit(name, RequestKind::Revoke, &json!({"serialNumbers": ["x"]}))
                    .await
                    .unwrap_err();
                assert_eq!(e, ApiError::TokenUnhealthy { token: name.into() });
                assert!(matches!(
                    c.token_health(name),
                    Some(TokenHealth::Unhealthy { .. })
                ));
            }
            assert_eq!(total_requests(&sim.stats(&u1).await), 1);
            assert_eq!(total_requests(&sim.stats(&u2).await), 1);
            // A new token (reload) restores traffic.
            sim.faults(json!({"tokenState": {u1.clone(): "valid"}}))
                .await;
            c.set_token("one", Secret::new(&t1), None);
            c.client_config("one").await.unwrap();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_inside_http_200_bodies_are_caught() {
        bounded(60, async {
            let sim = start().await;
            let (_uid, tok) = sim.location(json!({})).await;
            let c = sim.client("acme", &tok).await;
            sim.faults(json!({"errorsWithHttp200": true})).await;
            assert_eq!(
                c.event_status("acme", "00000000-0000-0000-0000-000000000000")
                    .await
                    .unwrap_err(),
                ApiError::EventNotFound
            );
            let e = c
                .submit("acme", RequestKind::CreateUsers, &json!({"users": []}))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    ApiError::Apple {
                        number: 9720,
                        http_status: 200,
                        ..
                    }
                ),
                "{e:?}"
            );
            // An unknown token: a token problem, whatever the status.
            c.set_token("bogus", Secret::new("Ym9ndXM="), None);
            let e = c.client_config("bogus").await.unwrap_err();
            assert!(e.is_token_problem(), "{e:?}");
            assert!(c.client_config("acme").await.is_ok());
        })
        .await;
    }
}
