//! SQLite beside PostgreSQL in one run (issue 10): `cargo bench --bench backends [-- --quick]`.
//!
//! For each backend, SQLite then PostgreSQL, on the same machine in the same run: the release
//! daemon binary as a child process with a fresh store (temp config from `tests/common`,
//! 4 tokens, Apple unreachable, `notification_grace = "24h"` so nothing is polled), then
//!
//! 1. durable webhook ingest: a burst of 20,000 ASSET_MANAGEMENT notifications (4,000 with
//!    `--quick`) from 64 concurrent connections: notifications/s and acknowledgement p99;
//! 2. the webhook at 1,000 notifications/s offered for 10 s (3 s with `--quick`): p50/p99
//!    acknowledgement, from each request's due time;
//! 3. tracking: `POST /v1/events` from 64 concurrent clients, 20,000 events (4,000 with
//!    `--quick`): events/s.
//!
//! Then, PostgreSQL only, takeover (`support/takeover.rs`): two daemons on one database with
//! `lease_ttl = "3s"` (and the default `"15s"` unless `--quick`), 20,000 unsettled events
//! (2,000 with `--quick`) over the 4 tokens; the holder of `t000` is killed (SIGKILL), then,
//! with a third instance joined, the next holder leaves cleanly (SIGTERM): seconds from the
//! signal until another instance holds the lease, and until it has loaded the token's events.
//!
//! `--tracking-only`: step 3 alone, on both backends (no webhook load, no takeover), to
//! iterate on the tracking path.
//!
//! The notifications are for eventIds the daemon does not track: they are stored all the same
//! (they wait for their event), which is the durable write measured. PostgreSQL is a
//! throwaway cluster from `scripts/pg-test-server` (Debian's `postgresql`, fsync on), one
//! database per run. Figures are reported, not asserted.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/takeover.rs"]
mod takeover;
#[path = "support/track.rs"]
mod track;
#[path = "support/webhook.rs"]
mod webhook_load;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use common::{Backend, EnvOptions, TestEnv};

const TOKENS: [&str; 4] = ["t000", "t001", "t002", "t003"];
const CONNS: usize = 64;

/// The throwaway PostgreSQL cluster, stopped (and its directory removed) on drop.
struct PgServer {
    dir: String,
    script: String,
}

impl PgServer {
    fn start() -> (PgServer, String) {
        let script = format!("{}/scripts/pg-test-server", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "the PostgreSQL test server did not start ({script}; it needs Debian's postgresql \
             package): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (dir, url) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("unexpected pg-test-server output {line:?}"));
        (
            PgServer {
                dir: dir.into(),
                script,
            },
            url.into(),
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .args(["stop", &self.dir])
            .status();
    }
}

struct Figures {
    burst_total: usize,
    burst_rate: f64,
    burst_p99: f64,
    paced_rate: usize,
    paced_secs: usize,
    paced_p50: f64,
    paced_p99: f64,
    tracked: usize,
    track_rate: f64,
}

fn measure(
    rt: &tokio::runtime::Runtime,
    backend: Backend,
    quick: bool,
    tracking_only: bool,
) -> Figures {
    let n = if quick { 4_000 } else { 20_000 };
    let secs = if quick { 3 } else { 10 };
    let env = TestEnv::new(EnvOptions {
        tokens: &TOKENS,
        reconcile: "notification_grace = \"24h\"\ngive_up_after = \"48h\"",
        log_level: "error",
        backend,
        ..EnvOptions::default()
    });
    let d = env.start_daemon();
    // Apple is unreachable, so the daemon never learns the location's uId and does not check it.
    let target = webhook_load::Target {
        url: format!("http://{}/apple/notifications/{}", env.webhook, TOKENS[0]),
        auth: format!("Bearer {}", env.tokens[0].notify_secret),
        body: Arc::new(|tag, i| webhook_load::notification("bench-location", "100000", tag, i)),
    };
    println!("== {backend:?} ==");
    let (b, p, (tracked, took)) = rt.block_on(async {
        let http = webhook_load::client();
        let (b, p) = if tracking_only {
            Default::default()
        } else {
            (
                webhook_load::burst(&http, &target, CONNS, n).await,
                webhook_load::paced(&http, &target, 1000, secs).await,
            )
        };
        let t = track::fill(env.api, env.token(), n, CONNS, TOKENS.len()).await;
        (b, p, t)
    });
    let track_rate = tracked as f64 / took.as_secs_f64();
    println!("tracking: {tracked} events from {CONNS} clients, {track_rate:.0} events/s");
    let status = d.terminate();
    println!("daemon exit: {status}");
    Figures {
        burst_total: b.total,
        burst_rate: b.rate,
        burst_p99: b.p99,
        paced_rate: p.rate,
        paced_secs: secs,
        paced_p50: p.p50,
        paced_p99: p.p99,
        tracked,
        track_rate,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let wall = Instant::now();
    // Before any thread exists: tests/common creates each run's database on this server.
    let (_server, admin) = PgServer::start();
    std::env::set_var("VPPR_TEST_PG_URL", &admin);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `--takeover-only`: the takeover figures alone.
    // `--tracking-only`: the tracking figures alone.
    let tracking_only = std::env::args().any(|a| a == "--tracking-only");
    let pair = (!std::env::args().any(|a| a == "--takeover-only")).then(|| {
        (
            measure(&rt, Backend::Sqlite, quick, tracking_only),
            measure(&rt, Backend::Postgres, quick, tracking_only),
        )
    });
    let takeovers = if tracking_only {
        Vec::new()
    } else {
        measure_takeover(&rt, quick)
    };
    println!("bench wall time: {:.0} s", wall.elapsed().as_secs_f64());
    println!("| figure | SQLite | PostgreSQL | ratio (PG/SQLite) |");
    println!("|---|---:|---:|---:|");
    if let Some((s, p)) = &pair {
        print_backends(s, p, tracking_only);
    }
    print_takeovers(&takeovers, quick);
}

/// The rows of the figures measured on both backends.
fn print_backends(s: &Figures, p: &Figures, tracking_only: bool) {
    let paced = format!("webhook at {}/s for {} s", s.paced_rate, s.paced_secs);
    let rows = [
        (
            format!(
                "webhook durable ingest, burst of {} from {CONNS} connections",
                s.burst_total
            ),
            s.burst_rate,
            p.burst_rate,
            "/s",
        ),
        (
            "  same, acknowledgement p99".into(),
            s.burst_p99,
            p.burst_p99,
            " ms",
        ),
        (
            format!("{paced}, acknowledgement p50"),
            s.paced_p50,
            p.paced_p50,
            " ms",
        ),
        (
            format!("{paced}, acknowledgement p99"),
            s.paced_p99,
            p.paced_p99,
            " ms",
        ),
        (
            format!(
                "tracking: POST /v1/events, {} events from {CONNS} clients",
                s.tracked.min(p.tracked)
            ),
            s.track_rate,
            p.track_rate,
            " events/s",
        ),
    ];
    let skip = if tracking_only { rows.len() - 1 } else { 0 };
    for (figure, sq, pg, unit) in rows.into_iter().skip(skip) {
        // Rates to the unit, latencies to 0.1 ms.
        let prec = usize::from(unit == " ms");
        println!(
            "| {figure} | {sq:.prec$}{unit} | {pg:.prec$}{unit} | {:.2} |",
            pg / sq
        );
    }
}

fn print_takeovers(takeovers: &[takeover::Takeover], quick: bool) {
    let events = takeover_events(quick);
    let na = "| n/a |";
    for t in takeovers {
        let ttl = t.ttl_s;
        for (what, h) in [("SIGKILL", &t.killed), ("SIGTERM", &t.terminated)] {
            println!(
                "| takeover, lease_ttl {ttl} s: {what} of t000's holder → another holds its \
                 lease {na} {:.2} s {na}",
                h.lease_s
            );
            if let Some(d) = h.drain_s {
                println!("|   of which the leaver's drain (SIGTERM → leases given back) {na} {d:.3} s {na}");
            }
            println!(
                "|   → t000 loaded by the new holder ({} of {events} events; the load itself \
                 {:.0} ms) {na} {:.2} s {na}",
                h.events,
                h.load_s * 1000.0,
                h.loaded_s
            );
        }
    }
}

fn takeover_events(quick: bool) -> usize {
    if quick {
        2_000
    } else {
        20_000
    }
}

/// Takeover on PostgreSQL for each lease TTL, on one database: the events are tracked once.
fn measure_takeover(rt: &tokio::runtime::Runtime, quick: bool) -> Vec<takeover::Takeover> {
    let env = TestEnv::new(EnvOptions {
        tokens: &TOKENS,
        reconcile: "notification_grace = \"24h\"\ngive_up_after = \"48h\"",
        log_level: "error",
        backend: Backend::Postgres,
        ..EnvOptions::default()
    });
    println!("== takeover (PostgreSQL, two instances) ==");
    let ttls: &[u64] = if quick { &[3] } else { &[3, 15] };
    let mut out = Vec::new();
    for (i, ttl) in ttls.iter().enumerate() {
        let track = if i == 0 { takeover_events(quick) } else { 0 };
        out.push(rt.block_on(takeover::measure(&env, &TOKENS, *ttl, track, CONNS)));
    }
    out
}
