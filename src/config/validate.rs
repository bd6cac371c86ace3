//! Turning the raw file into the typed [`Config`]: defaults, ranges, URLs, secrets' shape, and
//! one error sentence naming the key path and the offending value.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;
use crate::time::parse_duration;

use super::raw::{RawApple, RawConfig, RawDaemon, RawPush, RawReconcile, RawToken, RawWebhook};
use super::*;

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) dir: PathBuf,
    pub(super) env: &'a LoadEnv,
    pub(super) warnings: Vec<String>,
}

/// Displays a string value quoted, with control characters escaped.
pub(super) fn q(s: &str) -> String {
    format!("{s:?}")
}

impl Validator<'_> {
    pub(super) fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// Validates everything, then reads and checks every secret file.
    pub(super) fn config(&mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let public = self.public(raw)?;
        self.with_secrets(public)
    }

    /// Validates the file and resolves secret paths without opening any secret file.
    pub(super) fn public(&mut self, raw: RawConfig) -> Result<PublicConfig, ConfigError> {
        let (daemon, api_token_file, api_read_token_file) = self.daemon(raw.daemon)?;
        let apple = self.apple(raw.apple)?;
        let webhook = self.webhook(raw.webhook)?;
        let reconcile = self.reconcile(raw.reconcile)?;
        // `[push]` names a secret file: validated with the secrets (`with_secrets`).
        let push = raw.push;
        let store = match raw.store {
            Some(s) => Some(self.store(s)?),
            None => None,
        };
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
        Ok(PublicConfig {
            path: self.path.to_path_buf(),
            daemon,
            api_token_file,
            api_read_token_file,
            apple,
            webhook,
            reconcile,
            tokens,
            push,
            store,
        })
    }

    /// `[store]`: a PostgreSQL URL without a password (that lives in a secret file). The
    /// URL is shown only redacted (`store::postgres::url::redact`), even in the errors
    /// about it.
    fn store(&mut self, raw: super::raw::RawStore) -> Result<StoreConfig, ConfigError> {
        use crate::store::postgres::{tls, url as pg_url};
        let url = raw
            .url
            .ok_or_else(|| self.err("store.url", "is missing; [store] needs a postgres:// URL"))?;
        let shown = pg_url::redact(&url);
        if pg_url::has_password(&url) {
            return Err(self.err(
                "store.url",
                format!(
                    "must not contain a password ({} shows where; the value is not shown); \
                     put it in store.password_file",
                    q(&shown)
                ),
            ));
        }
        let parsed = reqwest::Url::parse(&url)
            .map_err(|_| self.err("store.url", format!("{} is not a URL", q(&shown))))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(self.err(
                "store.url",
                format!("{} must start with postgres://", q(&shown)),
            ));
        }
        if parsed.password().is_some() {
            return Err(self.err(
                "store.url",
                "must not contain a password (value not shown); put it in store.password_file",
            ));
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        if host.is_empty() {
            return Err(self.err("store.url", format!("{} names no host", q(&shown))));
        }
        // sslmode, sslrootcert and channel_binding (read when connecting).
        let (_, settings) =
            tls::TlsSettings::from_url(&url).map_err(|e| self.err("store.url", e.to_string()))?;
        if settings.weak() && !tls::is_local_host(&host) {
            self.warn(format!(
                "store.url: sslmode={} to {host}: the server's certificate is not checked, so \
                 anyone on the network between can pose as the database; use \
                 sslmode=verify-full with sslrootcert=/path/to/ca.pem",
                settings.mode
            ));
        }
        let password_file = match raw.password_file {
            Some(f) => Some(self.secret_file("store.password_file", f)?),
            None => None,
        };
        let lease_ttl = self.duration("store.lease_ttl", raw.lease_ttl, "15s")?;
        if lease_ttl < Duration::from_secs(3) {
            return Err(self.err(
                "store.lease_ttl",
                format!(
                    "{} is too short; a lease is renewed every third of it (at least \"3s\")",
                    crate::time::format_duration(lease_ttl)
                ),
            ));
        }
        Ok(StoreConfig {
            url,
            password_file,
            password: None,
            lease_ttl,
        })
    }

    /// Reads and checks the secret files a validated configuration names.
    fn with_secrets(&mut self, public: PublicConfig) -> Result<Config, ConfigError> {
        let PublicConfig {
            path,
            mut daemon,
            api_token_file,
            api_read_token_file,
            apple,
            webhook,
            reconcile,
            tokens: public_tokens,
            push: raw_push,
            mut store,
        } = public;
        if let Some(s) = store.as_mut() {
            if let Some(f) = &s.password_file {
                let text = self.read_secret_file(&f.key, f)?;
                let password = text.trim_end_matches(['\r', '\n']);
                if password.is_empty() {
                    return Err(self.err(&f.key, format!("{} is empty", f.shown())));
                }
                s.password = Some(Secret::new(password));
            }
        }
        let push = match raw_push {
            Some(p) => Some(self.push(p)?),
            None => None,
        };
        if let Some(f) = &api_token_file {
            let text = self.read_secret_file(&f.key, f)?;
            daemon.api_token = Some(self.auth_token(&f.key, f, &text)?);
        }
        if let Some(f) = &api_read_token_file {
            let text = self.read_secret_file(&f.key, f)?;
            let read = self.auth_token(&f.key, f, &text)?;
            if daemon.api_token.as_ref() == Some(&read) {
                return Err(self.err(
                    &f.key,
                    format!(
                        "{} holds the same token as daemon.api_token_file; the read-only token \
                         must differ",
                        f.shown()
                    ),
                ));
            }
            daemon.api_read_token = Some(read);
        }
        let mut tokens = Vec::with_capacity(public_tokens.len());
        for (i, t) in public_tokens.into_iter().enumerate() {
            tokens.push(self.token_secrets(i, t)?);
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
            path,
            daemon,
            apple,
            webhook,
            reconcile,
            tokens,
            push,
            store,
        })
    }

    fn push(&mut self, raw: RawPush) -> Result<PushConfig, ConfigError> {
        let url = raw
            .url
            .ok_or_else(|| self.err("push.url", "is missing; [push] needs the MDM's URL"))?;
        let parsed = reqwest::Url::parse(url.trim())
            .map_err(|_| self.err("push.url", format!("{} is not a URL", q(&url))))?;
        self.no_userinfo("push.url", &parsed)?;
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback_host(&parsed) => {}
            "http" => self.warn(format!(
                "push.url {} is plain http: changes and their signatures travel unencrypted",
                q(&url)
            )),
            other => {
                return Err(self.err(
                    "push.url",
                    format!("{} has the scheme {}; use https", q(&url), q(other)),
                ))
            }
        }
        let file = raw.secret_file.ok_or_else(|| {
            self.err(
                "push.secret_file",
                "is missing; [push] needs a Standard Webhooks secret (\"whsec_\" + base64)",
            )
        })?;
        let file = self.secret_file("push.secret_file", file)?;
        let text = self.read_secret_file("push.secret_file", &file)?;
        let shown = file.shown();
        let secret_file = file.resolved;
        if let Err(e) = crate::push::SigningKey::parse(&text) {
            return Err(self.err("push.secret_file", format!("{shown}: {e}")));
        }
        let max_batch = self.positive_u32("push.max_batch", raw.max_batch.unwrap_or(100))?;
        if max_batch > 10_000 {
            return Err(self.err(
                "push.max_batch",
                format!("{max_batch} is more than 10000 changes per request"),
            ));
        }
        let timeout = self.duration("push.timeout", raw.timeout, "10s")?;
        self.nonzero("push.timeout", timeout)?;
        let dead_after = self.duration("push.dead_after", raw.dead_after, "3d")?;
        self.nonzero("push.dead_after", dead_after)?;
        Ok(PushConfig {
            url: parsed.to_string(),
            secret_file,
            secret: Secret::new(text.trim()),
            max_batch,
            timeout,
            dead_after,
        })
    }

    /// A secret file's key and path, validated and resolved but not opened.
    fn secret_file(&self, key: &str, configured: String) -> Result<SecretFile, ConfigError> {
        if configured.trim().is_empty() {
            return Err(self.err(key, "\"\" must be a file path"));
        }
        let resolved = self.resolve_secret(&configured);
        Ok(SecretFile {
            key: key.to_string(),
            configured,
            resolved,
        })
    }

    #[allow(clippy::type_complexity)]
    fn daemon(
        &mut self,
        raw: RawDaemon,
    ) -> Result<(DaemonConfig, Option<SecretFile>, Option<SecretFile>), ConfigError> {
        let database = match raw.database {
            Some(s) if s.trim().is_empty() => {
                return Err(self.err("daemon.database", "\"\" must be a file path"))
            }
            Some(s) => self.dir.join(s),
            None => PathBuf::from(DEFAULT_DATABASE),
        };
        let api_listen = self.socket_addr("daemon.api_listen", raw.api_listen, "127.0.0.1:8787")?;
        let api_token_file = match raw.api_token_file {
            Some(f) => Some(self.secret_file("daemon.api_token_file", f)?),
            None => None,
        };
        let api_read_token_file = match raw.api_read_token_file {
            Some(f) => Some(self.secret_file("daemon.api_read_token_file", f)?),
            None => None,
        };
        let api_hosts = self.api_hosts(raw.api_hosts.unwrap_or_default())?;
        if !api_listen.ip().is_loopback() {
            self.warn(format!(
                "daemon.api_listen {} is not a loopback address; keep the local API on loopback \
                 (requests that name it must use a Host listed in daemon.api_hosts)",
                q(&api_listen.to_string())
            ));
        }
        let log_format = match raw.log_format {
            None => None,
            Some(s) => Some(s.parse().map_err(|()| {
                self.err(
                    "daemon.log_format",
                    format!("{} must be \"json\", \"text\" or \"journald\"", q(&s)),
                )
            })?),
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
        Ok((
            DaemonConfig {
                database,
                api_listen,
                api_token_file: api_token_file.as_ref().map(|f| f.resolved.clone()),
                api_token: None,
                api_read_token_file: api_read_token_file.as_ref().map(|f| f.resolved.clone()),
                api_read_token: None,
                api_hosts,
                log_format,
                log_level,
            },
            api_token_file,
            api_read_token_file,
        ))
    }

    /// `daemon.api_hosts`: host names or addresses, each with an optional port.
    fn api_hosts(&self, raw: Vec<String>) -> Result<Vec<crate::authority::Authority>, ConfigError> {
        const MAX_API_HOSTS: usize = 64;
        if raw.len() > MAX_API_HOSTS {
            return Err(self.err(
                "daemon.api_hosts",
                format!("lists {} hosts; at most {MAX_API_HOSTS}", raw.len()),
            ));
        }
        raw.iter()
            .enumerate()
            .map(|(i, h)| {
                crate::authority::Authority::parse(h.trim()).ok_or_else(|| {
                    self.err(
                        &format!("daemon.api_hosts[{i}]"),
                        format!(
                            "{} is not a host name or IP address with an optional port \
                             (e.g. \"vppr.example.com\", \"10.0.0.5:8787\", \"[fd00::5]\")",
                            q(h)
                        ),
                    )
                })
            })
            .collect()
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
        let listen = self.socket_addr("webhook.listen", raw.listen, "127.0.0.1:8788")?;
        if !listen.ip().is_loopback() {
            self.warn(format!(
                "webhook.listen {} is not a loopback address: the webhook speaks plain HTTP, so \
                 notifications and their auth token would cross the network unencrypted (and \
                 Apple delivers only to https:// URLs); bind it to 127.0.0.1 and put a \
                 TLS-terminating proxy in front (README.md, \"Exposing the webhook\")",
                q(&listen.to_string())
            ));
        }
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
    ) -> Result<PublicToken, ConfigError> {
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

        let token_file = raw
            .token_file
            .ok_or_else(|| self.err(&key("token_file"), "is missing"))?;
        let token_file = self.secret_file(&key("token_file"), token_file)?;
        let notify = raw
            .notification_auth_token_file
            .ok_or_else(|| self.err(&key("notification_auth_token_file"), "is missing"))?;
        let notification_auth_token_file =
            self.secret_file(&key("notification_auth_token_file"), notify)?;

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
        let mdm_id = match raw.mdm_id {
            None => None,
            Some(id) => {
                if id.trim().is_empty() || id.chars().any(char::is_control) || id.len() > 255 {
                    return Err(self.err(
                        &key("mdm_id"),
                        format!(
                            "{} must be a non-empty mdmInfo id of at most 255 characters, \
                             without control characters",
                            q(&id)
                        ),
                    ));
                }
                Some(id)
            }
        };
        let claim_location = raw.claim_location.unwrap_or(false);
        if notification_url.is_none() && claim_location {
            self.warn(format!(
                "tokens[{i}] {}: claim_location has no effect without notification_url \
                 (the daemon never writes Client Config then)",
                q(&name)
            ));
        } else if notification_url.is_some() && mdm_id.is_none() && !claim_location {
            self.warn(format!(
                "tokens[{i}] {}: notification_url is set but mdm_id is not: Client Config is \
                 changed only on a location whose mdmInfo.id equals mdm_id (or, with \
                 claim_location = true, one without mdmInfo)",
                q(&name)
            ));
        }
        Ok(PublicToken {
            name,
            token_file,
            notification_auth_token_file,
            notification_url,
            max_requests_per_second,
            mdm_id,
            claim_location,
        })
    }

    /// Reads one token's `.vpptoken` and notification auth token.
    fn token_secrets(&mut self, i: usize, t: PublicToken) -> Result<TokenConfig, ConfigError> {
        let PublicToken {
            name,
            token_file,
            notification_auth_token_file,
            notification_url,
            max_requests_per_second,
            mdm_id,
            claim_location,
        } = t;
        let text = self.read_secret_file(&token_file.key, &token_file)?;
        let content_token = parse_content_token(&text).map_err(|why| {
            self.err(
                &token_file.key,
                format!("{} is not a content token: {why}", token_file.shown()),
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
        let text = self.read_secret_file(
            &notification_auth_token_file.key,
            &notification_auth_token_file,
        )?;
        let notification_auth_token = self.auth_token(
            &notification_auth_token_file.key,
            &notification_auth_token_file,
            &text,
        )?;
        Ok(TokenConfig {
            name,
            token_file: token_file.resolved,
            content_token,
            notification_auth_token_file: notification_auth_token_file.resolved,
            notification_auth_token,
            notification_url,
            max_requests_per_second,
            mdm_id,
            claim_location,
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

    /// enough for Apple's `maxNotificationLength`.
    fn auth_token(&self, key: &str, file: &SecretFile, text: &str) -> Result<Secret, ConfigError> {
        let shown = file.shown();
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
pub(super) fn shown_path(configured: &str, resolved: &Path) -> String {
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

/// Six fields with seconds, parsed exactly as the scheduler will parse it at run time.
fn validate_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "has {fields} fields; expected 6 (sec min hour day-of-month month day-of-week), \
             e.g. \"0 0 3 * * *\""
        ));
    }
    crate::schedule::parse_schedule(expr)
        .map(|_| ())
        .map_err(|_| {
            "is not a valid cron expression (sec min hour day-of-month month day-of-week), \
             e.g. \"0 0 3 * * *\""
                .to_string()
        })
}
