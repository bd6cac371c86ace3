//! A PostgreSQL lease holder cut off from the database in the middle of a transaction (issue
//! 16): instance A reaches the database through a TCP proxy that, once armed, forwards the
//! statement renewing A's lease (`UPDATE leases ...`, inside its transaction) and then
//! nothing more, in either direction, on any connection, while keeping every socket open
//! (a frozen link: no reset, no timeout at the TCP level, keepalives answered by the
//! proxy's kernel). The server is left with A's session idle inside a transaction that
//! holds A's lease row locked, so instance B's `acquire` of it waits for that lock. The
//! session's `idle_in_transaction_session_timeout` (a third of `lease_ttl`) must end it, and
//! B must hold A's token within the bound the store states
//! (`SessionLimits::takeover_bound`: `lease_ttl` + 2 s) of the cut.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, EnvOptions, Sim, TestEnv};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TTL: Duration = Duration::from_secs(3);

/// What the client sends when it renews its leases (`queries::leases::renew`).
const TRIGGER: &[u8] = b"UPDATE leases SET expires_at";

/// The proxy between instance A and PostgreSQL.
#[derive(Clone, Default)]
struct Freezer {
    /// Freeze after the next client chunk that holds [`TRIGGER`].
    armed: Arc<AtomicBool>,
    /// Nothing is forwarded any more.
    frozen: Arc<AtomicBool>,
    /// The proxy's local port towards PostgreSQL of the connection that carried the
    /// trigger: the server's `client_port` of that session.
    frozen_port: Arc<AtomicU16>,
    frozen_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Freezer {
    async fn start(upstream: SocketAddr) -> (SocketAddr, Freezer) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let f = Freezer::default();
        let fr = f.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fr = fr.clone();
                tokio::spawn(async move {
                    // A frozen link takes new connections and answers nothing.
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let port = server.local_addr().map(|a| a.port()).unwrap_or(0);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pipe(cr, sw, fr.clone(), Some(port)));
                    let down = tokio::spawn(pipe(sr, cw, fr, None));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        (addr, f)
    }

    fn frozen_at(&self) -> Option<Instant> {
        *self.frozen_at.lock().unwrap()
    }
}

/// Copies `from` to `to` until the freeze; then holds both open, reading and dropping
/// nothing more (the kernel's buffers fill, as over a dead link). `port`: this is the
/// client-to-server direction, watched for the trigger.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    f: Freezer,
    port: Option<u16>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk, for a trigger split across two.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        if f.frozen.load(Ordering::SeqCst) {
            break;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if f.frozen.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some(port) = port {
            let mut seen = std::mem::take(&mut tail);
            seen.extend_from_slice(&buf[..n]);
            if f.armed.load(Ordering::SeqCst)
                && seen.windows(TRIGGER.len()).any(|w| w == TRIGGER)
                && !f.frozen.swap(true, Ordering::SeqCst)
            {
                f.frozen_port.store(port, Ordering::SeqCst);
                *f.frozen_at.lock().unwrap() = Some(Instant::now());
                break;
            }
            tail = seen[seen.len().saturating_sub(TRIGGER.len())..].to_vec();
        }
    }
    // Frozen: keep the sockets open for the rest of the test.
    std::future::pending::<()>().await;
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

/// The holder of `token`'s unexpired lease.
async fn holder(url: &str, token: &str) -> Option<String> {
    pg_rows(
        url,
        &format!(
            "SELECT holder FROM leases WHERE token = '{token}' \
             AND expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint"
        ),
    )
    .await
    .into_iter()
    .next()
    .and_then(|r| r[0].clone())
}

/// The state of the server session whose client is at `port` (the proxy's side), if any.
async fn session_state(url: &str, port: u16) -> Option<String> {
    pg_rows(
        url,
        &format!("SELECT state FROM pg_stat_activity WHERE client_port = {port}"),
    )
    .await
    .into_iter()
    .next()
    .and_then(|r| r[0].clone())
}

/// The instance id a daemon logged at start.
fn instance_of(d: &common::Daemon) -> String {
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
            start.elapsed() < Duration::from_secs(10),
            "no instance id logged:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_mid_transaction_loses_its_token_within_the_bound() {
    let sim = Sim::start(16);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "acme", "pageSize": 50, "users": [], "assets": []}),
        )
        .await;
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme"],
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![loc["sToken"].as_str().unwrap().to_string()],
        backend: Backend::Postgres,
        ..Default::default()
    });
    let db = env.pg.as_ref().unwrap().url.clone();
    // postgres://vppr@127.0.0.1:PORT/NAME: A goes through the proxy.
    let server: SocketAddr = db
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(hostport, _)| hostport.parse().unwrap())
        .unwrap_or_else(|| panic!("no host:port in {db}"));
    let (proxy, freezer) = Freezer::start(server).await;
    let via_proxy = db.replace(&server.to_string(), &proxy.to_string());
    let base = std::fs::read_to_string(&env.config).unwrap();
    let config = |i: usize, url: &str, api: SocketAddr, webhook: SocketAddr| {
        let toml = base
            .replace(
                &format!("url = \"{db}\"\n"),
                &format!("url = \"{url}\"\nlease_ttl = \"{}s\"\n", TTL.as_secs()),
            )
            .replace(&env.api.to_string(), &api.to_string())
            .replace(&env.webhook.to_string(), &webhook.to_string());
        let path = env.path(&format!("instance-{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    };

    // A first, so that it takes the token; then B.
    let a_api = env.api;
    let a = env.spawn_daemon_with(&config(0, &via_proxy, a_api, env.webhook), a_api, "a.log");
    a.wait_healthy(Duration::from_secs(30));
    let a_id = instance_of(&a);
    let start = Instant::now();
    while holder(&db, "acme").await.as_deref() != Some(&a_id) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "A never took the token:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_api = common::free_addr();
    let b = env.spawn_daemon_with(&config(1, &db, b_api, common::free_addr()), b_api, "b.log");
    b.wait_healthy(Duration::from_secs(30));
    let b_id = instance_of(&b);
    assert_ne!(a_id, b_id);
    // Both are running; the token stays with A while it renews.
    tokio::time::sleep(TTL).await;
    assert_eq!(holder(&db, "acme").await.as_deref(), Some(a_id.as_str()));

    // Cut A off right after it sent its next renewal, inside that transaction.
    freezer.armed.store(true, Ordering::SeqCst);
    let armed = Instant::now();
    let cut = loop {
        if let Some(at) = freezer.frozen_at() {
            break at;
        }
        assert!(armed.elapsed() < TTL * 2, "A sent no renewal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let port = freezer.frozen_port.load(Ordering::SeqCst);

    // The server holds A's session idle inside its transaction (the lease row locked)...
    let mut idle_seen = false;
    loop {
        match session_state(&db, port).await.as_deref() {
            Some("idle in transaction") => idle_seen = true,
            // ...until it ends it.
            None if idle_seen => break,
            None => panic!("A's session ended before it was seen idle in its transaction"),
            Some(_) => {}
        }
        assert!(
            cut.elapsed() < TTL * 3,
            "A's session is still there {:?} after the cut",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended = cut.elapsed();

    // B takes the token within the stated bound.
    let bound = vpp_reconciler::store::postgres::SessionLimits::new(TTL).takeover_bound();
    let taken = loop {
        if holder(&db, "acme").await.as_deref() == Some(b_id.as_str()) {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < bound * 3,
            "B has not taken the token {:?} after the cut\n--- A\n{}\n--- B\n{}",
            cut.elapsed(),
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    println!(
        "A's session ended {:.2} s after the cut; B held the token {:.2} s after it (bound {:?})",
        ended.as_secs_f64(),
        taken.as_secs_f64(),
        bound
    );
    assert!(taken <= bound, "B took {taken:?}, more than {bound:?}");
    assert!(
        ended < TTL,
        "the session must end before the lease could: {ended:?}"
    );

    a.kill9();
    assert!(b.terminate().success());
}
