//! The daemon binary as a child process, seen from outside (`/proc`, `/healthz`): shared by
//! the scale and sync benchmarks. Expects `super::common` (tests/common).
#![allow(dead_code)] // each benchmark uses a part

use std::path::Path;
use std::time::{Duration, Instant};

use super::common::{Daemon, TestEnv};

/// Spawns `run` and returns it with the time from spawn to `/healthz` answering 200.
pub fn spawn_timed(env: &TestEnv, tag: &str) -> (Daemon, Duration) {
    let start = Instant::now();
    let d = env.spawn_daemon(&format!("daemon-{tag}.log"));
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

/// `GET /healthz` answered 200 within 5 s.
pub fn healthz_ok(api: std::net::SocketAddr) -> bool {
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
pub fn stop(mut d: Daemon) -> std::process::ExitStatus {
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

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// utime + stime in clock ticks of `/proc/{path}/stat` (a process or `PID/task/TID`).
pub fn cpu_ticks_at(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{path}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn cpu_ticks(pid: u32) -> u64 {
    cpu_ticks_at(&pid.to_string()).expect("read /proc stat")
}

/// Per thread of `pid`: (name, CPU time in ns, times scheduled onto a CPU) from
/// `/proc/PID/task/TID/schedstat`, finer than the clock ticks of `stat`.
pub fn threads(pid: u32) -> std::collections::BTreeMap<u32, (String, u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let base = format!("/proc/{pid}/task/{tid}");
        let Ok(sched) = std::fs::read_to_string(format!("{base}/schedstat")) else {
            continue;
        };
        let f: Vec<u64> = sched
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let name = std::fs::read_to_string(format!("{base}/comm")).unwrap_or_default();
        if let [run_ns, _, slices] = f[..] {
            out.insert(tid, (name.trim().to_string(), run_ns, slices));
        }
    }
    out
}

pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// The `p` quantile (0..=1) of sorted milliseconds.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
