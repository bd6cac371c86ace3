//! Operations with the real binary: backups while the daemon runs, the WAL checkpointed on a
//! clean stop, downgrades refused, read-only commands without secret files, lease holders and
//! instances shown by `tokens` and `instances`, and the check-config warnings about secret file permissions and a non-loopback webhook.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{stderr, stdout, EnvOptions, TestEnv, BIN};
use serde_json::{json, Value};
use vpp_reconciler::store::migrations::LATEST;

fn quiet() -> EnvOptions<'static> {
    EnvOptions {
        // Nothing becomes due during a test: events stay as tracked.
        reconcile: "notification_grace = \"1h\"\ngive_up_after = \"24h\"",
        ..Default::default()
    }
}

/// Tracks `n` events through the daemon's API; returns their ids.
async fn track(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i:04}");
        let body = json!({"token": "acme", "eventId": id, "type": "ASSOCIATE",
            "request": {"assets": [{"adamId": "361304891", "pricingParam": "STDQ"}],
                        "serialNumbers": [format!("SN{i}")]}});
        let req = c.post(env.api_url("/v1/events")).json(&body);
        let r = req
            .bearer_auth(env.token())
            .send()
            .await
            .expect("POST /v1/events");
        assert_eq!(r.status().as_u16(), 201, "track {id}");
        ids.push(id);
    }
    ids
}

/// `events --json` with this environment's config: the event ids it lists.
fn listed_ids(env: &TestEnv) -> Vec<String> {
    let out = env.cli(&["events", "--json", "--limit", "1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    let mut ids: Vec<String> = v["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| e["eventId"].as_str().expect("eventId").to_string())
        .collect();
    ids.sort();
    ids
}

fn assert_no_secret(env: &TestEnv, text: &str) {
    for s in env.secrets() {
        assert!(!text.contains(&s), "a secret was printed: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_the_daemon_runs_restores_every_event() {
    let env = TestEnv::new(quiet());
    let daemon = env.start_daemon();
    let mut ids = track(&env, "bk", 40).await;
    ids.sort();

    let dest = env.path("backup.db");
    let out = env.cli(&["backup", dest.to_str().unwrap()]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(stdout(&out).lines().count(), 1, "one-line summary: {text}");
    assert!(
        stdout(&out).contains(&format!("40 events, schema version {LATEST}")),
        "{text}"
    );
    assert!(stdout(&out).contains("integrity ok"), "{text}");
    assert_no_secret(&env, &text);

    // An existing file is not overwritten without --force.
    let again = env.cli(&["backup", dest.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains(&format!(
            "{} already exists; pass --force to overwrite it",
            dest.display()
        )),
        "{}",
        stderr(&again)
    );
    // More events, then --force replaces the copy.
    let mut more = track(&env, "bk2", 5).await;
    let forced = env.cli(&["backup", "--force", dest.to_str().unwrap()]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    assert!(stdout(&forced).contains("45 events"), "{}", stdout(&forced));
    ids.append(&mut more);
    ids.sort();
    assert!(daemon.terminate().success());

    // The copy is one self-contained file: a fresh daemon runs on it and lists every event.
    let fresh = TestEnv::new(quiet());
    std::fs::copy(&dest, fresh.path("state.db")).unwrap();
    let d2 = fresh.start_daemon();
    assert_eq!(listed_ids(&fresh), ids);
    assert!(d2.terminate().success());
    assert_eq!(listed_ids(&fresh), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_leaves_everything_in_state_db_alone() {
    let env = TestEnv::new(quiet());
    let daemon = env.start_daemon();
    let mut ids = track(&env, "wal", 30).await;
    ids.sort();
    assert!(daemon.terminate().success());
    let wal = env.path("state.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the WAL still holds data after a clean stop"
    );

    // state.db copied alone, without -wal and -shm.
    let fresh = TestEnv::new(quiet());
    std::fs::copy(env.path("state.db"), fresh.path("state.db")).unwrap();
    assert!(!fresh.path("state.db-wal").exists());
    assert_eq!(listed_ids(&fresh), ids);
    let out = fresh.cli(&["tokens", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["tokens"][0]["name"], "acme", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_version_is_refused_naming_both_versions() {
    let env = TestEnv::new(quiet());
    let daemon = env.start_daemon();
    track(&env, "new", 1).await;
    assert!(daemon.terminate().success());
    let newer = LATEST + 7;
    rusqlite::Connection::open(env.path("state.db"))
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let want = format!(
        "database schema version {newer} is newer than this binary supports (schema version {LATEST})"
    );
    let copy = env.path("copy.db").display().to_string();
    for args in [&["events"][..], &["backup", &copy], &["run"]] {
        let out = env.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&want), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("downgrades are not supported"),
            "{}",
            stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_work_without_the_secret_files() {
    let env = TestEnv::new(EnvOptions {
        api_token: true,
        ..quiet()
    });
    let daemon = env.start_daemon();
    let ids = track(&env, "ro", 3).await;
    assert!(daemon.terminate().success());
    // The operator has the configuration and the database, not the service's credentials.
    let away = tempfile::tempdir().unwrap();
    for f in ["acme.vpptoken", "acme.notify", "api-token"] {
        std::fs::rename(env.path(f), away.path().join(f)).unwrap();
    }
    let ro_backup = env.path("ro-backup.db").display().to_string();
    for args in [
        &["events"][..],
        &["events", "--json"],
        &["event", &ids[0]],
        &["event", &ids[0], "--json"],
        &["tokens"],
        &["tokens", "--json"],
        &["instances"],
        &["instances", "--json"],
        &["syncs"],
        &["syncs", "--json"],
        &["backup", &ro_backup],
    ] {
        let out = env.cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    assert!(stdout(&env.cli(&["events"])).contains(&ids[1]));

    // The commands that need the secrets still fail clearly on them.
    for args in [&["check-config"][..], &["run"]] {
        let out = env.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("daemon.api_token_file \"api-token\"")
                && stderr(&out).contains("cannot be read: No such file or directory"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    std::fs::rename(away.path().join("api-token"), env.path("api-token")).unwrap();
    let out = env.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tokens[0].token_file \"acme.vpptoken\""),
        "{}",
        stderr(&out)
    );
}

/// The cell of a left-aligned `column` in `line`, by the header's offsets (ASCII tables).
fn cell<'a>(header: &str, line: &'a str, column: &str) -> &'a str {
    let at = header
        .find(column)
        .unwrap_or_else(|| panic!("{column} in {header:?}"));
    line[at..].split("  ").next().unwrap().trim()
}

/// `tokens` and `instances` over a stopped daemon's database: without lease rows the tokens
/// table is as before and no instance is listed; with lease rows (written by the store's own
/// lease operations, as keepers do) a HOLDER column, the JSON fields, and the instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_instances_show_lease_holders_from_the_database() {
    let env = TestEnv::new(EnvOptions {
        tokens: &["acme", "beta"],
        ..quiet()
    });
    let daemon = env.start_daemon();
    assert!(daemon.terminate().success());
    let run = |args: &[&str]| {
        let out = env.cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
        stdout(&out)
    };
    let json =
        |args: &[&str]| -> Value { serde_json::from_str(&run(args)).expect("one JSON document") };

    // No lease rows: the table without HOLDER, no instance.
    let text = run(&["tokens"]);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("TOKEN") && !header.contains("HOLDER"),
        "{text}"
    );
    assert!(header.ends_with("SYNCING  LAST SYNCS"), "{text}");
    let v = json(&["tokens", "--json"]);
    assert_eq!(v["tokens"][0]["holder"], Value::Null, "{v}");
    assert_eq!(v["tokens"][0]["leaseExpiresAt"], Value::Null, "{v}");
    assert_eq!(
        run(&["instances"]),
        "(no instances: no daemon keeps leases on this database)\n"
    );
    assert_eq!(
        json(&["instances", "--json"]),
        json!({"instances": [], "me": null})
    );

    let store = vpp_reconciler::store::Store::open(&env.path("state.db")).unwrap();
    store.heartbeat("i-1").await.unwrap();
    store.heartbeat("i-2").await.unwrap();
    assert!(store
        .acquire("i-1", "acme", Duration::from_secs(600))
        .await
        .unwrap());
    // Expired at once: nobody holds beta.
    assert!(store.acquire("i-2", "beta", Duration::ZERO).await.unwrap());
    store.close().await.unwrap();

    let text = run(&["tokens"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("SYNCING  HOLDER  LAST SYNCS"), "{text}");
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert_eq!(cell(lines[0], row("acme"), "HOLDER"), "i-1", "{text}");
    assert_eq!(cell(lines[0], row("beta"), "HOLDER"), "-", "{text}");
    let v = json(&["tokens", "--json"]);
    let acme = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme")
        .unwrap();
    assert_eq!(acme["holder"], "i-1", "{v}");
    assert!(
        acme["leaseExpiresAt"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );

    let text = run(&["instances"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("INSTANCE  LAST SEEN"), "{text}");
    assert_eq!(cell(lines[0], lines[1], "INSTANCE"), "i-1");
    assert_eq!(cell(lines[0], lines[1], "LIVE"), "yes", "{text}");
    assert_eq!(cell(lines[0], lines[1], "TOKENS"), "acme");
    assert_eq!(cell(lines[0], lines[2], "TOKENS"), "-", "{text}");
    assert!(
        cell(lines[0], lines[1], "LAST SEEN").ends_with('Z'),
        "{text}"
    );
    let v = json(&["instances", "--json"]);
    assert_eq!(v["me"], Value::Null);
    assert_eq!(v["instances"][0]["id"], "i-1");
    assert_eq!(v["instances"][0]["tokens"], json!(["acme"]));
    assert_eq!(v["instances"][0]["live"], true);
    assert_eq!(v["instances"][1]["tokens"], json!([]));

    // Leases that cannot be read (as in a database from before the lease tables): `tokens`
    // still lists the tokens, without holders, and says why; `instances` fails.
    let db = rusqlite::Connection::open(env.path("state.db")).unwrap();
    db.execute_batch("DROP TABLE leases").unwrap();
    drop(db);
    let out = env.cli(&["tokens"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("HOLDER"), "{}", stdout(&out));
    assert!(stdout(&out).contains("acme"));
    assert!(
        stderr(&out).contains("leases not shown") && stderr(&out).contains("leases"),
        "{}",
        stderr(&out)
    );
    let out = env.cli(&["instances"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("leases"), "{}", stderr(&out));
}

fn check(env: &TestEnv, creds: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&env.config)
        .arg("check-config")
        .env_remove("CREDENTIALS_DIRECTORY");
    if let Some(dir) = creds {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    let out = cmd.output().expect("run check-config");
    (out.status.code().unwrap_or(-1), stderr(&out))
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_config_warns_about_secret_file_permissions() {
    let env = TestEnv::new(quiet());
    // Readable by others.
    chmod(&env.path("acme.vpptoken"), 0o644);
    chmod(&env.path("acme.notify"), 0o640);
    let (code, err) = check(&env, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: tokens[0].token_file \"acme.vpptoken\" (at ")
            && err.contains("is readable by its group or by others (mode 0644)")
            && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        err.contains("tokens[0].notification_auth_token_file") && err.contains("(mode 0640)"),
        "{err}"
    );

    // Owner only, but where the shipped unit does not hand it to the service.
    chmod(&env.path("acme.vpptoken"), 0o600);
    chmod(&env.path("acme.notify"), 0o600);
    let (code, err) = check(&env, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: tokens[0].token_file \"acme.vpptoken\"")
            && err.contains("can be read only by")
            && err.contains("(mode 0600)")
            && err.contains("systemd's dynamic user")
            && err.contains("\"credentials/acme.vpptoken\""),
        "{err}"
    );
    assert_no_secret(&env, &err);

    // Under systemd ($CREDENTIALS_DIRECTORY), systemd owns the files: no permission warning.
    let creds = tempfile::tempdir().unwrap();
    for f in ["acme.vpptoken", "acme.notify"] {
        std::fs::copy(env.path(f), creds.path().join(f)).unwrap();
        chmod(&creds.path().join(f), 0o644);
    }
    let (code, err) = check(&env, Some(creds.path()));
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");

    // The README's layout: credentials/ beside the config, 0600, relative paths through it.
    let dir = env.path("credentials");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o700);
    for f in ["acme.vpptoken", "acme.notify"] {
        std::fs::rename(env.path(f), dir.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("\"acme.", "\"credentials/acme.");
    std::fs::write(&env.config, config).unwrap();
    let (code, err) = check(&env, None);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "no warning expected: {err}");
    // Under systemd, LoadCredential=credentials:DIR names them credentials_FILE.
    let creds = tempfile::tempdir().unwrap();
    for f in ["acme.vpptoken", "acme.notify"] {
        std::fs::copy(dir.join(f), creds.path().join(format!("credentials_{f}"))).unwrap();
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("check-config")
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "token_file:   {}",
            creds.path().join("credentials_acme.vpptoken").display()
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_config_warns_about_a_webhook_off_loopback() {
    let env = TestEnv::new(quiet());
    for f in ["acme.vpptoken", "acme.notify"] {
        chmod(&env.path(f), 0o600);
    }
    let loopback = env.webhook.to_string();
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replace(
            &format!("listen = \"{loopback}\""),
            "listen = \"0.0.0.0:8788\"",
        ),
    )
    .unwrap();
    let (code, err) = check(&env, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "warning: webhook.listen \"0.0.0.0:8788\" is not a loopback address: the webhook \
             speaks plain HTTP"
        ) && err.contains("TLS-terminating proxy"),
        "{err}"
    );
    // On loopback: no such warning.
    std::fs::write(&env.config, config).unwrap();
    let (code, err) = check(&env, None);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("webhook.listen"), "{err}");
}
