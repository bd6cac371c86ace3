//! Tracking load shared by the scale and backends benchmarks: `POST /v1/events` from many
//! concurrent clients.

use std::time::{Duration, Instant};

/// The `k`th event's id in Apple's form, a UUID string (docs/apple-api.md), which the core
/// stores in 16 bytes (ids of other shapes cost about 85 bytes more each).
pub fn event_id(k: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", k as u32, k as u64)
}

/// Tracks `n` ASSOCIATE events spread over the
/// tokens `t000`, `t001`, ... (`tokens` of them), with the API's bearer `token`; returns how
/// many and how long it took.
pub async fn fill(
    api: std::net::SocketAddr,
    token: String,
    n: usize,
    clients: usize,
    tokens: usize,
) -> (usize, Duration) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = format!("http://{api}/v1/events");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let url = url.clone();
        let token = token.clone();
        // Client `c`'s share: `n / clients`, and one more for the first `n % clients`.
        let (per, rem) = (n / clients, n % clients);
        let (first, count) = (c * per + c.min(rem), per + usize::from(c < rem));
        tasks.push(tokio::spawn(async move {
            for k in first..first + count {
                let body = serde_json::json!({"token": format!("t{:03}", k % tokens),
                    "eventId": event_id(k), "type": "ASSOCIATE",
                    "request": {"assets": [{"adamId": format!("{}", 100_000 + k % 500), "pricingParam": "STDQ"}],
                        "serialNumbers": [format!("S{k:08}A"), format!("S{k:08}B")]}});
                // 503 "try again": the event was not committed (e.g. the instance lost the
                // token's lease meanwhile); a client tracks it again.
                let mut tries = 0;
                loop {
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .expect("track");
                    let status = r.status().as_u16();
                    if status == 503 && tries < 10 {
                        tries += 1;
                        eprintln!("track {k}: 503 ({}); again", r.text().await.unwrap_or_default());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    assert_eq!(status, 201, "track scale-{k:08}");
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("fill task");
    }
    (n, start.elapsed())
}
