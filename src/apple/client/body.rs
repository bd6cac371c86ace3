//! Reading Apple's answer: every body within the cap of its endpoint ([`body_cap`]; a larger
//! `Content-Length` refused unread, a body without one read only up to the cap), transport
//! failures told apart from connect failures, and the pure classify-then-decode of an answer
//! ([`decode_response`]).

use super::*;

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

/// A result plus "failed to connect" (the request provably never reached the server).
type Flagged = (Result<Vec<u8>, ApiError>, bool);

pub(super) fn transport_error(e: reqwest::Error) -> Flagged {
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

pub(super) async fn read_response(resp: reqwest::Response, endpoint: &str) -> Flagged {
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

pub(super) fn decode<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, ApiError> {
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
