//! District-scale benchmark: `cargo bench --bench scale [-- --quick]`.
//!
//! Runs the release daemon binary as a child process (temp config from `tests/common`,
//! 100 tokens, Apple `base_url` on a loopback port where nothing listens, so no real calls;
//! `notification_grace = "24h"` so nothing is polled) and reports, at 1,000,000 tracked
//! events (100,000 with `--quick`):
//!
//! 1. fill: events tracked through `POST /v1/events` from 64 concurrent clients;
//! 2. restart: SIGTERM, spawn again, time from spawn to `/healthz` answering 200;
//! 3. VmRSS after the restart minus VmRSS of the same daemon on an empty store, per event;
//! 4. CPU (utime + stime from `/proc/PID/stat`) over 60 s idle (30 s with `--quick`);
//! 5. latency of `GET /v1/tokens`, `GET /metrics`, `GET /healthz` and the CLI `tokens --json`
//!    (median of 10);
//! 6. disk: `state.db` + `state.db-wal` after a clean stop, per event.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, EnvOptions, TestEnv, BIN};

const TOKENS: usize = 100;
const CLIENTS: usize = 64;

/// Spawns `run` and returns it with the time from spawn to `/healthz` answering 200.
fn spawn_timed(env: &TestEnv, tag: &str) -> (Daemon, Duration) {
    let log = env.path(&format!("daemon-{tag}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let start = Instant::now();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn daemon");
    let d = Daemon {
        child,
        log,
        api: env.api,
    };
    loop {
        if healthz_ok(env.api) {
            return (d, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "daemon not healthy within 300 s; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn healthz_ok(api: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&api, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// SIGTERM and wait for the exit (bounded: a large store may take a while to close).
fn stop(mut d: Daemon) -> std::process::ExitStatus {
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "daemon did not exit within 300 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

async fn fill(api: std::net::SocketAddr, n: usize) -> (usize, Duration) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = format!("http://{api}/v1/events");
    let per = n / CLIENTS;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let k = c * per + i;
                let body = serde_json::json!({"token": format!("t{:03}", k % TOKENS),
                    "eventId": format!("scale-{k:08}"), "type": "ASSOCIATE",
                    "request": {"assets": [{"adamId": format!("{}", 100_000 + k % 500), "pricingParam": "STDQ"}],
                        "serialNumbers": [format!("S{k:08}A"), format!("S{k:08}B")]}});
                let r = client.post(&url).json(&body).send().await.expect("track");
                assert_eq!(r.status().as_u16(), 201, "track scale-{k:08}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("fill task");
    }
    (per * CLIENTS, start.elapsed())
}

async fn get_ms(client: &reqwest::Client, url: &str) -> f64 {
    let s = Instant::now();
    let r = client.get(url).send().await.expect("GET");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let body = r.bytes().await.expect("body");
    std::hint::black_box(body.len());
    s.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

struct Row {
    figure: String,
    value: String,
    target: String,
    met: String,
}

fn row(figure: &str, value: String, target: &str, met: Option<bool>) -> Row {
    Row {
        figure: figure.into(),
        value,
        target: target.into(),
        met: match met {
            Some(true) => "yes".into(),
            Some(false) => "NO".into(),
            None => "-".into(),
        },
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 100_000 } else { 1_000_000 };
    let idle = Duration::from_secs(if quick { 30 } else { 60 });
    let wall = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let names: Vec<String> = (0..TOKENS).map(|t| format!("t{t:03}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let env = TestEnv::new(EnvOptions {
        tokens: &name_refs,
        apple_base_url: Some("http://127.0.0.1:9/mdm/v2/".into()),
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
    let (filled, fill_time) = rt.block_on(fill(env.api, n));
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

    // 4. Idle CPU.
    let clk = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t0 = cpu_ticks(pid);
    let s0 = Instant::now();
    std::thread::sleep(idle);
    let ticks = cpu_ticks(pid) - t0;
    let idle_secs = s0.elapsed().as_secs_f64();
    let cpu_ms_per_min = ticks as f64 / clk * 1000.0 * 60.0 / idle_secs;
    let rss_after_idle = proc_status_kib(pid, "VmRSS:");
    let hwm = proc_status_kib(pid, "VmHWM:");

    // 5. Latencies at this size.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
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

    let mut rows = vec![
        row(
            &format!("fill: POST /v1/events, {CLIENTS} clients, {TOKENS} tokens"),
            format!("{fill_rate:.0} events/s"),
            "-",
            None,
        ),
        row(
            "restart: spawn -> /healthz 200 (time to ready)",
            format!("{:.2} s", ready.as_secs_f64()),
            "< 5 s",
            Some(ready < Duration::from_secs(5)),
        ),
        row(
            "memory per tracked event (VmRSS after restart - empty)",
            format!("{per_event:.0} B"),
            "< 150 B",
            Some(per_event < 150.0),
        ),
        row(
            &format!("CPU per idle minute (measured over {} s)", idle.as_secs()),
            format!("{cpu_ms_per_min:.0} ms"),
            "-",
            None,
        ),
    ];
    for (name, ms) in &lat {
        rows.push(row(
            name,
            format!("{ms:.1} ms"),
            "< 50 ms",
            Some(*ms < 50.0),
        ));
    }
    rows.push(row(
        "disk per event (state.db + -wal after clean stop)",
        format!("{disk_per_event:.0} B"),
        "< 1 KB",
        Some(disk_per_event < 1024.0),
    ));

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
    let w = [
        rows.iter().map(|r| r.figure.len()).max().unwrap().max(6),
        rows.iter().map(|r| r.value.len()).max().unwrap().max(5),
        rows.iter().map(|r| r.target.len()).max().unwrap().max(6),
        3,
    ];
    println!(
        "| {:<a$} | {:>b$} | {:<c$} | {:<d$} |",
        "figure",
        "value",
        "target",
        "met",
        a = w[0],
        b = w[1],
        c = w[2],
        d = w[3]
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(w[0] + 2),
        "-".repeat(w[1] + 2),
        "-".repeat(w[2] + 2),
        "-".repeat(w[3] + 2)
    );
    for r in &rows {
        println!(
            "| {:<a$} | {:>b$} | {:<c$} | {:<d$} |",
            r.figure,
            r.value,
            r.target,
            r.met,
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3]
        );
    }
    println!("bench wall time: {:.0} s", wall.elapsed().as_secs_f64());
}
