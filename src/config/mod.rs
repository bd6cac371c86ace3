//! Configuration (config/vpp-reconciler.toml): the TOML file, typed and validated, with every secret file read
//! and checked at load time so that a bad deployment fails at start (or in `check-config`)
//! rather than at the first Apple call.
//!
//! Parsing is two-step: serde reads the file into `Raw*` structs (`deny_unknown_fields`, every
//! key optional), then [`load`] validates them into the typed [`Config`], applying defaults.
//! Keeping defaults out of serde lets every error name the key path and the offending value.
//!
//! Errors are one sentence prefixed by the config path; they never contain a secret or the
//! content of a secret file.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::secret::Secret;

mod load;
mod raw;
#[cfg(test)]
mod tests;
mod validate;
mod vpptoken;

pub use load::{
    credential_name, load, load_public, load_public_with, load_with, parse_public, LoadEnv,
};
pub use vpptoken::{parse_apple_date, parse_content_token, ContentToken, ContentTokenError};

/// Default location of the configuration file (README.md).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vpp-reconciler/config.toml";
/// The directory beside the configuration whose files the shipped systemd unit hands to the
/// service (`LoadCredential=credentials:/etc/vpp-reconciler/credentials`); secret paths in
/// it are written `credentials/NAME` in the configuration.
pub const CREDENTIALS_SUBDIR: &str = "credentials";
/// Default SQLite file (config/vpp-reconciler.toml).
pub const DEFAULT_DATABASE: &str = "/var/lib/vpp-reconciler/state.db";
/// Apple's `maxNotificationLength`: the longest notification URL or auth token it accepts.
pub const MAX_NOTIFICATION_LENGTH: usize = 512;
/// Apple's documented floor between Event Status polls of one event.
pub const APPLE_POLL_FLOOR: Duration = Duration::from_secs(30);
/// Apple's advice: wait this long for notifications before polling.
pub const APPLE_NOTIFICATION_GRACE: Duration = Duration::from_secs(300);
/// Apple: at most 5 parallel page fetches per token.
pub const APPLE_MAX_CONCURRENT: usize = 5;

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

/// A configuration validated without opening any secret file, and its warnings.
#[derive(Debug, Clone)]
pub struct PublicLoaded {
    pub config: PublicConfig,
    pub warnings: Vec<String>,
}

/// The configuration as the read-only commands see it: every key validated and every secret
/// path resolved, no secret read. `daemon.api_token` and `daemon.api_read_token` are always
/// `None` here.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicConfig {
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    pub api_token_file: Option<SecretFile>,
    pub api_read_token_file: Option<SecretFile>,
    pub apple: AppleConfig,
    pub webhook: WebhookConfig,
    pub reconcile: ReconcileConfig,
    pub tokens: Vec<PublicToken>,
    /// `[push]` as written; it names a secret file, so it is checked with the secrets.
    pub push: Option<raw::RawPush>,
    /// `[store]` (README "PostgreSQL"): PostgreSQL instead of the SQLite file, when set.
    pub store: Option<StoreConfig>,
}

/// `[store]`: shared state on PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `postgres://user@host:port/database`, without a password; libpq's `sslmode` and
    /// `sslrootcert` in its query (`crate::store::postgres::tls`).
    pub url: String,
    pub password_file: Option<SecretFile>,
    /// Read with the secrets; `None` for read-only commands or without a password file.
    pub password: Option<Secret>,
    /// How long a token's lease lasts without renewal (renewed at a third of it).
    pub lease_ttl: Duration,
}

impl PublicConfig {
    /// Every secret file the configuration names, in file order.
    pub fn secret_files(&self) -> Vec<&SecretFile> {
        let mut v: Vec<&SecretFile> = self.api_token_file.iter().collect();
        v.extend(self.api_read_token_file.iter());
        for t in &self.tokens {
            v.push(&t.token_file);
            v.push(&t.notification_auth_token_file);
        }
        v.extend(self.store.iter().filter_map(|s| s.password_file.as_ref()));
        v
    }
}

/// A token's settings without its secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicToken {
    pub name: String,
    pub token_file: SecretFile,
    pub notification_auth_token_file: SecretFile,
    pub notification_url: Option<String>,
    pub max_requests_per_second: Option<u32>,
    pub mdm_id: Option<String>,
    pub claim_location: bool,
}

/// A secret file named by the configuration: its key path, the value as written, and where it
/// resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretFile {
    /// e.g. `tokens[0].token_file`.
    pub key: String,
    pub configured: String,
    pub resolved: PathBuf,
}

impl SecretFile {
    /// `"acme.vpptoken"`, plus where it resolved to when that differs.
    pub fn shown(&self) -> String {
        validate::shown_path(&self.configured, &self.resolved)
    }
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
    /// `[push]` (README "Using it"), when set.
    pub push: Option<PushConfig>,
    /// `[store]` (README "PostgreSQL"), when set: PostgreSQL instead of `daemon.database`.
    pub store: Option<StoreConfig>,
}

/// `[push]`: its settings are the push module's own type, which validation builds.
pub use crate::push::PushConfig;

impl Config {
    pub fn token(&self, name: &str) -> Option<&TokenConfig> {
        self.tokens.iter().find(|t| t.name == name)
    }

    /// The store this configuration names: PostgreSQL with `[store]`, else the SQLite file
    /// `daemon.database`.
    pub fn store_target(&self) -> crate::store::Target {
        match &self.store {
            Some(s) => crate::store::Target::Postgres {
                url: s.url.clone(),
                password: s.password.clone(),
                lease_ttl: s.lease_ttl,
            },
            None => crate::store::Target::Sqlite(self.daemon.database.clone()),
        }
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
    /// The local API's token file; `None`: `api-token` beside the database, created by the
    /// daemon at its first start ([`crate::api::token_file`]).
    pub api_token_file: Option<PathBuf>,
    /// Read with the secrets when `api_token_file` is set.
    pub api_token: Option<Secret>,
    /// Optional read-only token (GET routes and the status page only).
    pub api_read_token_file: Option<PathBuf>,
    pub api_read_token: Option<Secret>,
    /// `Host` names (maybe with ports) the local API answers besides loopback ones.
    pub api_hosts: Vec<crate::authority::Authority>,
    /// `None`: not configured; journald when stderr is the journal, else JSON
    /// ([`crate::telemetry::choose_format`]).
    pub log_format: Option<LogFormat>,
    /// A tracing `EnvFilter` string, validated.
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
    /// Native journal entries (tracing-journald): fields become journal fields (`TOKEN=`,
    /// `EVENT_ID=`, `SYNC_ID=`).
    Journald,
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            "journald" => Ok(LogFormat::Journald),
            _ => Err(()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
            LogFormat::Journald => "journald",
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
    /// Six fields, with seconds, in UTC (`schedule::parse_schedule`).
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
    /// The `mdmInfo.id` of the MDM this location belongs to (config/vpp-reconciler.toml). With
    /// `notification_url` set, Client Config is changed only while the location's mdmInfo.id
    /// equals it.
    pub mdm_id: Option<String>,
    /// Opt-in: a location without any mdmInfo may be claimed (Client Config set, with mdmInfo
    /// from `mdm_id` when given). Off by default: such a location is left alone.
    pub claim_location: bool,
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

/// Formats a duration the way config files write them (`"30s"`, `"10m"`, `"24h"`, `"30d"`),
/// using the largest unit that divides it exactly, so values round-trip through the parser.
pub fn display_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s == 0 {
        "0s".to_string()
    } else if s.is_multiple_of(86_400) && s >= 2 * 86_400 {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
