//! Per-location request accounting: the sliding one-second window behind 9646/429, the
//! Retry-After window opened by injected 5xx answers, and the counters of `GET /_sim/stats`.
//!
//! - `maxRequestPerSecond` is per location (uId) [C SVC]: a request is refused with 9646/429
//!   (and `rateLimitViolations += 1`) when that many requests were admitted in the last second.
//!   Refused requests do not enter the window. Whether Apple's 429 carries Retry-After is
//!   undocumented [open Q8]; the simulator sends none.
//! - After a 5xx with `Retry-After: N`, every request from that location arriving in the next N
//!   seconds is answered 503/9729 again and counted in `requestsDuringRetryAfter`, except those
//!   arriving within [`RETRY_AFTER_GRACE`] (50 ms) of the 5xx: they were already in flight and
//!   are served normally and not counted. The window is not extended by the repeated 503s.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Requests arriving this soon after a 5xx left were already in flight when it was sent, so
/// they cannot have honoured its Retry-After: they are neither counted nor refused.
pub const RETRY_AFTER_GRACE: Duration = Duration::from_millis(50);

const WINDOW: Duration = Duration::from_secs(1);

/// What to do with one request, decided under the state lock.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Inside a running Retry-After window: answer 503 again with this many seconds left.
    RetryAfter(u64),
    /// Over `maxRequestPerSecond`.
    RateLimited,
}

#[derive(Debug, Default)]
pub struct Traffic {
    pub requests: BTreeMap<&'static str, u64>,
    pub rate_limit_violations: u64,
    pub requests_during_retry_after: u64,
    /// Arrival times of admitted requests within the last second. Refused requests are not
    /// recorded, so a client that backs off gets through once its admitted load drops.
    window: VecDeque<Instant>,
    /// (sent at, runs until) of the last Retry-After.
    retry_after: Option<(Instant, Instant)>,
}

impl Traffic {
    /// Counts one request from this location under `endpoint` (every request with a known
    /// token, whatever its fate).
    pub fn count(&mut self, endpoint: &'static str) {
        *self.requests.entry(endpoint).or_insert(0) += 1;
    }

    /// Decides whether a request arriving at `now` may proceed.
    pub fn admit(&mut self, now: Instant, max_per_second: u64) -> Admission {
        if let Some((sent, until)) = self.retry_after {
            if now < until {
                if now.duration_since(sent) >= RETRY_AFTER_GRACE {
                    self.requests_during_retry_after += 1;
                    let left = until.duration_since(now).as_millis().div_ceil(1000);
                    return Admission::RetryAfter(u64::try_from(left).unwrap_or(u64::MAX).max(1));
                }
            } else {
                self.retry_after = None;
            }
        }
        while let Some(&t) = self.window.front() {
            if now.duration_since(t) >= WINDOW {
                self.window.pop_front();
            } else {
                break;
            }
        }
        if self.window.len() as u64 >= max_per_second {
            self.rate_limit_violations += 1;
            return Admission::RateLimited;
        }
        self.window.push_back(now);
        Admission::Admit
    }

    /// Records that a 5xx with `Retry-After: secs` was just sent.
    pub fn opened_retry_after(&mut self, now: Instant, secs: u64) {
        if secs > 0 {
            self.retry_after = Some((now, now + Duration::from_secs(secs)));
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "rateLimitViolations": self.rate_limit_violations,
            "requestsDuringRetryAfter": self.requests_during_retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_limits_and_recovers() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.admit(t0, 3), Admission::Admit);
        }
        assert_eq!(
            t.admit(t0 + Duration::from_millis(500), 3),
            Admission::RateLimited
        );
        assert_eq!(
            t.admit(t0 + Duration::from_millis(1001), 3),
            Admission::Admit
        );
        assert_eq!(t.rate_limit_violations, 1);
    }

    #[test]
    fn retry_after_counts_after_grace() {
        let mut t = Traffic::default();
        let t0 = Instant::now();
        t.opened_retry_after(t0, 2);
        assert_eq!(
            t.admit(t0 + Duration::from_millis(10), 100),
            Admission::Admit
        );
        assert_eq!(
            t.admit(t0 + Duration::from_millis(100), 100),
            Admission::RetryAfter(2)
        );
        assert_eq!(
            t.admit(t0 + Duration::from_millis(1500), 100),
            Admission::RetryAfter(1)
        );
        assert_eq!(
            t.admit(t0 + Duration::from_millis(2000), 100),
            Admission::Admit
        );
        assert_eq!(t.requests_during_retry_after, 2);
    }
}
