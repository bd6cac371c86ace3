//! The async Apple client: one [`Gate`] and one semaphore per token around reqwest.
//!
//! Invariants:
//! - Every authenticated request passes its token's gate *after* acquiring a concurrency
//!   permit and immediately before it is sent, so a Retry-After or backoff that arrived while
//!   it queued is honoured. The gate's mutex is never held across an await.
//! - Reads are retried (up to `read_retries`) on retryable errors, each retry through the
//!   gate again. Writes are retried only when Apple provably did not process them: a connect
//!   error, a 429/9646, or a 5xx that came with an ErrorResponse body.
//! - A token problem (expired, revoked, unauthorized) marks the token unhealthy; every later
//!   call is refused locally until `set_token` is called again.
//! - Every response body is read with a cap ([`body_cap`]: 16 MiB for a page or an Event
//!   Status, 1 MiB for the rest): a larger `Content-Length` is refused unread, and a body
//!   without one is read in chunks only up to the cap; past it the answer is
//!   [`ApiError::TooLarge`], never a growing buffer.
//! - The sToken only ever leaves through the `Authorization` header (reqwest marks it
//!   sensitive); errors are scrubbed of it.
//!
//! Files: the client, its options and per-token state, the tokens and Service Config here;
//! the endpoints Apple offers (`endpoints.rs`); sending one call through the token's gate,
//! with retries, metrics and health (`send.rs`); reading and decoding a response within its
//! body cap (`body.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::secret::Secret;
use crate::time::Timestamp;

use super::error::{error_body, parse_retry_after, truncate, ApiError};
use super::gate::{Gate, GateConfig, Outcome};
use super::hooks::{Observer, SendGate};
use super::model::{
    Assignment, ClientConfigRequest, ClientConfigResponse, EventResponse, GetAssetsResponse,
    GetAssignmentsResponse, GetUsersResponse, Limits, RequestKind, ResponseAsset, ResponseUser,
    ServiceConfig, StatusResponse,
};
use super::pagination::{
    traverse, traverse_into, Page, PageSink, StreamError, Streamed, Traversal,
};

mod body;
mod endpoints;
mod send;
#[cfg(test)]
mod tests;

use body::decode;
use send::retry_delay;

pub use body::{body_cap, decode_response, LARGE_BODY_CAP, SMALL_BODY_CAP};

/// The Service Config `urls` keys this client calls.
const USED_URL_KEYS: [&str; 11] = [
    "clientConfig",
    "getAssets",
    "getAssignments",
    "getUsers",
    "associateAssets",
    "disassociateAssets",
    "revokeAssets",
    "createUsers",
    "updateUsers",
    "retireUsers",
    "eventStatus",
];

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// e.g. `https://vpp.itunes.apple.com/mdm/v2/` (a missing trailing `/` is added).
    pub base_url: String,
    pub request_timeout: Duration,
    /// Upper bound per token; Service Config's `maxRequestPerSecond` and a per-token cap may
    /// lower it.
    pub max_requests_per_second: u32,
    /// Per token; page fetches use at most min(5, this).
    pub max_concurrent_requests: usize,
    /// Extra attempts for a read after a retryable error.
    pub read_retries: u32,
    /// Where calls and their latency are reported (the daemon passes its metrics registry;
    /// the default reports nowhere).
    pub metrics: Observer,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            base_url: "https://vpp.itunes.apple.com/mdm/v2/".into(),
            request_timeout: Duration::from_secs(30),
            max_requests_per_second: 15,
            max_concurrent_requests: 5,
            read_retries: 3,
            metrics: Observer::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenHealth {
    Healthy,
    Unhealthy { reason: ApiError, since: Timestamp },
}

#[derive(Clone)]
pub struct AppleClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppleClient")
            .field("base_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

struct Inner {
    clock: Clock,
    http: reqwest::Client,
    opts: ClientOptions,
    base: Url,
    service: RwLock<Option<ServiceState>>,
    tokens: Mutex<HashMap<String, Arc<TokenSlot>>>,
    /// Bumped whenever a token's health may have changed; see [`AppleClient::health_changes`].
    health: tokio::sync::watch::Sender<u64>,
    /// False while the start-up Service Config read runs: authenticated requests wait for
    /// it (bounded), so they start at Apple's limits, while the daemon already serves.
    warm: tokio::sync::watch::Sender<bool>,
    /// Which tokens this instance may call Apple for (several instances: the lease holder's);
    /// `None`: every token.
    send_gate: RwLock<Option<Arc<dyn SendGate>>>,
}

struct ServiceState {
    urls: BTreeMap<String, Url>,
    limits: Limits,
}

struct TokenSlot {
    permits: Semaphore,
    state: Mutex<TokenState>,
}

struct TokenState {
    stoken: Secret,
    max_rps: Option<u32>,
    gate: Gate,
}

/// Wall-clock time at creation plus monotonic time since: never runs backwards, so a clock
/// step cannot make the gate wait for an hour (or not at all). Gate state is in-memory only,
/// so it needs no persistence-proof wall clock.
struct Clock {
    wall: Timestamp,
    mono: std::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall: Timestamp::now(),
            mono: std::time::Instant::now(),
        }
    }
    fn now(&self) -> Timestamp {
        self.wall.saturating_add(self.mono.elapsed())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppleClient {
    pub fn new(opts: ClientOptions) -> Result<AppleClient, ApiError> {
        let mut base = opts.base_url.trim().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let base = Url::parse(&base)
            .map_err(|e| ApiError::Config(format!("base_url {:?}: {e}", opts.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ApiError::Config(format!(
                "base_url {:?} must be http or https",
                opts.base_url
            )));
        }
        if opts.max_requests_per_second == 0 {
            return Err(ApiError::Config(
                "max_requests_per_second must be at least 1".into(),
            ));
        }
        if opts.max_concurrent_requests == 0 {
            return Err(ApiError::Config(
                "max_concurrent_requests must be at least 1".into(),
            ));
        }
        if opts.request_timeout.is_zero() {
            return Err(ApiError::Config("request_timeout must be positive".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .connect_timeout(opts.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("vpp-reconciler/", env!("CARGO_PKG_VERSION")))
            // Apple's endpoints are fixed; a redirect would carry the bearer token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Config(format!("HTTP client: {e}")))?;
        Ok(AppleClient {
            inner: Arc::new(Inner {
                clock: Clock::new(),
                http,
                opts,
                base,
                service: RwLock::new(None),
                tokens: Mutex::new(HashMap::new()),
                health: tokio::sync::watch::channel(0).0,
                warm: tokio::sync::watch::channel(true).0,
                send_gate: RwLock::new(None),
            }),
        })
    }

    /// Reads Service Config in the background; authenticated requests wait for its answer,
    /// for at most `bound` (Apple may be down: the configured limits then apply).
    pub fn warm_up(&self, bound: Duration) {
        self.inner.warm.send_replace(false);
        let client = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(bound, client.service_config()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "cannot read Service Config at start; using the configured limits"
                ),
                Err(_) => tracing::warn!(
                    "Service Config did not answer within {}; using the configured limits",
                    crate::time::format_duration(bound)
                ),
            }
            client.inner.warm.send_replace(true);
        });
    }

    // ---- tokens ---------------------------------------------------------------------------

    /// Adds or replaces a token. Replacing keeps the rate history (the server still counts
    /// those requests) but clears `Unhealthy`: this is how a config reload retries a token.
    pub fn set_token(&self, name: &str, stoken: Secret, max_rps: Option<u32>) {
        let rps = self.effective_rps(max_rps);
        let mut tokens = lock(&self.inner.tokens);
        let update = |slot: &TokenSlot, stoken: Secret| {
            let mut st = lock(&slot.state);
            st.stoken = stoken;
            st.max_rps = max_rps;
            st.gate.set_rps(rps);
            st.gate.reset_health();
        };
        self.health_changed();
        // Apple limits requests per sToken (location): two names for one content token share
        // one gate and one concurrency limit.
        let shared = tokens
            .iter()
            .find(|(n, s)| n.as_str() != name && lock(&s.state).stoken == stoken)
            .map(|(_, s)| s.clone());
        if let Some(slot) = shared {
            update(&slot, stoken);
            tokens.insert(name.to_string(), slot);
            return;
        }
        if let Some(slot) = tokens.get(name).cloned() {
            let alone = !tokens
                .iter()
                .any(|(n, s)| n.as_str() != name && Arc::ptr_eq(s, &slot));
            if alone {
                update(&slot, stoken);
                return;
            }
        }
        let slot = TokenSlot {
            permits: Semaphore::new(self.inner.opts.max_concurrent_requests),
            state: Mutex::new(TokenState {
                stoken,
                max_rps,
                gate: Gate::new(GateConfig::new(rps, rand::random())),
            }),
        };
        tokens.insert(name.to_string(), Arc::new(slot));
    }

    pub fn remove_token(&self, name: &str) {
        lock(&self.inner.tokens).remove(name);
        self.health_changed();
    }

    /// Wakes whenever a token's health may have changed (marked unhealthy, or reset by
    /// [`AppleClient::set_token`]); read the health with [`AppleClient::token_health`].
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.health.subscribe()
    }

    fn health_changed(&self) {
        self.inner.health.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn token_health(&self, name: &str) -> Option<TokenHealth> {
        let slot = self.slot(name).ok()?;
        let st = lock(&slot.state);
        Some(match st.gate.unhealthy() {
            None => TokenHealth::Healthy,
            Some(r) => TokenHealth::Unhealthy {
                reason: r.reason.clone(),
                since: r.since,
            },
        })
    }

    /// Last Service Config limits, if Service Config was read.
    pub fn limits(&self) -> Option<Limits> {
        self.read_service(|s| s.limits.clone())
    }

    fn slot(&self, name: &str) -> Result<Arc<TokenSlot>, ApiError> {
        lock(&self.inner.tokens)
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::UnknownToken {
                token: name.to_string(),
            })
    }

    fn read_service<R>(&self, f: impl FnOnce(&ServiceState) -> R) -> Option<R> {
        let g = self.inner.service.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(f)
    }

    fn effective_rps(&self, token_max: Option<u32>) -> u32 {
        let service = self
            .read_service(|s| s.limits.max_request_per_second())
            .flatten();
        [
            Some(self.inner.opts.max_requests_per_second),
            token_max,
            service,
        ]
        .into_iter()
        .flatten()
        .filter(|n| *n > 0)
        .min()
        .unwrap_or(1)
    }

    /// Service Config URL for `key`, else `{base}{path}`.
    fn url(&self, key: &str, path: &str) -> Url {
        self.read_service(|s| s.urls.get(key).cloned())
            .flatten()
            .unwrap_or_else(|| self.default_url(path))
    }

    fn default_url(&self, path: &str) -> Url {
        // `path` is one of our constants; joining it onto a valid base cannot fail.
        self.inner
            .base
            .join(path)
            .unwrap_or_else(|_| self.inner.base.clone())
    }

    // ---- endpoints ------------------------------------------------------------------------

    /// `GET service/config` (no auth). Stores URLs and limits for every later call and lowers
    /// each token's rate to `maxRequestPerSecond` if that is lower.
    pub async fn service_config(&self) -> Result<ServiceConfig, ApiError> {
        let url = self.default_url("service/config");
        let mut attempt = 0;
        let bytes = loop {
            let a = self.send_unauthenticated(url.clone()).await;
            match a {
                Ok(b) => break b,
                Err(e) if e.is_retryable() && attempt < self.inner.opts.read_retries => {
                    attempt += 1;
                    tokio::time::sleep(e.retry_after().unwrap_or(retry_delay(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        };
        let config: ServiceConfig = decode("service/config", &bytes)?;
        self.store_service_config(&config);
        Ok(config)
    }

    fn store_service_config(&self, config: &ServiceConfig) {
        let mut urls = BTreeMap::new();
        for (key, value) in &config.urls {
            match Url::parse(value) {
                // Never let a config downgrade https to http or switch to another scheme:
                // these URLs receive the bearer token.
                Ok(u)
                    if u.scheme() == self.inner.base.scheme()
                        && same_site(&self.inner.base, &u) =>
                {
                    urls.insert(key.clone(), u);
                }
                // Keys the daemon never calls (contentMetadataLookup, invitationEmail) are
                // not worth a warning.
                _ if !USED_URL_KEYS.contains(&key.as_str()) => {
                    tracing::debug!(key = %key, url = %value, "ignoring Service Config URL");
                }
                _ => tracing::warn!(key = %key, url = %value, "ignoring Service Config URL"),
            }
        }
        {
            let mut g = self
                .inner
                .service
                .write()
                .unwrap_or_else(|e| e.into_inner());
            *g = Some(ServiceState {
                urls,
                limits: config.limits.clone(),
            });
        }
        let slots: Vec<Arc<TokenSlot>> = lock(&self.inner.tokens).values().cloned().collect();
        for slot in slots {
            let mut st = lock(&slot.state);
            let rps = self.effective_rps(st.max_rps);
            st.gate.set_rps(rps);
        }
    }
}

/// Whether a Service Config URL may receive the bearer token: the base URL's host, or, when
/// the base is Apple's, any Apple host (Apple says its URLs can move).
fn same_site(base: &Url, u: &Url) -> bool {
    let apple = |h: Option<&str>| h.is_some_and(|h| h == "apple.com" || h.ends_with(".apple.com"));
    if apple(base.host_str()) {
        return apple(u.host_str());
    }
    base.host_str() == u.host_str()
}
