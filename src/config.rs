//! Configuration (design §4): the TOML file, typed and validated, with every secret file read
//! and checked at load time so that a bad deployment fails at start (or in `check-config`)
//! rather than at the first Apple call.
//!
//! Parsing is two-step: serde reads the file into `Raw*` structs (`deny_unknown_fields`, every
//! key optional), then [`load`] validates them into the typed [`Config`], applying defaults.
//! Keeping defaults out of serde lets every error name the key path and the offending value.
//!
//! Errors are one sentence prefixed by the config path; they never contain a secret or the
//! content of a secret file.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::secret::Secret;
use crate::time::{parse_duration, Timestamp};

/// Default location of the configuration file (design §3).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vpp-reconciler/config.toml";
/// Default SQLite file (design §4).
pub const DEFAULT_DATABASE: &str = "/var/lib/vpp-reconciler/state.db";
/// Apple's `maxNotificationLength`: the longest notification URL or auth token it accepts.
pub const MAX_NOTIFICATION_LENGTH: usize = 512;
/// Apple's documented floor between Event Status polls of one event.
pub const APPLE_POLL_FLOOR: Duration = Duration::from_secs(30);
/// Apple's advice: wait this long for notifications before polling.
pub const APPLE_NOTIFICATION_GRACE: Duration = Duration::from_secs(300);
/// Apple: at most 5 parallel page fetches per token.
pub const APPLE_MAX_CONCURRENT: usize = 5;
/// Secret files are small; a cap keeps a mistaken path (a log, `/dev/zero`) from hanging load.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Typed configuration
// ---------------------------------------------------------------------------------------------

/// A loaded configuration and the non-fatal problems found while validating it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// One sentence each, without a `warning:` prefix.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from, as given.
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    pub apple: AppleConfig,
    pub webhook: WebhookConfig,
    pub reconcile: ReconcileConfig,
    pub tokens: Vec<TokenConfig>,
}

impl Config {
    pub fn token(&self, name: &str) -> Option<&TokenConfig> {
        self.tokens.iter().find(|t| t.name == name)
    }

    /// The effective per-token cap before Service Config's `maxRequestPerSecond` is known.
    pub fn max_requests_per_second(&self, token: &TokenConfig) -> u32 {
        token
            .max_requests_per_second
            .map_or(self.apple.max_requests_per_second, |t| {
                t.min(self.apple.max_requests_per_second)
            })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Absolute, or relative to the working directory if the config path was relative.
    pub database: PathBuf,
    pub api_listen: SocketAddr,
    pub api_token_file: Option<PathBuf>,
    pub api_token: Option<Secret>,
    pub log_format: LogFormat,
    /// A tracing `EnvFilter` string, validated.
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err(()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppleConfig {
    /// Always ends with `/`, so endpoint paths can be joined onto it.
    pub base_url: String,
    pub request_timeout: Duration,
    pub max_requests_per_second: u32,
    pub max_concurrent_requests: usize,
    pub service_config_refresh: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// Starts with `/`, never ends with `/`; routes are `{path_prefix}/{token name}`.
    pub path_prefix: String,
    pub max_body_bytes: usize,
}

impl WebhookConfig {
    pub fn route_for(&self, token_name: &str) -> String {
        format!("{}/{}", self.path_prefix, token_name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileConfig {
    pub notification_grace: Duration,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub resubmit_after: Duration,
    pub give_up_after: Duration,
    /// Six fields, with seconds, as tokio-cron-scheduler expects.
    pub full_sync_schedule: String,
    pub retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenConfig {
    pub name: String,
    /// Resolved path of the `.vpptoken` file.
    pub token_file: PathBuf,
    pub content_token: ContentToken,
    /// Resolved path of the notification auth token file.
    pub notification_auth_token_file: PathBuf,
    pub notification_auth_token: Secret,
    pub notification_url: Option<String>,
    pub max_requests_per_second: Option<u32>,
}

/// A decoded `.vpptoken` (apple-api.md §2).
#[derive(Debug, Clone, PartialEq)]
pub struct ContentToken {
    /// The whole file content without whitespace: this is what is sent as `Bearer`.
    pub raw: Secret,
    pub org_name: String,
    pub exp_date: Timestamp,
    /// The inner `token` field. Never sent (Apple answers 9622); kept only for completeness.
    pub inner_token: Secret,
}

impl ContentToken {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.exp_date <= now
    }
}

/// Why a content token could not be decoded. The messages never include the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentTokenError {
    #[error("the file is empty")]
    Empty,
    #[error("not valid base64")]
    NotBase64,
    #[error("the decoded content is not JSON")]
    NotJson,
    #[error("the decoded JSON is not an object")]
    NotObject,
    #[error("the decoded JSON has no string field \"{0}\"")]
    MissingField(&'static str),
    #[error("the field \"{0}\" is empty")]
    EmptyField(&'static str),
    #[error("\"expDate\" is not a date like \"2030-11-08T22:33:22+0000\"")]
    BadExpDate,
}

/// Decodes a `.vpptoken` file's content: base64 (standard alphabet, padding optional,
/// whitespace ignored) of `{"token", "expDate", "orgName"}`.
pub fn parse_content_token(text: &str) -> Result<ContentToken, ContentTokenError> {
    // Whitespace can only come from editors or line wrapping; it must not reach the header.
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(ContentTokenError::Empty);
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = engine
        .decode(compact.as_bytes())
        .map_err(|_| ContentTokenError::NotBase64)?;
    let value: serde_json::Value =
        serde_json::from_slice(&decoded).map_err(|_| ContentTokenError::NotJson)?;
    let obj = value.as_object().ok_or(ContentTokenError::NotObject)?;
    let field = |name: &'static str| -> Result<&str, ContentTokenError> {
        let s = obj
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or(ContentTokenError::MissingField(name))?;
        if s.trim().is_empty() {
            return Err(ContentTokenError::EmptyField(name));
        }
        Ok(s)
    };
    let inner = field("token")?;
    let exp = field("expDate")?;
    let org = field("orgName")?;
    let exp_date = parse_apple_date(exp).ok_or(ContentTokenError::BadExpDate)?;
    Ok(ContentToken {
        raw: Secret::new(compact),
        org_name: org.to_string(),
        exp_date,
        inner_token: Secret::new(inner),
    })
}

/// Apple's dates (`2030-11-08T22:33:22+0000`), or RFC 3339.
pub fn parse_apple_date(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    for fmt in ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(d) = DateTime::parse_from_str(s, fmt) {
            return Some(Timestamp::from_datetime(d.with_timezone(&Utc)));
        }
    }
    Timestamp::parse_rfc3339(s)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file itself could not be read.
    #[error("{}: cannot be read: {}", .path.display(), io_reason(.source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or shape (unknown key, wrong type).
    #[error("{}:{line}: {message}", .path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A value that parsed but is not acceptable; `message` names the value.
    #[error("{}: {key} {message}", .path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The key path (`tokens[0].name`) for validation errors.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// `io::Error`'s text without the `(os error N)` suffix, which says nothing to an operator.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) structs
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    daemon: RawDaemon,
    apple: RawApple,
    webhook: RawWebhook,
    reconcile: RawReconcile,
    tokens: Vec<RawToken>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    database: Option<String>,
    api_listen: Option<String>,
    api_token_file: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawApple {
    base_url: Option<String>,
    request_timeout: Option<String>,
    max_requests_per_second: Option<i64>,
    max_concurrent_requests: Option<i64>,
    service_config_refresh: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawWebhook {
    listen: Option<String>,
    path_prefix: Option<String>,
    max_body_bytes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawReconcile {
    notification_grace: Option<String>,
    poll_min: Option<String>,
    poll_max: Option<String>,
    resubmit_after: Option<String>,
    give_up_after: Option<String>,
    full_sync_schedule: Option<String>,
    retention: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawToken {
    name: Option<String>,
    token_file: Option<String>,
    notification_auth_token_file: Option<String>,
    notification_url: Option<String>,
    max_requests_per_second: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// What loading depends on besides the file, so tests need not touch the process environment.
#[derive(Debug, Clone)]
pub struct LoadEnv {
    pub now: Timestamp,
    /// systemd's `$CREDENTIALS_DIRECTORY`; relative secret paths resolve against it.
    pub credentials_directory: Option<PathBuf>,
}

impl LoadEnv {
    /// The real clock and the process environment.
    pub fn from_process() -> LoadEnv {
        LoadEnv {
            now: Timestamp::now(),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// Loads and validates the configuration at `path`, reading every secret file it names.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_with(path, &LoadEnv::from_process())
}

/// [`load`] with an explicit clock and credentials directory.
pub fn load_with(path: &Path, env: &LoadEnv) -> Result<Loaded, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ConfigError::Parse {
            path: path.to_path_buf(),
            line: 1 + valid.iter().filter(|b| **b == b'\n').count(),
            message: "the file is not valid UTF-8".to_string(),
        }
    })?;
    let raw: RawConfig = toml::from_str(&text).map_err(|e| parse_error(path, &text, &e))?;
    let mut v = Validator {
        path,
        dir: config_dir(path),
        env,
        warnings: Vec::new(),
    };
    let config = v.config(raw)?;
    Ok(Loaded {
        config,
        warnings: v.warnings,
    })
}

/// The directory relative paths in the config resolve against.
fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start.min(text.len()));
    let line = 1 + text.as_bytes()[..offset]
        .iter()
        .filter(|b| **b == b'\n')
        .count();
    // toml quotes names with backticks and may wrap; one sentence with "quotes" reads better.
    let mut message = e
        .message()
        .trim()
        .replace('`', "\"")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(key) = key_at(text, offset) {
        if !message.contains("unknown field") {
            message = format!("{key}: {message}");
        }
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Best-effort key path (`tokens[1].name`) for a position in the file, so shape errors from
/// serde (which carry only a span) name the key. `None` where the line is not `key = value`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let mut table = String::new();
    let mut token_index: Option<usize> = None;
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim();
            if name == "tokens" {
                token_index = Some(token_index.map_or(0, |i| i + 1));
                table = format!("tokens[{}]", token_index.unwrap_or(0));
            } else {
                table = name.to_string();
            }
        } else if let Some(rest) = l.strip_prefix('[') {
            table = rest.split(']').next().unwrap_or("").trim().to_string();
        }
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

struct Validator<'a> {
    path: &'a Path,
    dir: PathBuf,
    env: &'a LoadEnv,
    warnings: Vec<String>,
}

/// Displays a string value quoted, with control characters escaped.
fn q(s: &str) -> String {
    format!("{s:?}")
}

impl Validator<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    fn config(&mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let daemon = self.daemon(raw.daemon)?;
        let apple = self.apple(raw.apple)?;
        let webhook = self.webhook(raw.webhook)?;
        let reconcile = self.reconcile(raw.reconcile)?;
        let mut tokens = Vec::with_capacity(raw.tokens.len());
        let mut names = HashSet::new();
        for (i, t) in raw.tokens.into_iter().enumerate() {
            let token = self.token(i, t, &apple)?;
            if !names.insert(token.name.clone()) {
                return Err(self.err(
                    &format!("tokens[{i}].name"),
                    format!(
                        "{} is used by an earlier token; names must be unique",
                        q(&token.name)
                    ),
                ));
            }
            tokens.push(token);
        }
        if tokens.is_empty() {
            self.warn("no [[tokens]] are configured; the daemon will have nothing to reconcile");
        }
        for (i, a) in tokens.iter().enumerate() {
            for b in &tokens[i + 1..] {
                if a.content_token.raw == b.content_token.raw {
                    self.warn(format!(
                        "tokens {} and {} use the same content token; Apple's rate limit is shared",
                        q(&a.name),
                        q(&b.name)
                    ));
                }
            }
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            daemon,
            apple,
            webhook,
            reconcile,
            tokens,
        })
    }

    fn daemon(&mut self, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
        let database = match raw.database {
            Some(s) if s.trim().is_empty() => {
                return Err(self.err("daemon.database", "\"\" must be a file path"))
            }
            Some(s) => self.dir.join(s),
            None => PathBuf::from(DEFAULT_DATABASE),
        };
        let api_listen = self.socket_addr("daemon.api_listen", raw.api_listen, "127.0.0.1:8787")?;
        let (api_token_file, api_token) = match raw.api_token_file {
            Some(f) => {
                let (resolved, text) = self.read_secret_file("daemon.api_token_file", &f)?;
                let token = self.auth_token("daemon.api_token_file", &f, &resolved, &text)?;
                (Some(resolved), Some(token))
            }
            None => (None, None),
        };
        if !api_listen.ip().is_loopback() {
            if api_token.is_none() {
                self.warn(format!(
                    "daemon.api_listen {} is not a loopback address and no api_token_file is set: \
                     anyone who can reach it can change the daemon's state",
                    q(&api_listen.to_string())
                ));
            } else {
                self.warn(format!(
                    "daemon.api_listen {} is not a loopback address; keep the local API on loopback",
                    q(&api_listen.to_string())
                ));
            }
        }
        let log_format = match raw.log_format {
            None => LogFormat::Json,
            Some(s) => s.parse().map_err(|()| {
                self.err(
                    "daemon.log_format",
                    format!("{} must be \"json\" or \"text\"", q(&s)),
                )
            })?,
        };
        let log_level = raw.log_level.unwrap_or_else(|| "info".to_string());
        validate_log_filter(&log_level).map_err(|why| {
            self.err(
                "daemon.log_level",
                format!(
                    "{} is not a log level or tracing filter: {why}",
                    q(&log_level)
                ),
            )
        })?;
        Ok(DaemonConfig {
            database,
            api_listen,
            api_token_file,
            api_token,
            log_format,
            log_level,
        })
    }

    fn apple(&mut self, raw: RawApple) -> Result<AppleConfig, ConfigError> {
        let base_url = self.base_url(
            raw.base_url
                .unwrap_or_else(|| "https://vpp.itunes.apple.com/mdm/v2/".to_string()),
        )?;
        let request_timeout = self.duration("apple.request_timeout", raw.request_timeout, "30s")?;
        self.nonzero("apple.request_timeout", request_timeout)?;
        let max_requests_per_second = self.positive_u32(
            "apple.max_requests_per_second",
            raw.max_requests_per_second.unwrap_or(15),
        )?;
        let max_concurrent_requests = self.positive_u32(
            "apple.max_concurrent_requests",
            raw.max_concurrent_requests.unwrap_or(5),
        )? as usize;
        if max_concurrent_requests > APPLE_MAX_CONCURRENT {
            self.warn(format!(
                "apple.max_concurrent_requests {max_concurrent_requests} is above Apple's limit of \
                 {APPLE_MAX_CONCURRENT} parallel requests per token"
            ));
        }
        let service_config_refresh = self.duration(
            "apple.service_config_refresh",
            raw.service_config_refresh,
            "5m",
        )?;
        self.nonzero("apple.service_config_refresh", service_config_refresh)?;
        if service_config_refresh > Duration::from_secs(300) {
            self.warn(format!(
                "apple.service_config_refresh {} is longer than the 5m Apple recommends",
                q(&display_duration(service_config_refresh))
            ));
        }
        Ok(AppleConfig {
            base_url,
            request_timeout,
            max_requests_per_second,
            max_concurrent_requests,
            service_config_refresh,
        })
    }

    fn base_url(&mut self, s: String) -> Result<String, ConfigError> {
        const KEY: &str = "apple.base_url";
        let url = reqwest::Url::parse(s.trim())
            .map_err(|e| self.err(KEY, format!("{} is not a URL: {e}", q(&s))))?;
        self.no_userinfo(KEY, &url)?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.err(KEY, format!("{} must be an http:// or https:// URL", q(&s))));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(KEY, format!("{} must not have a query or fragment", q(&s))));
        }
        if url.scheme() == "http" && !is_loopback_host(&url) {
            self.warn(format!(
                "apple.base_url {} is plain http to a non-loopback host; content tokens would be \
                 sent unencrypted",
                q(&s)
            ));
        }
        let mut out = url.to_string();
        if !out.ends_with('/') {
            out.push('/');
        }
        Ok(out)
    }

    fn webhook(&mut self, raw: RawWebhook) -> Result<WebhookConfig, ConfigError> {
        let listen = self.socket_addr("webhook.listen", raw.listen, "0.0.0.0:8788")?;
        let path_prefix = raw
            .path_prefix
            .unwrap_or_else(|| "/apple/notifications".to_string());
        let ok = path_prefix.len() > 1
            && path_prefix.starts_with('/')
            && !path_prefix.ends_with('/')
            && !path_prefix.contains("//")
            && path_prefix
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#' | '{' | '}' | '*' | ':'));
        if !ok {
            return Err(self.err(
                "webhook.path_prefix",
                format!(
                    "{} must be a URL path that starts with '/' and does not end with '/' \
                     (e.g. \"/apple/notifications\")",
                    q(&path_prefix)
                ),
            ));
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(1_048_576);
        if max_body_bytes < 1 {
            return Err(self.err(
                "webhook.max_body_bytes",
                format!("{max_body_bytes} must be at least 1"),
            ));
        }
        let max_body_bytes = usize::try_from(max_body_bytes).map_err(|_| {
            self.err(
                "webhook.max_body_bytes",
                format!("{max_body_bytes} is too large"),
            )
        })?;
        if max_body_bytes < 64 * 1024 {
            self.warn(format!(
                "webhook.max_body_bytes {max_body_bytes} is small; a notification of 100 entities \
                 can exceed it and would be refused"
            ));
        }
        Ok(WebhookConfig {
            listen,
            path_prefix,
            max_body_bytes,
        })
    }

    fn reconcile(&mut self, raw: RawReconcile) -> Result<ReconcileConfig, ConfigError> {
        let notification_grace =
            self.duration("reconcile.notification_grace", raw.notification_grace, "5m")?;
        let poll_min = self.duration("reconcile.poll_min", raw.poll_min, "30s")?;
        let poll_max = self.duration("reconcile.poll_max", raw.poll_max, "10m")?;
        let resubmit_after =
            self.duration("reconcile.resubmit_after", raw.resubmit_after, "10m")?;
        let give_up_after = self.duration("reconcile.give_up_after", raw.give_up_after, "24h")?;
        let retention = self.duration("reconcile.retention", raw.retention, "30d")?;
        self.nonzero("reconcile.poll_min", poll_min)?;
        self.nonzero("reconcile.poll_max", poll_max)?;
        self.nonzero("reconcile.resubmit_after", resubmit_after)?;
        self.nonzero("reconcile.give_up_after", give_up_after)?;
        self.nonzero("reconcile.retention", retention)?;
        if poll_max < poll_min {
            return Err(self.err(
                "reconcile.poll_max",
                format!(
                    "{} is shorter than reconcile.poll_min {}",
                    q(&display_duration(poll_max)),
                    q(&display_duration(poll_min))
                ),
            ));
        }
        if poll_min < APPLE_POLL_FLOOR {
            self.warn(format!(
                "reconcile.poll_min {} is below Apple's 30s floor between Event Status polls",
                q(&display_duration(poll_min))
            ));
        }
        if notification_grace < APPLE_NOTIFICATION_GRACE {
            self.warn(format!(
                "reconcile.notification_grace {} is below the 5m Apple suggests waiting for \
                 notifications before polling",
                q(&display_duration(notification_grace))
            ));
        }
        if give_up_after <= notification_grace {
            self.warn(format!(
                "reconcile.give_up_after {} is not longer than reconcile.notification_grace {}: \
                 events will time out before their first poll",
                q(&display_duration(give_up_after)),
                q(&display_duration(notification_grace))
            ));
        }
        let full_sync_schedule = raw
            .full_sync_schedule
            .unwrap_or_else(|| "0 0 3 * * *".to_string());
        validate_cron(&full_sync_schedule).map_err(|why| {
            self.err(
                "reconcile.full_sync_schedule",
                format!("{} {why}", q(&full_sync_schedule)),
            )
        })?;
        Ok(ReconcileConfig {
            notification_grace,
            poll_min,
            poll_max,
            resubmit_after,
            give_up_after,
            full_sync_schedule,
            retention,
        })
    }

    fn token(
        &mut self,
        i: usize,
        raw: RawToken,
        apple: &AppleConfig,
    ) -> Result<TokenConfig, ConfigError> {
        let key = |k: &str| format!("tokens[{i}].{k}");
        let name = raw
            .name
            .ok_or_else(|| self.err(&key("name"), "is missing"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(self.err(&key("name"), format!("{} must match [a-z0-9-]+", q(&name))));
        }

        let token_file_cfg = raw
            .token_file
            .ok_or_else(|| self.err(&key("token_file"), "is missing"))?;
        let (token_file, text) = self.read_secret_file(&key("token_file"), &token_file_cfg)?;
        let content_token = parse_content_token(&text).map_err(|why| {
            self.err(
                &key("token_file"),
                format!(
                    "{} is not a content token: {why}",
                    shown_path(&token_file_cfg, &token_file)
                ),
            )
        })?;
        let now = self.env.now;
        if content_token.is_expired(now) {
            self.warn(format!(
                "tokens[{i}] {}: the content token expired on {}; Apple will refuse it (9621) \
                 until a new one is downloaded from Apple Business/School Manager",
                q(&name),
                content_token.exp_date.to_datetime().format("%Y-%m-%d")
            ));
        } else if content_token.exp_date.since(now) < Duration::from_secs(15 * 86400) {
            self.warn(format!(
                "tokens[{i}] {}: the content token expires on {}",
                q(&name),
                content_token.exp_date.to_datetime().format("%Y-%m-%d")
            ));
        }

        let notify_cfg = raw
            .notification_auth_token_file
            .ok_or_else(|| self.err(&key("notification_auth_token_file"), "is missing"))?;
        let (notification_auth_token_file, text) =
            self.read_secret_file(&key("notification_auth_token_file"), &notify_cfg)?;
        let notification_auth_token = self.auth_token(
            &key("notification_auth_token_file"),
            &notify_cfg,
            &notification_auth_token_file,
            &text,
        )?;

        let notification_url = match raw.notification_url {
            None => None,
            Some(u) => Some(self.notification_url(&key("notification_url"), u)?),
        };
        let max_requests_per_second = match raw.max_requests_per_second {
            None => None,
            Some(n) => {
                let n = self.positive_u32(&key("max_requests_per_second"), n)?;
                if n > apple.max_requests_per_second {
                    self.warn(format!(
                        "tokens[{i}].max_requests_per_second {n} is above \
                         apple.max_requests_per_second {}; the lower value applies",
                        apple.max_requests_per_second
                    ));
                }
                Some(n)
            }
        };
        Ok(TokenConfig {
            name,
            token_file,
            content_token,
            notification_auth_token_file,
            notification_auth_token,
            notification_url,
            max_requests_per_second,
        })
    }

    fn notification_url(&mut self, key: &str, s: String) -> Result<String, ConfigError> {
        let url = reqwest::Url::parse(&s)
            .map_err(|e| self.err(key, format!("{} is not a URL: {e}", q(&s))))?;
        self.no_userinfo(key, &url)?;
        if url.host_str().is_none() || url.fragment().is_some() {
            return Err(self.err(key, format!("{} must be an https:// URL to a host", q(&s))));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&url) => self.warn(format!(
                "{key} {} is plain http; Apple only delivers to https:// (fine for local tests)",
                q(&s)
            )),
            _ => {
                return Err(self.err(key, format!("{} must be an https:// URL", q(&s))));
            }
        }
        if s.len() > MAX_NOTIFICATION_LENGTH {
            return Err(self.err(
                key,
                format!(
                    "{} is {} characters long; Apple accepts at most {MAX_NOTIFICATION_LENGTH}",
                    q(&s),
                    s.len()
                ),
            ));
        }
        Ok(s)
    }

    /// Credentials in a URL would be printed and logged with it; refuse them, and do not
    /// echo the URL.
    fn no_userinfo(&self, key: &str, url: &reqwest::Url) -> Result<(), ConfigError> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                key,
                "must not contain a user name or password (value not shown)",
            ));
        }
        Ok(())
    }

    /// Resolves a secret path: relative paths against `$CREDENTIALS_DIRECTORY` when set, else
    /// against the config file's directory.
    fn resolve_secret(&self, configured: &str) -> PathBuf {
        let p = Path::new(configured);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match &self.env.credentials_directory {
            Some(dir) => dir.join(p),
            None => self.dir.join(p),
        }
    }

    /// Reads a secret file (capped) as UTF-8. Errors name the path, never the content.
    fn read_secret_file(
        &self,
        key: &str,
        configured: &str,
    ) -> Result<(PathBuf, String), ConfigError> {
        if configured.trim().is_empty() {
            return Err(self.err(key, "\"\" must be a file path"));
        }
        let resolved = self.resolve_secret(configured);
        let shown = shown_path(configured, &resolved);
        let cannot =
            |e: std::io::Error| self.err(key, format!("{shown} cannot be read: {}", io_reason(&e)));
        let file = std::fs::File::open(&resolved).map_err(cannot)?;
        if file.metadata().map_err(cannot)?.is_dir() {
            return Err(self.err(key, format!("{shown} is a directory, not a file")));
        }
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(self.err(
                key,
                format!(
                    "{shown} is larger than {MAX_SECRET_FILE_BYTES} bytes; is it the right file?"
                ),
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| self.err(key, format!("{shown} is not text (not valid UTF-8)")))?;
        Ok((resolved, text))
    }

    /// A bearer-style shared secret: non-empty after trimming, printable ASCII, and short
    /// enough for Apple's `maxNotificationLength`.
    fn auth_token(
        &self,
        key: &str,
        configured: &str,
        resolved: &Path,
        text: &str,
    ) -> Result<Secret, ConfigError> {
        let shown = shown_path(configured, resolved);
        let t = text.trim();
        if t.is_empty() {
            return Err(self.err(key, format!("{shown} is empty")));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.err(
                key,
                format!("{shown} must hold one token of printable ASCII without spaces"),
            ));
        }
        if t.len() > MAX_NOTIFICATION_LENGTH {
            return Err(self.err(
                key,
                format!(
                    "{shown} holds {} characters; Apple accepts at most {MAX_NOTIFICATION_LENGTH}",
                    t.len()
                ),
            ));
        }
        Ok(Secret::new(t))
    }

    fn socket_addr(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let s = value.unwrap_or_else(|| default.to_string());
        s.trim().parse().map_err(|_| {
            self.err(
                key,
                format!(
                    "{} is not an IP address and port (e.g. {})",
                    q(&s),
                    q(default)
                ),
            )
        })
    }

    fn duration(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let s = value.unwrap_or_else(|| default.to_string());
        parse_duration(&s).map_err(|_| {
            self.err(
                key,
                format!(
                    "{} is not a duration (expected e.g. \"30s\", \"5m\")",
                    q(&s)
                ),
            )
        })
    }

    fn nonzero(&self, key: &str, d: Duration) -> Result<(), ConfigError> {
        if d.is_zero() {
            return Err(self.err(key, "\"0s\" must be longer than zero"));
        }
        Ok(())
    }

    fn positive_u32(&self, key: &str, n: i64) -> Result<u32, ConfigError> {
        if n < 1 {
            return Err(self.err(key, format!("{n} must be at least 1")));
        }
        u32::try_from(n).map_err(|_| self.err(key, format!("{n} is too large")))
    }
}

/// `"acme.vpptoken"`, plus where it resolved to when that differs.
fn shown_path(configured: &str, resolved: &Path) -> String {
    if Path::new(configured) == resolved {
        q(configured)
    } else {
        format!(
            "{} (at {})",
            q(configured),
            q(&resolved.display().to_string())
        )
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Formats a duration the way config files write them (`"30s"`, `"10m"`, `"24h"`, `"30d"`),
/// using the largest unit that divides it exactly, so values round-trip through the parser.
pub fn display_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s == 0 {
        "0s".to_string()
    } else if s % 86_400 == 0 && s >= 2 * 86_400 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Accepts a bare level (`info`) or an `EnvFilter` directive list (`info,vpp_reconciler=debug`).
/// A bare word that is not a level is refused: `EnvFilter` would read it as a target name and
/// silently log nothing useful.
fn validate_log_filter(s: &str) -> Result<(), String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("it is empty".to_string());
    }
    let levels = ["trace", "debug", "info", "warn", "error", "off"];
    if !t.contains(['=', ',', '[']) {
        return if levels.iter().any(|l| l.eq_ignore_ascii_case(t)) {
            Ok(())
        } else {
            Err("expected trace, debug, info, warn, error or off".to_string())
        };
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(t)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Six fields with seconds, parsed exactly as tokio-cron-scheduler will parse it at run time.
fn validate_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "has {fields} fields; expected 6 (sec min hour day-of-month month day-of-week), \
             e.g. \"0 0 3 * * *\""
        ));
    }
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| {
            "is not a valid cron expression (sec min hour day-of-month month day-of-week), \
             e.g. \"0 0 3 * * *\""
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.daemon.log_format, LogFormat::Json);
        assert_eq!(c.daemon.log_level, "info");
        assert!(c.daemon.api_token.is_none());
        assert_eq!(c.apple.base_url, "https://vpp.itunes.apple.com/mdm/v2/");
        assert_eq!(c.apple.request_timeout, Duration::from_secs(30));
        assert_eq!(c.apple.max_requests_per_second, 15);
        assert_eq!(c.apple.max_concurrent_requests, 5);
        assert_eq!(c.apple.service_config_refresh, Duration::from_secs(300));
        assert_eq!(c.webhook.listen, "0.0.0.0:8788".parse().unwrap());
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
}
