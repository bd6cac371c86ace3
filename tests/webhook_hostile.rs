//! The webhook faces the internet: thousands of clients that open a connection and send half
//! a request header must not shut Apple out. Real notifications keep being acknowledged
//! while they hang, and the daemon closes them after its header timeout.

mod common;

use std::time::{Duration, Instant};

use common::{EnvOptions, TestEnv};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// More than systemd's default soft limit of 1,024 descriptors.
const SLOW_CLIENTS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_block_notifications_and_are_closed() {
    // This process holds the clients' ends of the connections.
    vpp_reconciler::serve::raise_fd_limit();
    let env = TestEnv::new(EnvOptions {
        log_level: "warn",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    daemon.wait_healthy(Duration::from_secs(20));
    let addr = env.webhook;

    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for _ in 0..SLOW_CLIENTS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /apple/notifications/acme HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await
            .unwrap();
        slow.push(s);
    }
    let opened = Instant::now();

    // Real notifications, one at a time as Apple sends them, while the slow ones hang.
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/apple/notifications/acme");
    let secret = env.tokens[0].notify_secret.clone();
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let body = json!({"notificationId": format!("n-{i}"), "notificationType": "TEST_NOTIFICATION",
            "uId": "1", "notification": {}});
        let started = Instant::now();
        let r = c
            .post(&url)
            .header("authorization", format!("Bearer {secret}"))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("a notification is answered while slow clients hang");
        assert_eq!(r.status(), 200, "notification {i}");
        worst = worst.max(started.elapsed());
    }
    // Generous for a loaded CI machine; the point is "not blocked", not a latency target.
    assert!(
        worst < Duration::from_secs(2),
        "slowest acknowledgement {worst:?}"
    );

    // The daemon closes the slow connections once their header time is up (10 s).
    let mut closed = 0;
    let deadline = opened + Duration::from_secs(30);
    for s in slow.iter_mut().take(20) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 512];
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            // EOF or a 408 answer, then EOF: either way the server let go.
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => break,
        }
    }
    assert_eq!(closed, 20, "slow connections were not closed by the server");
    assert!(
        opened.elapsed() >= Duration::from_secs(5),
        "closed too early: the header timeout is 10 s"
    );
    drop(slow);
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// Sends a request head (no body) on a fresh connection and reads the answer's status line,
/// bounded: an answer while the body is still unsent shows the body was never waited for.
async fn head_only(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
    length: u64,
) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered without the body being sent")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// Unauthenticated uploads cost no body memory: the daemon answers 401 from the path and the
/// headers alone, while the announced (large) body has not been sent. An unknown token name
/// gets the same 401 (never 404, which would list the names), and an authenticated
/// announcement over `max_body_bytes` is refused unread (413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_checked_before_any_body_byte_is_read() {
    let env = TestEnv::new(EnvOptions {
        log_level: "warn",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let addr = env.webhook;
    let secret = env.tokens[0].notify_secret.clone();
    let good = format!("Bearer {secret}");

    // Many stalled uploads at once, each announcing just under the cap: none is read.
    let mut stalled = Vec::new();
    for i in 0..50 {
        let auth = match i % 3 {
            0 => None,
            1 => Some("Bearer wrong"),
            _ => Some(good.as_str()),
        };
        // i % 3 == 2 carries the right bearer but the unknown name "nope".
        let path = if i % 3 == 2 {
            "/apple/notifications/nope"
        } else {
            "/apple/notifications/acme"
        };
        stalled.push(head_only(addr, path, auth, 1_000_000));
    }
    for status in futures::future::join_all(stalled).await {
        assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    }
    // The right bearer and a body over the 1 MiB cap: refused before reading it.
    let status = head_only(
        addr,
        "/apple/notifications/acme",
        Some(&good),
        2 * 1024 * 1024,
    )
    .await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");

    // And a real notification is still taken.
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/apple/notifications/acme"))
        .header("authorization", &good)
        .json(
            &json!({"notificationId": "n-ok", "notificationType": "TEST_NOTIFICATION",
            "uId": "1", "notification": {}}),
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a notification");
    assert_eq!(r.status(), 200);
    assert_eq!(daemon.terminate().code(), Some(0));
}
