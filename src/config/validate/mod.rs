//! Turning the raw file into the typed [`Config`]: defaults, ranges, URLs, secrets' shape, and
//! one error sentence naming the key path and the offending value.
//!
//! Here the [`Validator`] and the whole pass (the file, then its secret files); one file per
//! section below it (`daemon.rs`, `apple.rs`, `webhook.rs`, `reconcile.rs`, `tokens.rs`,
//! `push.rs`, `store.rs`), and the checks of single values they share (`values.rs`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;
use crate::time::parse_duration;

use super::raw::{RawApple, RawConfig, RawDaemon, RawPush, RawReconcile, RawToken, RawWebhook};
use super::*;

mod apple;
mod daemon;
mod push;
mod reconcile;
mod store;
mod tokens;
mod values;
mod webhook;

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
