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

/// Largest body accepted from a paginated read or Event Status (a page is "on the order of
/// several hundred" records; an event's failures are bounded by its entities).
pub const LARGE_BODY_CAP: usize = 16 * 1024 * 1024;
/// Largest body accepted from every other endpoint (Service Config, Client Config, a
/// write's answer: a few kilobytes each).
pub const SMALL_BODY_CAP: usize = 1024 * 1024;

/// The body size cap of `endpoint` (the client's endpoint labels).
pub fn body_cap(endpoint: &str) -> usize {
    match endpoint {
        "assets" | "assignments" | "users" | "status" => LARGE_BODY_CAP,
        _ => SMALL_BODY_CAP,
    }
}

/// Attempts for a write whose earlier attempt provably never reached Apple's processing.
const WRITE_ATTEMPTS: u32 = 3;

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

/// One HTTP request to make.
struct Call {
    endpoint: &'static str,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
}

impl Call {
    fn is_read(&self) -> bool {
        self.method == Method::GET
    }
}

/// The result of one attempt, with whether it failed before any byte reached the server.
struct Attempt {
    result: Result<Vec<u8>, ApiError>,
    connect_failed: bool,
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

    pub async fn client_config(&self, token: &str) -> Result<ClientConfigResponse, ApiError> {
        let url = self.url("clientConfig", "client/config");
        self.json(token, "client/config", Method::GET, url, None)
            .await
    }

    pub async fn set_client_config(
        &self,
        token: &str,
        req: &ClientConfigRequest,
    ) -> Result<ClientConfigResponse, ApiError> {
        let url = self.url("clientConfig", "client/config");
        let body = serde_json::to_vec(req).map_err(|e| ApiError::Decode {
            endpoint: "client/config".into(),
            detail: format!("encoding the request: {e}"),
        })?;
        self.json(token, "client/config", Method::POST, url, Some(body))
            .await
    }

    /// `GET status?eventId=…` (Apple's documented form; the id is a query parameter).
    pub async fn event_status(
        &self,
        token: &str,
        event_id: &str,
    ) -> Result<StatusResponse, ApiError> {
        let mut url = self.url("eventStatus", "status");
        url.query_pairs_mut().append_pair("eventId", event_id);
        self.json(token, "status", Method::GET, url, None).await
    }

    /// Submits a write. `body` is sent as given (split it with `split_request` first).
    pub async fn submit(
        &self,
        token: &str,
        kind: RequestKind,
        body: &serde_json::Value,
    ) -> Result<EventResponse, ApiError> {
        let url = self.url(kind.url_key(), kind.default_path());
        let body = serde_json::to_vec(body).map_err(|e| ApiError::Decode {
            endpoint: kind.default_path().into(),
            detail: format!("encoding the request: {e}"),
        })?;
        self.json(token, kind.default_path(), Method::POST, url, Some(body))
            .await
    }

    pub async fn get_assets(&self, token: &str) -> Result<Traversal<ResponseAsset>, ApiError> {
        let base = self.url("getAssets", "assets");
        self.traverse::<GetAssetsResponse, ResponseAsset>(token, "assets", base, None)
            .await
    }

    pub async fn get_assignments(
        &self,
        token: &str,
        since_version: Option<&str>,
    ) -> Result<Traversal<Assignment>, ApiError> {
        let base = self.url("getAssignments", "assignments");
        self.traverse::<GetAssignmentsResponse, Assignment>(
            token,
            "assignments",
            base,
            since_version,
        )
        .await
    }

    pub async fn get_users(
        &self,
        token: &str,
        since_version: Option<&str>,
    ) -> Result<Traversal<ResponseUser>, ApiError> {
        let base = self.url("getUsers", "users");
        self.traverse::<GetUsersResponse, ResponseUser>(token, "users", base, since_version)
            .await
    }

    /// Streams Get Assets into `sink` (see [`traverse_into`]).
    pub async fn stream_assets<S: PageSink<ResponseAsset>>(
        &self,
        token: &str,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>> {
        let base = self.url("getAssets", "assets");
        self.traverse_into::<GetAssetsResponse, ResponseAsset, S>(token, "assets", base, None, sink)
            .await
    }

    /// Streams Get Assignments into `sink` (see [`traverse_into`]).
    pub async fn stream_assignments<S: PageSink<Assignment>>(
        &self,
        token: &str,
        since_version: Option<&str>,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>> {
        let base = self.url("getAssignments", "assignments");
        self.traverse_into::<GetAssignmentsResponse, Assignment, S>(
            token,
            "assignments",
            base,
            since_version,
            sink,
        )
        .await
    }

    /// Streams Get Users into `sink` (see [`traverse_into`]).
    pub async fn stream_users<S: PageSink<ResponseUser>>(
        &self,
        token: &str,
        since_version: Option<&str>,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>> {
        let base = self.url("getUsers", "users");
        self.traverse_into::<GetUsersResponse, ResponseUser, S>(
            token,
            "users",
            base,
            since_version,
            sink,
        )
        .await
    }

    async fn traverse<R, T>(
        &self,
        token: &str,
        endpoint: &'static str,
        base: Url,
        since_version: Option<&str>,
    ) -> Result<Traversal<T>, ApiError>
    where
        R: DeserializeOwned + Into<Page<T>>,
        T: super::pagination::Record + Send,
    {
        let fetch = |page: u32| {
            let url = page_url(&base, page, since_version);
            async move {
                let r: R = self.json(token, endpoint, Method::GET, url, None).await?;
                Ok(self.redact_page(token, r.into()))
            }
        };
        traverse(
            fetch,
            self.inner.opts.max_concurrent_requests,
            since_version.is_some(),
        )
        .await
    }

    async fn traverse_into<R, T, S>(
        &self,
        token: &str,
        endpoint: &'static str,
        base: Url,
        since_version: Option<&str>,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>>
    where
        R: DeserializeOwned + Into<Page<T>>,
        T: super::pagination::Record,
        S: PageSink<T>,
    {
        let fetch = |page: u32| {
            let url = page_url(&base, page, since_version);
            async move {
                let r: R = self.json(token, endpoint, Method::GET, url, None).await?;
                Ok(self.redact_page(token, r.into()))
            }
        };
        traverse_into(
            fetch,
            self.inner.opts.max_concurrent_requests,
            since_version.is_some(),
            sink,
        )
        .await
    }

    fn redact_page<T>(&self, token: &str, page: Page<T>) -> Page<T> {
        if page.undecodable_samples.is_empty() {
            return page;
        }
        match self.slot(token) {
            Ok(slot) => page.redact(lock(&slot.state).stoken.expose()),
            Err(_) => page,
        }
    }

    // ---- transport ------------------------------------------------------------------------

    async fn json<T: DeserializeOwned>(
        &self,
        token: &str,
        endpoint: &'static str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let call = Call {
            endpoint,
            method,
            url,
            body,
        };
        let bytes = self.call(token, &call).await?;
        // serde quotes offending values; a server echoing the token must not leak it.
        decode(endpoint, &bytes).map_err(|e| match self.slot(token) {
            Ok(slot) => e.redact(lock(&slot.state).stoken.expose()),
            Err(_) => e,
        })
    }

    /// Sends `call` for `token` with gating and the retry rules of the module docs.
    async fn call(&self, token: &str, call: &Call) -> Result<Vec<u8>, ApiError> {
        let slot = self.slot(token)?;
        let max_attempts = if call.is_read() {
            self.inner.opts.read_retries.saturating_add(1)
        } else {
            WRITE_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            let a = self.attempt(token, &slot, call).await;
            let err = match a.result {
                Ok(b) => return Ok(b),
                Err(e) => e,
            };
            let may_retry = if err.is_token_problem() {
                false
            } else if call.is_read() {
                err.is_retryable()
            } else {
                a.connect_failed
                    || matches!(err, ApiError::RateLimited { .. })
                    || matches!(
                        err,
                        ApiError::Unavailable {
                            number: Some(_),
                            ..
                        }
                    )
            };
            if !may_retry || attempt >= max_attempts {
                return Err(err);
            }
            tracing::debug!(token, endpoint = call.endpoint, attempt, error = %err, "retrying");
            // Rate limits and Retry-After are enforced by the gate; other failures get a
            // short pause so a flapping connection is not hammered.
            if err.retry_after().is_none() && !matches!(err, ApiError::RateLimited { .. }) {
                tokio::time::sleep(retry_delay(attempt)).await;
            }
            attempt += 1;
        }
    }

    async fn attempt(&self, token: &str, slot: &TokenSlot, call: &Call) -> Attempt {
        let unhealthy = || Attempt {
            result: Err(ApiError::TokenUnhealthy {
                token: token.to_string(),
            }),
            connect_failed: false,
        };
        // Returns at once unless the start-up Service Config read is still running.
        let _ = self.inner.warm.subscribe().wait_for(|warm| *warm).await;
        let Ok(_permit) = slot.permits.acquire().await else {
            return unhealthy();
        };
        // Re-checked with the permit held, right before sending.
        let (stoken, sent) = loop {
            // The last moment to stop: a lease about to expire sends nothing more.
            if !self.may_call(token) {
                return Attempt {
                    result: Err(ApiError::NotHolder {
                        token: token.to_string(),
                    }),
                    connect_failed: false,
                };
            }
            let now = self.inner.clock.now();
            let wait = {
                let mut st = lock(&slot.state);
                match st.gate.next_send_at(now) {
                    Err(_) => return unhealthy(),
                    Ok(at) if at <= now => {
                        let sent = st.gate.on_sent(now);
                        break (st.stoken.clone(), sent);
                    }
                    Ok(at) => at.since(now),
                }
            };
            tokio::time::sleep(wait).await;
        };

        let mut rb = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .bearer_auth(stoken.expose());
        if let Some(body) = &call.body {
            rb = rb
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let sent_at = std::time::Instant::now();
        let (result, connect_failed) = match rb.send().await {
            Err(e) => transport_error(e),
            Ok(resp) => read_response(resp, call.endpoint).await,
        };
        let seconds = sent_at.elapsed().as_secs_f64();
        let status = match &result {
            Ok(_) => "ok".to_string(),
            Err(ApiError::Timeout) => "timeout".to_string(),
            Err(ApiError::Transport(_)) => "transport".to_string(),
            Err(ApiError::TooLarge { .. }) => "too_large".to_string(),
            Err(e) => e
                .error_number()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "error".to_string()),
        };
        (self.inner.opts.metrics).call_finished(token, call.endpoint, &status, seconds);
        let now = self.inner.clock.now();
        let (became_unhealthy, paused) = {
            let mut st = lock(&slot.state);
            let was_healthy = st.gate.unhealthy().is_none();
            let paused_before = st.gate.retry_after_until();
            st.gate.on_completed(sent, now);
            st.gate.on_outcome(now, &Outcome::from_result(&result));
            (
                was_healthy && st.gate.unhealthy().is_some(),
                st.gate.retry_after_until() > paused_before,
            )
        };
        // A new Retry-After is recorded too (tokens::HealthWriter), for the next holder.
        if became_unhealthy || paused {
            // Logged by the health writer, once per change.
            self.health_changed();
        }
        Attempt {
            result: result.map_err(|e| e.redact(stoken.expose())),
            connect_failed,
        }
    }

    /// Until when Apple's last Retry-After for `token` asked for no request.
    pub fn retry_after_until(&self, token: &str) -> Option<Timestamp> {
        let slot = self.slot(token).ok()?;
        let until = lock(&slot.state).gate.retry_after_until();
        Some(until)
    }

    /// Honours a Retry-After that another instance was given for `token` (the previous
    /// holder of its lease).
    pub fn pause_until(&self, token: &str, until: Timestamp) {
        if let Ok(slot) = self.slot(token) {
            lock(&slot.state).gate.pause_until(until);
        }
    }

    /// Calls for a token go out only while `gate` says this instance may make them
    /// (docs/architecture.md, "Several instances"); the default is always.
    pub fn set_send_gate(&self, gate: Arc<dyn SendGate>) {
        *self
            .inner
            .send_gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(gate);
    }

    /// Whether a request for `token` may be sent now.
    pub fn may_call(&self, token: &str) -> bool {
        self.inner
            .send_gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_none_or(|g| g.may_send(token))
    }

    async fn send_unauthenticated(&self, url: Url) -> Result<Vec<u8>, ApiError> {
        match self.inner.http.get(url).send().await {
            Err(e) => transport_error(e).0,
            Ok(resp) => read_response(resp, "service/config").await.0,
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

/// A result plus "failed to connect" (the request provably never reached the server).
type Flagged = (Result<Vec<u8>, ApiError>, bool);

fn transport_error(e: reqwest::Error) -> Flagged {
    let connect = e.is_connect();
    let err = if e.is_timeout() {
        ApiError::Timeout
    } else {
        // The URL carries no secret, but keep messages short and uniform.
        ApiError::Transport(truncate(&error_chain(&e.without_url()), 300))
    };
    (Err(err), connect)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Why a body was not read whole.
enum BodyRead {
    TooLarge(usize),
    Failed(reqwest::Error),
}

/// Reads a body up to `cap` bytes: a larger `Content-Length` is refused before reading, and
/// a streamed body is dropped (the connection with it) as soon as it passes the cap.
async fn read_body(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyRead> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyRead::TooLarge(cap));
    }
    let mut buf = Vec::with_capacity(resp.content_length().map_or(0, |n| n as usize));
    while let Some(chunk) = resp.chunk().await.map_err(BodyRead::Failed)? {
        if buf.len() + chunk.len() > cap {
            return Err(BodyRead::TooLarge(cap));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn read_response(resp: reqwest::Response, endpoint: &str) -> Flagged {
    let status = resp.status().as_u16();
    let retry_after = retry_after_header(resp.headers());
    match read_body(resp, body_cap(endpoint)).await {
        Err(BodyRead::TooLarge(cap)) => {
            // A 5xx/429 status still tells us what happened; otherwise a bad answer.
            match ApiError::classify(status, b"", retry_after) {
                Some(err @ (ApiError::Unavailable { .. } | ApiError::RateLimited { .. })) => {
                    (Err(err), false)
                }
                _ => (
                    Err(ApiError::TooLarge {
                        endpoint: endpoint.to_string(),
                        cap,
                    }),
                    false,
                ),
            }
        }
        Err(BodyRead::Failed(e)) => {
            // The body failed mid-way; a 5xx/429 status still tells us what happened.
            match ApiError::classify(status, b"", retry_after) {
                Some(err @ (ApiError::Unavailable { .. } | ApiError::RateLimited { .. })) => {
                    (Err(err), false)
                }
                _ => (transport_error(e).0, false),
            }
        }
        Ok(body) => match ApiError::classify(status, &body, retry_after) {
            Some(err) => (Err(err), false),
            None => (Ok(body), false),
        },
    }
}

fn retry_after_header(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// 200 ms, doubling per attempt, at most 5 s.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(crate::core::backoff::exponential_ms(200, attempt, 5_000))
}

/// What the client makes of one HTTP answer from Apple: [`ApiError::classify`] on the status,
/// body and Retry-After, then the typed decode of a success body, exactly as every endpoint
/// does. Pure, so the fuzz targets (fuzz/) and `tests/fuzz_lite.rs` can feed it hostile bodies.
pub fn decode_response<T: DeserializeOwned>(
    endpoint: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<T, ApiError> {
    match ApiError::classify(status, body, retry_after) {
        Some(e) => Err(e),
        None => decode(endpoint, body),
    }
}

fn decode<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        // A body with errorNumber is classified earlier; this is a shape problem.
        debug_assert!(error_body(body).is_none());
        ApiError::Decode {
            endpoint: endpoint.to_string(),
            detail: truncate(&format!("at {}: {}", e.path(), e.inner()), 300),
        }
    })
}

/// One page of a paginated read: `pageIndex`, and `sinceVersionId` for an incremental one.
fn page_url(base: &Url, page: u32, since_version: Option<&str>) -> Url {
    let mut url = base.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("pageIndex", &page.to_string());
        if let Some(v) = since_version {
            q.append_pair("sinceVersionId", v);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_names_for_one_content_token_share_a_gate() {
        let c = AppleClient::new(ClientOptions::default()).unwrap();
        c.set_token("a", Secret::new("same"), None);
        c.set_token("b", Secret::new("same"), None);
        c.set_token("c", Secret::new("other"), None);
        let t = lock(&c.inner.tokens);
        assert!(Arc::ptr_eq(&t["a"], &t["b"]));
        assert!(!Arc::ptr_eq(&t["a"], &t["c"]));
        drop(t);
        // A new file for "b" splits it off again.
        c.set_token("b", Secret::new("renewed"), None);
        let t = lock(&c.inner.tokens);
        assert!(!Arc::ptr_eq(&t["a"], &t["b"]));
        assert_eq!(lock(&t["a"].state).stoken, Secret::new("same"));
    }

    #[test]
    fn service_config_urls_stay_on_the_base_site() {
        let u = |s: &str| Url::parse(s).unwrap();
        let apple = u("https://vpp.itunes.apple.com/mdm/v2/");
        assert!(same_site(
            &apple,
            &u("https://vpp2.itunes.apple.com/mdm/v2/assets")
        ));
        assert!(!same_site(
            &apple,
            &u("https://evil.example.com/mdm/v2/assets")
        ));
        let local = u("http://127.0.0.1:8790/mdm/v2/");
        assert!(same_site(&local, &u("http://127.0.0.1:8790/mdm/v2/status")));
        // Another port on the same host is fine; another host is not.
        assert!(same_site(&local, &u("http://127.0.0.1:9999/mdm/v2/status")));
        assert!(!same_site(&local, &u("http://10.0.0.1:8790/mdm/v2/status")));
        assert!(!same_site(
            &local,
            &u("https://vpp.itunes.apple.com/mdm/v2/status")
        ));
    }
}
