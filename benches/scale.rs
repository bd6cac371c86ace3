//! District-scale benchmark: `cargo bench --bench scale [-- --quick]`.
//!
//! Runs the release daemon binary as a child process (temp config from `tests/common`,
//! 100 tokens on 100 empty locations of the in-process simulator, so start-up syncs succeed
//! at once and nothing retries while idle; `notification_grace = "24h"` so nothing is
//! polled) and reports, at 1,000,000 tracked events (100,000 with `--quick`):
//!
//! 1. fill: events tracked through `POST /v1/events` from 64 concurrent clients;
//! 2. restart: SIGTERM, spawn again, time from spawn to `/healthz` answering 200;
//! 3. VmRSS after the restart minus VmRSS of the same daemon on an empty store, per event;
//! 4. CPU (utime + stime from `/proc/PID/stat`) over 60 s idle (30 s with `--quick`), per
//!    thread too (`schedstat`: CPU ns and times scheduled, i.e. wake-ups), and the sync runs
//!    started meanwhile;
//! 5. latency of `GET /v1/tokens`, `GET /metrics`, `GET /healthz` and the CLI `tokens --json`
//!    (median of 10);
//! 6. disk: `state.db` + `state.db-wal` after a clean stop, per event;
//! 7. the core's part of one idle executor turn (what the loop calls on the core when it
//!    wakes with nothing to do: `poll_timeout`, `timeout`, `poll_action`) with as many events
//!    recovered on 100 tokens, none due, in this process (the daemon's loop is not reachable
//!    from outside).
//!
//! `run` returns the figures for `cargo bench --bench all`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/proc.rs"]
mod proc_util;
#[path = "support/sim.rs"]
mod sim_util;
#[path = "support/table.rs"]
mod table;
#[path = "support/track.rs"]
mod track;

use std::time::{Duration, Instant};

use common::{EnvOptions, TestEnv};
use proc_util::{cpu_ticks, file_len, median, proc_status_kib, spawn_timed, stop, threads};
use table::row;
use vpp_reconciler::core::{Core, EventRecord, EventType, Timings, TrackRequest};
use vpp_reconciler::time::Timestamp;

const TOKENS: usize = 100;
const CLIENTS: usize = 64;

async fn get_ms(client: &reqwest::Client, url: &str) -> f64 {
    let s = Instant::now();
    let r = client.get(url).send().await.expect("GET");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let body = r.bytes().await.expect("body");
    std::hint::black_box(body.len());
    s.elapsed().as_secs_f64() * 1000.0
}

/// What `cargo bench --bench all` tabulates.
pub struct ScaleFigures {
    pub events: usize,
    pub fill_rate: f64,
    pub ready: Duration,
    pub bytes_per_event: f64,
    pub idle_secs: u64,
    pub cpu_ms_per_idle_min: f64,
    /// (what, median ms)
    pub latencies: Vec<(String, f64)>,
    pub disk_per_event: f64,
    pub idle_turn_us: f64,
}

/// The core's share of one idle executor turn with `n` events on `TOKENS` tokens, none due for
/// a day: mean over many turns, in microseconds.
fn idle_turn_us(n: usize) -> f64 {
    let timings = Timings::default();
    let mut core = Core::new(timings.clone(), 1);
    let now = Timestamp::now();
    for i in 0..n {
        let mut r = EventRecord::new_tracked(
            now,
            TrackRequest {
                event_id: track::event_id(i),
                token: format!("t{:03}", i % TOKENS),
                event_type: EventType::Associate,
                submitted_at: Some(now),
                num_requested: Some(2),
                has_request: true,
                supersedes: None,
            },
            &timings,
        );
        r.next_check_at = Some(now.saturating_add(Duration::from_secs(86_400)));
        core.recover(now, r, vec![]);
    }
    while core.poll_action().is_some() {}
    let reps = 10_000u32;
    let start = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(core.poll_timeout());
        core.timeout(now);
        while let Some(a) = core.poll_action() {
            std::hint::black_box(a);
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(reps)
}

fn sync_runs(db: &std::path::Path) -> i64 {
    let c = vpp_reconciler::store::open_read_only(db).expect("open the store");
    c.query_row("SELECT COUNT(*) FROM syncs", [], |r| r.get(0))
        .expect("count syncs")
}

#[allow(dead_code)] // the entry point of `--bench scale`, not of `--bench all`
fn main() {
    let f = run(std::env::args().any(|a| a == "--quick"));
    table::print(&rows(&f));
}

/// The table rows of `f`.
pub fn rows(f: &ScaleFigures) -> Vec<table::Row> {
    let mut rows = vec![
        row(
            &format!("fill: POST /v1/events, {CLIENTS} clients, {TOKENS} tokens"),
            format!("{:.0} events/s", f.fill_rate),
            "-",
            None,
            None,
        ),
        row(
            "restart: spawn -> /healthz 200 (time to ready)",
            format!("{:.2} s", f.ready.as_secs_f64()),
            "< 5 s",
            None,
            Some(f.ready < Duration::from_secs(5)),
        ),
        row(
            "memory per tracked event (VmRSS after restart - empty)",
            format!("{:.0} B", f.bytes_per_event),
            "< 150 B",
            None,
            Some(f.bytes_per_event < 150.0),
        ),
        row(
            &format!("CPU per idle minute (measured over {} s)", f.idle_secs),
            format!("{:.0} ms", f.cpu_ms_per_idle_min),
            "-",
            None,
            None,
        ),
        row(
            "idle executor turn, core part (in-process, same event count)",
            format!("{:.1} µs", f.idle_turn_us),
            "< 1 ms",
            None,
            Some(f.idle_turn_us < 1000.0),
        ),
    ];
    for (name, ms) in &f.latencies {
        rows.push(row(
            name,
            format!("{ms:.1} ms"),
            "< 50 ms",
            None,
            Some(*ms < 50.0),
        ));
    }
    rows.push(row(
        "disk per event (state.db + -wal after clean stop)",
        format!("{:.0} B", f.disk_per_event),
        "< 1 KB",
        None,
        Some(f.disk_per_event < 1024.0),
    ));
    rows
}

/// The whole benchmark (module docs); prints context as it goes and returns the figures.
pub fn run(quick: bool) -> ScaleFigures {
    let n = if quick { 100_000 } else { 1_000_000 };
    let idle = Duration::from_secs(if quick { 30 } else { 60 });
    let wall = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let names: Vec<String> = (0..TOKENS).map(|t| format!("t{t:03}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // One empty location per token: Apple answers, so the idle figures are not those of an
    // Apple outage (failed start-up syncs retried every minute, 300 runs a minute here).
    let (sim, _sim_thread) = sim_util::start_sim(7);
    let stokens: Vec<String> = rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut out = Vec::new();
        for name in &names {
            let r = http
                .post(format!("http://{sim}/_sim/locations"))
                .json(
                    &serde_json::json!({"name": name, "assets": [], "users": [], "pageSize": 1000}),
                )
                .send()
                .await
                .expect("create a location");
            assert!(r.status().is_success(), "create a location: {}", r.status());
            let v: serde_json::Value = r.json().await.expect("location");
            out.push(v["sToken"].as_str().expect("sToken").to_string());
        }
        out
    });
    let env = TestEnv::new(EnvOptions {
        tokens: &name_refs,
        apple_base_url: Some(format!("http://{sim}/mdm/v2/")),
        stokens,
        reconcile: "notification_grace = \"24h\"\ngive_up_after = \"48h\"",
        log_level: "error",
        ..EnvOptions::default()
    });
    let db = env.path("state.db");
    let wal = env.path("state.db-wal");

    // Empty store: the RSS baseline.
    let (d, empty_ready) = spawn_timed(&env, "empty");
    std::thread::sleep(Duration::from_secs(3));
    let rss_empty = proc_status_kib(d.child.id(), "VmRSS:");
    eprintln!(
        "empty store: ready in {:.3} s, VmRSS {rss_empty} KiB",
        empty_ready.as_secs_f64()
    );

    // 1. Fill.
    let (filled, fill_time) = rt.block_on(track::fill(env.api, env.token(), n, CLIENTS, TOKENS));
    let fill_rate = filled as f64 / fill_time.as_secs_f64();
    let rss_filled = proc_status_kib(d.child.id(), "VmRSS:");
    eprintln!(
        "filled {filled} events in {:.1} s ({fill_rate:.0}/s), VmRSS {rss_filled} KiB",
        fill_time.as_secs_f64()
    );
    let status = stop(d);
    assert!(status.success(), "first daemon exit: {status}");
    let stored: i64 = {
        let c = vpp_reconciler::store::open_read_only(&db).expect("open the store");
        c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .expect("count events")
    };
    assert_eq!(stored as usize, filled, "events in the store");
    let disk_first = file_len(&db) + file_len(&wal);

    // 2. Restart.
    let (d, ready) = spawn_timed(&env, "restart");
    let pid = d.child.id();
    eprintln!("restart: ready in {:.3} s", ready.as_secs_f64());

    // 3. Memory after the restart (after a short settle).
    std::thread::sleep(Duration::from_secs(3));
    let rss_restart = proc_status_kib(pid, "VmRSS:");
    let per_event = (rss_restart as f64 - rss_empty as f64) * 1024.0 / filled as f64;

    // 4. Idle CPU, whole process and per thread; sync runs started meanwhile (Apple is
    // unreachable here, so failed start-up syncs retrying would show).
    let clk = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t0 = cpu_ticks(pid);
    let threads0 = threads(pid);
    let syncs0 = sync_runs(&db);
    let s0 = Instant::now();
    std::thread::sleep(idle);
    let ticks = cpu_ticks(pid) - t0;
    let idle_secs = s0.elapsed().as_secs_f64();
    let threads1 = threads(pid);
    let syncs1 = sync_runs(&db);
    let rss_after_idle = proc_status_kib(pid, "VmRSS:");
    let hwm = proc_status_kib(pid, "VmHWM:");
    let mut by_thread: Vec<(String, f64, f64)> = threads1
        .iter()
        .map(|(tid, (name, t, sw))| {
            let (t0, sw0) = threads0.get(tid).map_or((0, 0), |(_, t, sw)| (*t, *sw));
            let per_min = 60.0 / idle_secs;
            (
                format!("{name}/{tid}"),
                (t - t0) as f64 / 1e6 * per_min,
                (sw - sw0) as f64 * per_min,
            )
        })
        .filter(|(_, ms, sw)| *ms > 0.0 || *sw > 0.0)
        .collect();
    // From schedstat (ns) rather than the clock ticks (10 ms each) of `ticks`.
    let cpu_ms_per_min: f64 = by_thread.iter().map(|t| t.1).sum();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));

    // 5. Latencies at this size.
    let client = env.http();
    let mut lat = Vec::new();
    for path in ["/v1/tokens", "/metrics", "/healthz"] {
        let url = env.api_url(path);
        rt.block_on(get_ms(&client, &url)); // warm the connection
        let v: Vec<f64> = (0..10)
            .map(|_| rt.block_on(get_ms(&client, &url)))
            .collect();
        lat.push((format!("GET {path} latency (median of 10)"), median(v)));
    }
    let cli: Vec<f64> = (0..10)
        .map(|_| {
            let s = Instant::now();
            let o = env.cli(&["tokens", "--json"]);
            let ms = s.elapsed().as_secs_f64() * 1000.0;
            assert!(o.status.success(), "tokens --json: {}", common::stderr(&o));
            ms
        })
        .collect();
    lat.push((
        "CLI `tokens --json` latency (median of 10)".into(),
        median(cli),
    ));

    // 6. Disk after a clean stop.
    let status = stop(d);
    assert!(status.success(), "second daemon exit: {status}");
    let db_len = file_len(&db);
    let wal_len = file_len(&wal);
    let disk_per_event = (db_len + wal_len) as f64 / filled as f64;

    // 7. After the daemon is gone, so the two do not hold their memory at once.
    let idle_turn = idle_turn_us(filled);

    println!("scale: {filled} events on {TOKENS} tokens (release daemon binary, child process)");
    println!(
        "context: VmRSS empty {rss_empty} KiB, after fill {rss_filled} KiB, after restart {rss_restart} KiB, after idle {rss_after_idle} KiB, VmHWM (restarted) {hwm} KiB"
    );
    println!(
        "context: fill {:.1} s; empty-store ready {:.2} s; disk after first stop {} B, after second stop db {db_len} B + wal {wal_len} B",
        fill_time.as_secs_f64(),
        empty_ready.as_secs_f64(),
        disk_first
    );
    println!(
        "idle {:.0} s: {ticks} CPU ticks ({clk:.0}/s), sync runs started meanwhile: {}; per thread (CPU ms per minute, times scheduled per minute):",
        idle_secs,
        syncs1 - syncs0
    );
    for (name, ms, sw) in by_thread.iter().take(12) {
        println!("  {name:<28} {ms:>9.1} ms {sw:>8.0} runs");
    }
    println!("idle executor turn, core part: {idle_turn:.1} µs");
    println!("bench wall time: {:.0} s", wall.elapsed().as_secs_f64());
    ScaleFigures {
        events: filled,
        fill_rate,
        ready,
        bytes_per_event: per_event,
        idle_secs: idle.as_secs(),
        cpu_ms_per_idle_min: cpu_ms_per_min,
        latencies: lat,
        disk_per_event,
        idle_turn_us: idle_turn,
    }
}
