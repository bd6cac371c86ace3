//! PostgreSQL as the store (design §9), against the test PostgreSQL server: the daemon
//! runs on it, `check-config` tests the connection and the schema, and the read-only commands
//! read it. (The reconcile scenarios run on both backends in `tests/reconcile.rs`.)

mod common;

use std::time::Duration;

use common::{Backend, EnvOptions, TestEnv};
use serde_json::{json, Value};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_read_only_commands_on_postgres() {
    let env = TestEnv::new(EnvOptions {
        backend: Backend::Postgres,
        reconcile: "notification_grace = \"1h\"",
        ..Default::default()
    });
    // Before the daemon ever ran: an empty database.
    let o = env.cli(&["check-config"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("(PostgreSQL)"), "{out}");
    assert!(
        out.contains("store: connected; the database is empty"),
        "{out}"
    );
    // The test server has no TLS; prefer (the default) goes without.
    assert!(
        out.contains(
            "store: no TLS; sslmode=prefer: encrypted if the server offers it, its certificate \
             not checked; channel_binding=prefer"
        ),
        "{out}"
    );
    // The sessions' limits, and the takeover bound they give.
    assert!(
        out.contains(
            "store: statement_timeout 2m, lock_timeout 30s, idle_in_transaction_session_timeout \
             5s, tcp_user_timeout 5s"
        ) && out.contains("a holder cut off loses its tokens within 17s (lease_ttl + 2s)"),
        "{out}"
    );

    let daemon = env.start_daemon();
    let c = env.http();
    let r = c
        .post(env.api_url("/v1/events"))
        .json(&json!({"token": "acme", "eventId": "pg-1", "type": "ASSOCIATE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let out = stdout(&env.cli(&["check-config"]));
    assert!(out.contains("store: connected; schema version"), "{out}");
    assert!(out.contains("(current)"), "{out}");
    // No file on disk: the state is in PostgreSQL.
    assert!(!env.path("state.db").exists());

    let o = env.cli(&["events", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.to_string().contains("pg-1"), "{v}");
    let o = env.cli(&["tokens", "--json"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("acme"));

    let o = env.cli(&["backup", env.path("copy.db").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("pg_dump"));

    // A second daemon on the same database starts beside the first (several instances
    // share the tokens by lease; tests/failover.rs) and stops cleanly.
    let second = env.path("second.toml");
    let api2 = common::free_addr();
    let toml = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.api.to_string(), &api2.to_string())
        .replace(&env.webhook.to_string(), &common::free_addr().to_string());
    std::fs::write(&second, toml).unwrap();
    let other = env.spawn_daemon_with(&second, api2, "second.log");
    other.wait_healthy(Duration::from_secs(30));
    let v: Value = c
        .get(format!("http://{api2}/v1/events/pg-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["eventId"], "pg-1",
        "the second instance reads the shared store: {v}"
    );
    assert!(other.terminate().success());

    // A restart after kill -9 works the event again (its lease is taken back, at once when
    // the restarted daemon gets its instance id back).
    daemon.kill9();
    let _daemon = env.start_daemon();
    let v: Value = c
        .get(env.api_url("/v1/events/pg-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "pending", "{v}");
}

/// A password in `[store] url`, in the userinfo or the query, is a configuration error that
/// does not show it, before anything connects.
#[test]
fn check_config_refuses_a_password_in_the_url_without_showing_it() {
    let env = TestEnv::new(EnvOptions::default());
    let base = std::fs::read_to_string(&env.config).unwrap();
    for url in [
        "postgres://vppr@127.0.0.1:9/vppr?sslmode=require&password=hunter2",
        "postgres://vppr:hunter2@127.0.0.1:9/vppr",
    ] {
        std::fs::write(&env.config, format!("{base}\n[store]\nurl = \"{url}\"\n")).unwrap();
        let o = env.cli(&["check-config"]);
        let (out, err) = (stdout(&o), String::from_utf8_lossy(&o.stderr).into_owned());
        assert_eq!(o.status.code(), Some(2), "{out}{err}");
        assert!(
            err.contains("store.url") && err.contains("must not contain a password"),
            "{err}"
        );
        assert!(
            !out.contains("hunter2") && !err.contains("hunter2"),
            "{out}{err}"
        );
    }
}

#[test]
fn check_config_names_an_unreachable_server() {
    let env = TestEnv::new(EnvOptions::default());
    // Port 9 (discard) on loopback: nothing answers PostgreSQL there.
    let toml = std::fs::read_to_string(&env.config).unwrap()
        + "\n[store]\nurl = \"postgres://vppr@127.0.0.1:9/vppr\"\n";
    std::fs::write(&env.config, toml).unwrap();
    let o = env.cli(&["check-config"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("store.url"), "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

/// The running daemon takes both tokens' leases on PostgreSQL; with another instance's
/// heartbeat beside it, `/v1/instances`, `/v1/tokens`, `instances` and `tokens` show who
/// holds what, on the database's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_holders_on_postgres() {
    let env = TestEnv::new(EnvOptions {
        backend: Backend::Postgres,
        tokens: &["acme", "beta"],
        reconcile: "notification_grace = \"1h\"",
        ..Default::default()
    });
    let _daemon = env.start_daemon();
    let url = &env.pg.as_ref().expect("a PostgreSQL database").url;
    let store = vpp_reconciler::store::Store::connect_postgres(url, None)
        .await
        .unwrap();
    // Another instance, alive but holding nothing (the daemon holds both tokens).
    store.heartbeat("pg-b").await.unwrap();
    store.close().await.unwrap();

    let c = env.http();
    let get = |path: &str| {
        let req = c.get(env.api_url(path));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let holder = |v: &Value, name: &str| {
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["holder"].clone())
    };
    // The daemon's keeper takes both leases at its first steps.
    let start = std::time::Instant::now();
    let (me, v) = loop {
        let v = get("/v1/instances").await;
        let me = v["me"]
            .as_str()
            .expect("the daemon names itself")
            .to_string();
        let t = get("/v1/tokens").await;
        if holder(&t, "acme") == Some(json!(me)) && holder(&t, "beta") == Some(json!(me)) {
            break (me, v);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{v} {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&me.as_str()) && ids.contains(&"pg-b"), "{v}");
    let mine = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == me.as_str())
        .unwrap();
    assert_eq!(mine["tokens"], json!(["acme", "beta"]), "{v}");
    assert_eq!(mine["live"], true, "{v}");
    assert!(mine["lastSeen"].is_string(), "{v}");

    let o = env.cli(&["instances", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["me"], Value::Null);
    assert!(v.to_string().contains("pg-b"), "{v}");
    let o = env.cli(&["tokens"]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(text.lines().next().unwrap().contains("HOLDER"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("acme ") && l.contains(&format!(" {me} "))),
        "{text}"
    );
}

/// `[store] url` with `sslmode=verify-full` and `sslrootcert`, and a password from
/// `password_file`, against a server that takes TCP connections over TLS only
/// (`scripts/pg-test-server --ssl`, a certificate made here for `localhost`): `check-config`
/// says the connection is encrypted and what was checked, the daemon runs on it, and the
/// password shows nowhere. `channel_binding=require`: SCRAM must bind to the TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_the_daemon_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    common::pg_tls::write_certs(certs.path());
    let (dir, url) = vpp_reconciler::store::postgres::start_test_server(&[
        "--ssl".as_ref(),
        certs.path().as_os_str(),
    ]);
    let port = url.rsplit_once(':').unwrap().1.split_once('/').unwrap().0;
    // A role with a password and a database of its own, over the Unix socket (trusted).
    let socket = dir.join("data").display().to_string().replace('/', "%2F");
    let password = format!("pg-secret-{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(
        &format!("postgres://vppr@{socket}:{port}/postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for sql in [
        format!("CREATE ROLE vppr_scram LOGIN PASSWORD '{password}'"),
        "CREATE DATABASE vppr_scram OWNER vppr_scram".to_string(),
    ] {
        client.batch_execute(&sql).await.unwrap();
    }

    let env = TestEnv::new(EnvOptions::default());
    std::fs::write(env.path("pg-password"), &password).unwrap();
    std::fs::set_permissions(
        env.path("pg-password"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let ca = certs.path().join("ca.crt");
    let base = std::fs::read_to_string(&env.config).unwrap();
    let store = |query: &str| {
        format!(
            "{base}\n[store]\nurl = \"postgres://vppr_scram@localhost:{port}/vppr_scram?{query}\"\n\
             password_file = \"pg-password\"\n"
        )
    };
    let verify_full = format!(
        "sslmode=verify-full&sslrootcert={}&channel_binding=require",
        ca.display()
    );
    std::fs::write(&env.config, store(&verify_full)).unwrap();
    let o = env.cli(&["check-config"]);
    let (out, err) = (stdout(&o), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("store: connected; the database is empty"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "store: TLS (TLSv1.3); sslmode=verify-full: encrypted, the server's certificate \
             checked against the roots in {} and for the host name; channel_binding=require: \
             SCRAM bound to the TLS session, nothing else accepted",
            ca.display()
        )),
        "{out}"
    );
    assert!(!out.contains(&password) && !err.contains(&password));

    let daemon = env.start_daemon();
    let r = env
        .http()
        .post(env.api_url("/v1/events"))
        .json(&json!({"token": "acme", "eventId": "tls-1", "type": "ASSOCIATE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let log = daemon.log_text();
    assert!(log.contains("connected to PostgreSQL"), "{log}");
    assert!(log.contains("sslmode=verify-full"), "{log}");
    assert!(log.contains("idle_in_transaction_session_timeout"), "{log}");
    assert!(!log.contains(&password), "{log}");
    drop(daemon);

    // Without the test CA (the system's roots), refused and said why.
    std::fs::write(&env.config, store("sslmode=verify-full")).unwrap();
    let o = env.cli(&["check-config"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("store.url"), "{err}");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer")
            || err.contains("no CA certificates in the system's store"),
        "{err}"
    );
    // Without TLS the server's pg_hba.conf has no entry.
    std::fs::write(&env.config, store("sslmode=disable")).unwrap();
    let o = env.cli(&["check-config"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
    assert!(err.contains("no encryption"), "{err}");
    assert!(!err.contains(&password), "{err}");
    // An sslmode libpq does not have is a configuration error naming it.
    std::fs::write(&env.config, store("sslmode=verify-fulll")).unwrap();
    let o = env.cli(&["check-config"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("store.url") && err.contains("sslmode \"verify-fulll\" is not one of"),
        "{err}"
    );
}

/// Writes the database refuses (read-only, as a standby after a failover): `/healthz` is
/// degraded with the server's reason while the daemon lives on, tracking answers 503 (the
/// turn is handed back, not lost), and once the server takes writes again `/healthz` is ok
/// by itself and every acknowledged event is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_writes_show_in_healthz_on_postgres() {
    let env = TestEnv::new(EnvOptions {
        backend: Backend::Postgres,
        reconcile: "notification_grace = \"1h\"",
        ..Default::default()
    });
    let daemon = env.start_daemon();
    let c = env.http();
    let track = |id: String| {
        let req = c
            .post(env.api_url("/v1/events"))
            .json(&json!({"token": "acme", "eventId": id, "type": "ASSOCIATE"}));
        async move { req.send().await.expect("POST /v1/events").status().as_u16() }
    };
    let healthz = || async {
        let r = c.get(env.api_url("/healthz")).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let mut acked = vec!["before".to_string()];
    assert_eq!(track("before".into()).await, 201);
    assert_eq!(healthz().await, (200, json!({"status": "ok"})));

    let pg = env.pg.as_ref().unwrap();
    pg.set_read_only(true);
    // Until the server's refusal shows (the first writes may meet ended connections).
    let start = std::time::Instant::now();
    let mut i = 0;
    let health = loop {
        i += 1;
        match track(format!("during-{i}")).await {
            503 => {}
            201 => acked.push(format!("during-{i}")),
            other => panic!("tracking while read-only: {other}\n{}", daemon.log_text()),
        }
        let (status, health) = healthz().await;
        let error = health["store"]["error"].as_str().unwrap_or_default();
        if status == 200 && error.contains("read-only transaction") {
            break health;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{status} {health}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    let store = &health["store"];
    assert_eq!(store["writes"], "failing", "{health}");
    assert!(store["since"].as_str().is_some(), "{health}");
    assert!(store["lastFailureAt"].as_str().is_some(), "{health}");
    assert!(store["failedCommits"].as_u64() >= Some(1), "{health}");
    assert_eq!(
        track("refused".into()).await,
        503,
        "tracking is refused, not left waiting"
    );

    pg.set_read_only(false);
    let start = std::time::Instant::now();
    loop {
        let id = format!("after-{i}");
        i += 1;
        if track(id.clone()).await == 201 {
            acked.push(id);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healthz().await, (200, json!({"status": "ok"})));
    assert!(
        daemon.log_text().contains("store writes succeed again"),
        "{}",
        daemon.log_text()
    );
    for id in &acked {
        let r = c
            .get(env.api_url(&format!("/v1/events/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "acknowledged {id} is kept");
    }
    let log = daemon.log.clone();
    assert!(daemon.terminate().success(), "{}", common::log_text(&log));
}
