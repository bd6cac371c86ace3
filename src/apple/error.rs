//! Errors of the Apple client, classified by meaning.
//!
//! Invariants:
//! - An `errorNumber` is classified wherever it appears: in any HTTP status, including an
//!   ErrorResponse inside a 200 body (Apple has been seen answering bad tokens with 200).
//! - No variant ever holds a content token: the client builds errors from status codes and
//!   response bodies only, and additionally scrubs the token's text out of any message
//!   ([`ApiError::redact`]) in case a server echoes it back.

use std::time::{Duration, SystemTime};

/// Longest Retry-After honoured; a larger value is treated as this (a broken header must not
/// park a token for days).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 9621: a human must download a new token.
    #[error("the content token has expired (Apple error 9621); download a new one from Apple Business or School Manager")]
    TokenExpired,
    /// 9625: revoked, e.g. because a newer token was downloaded.
    #[error("the content token was revoked (Apple error 9625); download a new one from Apple Business or School Manager")]
    TokenRevoked,
    /// 9601, 9622, 9722, 9647, or HTTP 401/403 without an error body.
    #[error("Apple refused the content token (error {}, HTTP {status})", fmt_number(*number))]
    Unauthorized { number: Option<i32>, status: u16 },
    /// 9646 or HTTP 429.
    #[error("Apple rate-limited the token (error 9646){}", fmt_retry(*retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// HTTP 5xx, 9603, 9729, 9644.
    #[error("Apple is unavailable (HTTP {status}, error {}){}", fmt_number(*number), fmt_retry(*retry_after))]
    Unavailable {
        status: u16,
        number: Option<i32>,
        retry_after: Option<Duration>,
    },
    /// 9708: Apple does not know the eventId.
    #[error("Apple does not know this eventId (error 9708)")]
    EventNotFound,
    /// 9721: the sinceVersionId is not valid any more; do a full traversal.
    #[error("Apple rejected the sinceVersionId (error 9721); a full sync is needed")]
    InvalidVersion,
    /// Any other Apple error number, kept as-is.
    #[error("Apple error {number} (HTTP {http_status}): {message}")]
    Apple {
        number: i32,
        message: String,
        http_status: u16,
    },
    /// A non-success HTTP status with no ErrorResponse body and no more specific meaning.
    #[error("unexpected HTTP status {status} without an Apple error body")]
    UnexpectedStatus { status: u16 },
    /// The request did not complete within `request_timeout`.
    #[error("the request to Apple timed out")]
    Timeout,
    /// Connection or protocol failure (no HTTP response).
    #[error("transport error talking to Apple: {0}")]
    Transport(String),
    /// A response that is neither an ErrorResponse nor the documented shape.
    #[error("could not decode Apple's {endpoint} response: {detail}")]
    Decode { endpoint: String, detail: String },
    /// The response body passed the size cap of its endpoint (the read stopped there): a bad
    /// answer, like one that does not decode.
    #[error("Apple's {endpoint} response is larger than the {cap} bytes accepted for it")]
    TooLarge { endpoint: String, cap: usize },
    /// Refused locally: the token was marked unhealthy by an earlier token error and stays so
    /// until it is set again (config reload).
    #[error("token {token:?} is marked unhealthy after a token error; reload it to retry")]
    TokenUnhealthy { token: String },
    /// Refused locally: another instance holds this token's lease now (or this one's lease
    /// is about to expire), and only the holder calls Apple for a token.
    #[error(
        "this instance does not hold the lease of token {token:?}; the holder calls Apple for it"
    )]
    NotHolder { token: String },
    /// No token of that name was set on the client.
    #[error("no content token named {token:?} is configured")]
    UnknownToken { token: String },
    /// Invalid client options.
    #[error("invalid Apple client configuration: {0}")]
    Config(String),
}

fn fmt_number(n: Option<i32>) -> String {
    n.map_or_else(|| "none".to_string(), |n| n.to_string())
}

fn fmt_retry(r: Option<Duration>) -> String {
    r.map_or_else(String::new, |d| format!("; retry after {}s", d.as_secs()))
}

impl ApiError {
    /// Classifies an Apple `errorNumber` seen with HTTP `status`.
    pub fn from_error_number(
        number: i32,
        message: &str,
        status: u16,
        retry_after: Option<Duration>,
    ) -> ApiError {
        match number {
            9621 => ApiError::TokenExpired,
            9625 => ApiError::TokenRevoked,
            // 9637 (facilitator accounts) refuses one request, not the token.
            9601 | 9622 | 9722 | 9647 => ApiError::Unauthorized {
                number: Some(number),
                status,
            },
            9646 => ApiError::RateLimited { retry_after },
            9603 | 9729 | 9644 => ApiError::Unavailable {
                status,
                number: Some(number),
                retry_after,
            },
            9708 => ApiError::EventNotFound,
            9721 => ApiError::InvalidVersion,
            // An unknown number with a status that has a clear meaning takes that meaning
            // (Apple "may add additional error codes").
            _ if status == 429 => ApiError::RateLimited { retry_after },
            _ if (500..600).contains(&status) => ApiError::Unavailable {
                status,
                number: Some(number),
                retry_after,
            },
            _ => ApiError::Apple {
                number,
                message: truncate(message, 500),
                http_status: status,
            },
        }
    }

    /// Classifies a response. `None` means success: decode the body as the typed response.
    pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Option<ApiError> {
        if let Some((number, message)) = error_body(body) {
            return Some(ApiError::from_error_number(
                number,
                &message,
                status,
                retry_after,
            ));
        }
        match status {
            200..=299 => None,
            401 | 403 => Some(ApiError::Unauthorized {
                number: None,
                status,
            }),
            429 => Some(ApiError::RateLimited { retry_after }),
            500..=599 => Some(ApiError::Unavailable {
                status,
                number: None,
                retry_after,
            }),
            _ => Some(ApiError::UnexpectedStatus { status }),
        }
    }

    /// The Apple error number this error stands for, if any.
    pub fn error_number(&self) -> Option<i32> {
        match self {
            ApiError::TokenExpired => Some(9621),
            ApiError::TokenRevoked => Some(9625),
            ApiError::Unauthorized { number, .. } => *number,
            ApiError::RateLimited { .. } => Some(9646),
            ApiError::Unavailable { number, .. } => *number,
            ApiError::EventNotFound => Some(9708),
            ApiError::InvalidVersion => Some(9721),
            ApiError::Apple { number, .. } => Some(*number),
            _ => None,
        }
    }

    /// The token itself is the problem: stop its traffic until it is replaced.
    pub fn is_token_problem(&self) -> bool {
        matches!(
            self,
            ApiError::TokenExpired
                | ApiError::TokenRevoked
                | ApiError::Unauthorized { .. }
                | ApiError::TokenUnhealthy { .. }
        )
    }

    /// Trying again later may succeed (for reads; writes have stricter rules in the client).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited { .. }
                | ApiError::Unavailable { .. }
                | ApiError::Timeout
                | ApiError::Transport(_)
        )
    }

    /// The server-requested wait, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } | ApiError::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Replaces every occurrence of `secret` in the error's free-text fields.
    pub fn redact(self, secret: &str) -> ApiError {
        if secret.is_empty() {
            return self;
        }
        let scrub = |s: String| s.replace(secret, "<redacted>");
        match self {
            ApiError::Apple {
                number,
                message,
                http_status,
            } => ApiError::Apple {
                number,
                message: scrub(message),
                http_status,
            },
            ApiError::Transport(s) => ApiError::Transport(scrub(s)),
            ApiError::Decode { endpoint, detail } => ApiError::Decode {
                endpoint,
                detail: scrub(detail),
            },
            other => other,
        }
    }
}

/// `(errorNumber, errorMessage)` when `body` is a JSON object carrying an `errorNumber`.
pub(crate) fn error_body(body: &[u8]) -> Option<(i32, String)> {
    // Cheap pre-check: most success bodies are large and error-free.
    if !contains(body, b"errorNumber") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let n = obj.get("errorNumber")?;
    let number = n
        .as_i64()
        .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))?;
    let number = i32::try_from(number).ok()?;
    let message = obj
        .get("errorMessage")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    Some((number, message))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Parses a Retry-After value: delay-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`].
/// A date in the past means "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    // Some servers send fractional seconds.
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(
                secs.min(MAX_RETRY_AFTER.as_secs_f64()),
            ));
        }
        return None;
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_in_200_body_is_caught() {
        let body = br#"{"errorNumber":9622,"errorMessage":"Invalid authentication token"}"#;
        let e = ApiError::classify(200, body, None).unwrap();
        assert_eq!(
            e,
            ApiError::Unauthorized {
                number: Some(9622),
                status: 200
            }
        );
        assert!(e.is_token_problem());
    }

    #[test]
    fn classification_table() {
        let c = |status, n: i32| {
            ApiError::classify(
                status,
                format!(r#"{{"errorNumber":{n},"errorMessage":"m"}}"#).as_bytes(),
                Some(Duration::from_secs(3)),
            )
            .unwrap()
        };
        assert_eq!(c(401, 9621), ApiError::TokenExpired);
        assert_eq!(c(401, 9625), ApiError::TokenRevoked);
        assert_eq!(
            c(429, 9646),
            ApiError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            c(500, 9603),
            ApiError::Unavailable {
                status: 500,
                number: Some(9603),
                ..
            }
        ));
        assert!(matches!(c(503, 9729), ApiError::Unavailable { .. }));
        assert!(matches!(c(200, 9644), ApiError::Unavailable { .. }));
        assert_eq!(c(400, 9708), ApiError::EventNotFound);
        assert_eq!(c(400, 9721), ApiError::InvalidVersion);
        assert_eq!(c(400, 9650).error_number(), Some(9650));
        assert!(!c(400, 9650).is_retryable());
        assert!(matches!(c(503, 9999), ApiError::Unavailable { .. }));
        for n in [9601, 9622, 9722, 9647] {
            assert!(c(403, n).is_token_problem(), "{n}");
        }
        assert!(!c(403, 9637).is_token_problem());
    }

    #[test]
    fn status_without_body() {
        assert!(matches!(
            ApiError::classify(401, b"", None),
            Some(ApiError::Unauthorized { number: None, .. })
        ));
        assert!(matches!(
            ApiError::classify(429, b"<html>", None),
            Some(ApiError::RateLimited { .. })
        ));
        assert!(matches!(
            ApiError::classify(502, b"", None),
            Some(ApiError::Unavailable { status: 502, .. })
        ));
        assert_eq!(
            ApiError::classify(404, b"nope", None),
            Some(ApiError::UnexpectedStatus { status: 404 })
        );
        assert_eq!(ApiError::classify(200, br#"{"assets":[]}"#, None), None);
        // errorNumber nested somewhere else is not an ErrorResponse.
        assert_eq!(
            ApiError::classify(200, br#"{"failures":[{"errorNumber":9609}]}"#, None),
            None
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn redact_scrubs_messages() {
        let e = ApiError::Apple {
            number: 9602,
            message: "bad token SECRETTOKEN".into(),
            http_status: 400,
        }
        .redact("SECRETTOKEN");
        assert!(!e.to_string().contains("SECRETTOKEN"));
    }
}
