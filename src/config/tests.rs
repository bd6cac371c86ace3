use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

use super::*;
use crate::time::{parse_duration, Timestamp};

const NOW: Timestamp = Timestamp(1_764_064_800_000); // 2025-11-25T10:00:00Z

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn vpptoken(inner: &str, exp: &str, org: &str) -> String {
    b64(&format!(
        r#"{{"token":"{inner}","expDate":"{exp}","orgName":"{org}"}}"#
    ))
}

/// A temp dir with a config and the secret files of one token `acme`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        f.write(
            "acme.vpptoken",
            &(vpptoken("inner-secret", "2030-11-08T22:33:22+0000", "Acme Inc") + "\n"),
        );
        f.write("acme.notify", "notify-secret\n");
        f
    }
    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.dir.path().join(name), content).unwrap();
    }
    fn load(&self, toml: &str) -> Result<Loaded, ConfigError> {
        self.load_env(toml, None)
    }
    fn load_env(&self, toml: &str, creds: Option<PathBuf>) -> Result<Loaded, ConfigError> {
        self.write("config.toml", toml);
        load_with(
            &self.dir.path().join("config.toml"),
            &LoadEnv {
                now: NOW,
                credentials_directory: creds,
            },
        )
    }
    fn err(&self, toml: &str) -> String {
        match self.load(toml) {
            Ok(_) => panic!("expected an error for:\n{toml}"),
            Err(e) => e.to_string(),
        }
    }
}

const TOKEN: &str = r#"
[[tokens]]
name = "acme"
token_file = "acme.vpptoken"
notification_auth_token_file = "acme.notify"
"#;

#[test]
fn defaults_apply_to_a_minimal_file() {
    let f = Fixture::new();
    let l = f.load(TOKEN).unwrap();
    let c = &l.config;
    assert_eq!(c.daemon.database, PathBuf::from(DEFAULT_DATABASE));
    assert_eq!(c.daemon.api_listen, "127.0.0.1:8787".parse().unwrap());
    assert_eq!(c.daemon.log_format, None);
    assert_eq!(c.daemon.log_level, "info");
    assert!(c.daemon.api_token.is_none());
    assert_eq!(c.apple.base_url, "https://vpp.itunes.apple.com/mdm/v2/");
    assert_eq!(c.apple.request_timeout, Duration::from_secs(30));
    assert_eq!(c.apple.max_requests_per_second, 15);
    assert_eq!(c.apple.max_concurrent_requests, 5);
    assert_eq!(c.apple.service_config_refresh, Duration::from_secs(300));
    assert_eq!(c.webhook.listen, "127.0.0.1:8788".parse().unwrap());
    assert_eq!(c.webhook.path_prefix, "/apple/notifications");
    assert_eq!(c.webhook.max_body_bytes, 1_048_576);
    assert_eq!(c.reconcile.notification_grace, Duration::from_secs(300));
    assert_eq!(c.reconcile.poll_min, Duration::from_secs(30));
    assert_eq!(c.reconcile.poll_max, Duration::from_secs(600));
    assert_eq!(c.reconcile.resubmit_after, Duration::from_secs(600));
    assert_eq!(c.reconcile.give_up_after, Duration::from_secs(86400));
    assert_eq!(c.reconcile.full_sync_schedule, "0 0 3 * * *");
    assert_eq!(c.reconcile.retention, Duration::from_secs(30 * 86400));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);

    let t = &c.tokens[0];
    assert_eq!(t.name, "acme");
    assert_eq!(t.token_file, f.dir.path().join("acme.vpptoken"));
    assert_eq!(t.content_token.org_name, "Acme Inc");
    assert_eq!(t.content_token.inner_token.expose(), "inner-secret");
    // The Bearer value is the file content itself, without the trailing newline.
    assert_eq!(
        t.content_token.raw.expose(),
        vpptoken("inner-secret", "2030-11-08T22:33:22+0000", "Acme Inc")
    );
    assert_eq!(
        t.content_token.exp_date,
        Timestamp::parse_rfc3339("2030-11-08T22:33:22Z").unwrap()
    );
    assert_eq!(t.notification_auth_token.expose(), "notify-secret");
    assert_eq!(c.max_requests_per_second(t), 15);
    assert_eq!(c.webhook.route_for("acme"), "/apple/notifications/acme");
}

#[test]
fn durations_display_as_written() {
    for (s, want) in [
        ("30s", "30s"),
        ("5m", "5m"),
        ("24h", "24h"),
        ("30d", "30d"),
        ("1h 30m", "90m"),
        ("500ms", "500ms"),
        ("0s", "0s"),
    ] {
        let d = parse_duration(s).unwrap();
        assert_eq!(display_duration(d), want);
        assert_eq!(parse_duration(&display_duration(d)).unwrap(), d);
    }
}

#[test]
fn empty_file_is_valid_with_a_warning() {
    let f = Fixture::new();
    let l = f.load("").unwrap();
    assert!(l.config.tokens.is_empty());
    assert!(l.warnings.iter().any(|w| w.contains("no [[tokens]]")));
}

#[test]
fn relative_database_resolves_against_the_config_dir() {
    let f = Fixture::new();
    let l = f.load("[daemon]\ndatabase = \"state.db\"\n").unwrap();
    assert_eq!(l.config.daemon.database, f.dir.path().join("state.db"));
}

#[test]
fn base_url_is_normalised_and_checked() {
    let f = Fixture::new();
    let l = f
        .load("[apple]\nbase_url = \"http://127.0.0.1:9000/mdm/v2\"\n")
        .unwrap();
    assert_eq!(l.config.apple.base_url, "http://127.0.0.1:9000/mdm/v2/");
    assert!(l.warnings.iter().all(|w| !w.contains("base_url")));
    let e = f.err("[apple]\nbase_url = \"https://u:pw-secret@example.com/\"\n");
    assert!(
        e.contains("apple.base_url must not contain a user name"),
        "{e}"
    );
    assert!(!e.contains("pw-secret"), "{e}");
    let e = f.err("[apple]\nbase_url = \"ftp://example.com/\"\n");
    assert!(
        e.contains("apple.base_url \"ftp://example.com/\" must be an http"),
        "{e}"
    );
    let l = f
        .load("[apple]\nbase_url = \"http://vpp.example.com/\"\n")
        .unwrap();
    assert!(l.warnings.iter().any(|w| w.contains("plain http")));
}

#[test]
fn secret_paths_prefer_credentials_directory() {
    let f = Fixture::new();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(
        creds.path().join("acme.vpptoken"),
        vpptoken("other", "2031-01-01T00:00:00+0000", "Creds Org"),
    )
    .unwrap();
    std::fs::write(creds.path().join("acme.notify"), "n2").unwrap();
    let l = f.load_env(TOKEN, Some(creds.path().to_path_buf())).unwrap();
    let t = &l.config.tokens[0];
    assert_eq!(t.token_file, creds.path().join("acme.vpptoken"));
    assert_eq!(t.content_token.org_name, "Creds Org");
    assert_eq!(t.notification_auth_token.expose(), "n2");
}

#[test]
fn content_token_formats() {
    let t = parse_content_token(&vpptoken("x", "2030-11-08T22:33:22+0000", "O")).unwrap();
    assert_eq!(t.exp_date.to_rfc3339(), "2030-11-08T22:33:22.000Z");
    let t = parse_content_token(&vpptoken("x", "2030-11-08T22:33:22Z", "O")).unwrap();
    assert_eq!(t.exp_date.to_rfc3339(), "2030-11-08T22:33:22.000Z");
    let t = parse_content_token(&vpptoken("x", "2030-11-08T23:33:22+0100", "O")).unwrap();
    assert_eq!(t.exp_date.to_rfc3339(), "2030-11-08T22:33:22.000Z");
    // Padding stripped and a line break inside: both tolerated.
    let s = vpptoken("x", "2030-11-08T22:33:22+0000", "Org");
    let unpadded = s.trim_end_matches('=').to_string();
    let wrapped = format!("{}\n{}\n", &unpadded[..10], &unpadded[10..]);
    let t = parse_content_token(&wrapped).unwrap();
    assert_eq!(t.raw.expose(), unpadded);

    assert_eq!(parse_content_token(" \n"), Err(ContentTokenError::Empty));
    assert_eq!(
        parse_content_token("not base64!"),
        Err(ContentTokenError::NotBase64)
    );
    assert_eq!(
        parse_content_token(&b64("nope")),
        Err(ContentTokenError::NotJson)
    );
    assert_eq!(
        parse_content_token(&b64("[1]")),
        Err(ContentTokenError::NotObject)
    );
    assert_eq!(
        parse_content_token(&b64(r#"{"token":"t","orgName":"o"}"#)),
        Err(ContentTokenError::MissingField("expDate"))
    );
    assert_eq!(
        parse_content_token(&b64(r#"{"token":"","expDate":"x","orgName":"o"}"#)),
        Err(ContentTokenError::EmptyField("token"))
    );
    assert_eq!(
        parse_content_token(&vpptoken("t", "next tuesday", "o")),
        Err(ContentTokenError::BadExpDate)
    );
}

#[test]
fn errors_name_key_and_value() {
    let f = Fixture::new();
    let cases: &[(&str, &str)] = &[
        (
            "[[tokens]]\nname = \"Acme Main\"\n",
            "tokens[0].name \"Acme Main\" must match [a-z0-9-]+",
        ),
        (
            "[reconcile]\npoll_min = \"soon\"\n",
            "reconcile.poll_min \"soon\" is not a duration (expected e.g. \"30s\", \"5m\")",
        ),
        (
            "[reconcile]\npoll_min = \"5m\"\npoll_max = \"1m\"\n",
            "reconcile.poll_max \"1m\" is shorter than reconcile.poll_min \"5m\"",
        ),
        (
            "[reconcile]\nretention = \"0s\"\n",
            "reconcile.retention \"0s\" must be longer",
        ),
        (
            "[reconcile]\nfull_sync_schedule = \"0 3 * * *\"\n",
            "reconcile.full_sync_schedule \"0 3 * * *\" has 5 fields",
        ),
        (
            "[reconcile]\nfull_sync_schedule = \"0 0 25 * * *\"\n",
            "reconcile.full_sync_schedule \"0 0 25 * * *\" is not a valid cron",
        ),
        (
            "[daemon]\napi_listen = \"localhost:8787\"\n",
            "daemon.api_listen \"localhost:8787\" is not an IP address and port",
        ),
        (
            "[daemon]\nlog_format = \"xml\"\n",
            "daemon.log_format \"xml\" must be",
        ),
        (
            "[daemon]\nlog_level = \"loud\"\n",
            "daemon.log_level \"loud\" is not a log level",
        ),
        (
            "[apple]\nmax_requests_per_second = 0\n",
            "apple.max_requests_per_second 0 must be at least 1",
        ),
        (
            "[webhook]\npath_prefix = \"/apple/\"\n",
            "webhook.path_prefix \"/apple/\" must be a URL path",
        ),
        (
            "[webhook]\npath_prefix = \"apple\"\n",
            "webhook.path_prefix \"apple\" must be a URL path",
        ),
    ];
    for (toml, want) in cases {
        let e = f.err(toml);
        assert!(e.contains(want), "for {toml:?}\n got: {e}\nwant: {want}");
        assert!(e.starts_with(&f.dir.path().join("config.toml").display().to_string()));
    }
}

#[test]
fn token_errors() {
    let f = Fixture::new();
    let dup = format!("{TOKEN}{TOKEN}");
    assert!(f
        .err(&dup)
        .contains("tokens[1].name \"acme\" is used by an earlier token"));
    let e = f.err(&TOKEN.replace("acme.vpptoken", "missing.vpptoken"));
    assert!(
        e.contains("tokens[0].token_file \"missing.vpptoken\" (at ")
            && e.ends_with("cannot be read: No such file or directory"),
        "{e}"
    );
    f.write("bad.vpptoken", "%%%secret-bytes%%%");
    let e = f.err(&TOKEN.replace("acme.vpptoken", "bad.vpptoken"));
    assert!(
        e.contains("is not a content token: not valid base64"),
        "{e}"
    );
    assert!(!e.contains("secret-bytes"));
    f.write("empty.notify", "  \n");
    let e = f.err(&TOKEN.replace("acme.notify", "empty.notify"));
    assert!(
        e.contains("tokens[0].notification_auth_token_file \"empty.notify\"")
            && e.ends_with("is empty"),
        "{e}"
    );
    f.write("long.notify", &"x".repeat(513));
    assert!(f
        .err(&TOKEN.replace("acme.notify", "long.notify"))
        .contains("Apple accepts at most 512"));
    let e = f.err(&format!(
        "{TOKEN}notification_url = \"http://mdm.example.com/n\"\n"
    ));
    assert!(
        e.contains(
            "tokens[0].notification_url \"http://mdm.example.com/n\" must be an https:// URL"
        ),
        "{e}"
    );
    let l = f
        .load(&format!(
            "{TOKEN}notification_url = \"http://127.0.0.1:9/n\"\n"
        ))
        .unwrap();
    assert!(l.warnings.iter().any(|w| w.contains("plain http")));
    assert!(f
        .err(&format!("{TOKEN}max_requests_per_second = -3\n"))
        .contains("tokens[0].max_requests_per_second -3 must be at least 1"));
    assert!(f
        .err("[[tokens]]\nname = \"acme\"\n")
        .contains("tokens[0].token_file is missing"));
}

#[test]
fn parse_errors_carry_the_line() {
    let f = Fixture::new();
    let e = f.err("[daemon]\nlog_level = \"info\"\n\n[apple]\ncolour = \"red\"\n");
    assert!(
        e.contains("config.toml:5: unknown field \"colour\", expected one of"),
        "{e}"
    );
    let e = f.err("[daemon]\nlog_level = \"info\"\napi_listen = 127.0.0.1:80\n");
    assert!(e.contains("config.toml:3: "), "{e}");
    let e = f.err(&format!("{TOKEN}\n[[tokens]]\nname = 7\n"));
    assert!(
        e.contains("config.toml:8: tokens[1].name: invalid type"),
        "{e}"
    );
}

#[test]
fn floors_and_limits_warn() {
    let f = Fixture::new();
    let l = f
        .load(&format!(
            "[reconcile]\npoll_min = \"10s\"\nnotification_grace = \"1m\"\n\
             [apple]\nmax_concurrent_requests = 8\n{TOKEN}max_requests_per_second = 50\n"
        ))
        .unwrap();
    let w = l.warnings.join("\n");
    assert!(
        w.contains("reconcile.poll_min \"10s\" is below Apple's 30s floor"),
        "{w}"
    );
    assert!(
        w.contains("reconcile.notification_grace \"1m\" is below"),
        "{w}"
    );
    assert!(w.contains("apple.max_concurrent_requests 8"), "{w}");
    assert!(w.contains("tokens[0].max_requests_per_second 50"), "{w}");
    assert_eq!(l.config.max_requests_per_second(&l.config.tokens[0]), 15);
}

#[test]
fn expired_token_is_a_warning() {
    let f = Fixture::new();
    f.write(
        "old.vpptoken",
        &vpptoken("t", "2020-01-01T00:00:00+0000", "Old"),
    );
    let l = f
        .load(&TOKEN.replace("acme.vpptoken", "old.vpptoken"))
        .unwrap();
    assert!(l.config.tokens[0].content_token.is_expired(NOW));
    assert!(l
        .warnings
        .iter()
        .any(|w| w.contains("expired on 2020-01-01")));
}

#[test]
fn debug_never_shows_secrets() {
    let f = Fixture::new();
    f.write("api-token", "api-secret-value\n");
    let l = f
        .load(&format!(
            "[daemon]\napi_token_file = \"api-token\"\n{TOKEN}"
        ))
        .unwrap();
    assert_eq!(
        l.config.daemon.api_token.as_ref().map(|s| s.expose()),
        Some("api-secret-value")
    );
    let dbg = format!("{:?}", l.config);
    for s in ["inner-secret", "notify-secret", "api-secret-value"] {
        assert!(!dbg.contains(s), "{s} leaked");
    }
    let raw = vpptoken("inner-secret", "2030-11-08T22:33:22+0000", "Acme Inc");
    assert!(!dbg.contains(&raw));
}

#[test]
fn mdm_id_and_claim_location() {
    let f = Fixture::new();
    let url = "notification_url = \"https://mdm.example.com/n\"\n";
    let l = f
        .load(&format!("{TOKEN}{url}mdm_id = \"mdm-7f3c\"\n"))
        .unwrap();
    let t = &l.config.tokens[0];
    assert_eq!(t.mdm_id.as_deref(), Some("mdm-7f3c"));
    assert!(!t.claim_location);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let l = f
        .load(&format!("{TOKEN}{url}claim_location = true\n"))
        .unwrap();
    assert!(l.config.tokens[0].claim_location);
    // notification_url without mdm_id or claim_location: Client Config would never change.
    let l = f.load(&format!("{TOKEN}{url}")).unwrap();
    assert!(
        l.warnings.iter().any(|w| w.contains("mdm_id is not")),
        "{:?}",
        l.warnings
    );
    let l = f.load(&format!("{TOKEN}claim_location = true\n")).unwrap();
    assert!(l.warnings.iter().any(|w| w.contains("no effect")));
    let e = f.err(&format!("{TOKEN}mdm_id = \" \"\n"));
    assert!(
        e.contains("tokens[0].mdm_id \" \" must be a non-empty"),
        "{e}"
    );
    let e = f.err(&format!("{TOKEN}claim_location = \"yes\"\n"));
    assert!(e.contains("claim_location"), "{e}");
}

#[test]
fn push_section_defaults_and_checks() {
    let f = Fixture::new();
    assert!(f.load(TOKEN).unwrap().config.push.is_none());
    f.write("push.secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
    let l = f
        .load(&format!(
            "[push]\nurl = \"https://mdm.example.com/hooks/vpp\"\nsecret_file = \"push.secret\"\n{TOKEN}"
        ))
        .unwrap();
    let p = l.config.push.unwrap();
    assert_eq!(p.url, "https://mdm.example.com/hooks/vpp");
    assert_eq!(p.max_batch, 100);
    assert_eq!(p.timeout, Duration::from_secs(10));
    assert_eq!(p.dead_after, Duration::from_secs(3 * 86_400));
    assert_eq!(p.secret.expose(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    assert!(!format!("{p:?}").contains("MfKQ9r8"));
    // A secret that is not "whsec_" + base64 is refused, without echoing it.
    f.write("push.secret", "not-a-webhook-secret");
    let e = f.err(&format!(
        "[push]\nurl = \"https://mdm.example.com/\"\nsecret_file = \"push.secret\"\n{TOKEN}"
    ));
    assert!(
        e.contains("push.secret_file") && e.contains("whsec_"),
        "{e}"
    );
    assert!(!e.contains("not-a-webhook-secret"), "{e}");
    let e = f.err(&format!("[push]\nsecret_file = \"push.secret\"\n{TOKEN}"));
    assert!(e.contains("push.url"), "{e}");
    f.write("push.secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let e = f.err(&format!(
        "[push]\nurl = \"https://m/\"\nsecret_file = \"push.secret\"\nmax_batch = 0\n{TOKEN}"
    ));
    assert!(e.contains("push.max_batch"), "{e}");
    let e = f.err(&format!(
        "[push]\nurl = \"https://m/\"\nsecret_file = \"push.secret\"\nretries = 3\n{TOKEN}"
    ));
    assert!(e.contains("retries"), "{e}");
}

#[test]
fn store_section_defaults_and_checks() {
    let f = Fixture::new();
    assert!(f.load(TOKEN).unwrap().config.store.is_none());
    f.write("pg-password", "pg-s3cret\n");
    let l = f
        .load(&format!(
            "[store]\nurl = \"postgres://vppr@db.example.com:5432/vppr\"\npassword_file = \"pg-password\"\n{TOKEN}"
        ))
        .unwrap();
    let s = l.config.store.unwrap();
    assert_eq!(s.url, "postgres://vppr@db.example.com:5432/vppr");
    assert_eq!(s.lease_ttl, Duration::from_secs(15));
    assert_eq!(s.password.as_ref().unwrap().expose(), "pg-s3cret");
    assert!(!format!("{s:?}").contains("pg-s3cret"));
    // Read-only commands resolve the file but never read it.
    f.write("config.toml", &format!(
        "[store]\nurl = \"postgres://vppr@db/vppr\"\npassword_file = \"pg-password\"\nlease_ttl = \"30s\"\n{TOKEN}"
    ));
    let public = load_public_with(
        &f.dir.path().join("config.toml"),
        &LoadEnv {
            now: NOW,
            credentials_directory: None,
        },
    )
    .unwrap()
    .config;
    let ps = public.store.as_ref().unwrap();
    assert!(ps.password.is_none());
    assert_eq!(ps.lease_ttl, Duration::from_secs(30));
    assert!(public
        .secret_files()
        .iter()
        .any(|f| f.key == "store.password_file"));
    // A password in the URL is refused without being echoed.
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://vppr:hunter2@db/vppr\"\n{TOKEN}"
    ));
    assert!(
        e.contains("store.url") && e.contains("password_file"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    // Nor as a query parameter, nor anywhere in a URL that is refused for another reason.
    for url in [
        "postgres://vppr@db/vppr?sslmode=verify-full&password=hunter2",
        "postgres://vppr@db/vppr?Password=hunter2",
        "postgres://vppr:hunter2@/vppr",
        "mysql://vppr:hunter2@db/vppr",
    ] {
        let e = f.err(&format!("[store]\nurl = \"{url}\"\n{TOKEN}"));
        assert!(
            e.contains("store.url") && e.contains("must not contain a password"),
            "{e}"
        );
        assert!(e.contains("(not shown)"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    let e = f.err(&format!("[store]\nurl = \"mysql://db/vppr\"\n{TOKEN}"));
    assert!(
        e.contains("store.url \"mysql://db/vppr\" must start with postgres://"),
        "{e}"
    );
    let e = f.err(&format!(
        "[store]\npassword_file = \"pg-password\"\n{TOKEN}"
    ));
    assert!(e.contains("store.url is missing"), "{e}");
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://db/vppr\"\nlease_ttl = \"1s\"\n{TOKEN}"
    ));
    assert!(
        e.contains("store.lease_ttl") && e.contains("too short"),
        "{e}"
    );
    // TLS: libpq's sslmode values and sslrootcert, checked here, read when connecting.
    let url = "postgres://vppr@db/vppr?sslmode=verify-full&sslrootcert=/etc/ssl/pg-ca.pem";
    let l = f
        .load(&format!("[store]\nurl = \"{url}\"\n{TOKEN}"))
        .unwrap();
    assert_eq!(l.config.store.unwrap().url, url);
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://db/vppr?sslmode=verify_full\"\n{TOKEN}"
    ));
    assert!(
        e.contains(
            "store.url sslmode \"verify_full\" is not one of disable, prefer, require, \
             verify-ca, verify-full"
        ),
        "{e}"
    );
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://db/vppr?sslmode=require&sslrootcert=system\"\n{TOKEN}"
    ));
    assert!(
        e.contains("store.url sslrootcert=system needs sslmode=verify-full"),
        "{e}"
    );
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://db/vppr?sslmode=verify-ca&sslrootcert=ca.pem\"\n{TOKEN}"
    ));
    assert!(e.contains("\"ca.pem\" must be an absolute path"), "{e}");
    // libpq would read ~/.postgresql/root.crt; refused instead.
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://db/vppr?sslmode=verify-ca\"\n{TOKEN}"
    ));
    assert!(
        e.contains("store.url sslmode=verify-ca needs sslrootcert=/path/to/ca.pem"),
        "{e}"
    );
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://db/vppr?channel_binding=maybe\"\n{TOKEN}"
    ));
    assert!(e.contains("channel_binding \"maybe\" is not one of"), "{e}");
    // Weak TLS to another machine is worth a warning; to this one, or verified, it is not.
    for (url, warned) in [
        ("postgres://vppr@db.example.com/vppr", true),
        ("postgres://vppr@db.example.com/vppr?sslmode=require", true),
        ("postgres://vppr@10.1.2.3/vppr?sslmode=disable", true),
        ("postgres://vppr@localhost/vppr?sslmode=disable", false),
        ("postgres://vppr@127.0.0.1:5432/vppr", false),
        (
            "postgres://vppr@db.example.com/vppr?sslmode=verify-full",
            false,
        ),
    ] {
        let l = f
            .load(&format!("[store]\nurl = \"{url}\"\n{TOKEN}"))
            .unwrap();
        let w: Vec<&String> = l
            .warnings
            .iter()
            .filter(|w| w.starts_with("store.url: sslmode="))
            .collect();
        assert_eq!(w.len(), usize::from(warned), "{url}: {w:?}");
        if warned {
            assert!(
                w[0].contains("use sslmode=verify-full with sslrootcert"),
                "{w:?}"
            );
        }
    }
    f.write("pg-password", "\n");
    let e = f.err(&format!(
        "[store]\nurl = \"postgres://db/vppr\"\npassword_file = \"pg-password\"\n{TOKEN}"
    ));
    assert!(
        e.contains("store.password_file") && e.contains("empty"),
        "{e}"
    );
}

#[test]
fn api_hosts_and_the_read_only_token() {
    let f = Fixture::new();
    let c = f.load(TOKEN).unwrap().config;
    assert!(c.daemon.api_hosts.is_empty());
    assert!(c.daemon.api_read_token.is_none());

    f.write("api-token", "full-api-token\n");
    f.write("api-read", "read-api-token\n");
    let l = f
        .load(&format!(
            "[daemon]\napi_token_file = \"api-token\"\napi_read_token_file = \"api-read\"\n\
             api_hosts = [\"VPPR.example.com\", \"10.0.0.5:8787\", \"[fd00::5]\"]\n{TOKEN}"
        ))
        .unwrap();
    let d = &l.config.daemon;
    assert_eq!(
        d.api_read_token.as_ref().map(|s| s.expose()),
        Some("read-api-token")
    );
    let hosts: Vec<String> = d.api_hosts.iter().map(|h| h.to_string()).collect();
    assert_eq!(hosts, ["vppr.example.com", "10.0.0.5:8787", "[fd00::5]"]);
    assert!(!format!("{:?}", l.config).contains("read-api-token"));

    let e = f.err(&format!(
        "[daemon]\napi_hosts = [\"ok.example\", \"evil@host\"]\n{TOKEN}"
    ));
    assert!(
        e.contains("daemon.api_hosts[1] \"evil@host\" is not a host name"),
        "{e}"
    );
    let e = f.err(&format!("[daemon]\napi_hosts = [\"h:99999\"]\n{TOKEN}"));
    assert!(e.contains("daemon.api_hosts[0]"), "{e}");
    let e = f.err(&format!("[daemon]\napi_hosts = \"one\"\n{TOKEN}"));
    assert!(e.contains("api_hosts"), "{e}");

    // The read-only token must not be the full one.
    f.write("api-read", "full-api-token\n");
    let e = f.err(&format!(
        "[daemon]\napi_token_file = \"api-token\"\napi_read_token_file = \"api-read\"\n{TOKEN}"
    ));
    assert!(
        e.contains("daemon.api_read_token_file") && e.contains("must differ"),
        "{e}"
    );
    assert!(!e.contains("full-api-token"), "{e}");
    f.write("api-read", "");
    let e = f.err(&format!(
        "[daemon]\napi_read_token_file = \"api-read\"\n{TOKEN}"
    ));
    assert!(
        e.contains("daemon.api_read_token_file") && e.contains("is empty"),
        "{e}"
    );

    // Off loopback: a warning that Host must then be listed.
    let l = f
        .load(&format!("[daemon]\napi_listen = \"0.0.0.0:8787\"\n{TOKEN}"))
        .unwrap();
    assert!(
        l.warnings.iter().any(|w| w.contains("daemon.api_hosts")),
        "{:?}",
        l.warnings
    );
}
