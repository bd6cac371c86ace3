//! Several instances on one PostgreSQL database (design §9): three daemon processes share
//! two tokens, behind a round-robin proxy for Apple's notifications (as a load balancer
//! would spread them), with events tracked through every instance's API. The holder of one
//! token is killed with SIGKILL mid-run. Its token must be taken over within about
//! `lease_ttl`, every event must reach the simulator's true outcome, every notification an
//! instance answered 200 must be in the database, and the simulator must count no request
//! over the rate limit and none inside a Retry-After for the whole run: never two holders.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::{Backend, Daemon, EnvOptions, Sim, TestEnv};
use serde_json::{json, Value};

const TTL: Duration = Duration::from_secs(3);
const FAST: &str = "notification_grace = \"2s\"\npoll_min = \"1s\"\npoll_max = \"4s\"\nresubmit_after = \"60s\"\ngive_up_after = \"120s\"";

/// The load balancer in front of the instances' webhooks: each request goes to the next
/// instance, and to the one after when an instance does not answer (it was killed).
#[derive(Clone)]
struct Proxy {
    backends: Arc<Vec<SocketAddr>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
    /// notificationIds some instance answered 200.
    acked: Arc<Mutex<BTreeSet<String>>>,
    /// Requests per instance that answered.
    served: Arc<Mutex<BTreeMap<SocketAddr, usize>>>,
}

async fn forward(State(p): State<Proxy>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = p.backends.len();
    let start = p.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let addr = p.backends[(start + i) % n];
        let mut req = p.http.post(format!("http://{addr}{}", uri.path()));
        for (k, v) in headers.iter() {
            if k == "authorization" || k == "content-type" {
                req = req.header(k, v);
            }
        }
        match req.body(body.clone()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                *p.served.lock().unwrap().entry(addr).or_default() += 1;
                if status == 200 {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        if let Some(id) = v["notificationId"].as_str() {
                            p.acked.lock().unwrap().insert(id.to_string());
                        }
                    }
                }
                return StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            }
            Err(_) => continue,
        }
    }
    StatusCode::BAD_GATEWAY
}

async fn start_proxy(backends: Vec<SocketAddr>) -> (SocketAddr, Proxy) {
    let proxy = Proxy {
        backends: Arc::new(backends),
        next: Arc::new(AtomicUsize::new(0)),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        acked: Default::default(),
        served: Default::default(),
    };
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, proxy)
}

/// Rows of `sql` as text, from the test's own connection.
async fn pg_rows(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    let driver = tokio::spawn(conn);
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.expect("query") {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    drop(client);
    let _ = driver.await;
    out
}

/// token → holder of an unexpired lease.
async fn holders(url: &str) -> BTreeMap<String, String> {
    pg_rows(
        url,
        "SELECT token, holder FROM leases \
         WHERE expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint",
    )
    .await
    .into_iter()
    .filter_map(|r| Some((r[0].clone()?, r[1].clone()?)))
    .collect()
}

/// The instance id a daemon logged at start.
fn instance_of(d: &Daemon, within: Duration) -> String {
    let start = Instant::now();
    loop {
        for line in d.log_text().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                let id = v["fields"]["instance"]
                    .as_str()
                    .or_else(|| v["instance"].as_str());
                if let Some(id) = id {
                    return id.to_string();
                }
            }
        }
        assert!(
            start.elapsed() < within,
            "no instance id logged:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn location_body(name: &str) -> Value {
    let users: Vec<Value> = (1..=10)
        .map(|i| json!({"clientUserId": format!("u{i}"), "email": format!("u{i}@example.com")}))
        .collect();
    json!({"name": name, "pageSize": 50, "users": users, "assets": [
        {"adamId": "361304891", "pricingParam": "STDQ", "productType": "App", "total": 80, "deviceAssignable": true, "revocable": true}
    ]})
}

/// A submitted write, as `POST /v1/events` takes it.
type Submitted = Value;

struct Cluster {
    sim: Sim,
    env: TestEnv,
    db: String,
    uids: Vec<String>,
    /// (instance id, API address, process); `None` once killed.
    daemons: Vec<(String, SocketAddr, Option<Daemon>)>,
    c: reqwest::Client,
    next_api: AtomicUsize,
}

impl Cluster {
    fn live_apis(&self) -> Vec<SocketAddr> {
        self.daemons
            .iter()
            .filter(|d| d.2.is_some())
            .map(|d| d.1)
            .collect()
    }

    /// Submits a write at the simulator as the MDM would; answers what to track.
    async fn submit(
        &self,
        token: usize,
        endpoint: &str,
        event_type: &str,
        body: Value,
    ) -> Submitted {
        let t = &self.env.tokens[token];
        // The MDM's own writes share each token's budget at Apple with the daemon: paced at
        // 4/s, beside the daemons' 8/s, under the simulator's 15/s.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = self.sim.apple_write(&t.stoken, endpoint, &body).await;
        let id = r["eventId"]
            .as_str()
            .unwrap_or_else(|| panic!("no eventId from {endpoint}: {r}"))
            .to_string();
        json!({"token": t.name, "eventId": id, "type": event_type, "request": body})
    }

    /// Tracks submitted events, each through the next live instance's API (round robin:
    /// mostly not the token's holder); answers their eventIds.
    async fn track(&self, submitted: &[Submitted]) -> Vec<String> {
        let mut ids = Vec::new();
        for s in submitted {
            let apis = self.live_apis();
            let api = apis[self.next_api.fetch_add(1, Ordering::Relaxed) % apis.len()];
            let tracked = self
                .c
                .post(format!("http://{api}/v1/events"))
                .json(s)
                .send()
                .await
                .unwrap();
            assert_eq!(tracked.status().as_u16(), 201, "tracking {s} on {api}");
            ids.push(s["eventId"].as_str().unwrap().to_string());
        }
        ids
    }

    async fn workload(&self, round: usize) -> Vec<Submitted> {
        let mut out = Vec::new();
        for token in 0..self.env.tokens.len() {
            for i in 0..4 {
                let serials: Vec<String> = (0..2)
                    .map(|j| format!("R{round}-T{token}-D{i}-{j}"))
                    .collect();
                let body = json!({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}], "serialNumbers": serials});
                out.push(
                    self.submit(token, "assets/associate", "ASSOCIATE", body)
                        .await,
                );
            }
            let users = json!({"users": [{"clientUserId": format!("n{round}"), "email": format!("n{round}@example.com")}]});
            out.push(self.submit(token, "users/create", "CREATE", users).await);
            let gone = json!({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}], "serialNumbers": [format!("R{round}-T{token}-D0-0")]});
            out.push(
                self.submit(token, "assets/disassociate", "DISASSOCIATE", gone)
                    .await,
            );
        }
        out
    }

    async fn events(&self) -> Vec<Value> {
        let api = self.live_apis()[0];
        let r: Value = self
            .c
            .get(format!("http://{api}/v1/events?limit=10000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["events"].as_array().cloned().unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (id, _, d) in &self.daemons {
            if let Some(d) = d {
                let text = d.log_text();
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!("--- {id}\n"));
                s.push_str(&lines[lines.len().saturating_sub(25)..].join("\n"));
                s.push('\n');
            }
        }
        s
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_token_holder_hands_its_token_over_without_losing_anything() {
    let sim = Sim::start(11);
    let mut uids = Vec::new();
    let mut stokens = Vec::new();
    for t in ["acme", "beta"] {
        let loc = sim.post("/_sim/locations", &location_body(t)).await;
        uids.push(loc["uId"].as_str().unwrap().to_string());
        stokens.push(loc["sToken"].as_str().unwrap().to_string());
    }
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme", "beta"],
        apple_base_url: Some(sim.base.clone()),
        reconcile: FAST,
        stokens,
        backend: Backend::Postgres,
        token_extra: "max_requests_per_second = 8",
        ..Default::default()
    });
    let db = env.pg.as_ref().unwrap().url.clone();
    // Three instances: the same configuration but for their listen addresses.
    let base = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("url = \"{db}\"\n"),
        &format!("url = \"{db}\"\nlease_ttl = \"{}s\"\n", TTL.as_secs()),
    );
    let mut webhooks = Vec::new();
    let mut daemons = Vec::new();
    for i in 0..3 {
        let (api, webhook) = if i == 0 {
            (env.api, env.webhook)
        } else {
            (common::free_addr(), common::free_addr())
        };
        let toml = base
            .replace(&env.api.to_string(), &api.to_string())
            .replace(&env.webhook.to_string(), &webhook.to_string());
        let path = env.path(&format!("instance-{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let d = env.spawn_daemon_with(&path, api, &format!("instance-{i}.log"));
        d.wait_healthy(Duration::from_secs(30));
        webhooks.push(webhook);
        daemons.push((instance_of(&d, Duration::from_secs(10)), api, Some(d)));
    }
    let ids: BTreeSet<&String> = daemons.iter().map(|d| &d.0).collect();
    assert_eq!(ids.len(), 3, "instance ids are unique: {ids:?}");
    let (proxy_addr, proxy) = start_proxy(webhooks).await;
    sim.put(
        "/_sim/faults",
        &json!({"processingDelay": "300ms", "dropNotificationRate": 0.3}),
    )
    .await;
    for (i, t) in env.tokens.iter().enumerate() {
        let url = format!("http://{proxy_addr}/apple/notifications/{}", t.name);
        sim.put(
            "/_sim/notify",
            &json!({"uId": uids[i], "url": url, "authToken": t.notify_secret}),
        )
        .await;
    }
    // The instances share the directory, so the first one's generated API token.
    let c = env.http();
    let mut cl = Cluster {
        sim,
        env,
        db,
        uids,
        daemons,
        c,
        next_api: AtomicUsize::new(0),
    };

    // Both tokens get a holder.
    let start = Instant::now();
    loop {
        let h = holders(&cl.db).await;
        if h.len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "leases not taken: {h:?}\n{}",
            cl.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let first = cl.workload(0).await;
    let mut all = cl.track(&first).await;
    // Submitted now, tracked after the kill (an MDM may track late).
    let second = cl.workload(1).await;
    // From now on Apple answers a fifth of the requests with 503 and Retry-After: the new
    // holder must honour what the old one was told.
    cl.sim
        .put(
            "/_sim/faults",
            &json!({"processingDelay": "300ms", "dropNotificationRate": 0.3,
                    "error5xxRate": 0.2, "retryAfter": "4s"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Kill acme's holder mid-run.
    let before = holders(&cl.db).await;
    let victim = before["acme"].clone();
    let i = cl.daemons.iter().position(|d| d.0 == victim).unwrap();
    cl.daemons[i].2.take().unwrap().kill9();
    let killed = Instant::now();
    let taken_after = loop {
        let h = holders(&cl.db).await;
        if let Some(holder) = h.get("acme").filter(|h| **h != victim) {
            let d = killed.elapsed();
            println!(
                "acme taken over by {holder} {:.2} s after its holder {victim} was killed",
                d.as_secs_f64()
            );
            break d;
        }
        assert!(
            killed.elapsed() < TTL * 4,
            "acme not taken over: {h:?}\n{}",
            cl.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // Within lease_ttl of the kill, plus the scheduling slack of a loaded test machine.
    assert!(
        taken_after <= TTL + Duration::from_secs(1),
        "took {taken_after:?}"
    );

    all.extend(cl.track(&second).await);

    // Submitting through the daemon: only beta's holder calls Apple for it; another
    // instance says so and names the holder.
    let now_held = holders(&cl.db).await;
    let beta = now_held["beta"].clone();
    let api_of = |id: &str| {
        cl.daemons
            .iter()
            .find(|d| d.0 == id && d.2.is_some())
            .map(|d| d.1)
    };
    let holder_api = api_of(&beta).expect("beta's holder is alive");
    let other_api = cl
        .daemons
        .iter()
        .find(|d| d.0 != beta && d.2.is_some())
        .map(|d| d.1)
        .unwrap();
    let body = json!({"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}], "serialNumbers": ["VIA-1", "VIA-2"]});
    let path = "/v1/tokens/beta/requests/associate";
    let r =
        cl.c.post(format!("http://{other_api}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "not_holder", "{v}");
    assert!(v["error"].as_str().unwrap().contains(&beta), "{v}");
    let r =
        cl.c.post(format!("http://{holder_api}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    for id in v["eventIds"].as_array().unwrap() {
        all.push(id.as_str().unwrap().to_string());
    }

    // Every event settles with the simulator's true outcome.
    let start = Instant::now();
    let events = loop {
        let events = cl.events().await;
        let settled = events.iter().filter(|e| e["state"] == "settled").count();
        if events.len() == all.len() && settled == all.len() {
            break events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "{settled} of {} events settled ({} tracked)\n{}",
            all.len(),
            events.len(),
            cl.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (i, t) in cl.env.tokens.iter().enumerate() {
        let truth = cl.sim.get(&format!("/_sim/truth/{}", cl.uids[i])).await;
        for e in events.iter().filter(|e| e["token"] == t.name.as_str()) {
            let id = e["eventId"].as_str().unwrap();
            let te = truth["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["eventId"] == id)
                .unwrap_or_else(|| panic!("{id} unknown to the simulator"));
            let want = match te["eventStatus"].as_str().unwrap() {
                "COMPLETE" => "complete",
                "FAILED" => "failed",
                other => panic!("simulator event {id} still {other}"),
            };
            assert_eq!(e["outcome"], want, "event {id}: {e} vs truth {te}");
        }
    }

    // No notification answered 200 is lost.
    let stored: BTreeSet<String> = pg_rows(&cl.db, "SELECT notification_id FROM notifications")
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    let acked = proxy.acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "answered 200 but not stored: {lost:?}");
    let served = proxy.served.lock().unwrap().clone();
    assert!(
        served.len() >= 2,
        "notifications reached several instances: {served:?}"
    );

    // Never two holders at once: Apple's limits held across the cluster.
    let stats = cl.sim.get("/_sim/stats").await;
    for uid in &cl.uids {
        let t = &stats["tokens"][uid];
        assert_eq!(t["rateLimitViolations"], 0, "rate limit broken: {stats}");
        assert_eq!(
            t["requestsDuringRetryAfter"], 0,
            "Retry-After ignored: {stats}"
        );
    }

    // The survivors shut down cleanly and give their leases back.
    for d in cl.daemons.iter_mut() {
        if let Some(d) = d.2.take() {
            assert!(d.terminate().success());
        }
    }
    let left = holders(&cl.db).await;
    assert!(left.is_empty(), "leases given back on shutdown: {left:?}");
}
