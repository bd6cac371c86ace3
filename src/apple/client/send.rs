//! Sending one call: a concurrency permit, then the token's gate (rate, Retry-After, backoff,
//! health) immediately before the request, the request itself, and what its answer does to
//! the gate and the token's health; reads retried on retryable errors, writes only when Apple
//! provably did not process them. Also the gate's other inputs: a Retry-After learned from
//! another instance, and the [`SendGate`] deciding whether this instance may call at all.

use super::body::{read_response, transport_error};
use super::*;

/// Attempts for a write whose earlier attempt provably never reached Apple's processing.
const WRITE_ATTEMPTS: u32 = 3;

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

impl AppleClient {
    pub(super) async fn json<T: DeserializeOwned>(
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

    pub(super) async fn send_unauthenticated(&self, url: Url) -> Result<Vec<u8>, ApiError> {
        match self.inner.http.get(url).send().await {
            Err(e) => transport_error(e).0,
            Ok(resp) => read_response(resp, "service/config").await.0,
        }
    }
}

/// 200 ms, doubling per attempt, at most 5 s.
pub(super) fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(crate::core::backoff::exponential_ms(200, attempt, 5_000))
}
