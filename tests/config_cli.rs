//! `vpp-reconciler check-config` against real files: every mistake gives exit 2 and one
//! sentence naming the key and value; a good file gives exit 0 and a redacted summary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_vpp-reconciler");

fn vpptoken(inner: &str, exp: &str, org: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!(
        r#"{{"token":"{inner}","expDate":"{exp}","orgName":"{org}"}}"#
    ))
}

/// A temp dir holding `config.toml` and the secret files it references.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// Two valid tokens, `acme` and `beta`, with their files.
    fn new() -> Setup {
        let s = Setup {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        s.write(
            "acme.vpptoken",
            &format!(
                "{}\n",
                vpptoken("inner-acme", "2098-11-08T22:33:22+0000", "Acme Inc")
            ),
        );
        s.write("acme.notify", "notify-acme\n");
        s.write(
            "beta.vpptoken",
            &vpptoken("inner-beta", "2098-02-01T00:00:00+0000", "Beta School"),
        );
        s.write("beta.notify", "notify-beta");
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.path(name), content).expect("write fixture");
    }

    fn check(&self, config: &str) -> Output {
        self.check_with_env(config, &[])
    }

    fn check_with_env(&self, config: &str, env: &[(&str, &Path)]) -> Output {
        self.write("config.toml", config);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.path("config.toml"))
            .arg("check-config")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("VPP_RECONCILER_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run vpp-reconciler")
    }

    /// Runs check-config expecting exit 2 and a stderr containing `want`.
    fn expect_error(&self, config: &str, want: &str) -> String {
        let out = self.check(config);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(2),
            "config:\n{config}\nstderr: {stderr}"
        );
        assert!(
            stderr.contains(want),
            "config:\n{config}\n got: {stderr}\nwant: {want}"
        );
        // One sentence on one line, prefixed by the config path.
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{}", self.path("config.toml").display())),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
        stderr
    }
}

const GOOD: &str = r#"
[daemon]
database = "state.db"
api_listen = "127.0.0.1:8787"
log_format = "text"
log_level = "info,vpp_reconciler=debug"

[apple]
base_url = "https://vpp.itunes.apple.com/mdm/v2"
max_requests_per_second = 10

[webhook]
listen = "127.0.0.1:8788"
path_prefix = "/hooks/apple"

[reconcile]
poll_max = "15m"
full_sync_schedule = "0 30 2 * * *"

[[tokens]]
name = "acme"
token_file = "acme.vpptoken"
notification_auth_token_file = "acme.notify"
notification_url = "https://mdm.example.com/hooks/apple/acme"
mdm_id = "mdm-7f3c"

[[tokens]]
name = "beta"
token_file = "beta.vpptoken"
notification_auth_token_file = "beta.notify"
max_requests_per_second = 3
"#;

#[test]
fn good_config_prints_a_summary() {
    let s = Setup::new();
    // The layout README.md recommends (secrets 0600 in credentials/, which the shipped unit
    // hands to the service), so that check-config has nothing to warn about.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir(s.path("credentials")).expect("mkdir");
    for f in [
        "acme.vpptoken",
        "acme.notify",
        "beta.vpptoken",
        "beta.notify",
    ] {
        let to = s.path("credentials").join(f);
        std::fs::rename(s.path(f), &to).expect("move");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let config = GOOD
        .replace("\"acme.", "\"credentials/acme.")
        .replace("\"beta.", "\"credentials/beta.");
    let out = s.check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "no warnings expected: {stderr}");
    for want in [
        &format!("database:       {}", s.path("state.db").display()),
        "api_listen:     127.0.0.1:8787",
        "https://vpp.itunes.apple.com/mdm/v2/",
        "10 requests/s, 5 concurrent per token",
        "127.0.0.1:8788",
        "/hooks/apple",
        "30s .. 15m",
        "\"0 30 2 * * *\"",
        "name:         acme",
        "orgName:      Acme Inc",
        "2098-11-08 22:33:22 UTC (expires in ",
        "notification_url: https://mdm.example.com/hooks/apple/acme",
        "mdm_id:       mdm-7f3c",
        &format!(
            "token_file:   {}",
            s.path("credentials/acme.vpptoken").display()
        ),
        &format!(
            "notification_auth_token_file: {}",
            s.path("credentials/beta.notify").display()
        ),
        "orgName:      Beta School",
        "webhook route: /hooks/apple/beta",
        "max_requests_per_second: 3",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn minimal_and_example_configs_are_valid() {
    let s = Setup::new();
    // The repository's example, with its token files present.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vpp-reconciler.toml"),
    )
    .expect("example config");
    std::fs::create_dir(s.path("credentials")).expect("mkdir");
    for f in ["acme.vpptoken", "acme.notify"] {
        std::fs::copy(s.path(f), s.path("credentials").join(f)).expect("copy");
    }
    let out = s.check(&example);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No tokens at all: valid, with a warning.
    let out = s.check("");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("warning: no [[tokens]]"), "{stderr}");
}

#[test]
fn bad_token_name() {
    Setup::new().expect_error(
        &GOOD.replace("name = \"beta\"", "name = \"Acme Main\""),
        "tokens[1].name \"Acme Main\" must match [a-z0-9-]+",
    );
}

#[test]
fn duplicate_token_names() {
    Setup::new().expect_error(
        &GOOD.replace("name = \"beta\"", "name = \"acme\""),
        "tokens[1].name \"acme\" is used by an earlier token; names must be unique",
    );
}

#[test]
fn unknown_key_names_its_line() {
    let config = GOOD.replace(
        "max_requests_per_second = 10",
        "max_requests_per_second = 10\ncolour = \"red\"",
    );
    Setup::new().expect_error(
        &config,
        "config.toml:11: unknown field \"colour\", expected one of",
    );
}

#[test]
fn toml_syntax_error_names_its_line() {
    let config = GOOD.replace("poll_max = \"15m\"", "poll_max = \"15m");
    Setup::new().expect_error(&config, "config.toml:17: ");
}

#[test]
fn wrong_value_type_names_key_and_line() {
    let config = GOOD.replace(
        "max_requests_per_second = 10",
        "max_requests_per_second = \"ten\"",
    );
    Setup::new().expect_error(
        &config,
        "config.toml:10: apple.max_requests_per_second: invalid type: string \"ten\"",
    );
}

#[test]
fn bad_duration() {
    Setup::new().expect_error(
        &GOOD.replace(
            "poll_max = \"15m\"",
            "poll_min = \"soon\"\npoll_max = \"15m\"",
        ),
        "reconcile.poll_min \"soon\" is not a duration (expected e.g. \"30s\", \"5m\")",
    );
}

#[test]
fn poll_max_below_poll_min() {
    Setup::new().expect_error(
        &GOOD.replace("poll_max = \"15m\"", "poll_min = \"2m\"\npoll_max = \"1m\""),
        "reconcile.poll_max \"1m\" is shorter than reconcile.poll_min \"2m\"",
    );
}

#[test]
fn missing_token_file() {
    let s = Setup::new();
    let stderr = s.expect_error(
        &GOOD.replace("\"beta.vpptoken\"", "\"gone.vpptoken\""),
        "tokens[1].token_file \"gone.vpptoken\"",
    );
    assert!(
        stderr.contains(&format!("{}", s.path("gone.vpptoken").display()))
            && stderr
                .trim_end()
                .ends_with("cannot be read: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn token_file_not_base64() {
    let s = Setup::new();
    s.write(
        "beta.vpptoken",
        "this is not *base64* secret-looking-content",
    );
    let stderr = s.expect_error(GOOD, "tokens[1].token_file \"beta.vpptoken\"");
    assert!(
        stderr.contains("is not a content token: not valid base64"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-looking-content"), "{stderr}");
}

#[test]
fn token_file_base64_but_not_json() {
    let s = Setup::new();
    s.write(
        "beta.vpptoken",
        &base64::engine::general_purpose::STANDARD.encode("just text, hidden-payload"),
    );
    let stderr = s.expect_error(
        GOOD,
        "is not a content token: the decoded content is not JSON",
    );
    assert!(stderr.contains("tokens[1].token_file"), "{stderr}");
    assert!(!stderr.contains("hidden-payload"), "{stderr}");
}

#[test]
fn token_file_without_exp_date() {
    let s = Setup::new();
    s.write(
        "acme.vpptoken",
        &base64::engine::general_purpose::STANDARD
            .encode(r#"{"token":"inner-acme","orgName":"Acme Inc"}"#),
    );
    s.expect_error(GOOD, "tokens[0].token_file \"acme.vpptoken\" (at ");
    s.expect_error(
        GOOD,
        "is not a content token: the decoded JSON has no string field \"expDate\"",
    );
}

#[test]
fn bad_api_listen() {
    Setup::new().expect_error(
        &GOOD.replace(
            "api_listen = \"127.0.0.1:8787\"",
            "api_listen = \"127.0.0.1\"",
        ),
        "daemon.api_listen \"127.0.0.1\" is not an IP address and port (e.g. \"127.0.0.1:8787\")",
    );
}

#[test]
fn empty_notification_auth_token_file() {
    let s = Setup::new();
    s.write("acme.notify", " \n\n");
    let stderr = s.expect_error(
        GOOD,
        "tokens[0].notification_auth_token_file \"acme.notify\"",
    );
    assert!(stderr.trim_end().ends_with("is empty"), "{stderr}");
}

#[test]
fn bad_cron() {
    Setup::new().expect_error(
        &GOOD.replace("\"0 30 2 * * *\"", "\"30 2 * * *\""),
        "reconcile.full_sync_schedule \"30 2 * * *\" has 5 fields; expected 6",
    );
    Setup::new().expect_error(
        &GOOD.replace("\"0 30 2 * * *\"", "\"0 61 2 * * *\""),
        "reconcile.full_sync_schedule \"0 61 2 * * *\" is not a valid cron expression",
    );
}

#[test]
fn plain_http_notification_url() {
    Setup::new().expect_error(
        &GOOD.replace("https://mdm.example.com", "http://mdm.example.com"),
        "tokens[0].notification_url \"http://mdm.example.com/hooks/apple/acme\" must be an https:// URL",
    );
}

#[test]
fn missing_config_file() {
    let s = Setup::new();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(s.path("nope.toml"))
        .arg("check-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope.toml: cannot be read: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn warnings_do_not_fail_the_check() {
    let s = Setup::new();
    s.write(
        "acme.vpptoken",
        &vpptoken("inner-acme", "2021-01-01T00:00:00+0000", "Acme Inc"),
    );
    let config = GOOD.replace(
        "poll_max = \"15m\"",
        "poll_min = \"10s\"\npoll_max = \"15m\"",
    );
    let out = s.check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: reconcile.poll_min \"10s\" is below Apple's 30s floor"));
    assert!(stderr.contains("warning: tokens[0] \"acme\": the content token expired on 2021-01-01"));
    assert!(
        stdout.contains("2021-01-01 00:00:00 UTC (expired)"),
        "{stdout}"
    );
}

#[test]
fn secrets_never_appear() {
    let s = Setup::new();
    let inner = "INNER-3b1f9c2e-planted";
    let whole = vpptoken(inner, "2098-11-08T22:33:22+0000", "Acme Inc");
    let notify = "NOTIFY-8d2a5e71-planted";
    let api = "APITOKEN-c4e09b6f-planted";
    s.write("acme.vpptoken", &whole);
    s.write("acme.notify", notify);
    s.write("api-token", api);
    let config = GOOD.replace(
        "log_format = \"text\"",
        "log_format = \"text\"\napi_token_file = \"api-token\"",
    );
    let out = s.check(&config);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains(&format!(
        "api_token_file: {}",
        s.path("api-token").display()
    )));
    let loaded =
        vpp_reconciler::config::load(&s.path("config.toml")).expect("config loads in-process");
    // The secrets were really read (so the absence checks below mean something).
    let acme = loaded.config.token("acme").expect("acme");
    assert_eq!(acme.content_token.raw.expose(), whole);
    assert_eq!(acme.content_token.inner_token.expose(), inner);
    assert_eq!(acme.notification_auth_token.expose(), notify);
    let debug = format!("{:?} {:#?}", loaded.config, loaded);
    for secret in [inner, whole.as_str(), notify, api] {
        assert!(!all.contains(secret), "{secret} in check-config output");
        assert!(!debug.contains(secret), "{secret} in Debug output");
    }

    // Secrets must not leak through error paths either.
    s.write("acme.notify", &format!("{notify} with spaces"));
    let out = s.check(&config);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(!all.contains(notify), "{all}");
}

#[test]
fn credentials_directory_resolution() {
    let s = Setup::new();
    let creds = tempfile::tempdir().expect("creds dir");
    std::fs::write(
        creds.path().join("acme.vpptoken"),
        vpptoken("inner-cred", "2099-03-04T05:06:07+0000", "From Credentials"),
    )
    .expect("write");
    std::fs::write(creds.path().join("acme.notify"), "cred-notify").expect("write");
    std::fs::write(
        creds.path().join("beta.vpptoken"),
        vpptoken("b", "2099-01-01T00:00:00+0000", "B"),
    )
    .expect("write");
    std::fs::write(creds.path().join("beta.notify"), "b").expect("write");
    let out = s.check_with_env(GOOD, &[("CREDENTIALS_DIRECTORY", creds.path())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("orgName:      From Credentials"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "token_file:   {}",
            creds.path().join("acme.vpptoken").display()
        )),
        "{stdout}"
    );
    // The config directory's files are not consulted when the credentials dir is set.
    std::fs::remove_file(creds.path().join("beta.notify")).expect("rm");
    let out = s.check_with_env(GOOD, &[("CREDENTIALS_DIRECTORY", creds.path())]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "tokens[1].notification_auth_token_file \"beta.notify\" (at \"{}\") cannot be read",
            creds.path().join("beta.notify").display()
        )),
        "{stderr}"
    );
}
