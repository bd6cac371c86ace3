//! Files and failing writes with the real binary: the database, its `-wal` and `-shm`, and
//! backups are 0600 under umask 022 (and looser ones left by an earlier version are
//! tightened); the daemon runs without core dumps; and when the disk takes no more writes,
//! `/healthz` says so, nothing is acknowledged that is not stored, and everything recovers
//! by itself once writes work again.
//!
//! The "full disk" is the daemon's own RLIMIT_FSIZE lowered to 0 from this test (prlimit(2)
//! on a process of the same user needs no privilege, so this runs the same as root or not,
//! here and on CI): every write(2) to a regular file then fails with EFBIG, as every write
//! to a full disk fails with ENOSPC, and raising the limit again is freeing the space.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{stderr, Daemon, EnvOptions, Sim, TestEnv, BIN};
use serde_json::{json, Value};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The binary with `args` under umask 022 (a login shell's; systemd's UMask=0077 would hide
/// a mode bug).
fn umask_022(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    // SAFETY: umask is async-signal-safe and touches no memory of this process.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    cmd
}

/// `run` under umask 022, logging to `log_name`; waits until healthy.
fn start_under_umask(env: &TestEnv, log_name: &str) -> Daemon {
    let log = env.path(log_name);
    let file = std::fs::File::create(&log).unwrap();
    let child = umask_022(&["--config", env.config.to_str().unwrap(), "run"])
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn daemon");
    let d = Daemon {
        child,
        log,
        api: env.api,
    };
    d.wait_healthy(Duration::from_secs(30));
    d
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
}

/// `POST /v1/events` for one event: the status.
async fn track(env: &TestEnv, id: &str) -> u16 {
    let body = json!({"token": "acme", "eventId": id, "type": "ASSOCIATE",
        "request": {"assets": [{"adamId": "1", "pricingParam": "STDQ"}],
                    "serialNumbers": ["SN1"]}});
    let mut req = client().post(env.api_url("/v1/events")).json(&body);
    if let Some(t) = &env.api_token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("POST /v1/events").status().as_u16()
}

async fn healthz(env: &TestEnv) -> (u16, Value) {
    let r = client()
        .get(env.api_url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_and_backups_are_private_under_umask_022_without_core_dumps() {
    let env = TestEnv::new(EnvOptions {
        // Nothing becomes due during the test.
        reconcile: "notification_grace = \"1h\"\ngive_up_after = \"24h\"",
        api_token: true,
        ..Default::default()
    });
    let daemon = start_under_umask(&env, "daemon-1.log");
    for i in 0..5 {
        assert_eq!(track(&env, &format!("ev-{i}")).await, 201);
    }
    let (db, wal, shm) = (
        env.path("state.db"),
        env.path("state.db-wal"),
        env.path("state.db-shm"),
    );
    assert_eq!(
        (mode(&db), mode(&wal), mode(&shm)),
        (0o600, 0o600, 0o600),
        "database, WAL and shared memory file"
    );

    // No core dumps: the running daemon's core file size limit is 0, soft and hard.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core file size line");
    let values: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(values, ["0", "0"], "{core}");
    // Non-dumpable (its /proc files then belong to root) breaks nothing it serves.
    let metrics = client()
        .get(env.api_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("vppr_events"));

    // Backups, new and replaced, while the daemon runs.
    let dest = env.path("backup.db");
    let out = umask_022(&["--config", env.config.to_str().unwrap(), "backup"])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(mode(&dest), 0o600, "backup");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = umask_022(&[
        "--config",
        env.config.to_str().unwrap(),
        "backup",
        "--force",
    ])
    .arg(&dest)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(mode(&dest), 0o600, "replaced backup");
    assert!(daemon.terminate().success());

    // A database left world-readable (an earlier version, a copy): tightened at start, with
    // a warning naming it.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon = start_under_umask(&env, "daemon-2.log");
    assert_eq!(mode(&db), 0o600);
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("its mode is now 0600")
            && l.contains(db.to_str().unwrap())
            && l.contains("0644")),
        "{log}"
    );
    assert!(daemon.terminate().success());
}

/// Sets the soft RLIMIT_FSIZE of process `pid` (the hard limit stays unlimited).
fn set_file_size_limit(pid: u32, soft: libc::rlim_t) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `lim` and writes nothing (no old-limit pointer).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn notification(id: &str, uid: &str) -> Value {
    json!({"notificationId": id, "notificationType": "ASSET_MANAGEMENT", "uId": uid,
        "notification": {"eventId": format!("ev-{id}"), "result": "SUCCESS", "type": "ASSOCIATE",
            "assignments": [{"adamId": "1", "pricingParam": "STDQ", "serialNumber": "S1"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_on_healthz_acknowledges_nothing_unstored_and_recovers() {
    let sim = Sim::start(7);
    let loc = sim
        .post(
            "/_sim/locations",
            &json!({"name": "Acme", "assets": [{"adamId": "1", "pricingParam": "STDQ", "productType": "App", "total": 10, "deviceAssignable": true, "revocable": true}], "users": []}),
        )
        .await;
    let uid = loc["uId"].as_str().unwrap().to_string();
    let env = TestEnv::new(EnvOptions {
        apple_base_url: Some(sim.base.clone()),
        stokens: vec![loc["sToken"].as_str().unwrap().to_string()],
        reconcile: "notification_grace = \"1h\"\ngive_up_after = \"24h\"",
        api_token: true,
        ..Default::default()
    });
    // The log goes through a pipe: a log file would hit the same file size limit.
    let mut child = Command::new(BIN)
        .args(["--config", env.config.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let mut pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let pid = child.id();
    let daemon = Daemon {
        child,
        log: env.path("unused.log"),
        api: env.api,
    };
    let log_text = || log.lock().unwrap().clone();
    daemon.wait_healthy(Duration::from_secs(30));
    // The daemon knows the location (Client Config) before notifications are sent.
    let start = Instant::now();
    loop {
        let out = env.cli(&["tokens", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["tokens"][0]["uId"] == uid.as_str() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "uId never learned: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let hook = format!("http://{}/apple/notifications/acme", env.webhook);
    let auth = format!("Bearer {}", env.tokens[0].notify_secret);
    let c = client();
    let notify = |id: String| {
        let req = c
            .post(&hook)
            .header("authorization", &auth)
            .json(&notification(&id, &uid));
        async move {
            req.send()
                .await
                .expect("POST notification")
                .status()
                .as_u16()
        }
    };
    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    assert_eq!(notify("before".into()).await, 200);
    acked.push("before".into());
    assert_eq!(healthz(&env).await, (200, json!({"status": "ok"})));

    // The disk is full.
    set_file_size_limit(pid, 0);
    for i in 0..5 {
        let id = format!("full-{i}");
        match notify(id.clone()).await {
            200 => acked.push(id),
            503 => refused.push(id),
            other => panic!("notification {id}: {other}\n{}", log_text()),
        }
    }
    assert_eq!(refused.len(), 5, "no write can succeed: {acked:?}");
    let tracked = track(&env, "ev-during").await;
    assert_eq!(tracked, 503, "tracking while the disk is full");
    let (status, health) = healthz(&env).await;
    assert_eq!(
        status, 200,
        "the loop is alive: degraded, not down: {health}"
    );
    assert_eq!(health["status"], "degraded", "{health}");
    let store = &health["store"];
    assert_eq!(store["writes"], "failing", "{health}");
    assert!(
        store["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{health}"
    );
    assert!(store["since"].as_str().is_some(), "{health}");
    assert!(store["failedCommits"].as_u64() >= Some(5), "{health}");
    assert!(health.get("tokens").is_none(), "{health}");

    // Space freed: the next write commits and /healthz clears by itself.
    set_file_size_limit(pid, libc::RLIM_INFINITY);
    assert_eq!(notify("after".into()).await, 200, "{}", log_text());
    acked.push("after".into());
    let start = Instant::now();
    loop {
        let (status, health) = healthz(&env).await;
        if (status, &health) == (200, &json!({"status": "ok"})) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {status} {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(track(&env, "ev-after").await, 201);
    assert!(
        log_text().contains("store writes succeed again"),
        "{}",
        log_text()
    );

    // The daemon lived through it (no SIGXFSZ) and stops cleanly.
    assert!(daemon.terminate().success(), "{}", log_text());
    let db = rusqlite::Connection::open(env.path("state.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT notification_id FROM notifications")
        .unwrap();
    let stored: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} lost: {stored:?}");
    }
    for id in &refused {
        assert!(!stored.contains(id), "{id} stored though answered 503");
    }
    let events: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM events WHERE event_id = 'ev-after'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(events, 1);
}
