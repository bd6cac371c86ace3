//! One command for the throughput, efficiency and scale figures (issue 8):
//! `cargo bench --bench all [-- --quick]`.
//!
//! Runs the `reconcile`, `sync` and `scale` benchmarks one after the other (each prints its
//! own details as it goes; see their module docs for what is measured and how), then prints
//! one table. Every ratio is against a baseline or bound measured in the same run. Nothing
//! here passes or fails on speed: the `met` column only reports.

// Each benchmark is also a crate of its own (`--bench scale`, ...) and so declares its own
// helper modules (tests/common, proc.rs, table.rs); included here, those files are compiled
// once per benchmark module. That is the price of one source per benchmark.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "reconcile.rs"]
mod reconcile;
#[allow(dead_code)]
#[path = "scale.rs"]
mod scale;
#[allow(dead_code)]
#[path = "sync.rs"]
mod sync;
#[path = "support/table.rs"]
mod table;

use std::time::Instant;

use table::row;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let wall = Instant::now();
    println!("######## reconcile ########");
    let r = reconcile::run(quick);
    println!("######## sync ########");
    let s = sync::run(quick);
    println!("######## scale ########");
    let sc = scale::run(quick);

    let w = &r.webhook;
    let d = &s.daemon;
    let ratio = |x: f64| Some(format!("{x:.3}"));
    let mut rows = vec![
        row(
            &format!(
                "webhook durable ingest, burst of {} from {} connections",
                w.burst_total, w.burst_conns
            ),
            format!("{:.0}/s", w.burst_rate),
            "≥ 15,000/s",
            None,
            Some(w.burst_rate >= 15_000.0),
        ),
        row(
            "  same, vs one commit per notification (baseline, same run)",
            format!("{:.0}/s baseline", r.baseline_rate),
            "≥ 10x",
            Some(format!("{:.1}x", w.burst_rate / r.baseline_rate)),
            Some(w.burst_rate >= 10.0 * r.baseline_rate),
        ),
        row(
            "  burst acknowledgement p99",
            format!("{:.1} ms", w.burst_p99),
            "-",
            None,
            None,
        ),
        row(
            &format!("webhook at {}/s: acknowledgement p50 / p99", w.paced_rate),
            format!("{:.1} / {:.1} ms", w.paced_p50, w.paced_p99),
            "-",
            None,
            None,
        ),
        row(
            &format!(
                "Apple calls / lower bound ({} events, 2 tokens, 30 % lost)",
                r.events
            ),
            format!("{} / {}", r.calls, r.bound),
            "≤ 1.05",
            ratio(r.calls as f64 / r.bound as f64),
            Some(r.calls as f64 <= 1.05 * r.bound as f64),
        ),
        row(
            "time to settle / rate-limit bound",
            format!("{:.1} / {:.1} s", r.settle_secs, r.time_bound_secs),
            "≤ 1.10",
            ratio(r.settle_secs / r.time_bound_secs),
            Some(r.settle_secs <= 1.10 * r.time_bound_secs),
        ),
        row(
            "outcome learned -> settled, p50 / p95",
            format!("{:.1} / {:.1} s", r.lag_p50, r.lag_p95),
            "p95 ≤ 15 s",
            None,
            Some(r.lag_p95 <= 15.0),
        ),
        row(
            "naive poller calls / daemon calls (time ratio)",
            format!("{} / {}", r.naive_calls, r.calls),
            "-",
            Some(format!(
                "{:.2} ({:.2})",
                r.naive_calls as f64 / r.calls as f64,
                r.naive_secs / r.settle_secs
            )),
            None,
        ),
        row(
            "rate-limit violations, requests inside Retry-After",
            format!("{}, {}", r.violations, r.during_retry_after),
            "0, 0",
            None,
            Some(r.violations == 0 && r.during_retry_after == 0),
        ),
        row(
            &format!(
                "sync of {} assignments (in-process client): time / pages-per-rate",
                s.assignments
            ),
            format!("{:.2} s / {:.2} s", s.read_secs, s.pages as f64 / 15.0),
            "-",
            ratio(s.read_secs / (s.pages as f64 / 15.0)),
            None,
        ),
        row(
            "  final step; longest wait of another writer",
            format!("{:.2} s; {:.0} ms", s.final_secs, s.worst_writer_wait_ms),
            "-",
            None,
            None,
        ),
        row(
            &format!(
                "daemon full sync of {} assignments: time / pages-per-rate",
                d.assignments
            ),
            format!("{:.1} s / {:.1} s", d.secs, d.pages as f64 / 15.0),
            "-",
            ratio(d.secs / (d.pages as f64 / 15.0)),
            None,
        ),
        row(
            "  daemon peak resident memory (VmHWM)",
            format!("{:.0} MiB", d.peak_rss_mib),
            "< 100 MB",
            None,
            Some(d.peak_rss_mib * 1.048_576 < 100.0),
        ),
        row(
            "  webhook at 200/s meanwhile: acknowledgement p99 (max)",
            format!("{:.1} ms ({:.0} ms)", d.ack_p99, d.ack_max),
            "< 50 ms",
            None,
            Some(d.ack_p99 < 50.0),
        ),
        row(
            "  /healthz every 100 ms meanwhile: not 200",
            format!("{} of {}", d.healthz_bad, d.healthz_total),
            "0",
            None,
            Some(d.healthz_bad == 0),
        ),
    ];
    // scale.rs brings its own copy of table.rs, hence its own `Row` type.
    rows.extend(scale::rows(&sc).into_iter().map(|r| table::Row {
        figure: format!("{} events: {}", sc.events, r.figure),
        value: r.value,
        target: r.target,
        ratio: r.ratio,
        met: r.met,
    }));
    println!("######## all ########");
    println!(
        "cargo bench --bench all{}; {} cores; bench wall time {:.0} s",
        if quick { " -- --quick" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        wall.elapsed().as_secs_f64()
    );
    table::print(&rows);
}
