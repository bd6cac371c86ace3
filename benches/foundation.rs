//! Foundation benchmark (issue 2): `cargo bench --bench foundation`.
//!
//! Reports
//! - events tracked per second through the local API with durable (fsync'd) commits, at 1
//!   and 64 concurrent clients;
//! - core inputs handled per second (track + notification + status result);
//! - the time to find due events among 1,000,000 tracked, in the core's timer index and in
//!   SQLite's `events_due` index.

use std::time::{Duration, Instant};

use base64::Engine;
use tokio_util::sync::CancellationToken;
use vpp_reconciler::core::{
    Core, EventRecord, EventType, NotificationInput, StatusResult, Timings, TrackRequest,
};
use vpp_reconciler::daemon::{self, Listeners};
use vpp_reconciler::store::sqlite::queries;
use vpp_reconciler::time::Timestamp;

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let token = base64::engine::general_purpose::STANDARD.encode(
        serde_json::json!({"token": "bench", "expDate": "2030-11-08T22:33:22+0000", "orgName": "Bench"})
            .to_string(),
    );
    std::fs::write(dir.join("acme.vpptoken"), token).unwrap();
    std::fs::write(dir.join("acme.notify"), "bench-notify-secret").unwrap();
    let toml = r#"
[daemon]
database = "state.db"
api_listen = "127.0.0.1:0"
log_level = "error"
[webhook]
listen = "127.0.0.1:0"
[reconcile]
notification_grace = "1h"
[[tokens]]
name = "acme"
token_file = "acme.vpptoken"
notification_auth_token_file = "acme.notify"
"#;
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

async fn api_throughput(clients: usize, total: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = vpp_reconciler::config::load(&write_config(dir.path()))
        .unwrap()
        .config;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = api.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(daemon::serve(
        config,
        Listeners { api, webhook: None },
        shutdown.clone(),
        move |_| {
            let _ = ready_tx.send(());
        },
    ));
    ready_rx.await.unwrap();
    // The daemon created its API token beside the database.
    let token = vpp_reconciler::api::token_file::read(&dir.path().join("api-token"))
        .unwrap()
        .expose()
        .to_string();
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/events");
    let start = Instant::now();
    let per = total / clients;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let url = url.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let body = serde_json::json!({"token": "acme", "eventId": format!("b-{c}-{i}"),
                    "type": "ASSOCIATE", "request": {"assets": [{"adamId": "1", "pricingParam": "STDQ"}],
                    "serialNumbers": ["S1", "S2"]}});
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = server.await;
    (per * clients) as f64 / secs
}

fn record(i: usize, now: Timestamp, timings: &Timings) -> EventRecord {
    EventRecord::new_tracked(
        now,
        TrackRequest {
            event_id: format!("e-{i:08}"),
            token: ["acme", "beta"][i % 2].to_string(),
            event_type: EventType::Associate,
            submitted_at: Some(now.saturating_sub(Duration::from_millis((i % 3_600_000) as u64))),
            num_requested: Some(2),
            has_request: true,
            supersedes: None,
        },
        timings,
    )
}

fn core_inputs_per_second(n: usize) -> f64 {
    let timings = Timings::default();
    let mut core = Core::new(timings.clone(), 1);
    let now = Timestamp(1_800_000_000_000);
    let start = Instant::now();
    let mut inputs = 0usize;
    for i in 0..n {
        core.track(now, record(i, now, &timings), None);
        inputs += 1;
        if i % 2 == 0 {
            core.notification(
                now,
                NotificationInput {
                    notification_id: format!("n-{i}"),
                    token: ["acme", "beta"][i % 2].to_string(),
                    event_id: format!("e-{i:08}"),
                    success: true,
                    entities: 2,
                    error: None,
                },
            );
            inputs += 1;
        }
        while core.poll_action().is_some() {}
    }
    // Fire the rest and answer their polls.
    let later = now.saturating_add(Duration::from_secs(7200));
    core.timeout(later);
    let mut polls = Vec::new();
    while let Some(a) = core.poll_action() {
        if let vpp_reconciler::core::Action::Poll { event_id, .. } = a {
            polls.push(event_id);
        }
    }
    for id in polls {
        core.status_result(later, &id, StatusResult::Pending);
        inputs += 1;
        while core.poll_action().is_some() {}
    }
    inputs as f64 / start.elapsed().as_secs_f64()
}

fn due_lookup(n: usize) -> (Duration, usize, Duration, usize) {
    let timings = Timings {
        max_in_flight_per_token: usize::MAX,
        ..Timings::default()
    };
    let mut core = Core::new(timings.clone(), 1);
    let now = Timestamp(1_800_000_000_000);
    for i in 0..n {
        // Spread the due times over ~11 days; about 100 are due at `probe`.
        let mut r = record(i, now, &timings);
        r.next_check_at = Some(now.saturating_add(Duration::from_secs((i as u64) % 1_000_000)));
        core.recover(now, r, vec![]);
    }
    let probe = now.saturating_add(Duration::from_secs(99));
    let start = Instant::now();
    let mut found = 0;
    let reps = 1000;
    for _ in 0..reps {
        found = core.due_count(probe);
    }
    let core_time = start.elapsed() / reps;

    // The same in SQLite, through the partial index on next_check_at.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("due.db");
    let conn = vpp_reconciler::store::open_write_connection(&path).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..n {
        let mut r = record(i, now, &timings);
        r.next_check_at = Some(now.saturating_add(Duration::from_secs((i as u64) % 1_000_000)));
        let mut change = vpp_reconciler::core::Change::of(&r);
        change.insert = true;
        assert_eq!(queries::apply_changes(&conn, &[change]), vec![None]);
    }
    conn.execute_batch("COMMIT").unwrap();
    let ro = vpp_reconciler::store::open_read_only(&path).unwrap();
    let start = Instant::now();
    let mut sql_found = 0;
    for _ in 0..reps {
        sql_found = queries::due_events(&ro, probe, 10_000).unwrap().len();
    }
    (core_time, found, start.elapsed() / reps, sql_found)
}

fn main() {
    // `cargo bench` passes --bench; accept and ignore harness flags.
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let total = if quick { 640 } else { 6400 };
    let one = rt.block_on(api_throughput(1, total / 4));
    let many = rt.block_on(api_throughput(64, total));
    println!("tracked via local API, durable commits: {one:>8.0} events/s with 1 client");
    println!("tracked via local API, durable commits: {many:>8.0} events/s with 64 clients");
    let n = if quick { 20_000 } else { 200_000 };
    println!(
        "core inputs handled:                    {:>8.0} inputs/s ({n} events)",
        core_inputs_per_second(n)
    );
    let n = if quick { 100_000 } else { 1_000_000 };
    let (core_t, found, sql_t, sql_found) = due_lookup(n);
    println!(
        "find due events among {n} tracked: core index {core_t:?} ({found} due), SQLite index {sql_t:?} ({sql_found} due)"
    );
}
