//! The one owner of token state while the daemon runs (docs/architecture.md, "Tokens"):
//! - [`Registry`]: the configured tokens and what was learned about them (the location's
//!   uId), as one immutable snapshot replaced atomically on reload. The webhook, the local
//!   API, the scheduler and upkeep all read it; nobody keeps a copy.
//! - [`HealthWriter`]: the one writer of token health. The Apple client is the source of truth
//!   (it sees Apple's answers); the writer records each change in the store once, logs it
//!   once, and is run right after a reload so `tokens` and `/healthz` are right at once.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::apple::{AppleClient, TokenHealth};
use crate::config::TokenConfig;
use crate::store::{Store, TokenStatus};
use crate::time::Timestamp;

/// One configured token as the daemon knows it now.
#[derive(Clone, Debug)]
pub struct Token {
    pub config: TokenConfig,
    /// The location's uId once learned from Apple (Client Config); notifications for another
    /// uId are refused.
    pub uid: Option<String>,
}

type Snapshot = Arc<BTreeMap<String, Arc<Token>>>;

/// The configured tokens. Cheap to clone; readers get a consistent snapshot.
#[derive(Clone, Default)]
pub struct Registry {
    current: Arc<RwLock<Snapshot>>,
}

impl Registry {
    pub fn new(tokens: &[TokenConfig]) -> Registry {
        let r = Registry::default();
        r.replace(tokens);
        r
    }

    /// With learned uIds, e.g. read back from the store at start.
    pub fn with_uids(tokens: &[TokenConfig], uids: &BTreeMap<String, String>) -> Registry {
        let r = Registry::new(tokens);
        for (name, uid) in uids {
            r.set_uid(name, uid);
        }
        r
    }

    pub fn snapshot(&self) -> Snapshot {
        self.current
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Token>> {
        self.snapshot().get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.snapshot().contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.snapshot().keys().cloned().collect()
    }

    pub fn configs(&self) -> Vec<TokenConfig> {
        self.snapshot().values().map(|t| t.config.clone()).collect()
    }

    /// Replaces the configured tokens (reload). A token that keeps its name keeps its learned
    /// uId unless its content token changed (it may be another location now).
    pub fn replace(&self, tokens: &[TokenConfig]) {
        let old = self.snapshot();
        let next: BTreeMap<String, Arc<Token>> = tokens
            .iter()
            .map(|c| {
                let uid = old
                    .get(&c.name)
                    .filter(|t| t.config.content_token.raw == c.content_token.raw)
                    .and_then(|t| t.uid.clone());
                (
                    c.name.clone(),
                    Arc::new(Token {
                        config: c.clone(),
                        uid,
                    }),
                )
            })
            .collect();
        self.swap(next);
    }

    /// Records the uId Apple reported for a token's location.
    pub fn set_uid(&self, name: &str, uid: &str) {
        let old = self.snapshot();
        let Some(t) = old.get(name) else {
            return;
        };
        if t.uid.as_deref() == Some(uid) {
            return;
        }
        let mut next = (*old).clone();
        next.insert(
            name.to_string(),
            Arc::new(Token {
                config: t.config.clone(),
                uid: Some(uid.to_string()),
            }),
        );
        self.swap(next);
    }

    fn swap(&self, next: BTreeMap<String, Arc<Token>>) {
        let mut w = self.current.write().unwrap_or_else(|e| e.into_inner());
        *w = Arc::new(next);
    }
}

/// Health as recorded: healthy or not, and why.
type Recorded = (bool, Option<String>);

/// The one writer of token health (see the module docs).
pub struct HealthWriter {
    client: AppleClient,
    store: Store,
    registry: Registry,
    last: tokio::sync::Mutex<BTreeMap<String, Recorded>>,
    /// The end of each token's last Retry-After as recorded.
    paused: tokio::sync::Mutex<BTreeMap<String, Timestamp>>,
}

impl HealthWriter {
    pub fn new(client: AppleClient, store: Store, registry: Registry) -> Arc<HealthWriter> {
        Arc::new(HealthWriter {
            client,
            store,
            registry,
            last: tokio::sync::Mutex::new(BTreeMap::new()),
            paused: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Writes every token whose health differs from what was last recorded.
    pub async fn write_changes(&self) {
        let mut last = self.last.lock().await;
        let names = self.registry.names();
        last.retain(|n, _| names.contains(n));
        for name in names {
            // Only the token's holder knows its health (several instances; with one, every
            // token is held).
            if !self.client.may_call(&name) {
                continue;
            }
            self.record_pause(&name).await;
            let Some(health) = self.client.token_health(&name) else {
                continue;
            };
            let (healthy, reason, since) = match &health {
                TokenHealth::Healthy => (true, None, Timestamp::now()),
                TokenHealth::Unhealthy { reason, since } => {
                    (false, Some(reason.to_string()), *since)
                }
            };
            let status = TokenStatus::new(feed_health(&health), reason.clone());
            let now: Recorded = (healthy, reason.clone());
            if last.get(&name) == Some(&now) {
                continue;
            }
            if healthy {
                tracing::info!(token = %name, "token is healthy");
            } else {
                tracing::error!(token = %name, reason = reason.as_deref().unwrap_or(""),
                    "token is unhealthy; its traffic stops until the configuration is reloaded");
            }
            let label = if healthy { "healthy" } else { "unhealthy" };
            let r = self
                .store
                .set_token_health(&name, label, reason, since, status)
                .await;
            match r {
                Ok(()) => {
                    last.insert(name, now);
                }
                Err(e) => tracing::error!(error = %e, "cannot record token health"),
            }
        }
    }

    /// Records a Retry-After newer than the one recorded, so the next holder of the token's
    /// lease honours it too (docs/architecture.md, "Several instances").
    async fn record_pause(&self, name: &str) {
        let Some(until) = self.client.retry_after_until(name) else {
            return;
        };
        let mut paused = self.paused.lock().await;
        if until <= Timestamp::now() || paused.get(name).is_some_and(|p| *p >= until) {
            return;
        }
        match self.store.record_pause(name, until).await {
            Ok(()) => {
                paused.insert(name.to_string(), until);
            }
            Err(e) => tracing::warn!(token = %name, error = %e, "cannot record a Retry-After"),
        }
    }

    /// Writes changes whenever the client reports one, until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.client.health_changes();
        loop {
            self.write_changes().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
        }
    }
}

/// The feed's word for a token's health (README "Using it").
pub fn feed_health(health: &TokenHealth) -> &'static str {
    use crate::apple::ApiError;
    match health {
        TokenHealth::Healthy => "healthy",
        TokenHealth::Unhealthy { reason, .. } => match reason {
            ApiError::TokenExpired => "expired",
            ApiError::TokenRevoked => "revoked",
            ApiError::Unauthorized { .. } => "unauthorized",
            _ => "unhealthy",
        },
    }
}
