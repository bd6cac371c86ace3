//! Push (README "Using it"): every change of the feed POSTed to the MDM in batches, signed as
//! Standard Webhooks do, at-least-once, in `seq` order, one batch in flight.
//!
//! Split as the rest of the daemon is: this module holds the pure decisions (which changes
//! form the next batch, when to try again, when to park) and the signature, with time passed
//! in and no IO, so they are unit-tested with simulated time; [`deliver`] is the thin async
//! task that reads the store, sends, and records what happened.
//!
//! Durability: the cursor (the last `seq` the MDM acknowledged with a 2xx) and the batch in
//! flight live in the store (`push_state`). A batch is pinned (its first and last `seq`
//! written) before its first attempt, so every redelivery, also after a `kill -9`, covers the
//! same range and carries the same `webhook-id`; the cursor moves only after a 2xx.

pub mod deliver;

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::core::backoff;
use crate::time::Timestamp;

/// First wait after a failed attempt; doubles per failure up to [`BACKOFF_MAX`], plus up to
/// 25% jitter.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Longest Retry-After honoured (a broken header must not stop delivery for days).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `[push]`: every change of the feed POSTed to the MDM, signed (Standard Webhooks). Built
/// by configuration validation (`crate::config`), defined here so push does not depend on it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    pub url: String,
    /// Resolved path of the secret file.
    pub secret_file: std::path::PathBuf,
    /// `whsec_` + base64, checked at load.
    pub secret: crate::secret::Secret,
    pub max_batch: u32,
    pub timeout: Duration,
    pub dead_after: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("the push secret must start with \"whsec_\"")]
    SecretPrefix,
    #[error("the push secret after \"whsec_\" is not valid base64")]
    SecretBase64,
    #[error("the push secret is empty after \"whsec_\"")]
    SecretEmpty,
}

/// The signing key of a Standard Webhooks secret (`whsec_` + base64). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Decodes `whsec_<base64>` (surrounding whitespace ignored).
    pub fn parse(secret: &str) -> Result<SigningKey, PushError> {
        let rest = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(PushError::SecretPrefix)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| PushError::SecretBase64)?;
        if key.is_empty() {
            return Err(PushError::SecretEmpty);
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header value: `v1,` + base64 of HMAC-SHA256 over
    /// `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let sig = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(sig)
        )
    }
}

/// How delivery behaves (from `[push]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub max_batch: u32,
    pub dead_after: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Jitter seed (random in the daemon, fixed in tests).
    pub seed: u64,
}

impl Policy {
    pub fn new(max_batch: u32, dead_after: Duration, seed: u64) -> Policy {
        Policy {
            max_batch: max_batch.max(1),
            dead_after,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            seed,
        }
    }
}

/// The batch in flight: a pinned `seq` range and when it was first attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub first: i64,
    pub last: i64,
    pub since: Timestamp,
}

impl Batch {
    /// The `webhook-id`: derived from the range (and the replay count), so a redelivery of
    /// the batch carries the same id and the MDM can drop a duplicate; a `push replay` sends
    /// under new ids, since the operator wants the MDM to process them again.
    pub fn webhook_id(&self, replays: u32) -> String {
        if replays == 0 {
            format!("batch_{}_{}", self.first, self.last)
        } else {
            format!("batch_{}_{}_r{replays}", self.first, self.last)
        }
    }
}

/// The next batch from the `seq`s waiting after the cursor (ascending): the first
/// `max_batch` of them.
pub fn select_batch(waiting: &[i64], max_batch: u32, now: Timestamp) -> Option<Batch> {
    let first = *waiting.first()?;
    let n = waiting.len().min(max_batch.max(1) as usize);
    Some(Batch {
        first,
        last: waiting[n - 1],
        since: now,
    })
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The MDM answered 2xx.
    Delivered,
    /// Anything else: a non-2xx status, a timeout, no connection.
    Failed {
        retry_after: Option<Duration>,
        error: String,
    },
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Move the cursor to the batch's last `seq`.
    Acknowledged,
    /// Try the same batch again at `at`; `attempts` failed so far.
    Retry { at: Timestamp, attempts: u32 },
    /// Undeliverable for `dead_after`: park the batch's changes and move past them.
    Park { attempts: u32 },
}

/// The decision after an attempt of `batch` (which had failed `failed_before` times) at `now`.
///
/// A failure waits exponential backoff with jitter (`backoff_min` doubling to `backoff_max`),
/// never less than the MDM's `Retry-After`; backoff alone never waits past the park deadline
/// (`since + dead_after`), so a dead endpoint is parked on time. A failure at or after that
/// deadline parks.
pub fn after_attempt(
    policy: &Policy,
    batch: &Batch,
    failed_before: u32,
    now: Timestamp,
    attempt: &Attempt,
) -> Next {
    let retry_after = match attempt {
        Attempt::Delivered => return Next::Acknowledged,
        Attempt::Failed { retry_after, .. } => *retry_after,
    };
    let attempts = failed_before.saturating_add(1);
    let deadline = batch.since.saturating_add(policy.dead_after);
    if now >= deadline {
        return Next::Park { attempts };
    }
    let seed = backoff::seed_for(policy.seed, &batch.first.to_string());
    let wait = backoff::delay(attempts - 1, policy.backoff_min, policy.backoff_max, seed);
    let by_backoff = now.saturating_add(wait).min(deadline);
    let at = match retry_after {
        Some(r) => by_backoff.max(now.saturating_add(r.min(MAX_RETRY_AFTER))),
        None => by_backoff,
    };
    Next::Retry { at, attempts }
}

/// Whether an attempt is due (`next_at` unset means now).
pub fn due(next_at: Option<Timestamp>, now: Timestamp) -> bool {
    next_at.is_none_or(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// The vector published with Standard Webhooks' reference libraries (and Svix's, whose
    /// scheme it is). Note: the value `v1,g0hM9SsE+OTPJTGt/tGIKtSyZIvSmdmdxyBmNA6f4ns=` that
    /// circulated in our issue text is not the published one; only the first 18 characters
    /// agree.
    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert_eq!(SigningKey::parse("abc"), Err(PushError::SecretPrefix));
        assert_eq!(SigningKey::parse("whsec_!!"), Err(PushError::SecretBase64));
        assert_eq!(SigningKey::parse("whsec_"), Err(PushError::SecretEmpty));
        let k = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(!format!("{k:?}").contains("MfKQ"));
    }

    #[test]
    fn batches_take_the_first_max_batch_waiting_changes() {
        let now = Timestamp(5);
        assert_eq!(select_batch(&[], 10, now), None);
        let b = select_batch(&[3, 4, 9, 12], 3, now).unwrap();
        assert_eq!((b.first, b.last), (3, 9));
        assert_eq!(b.webhook_id(0), "batch_3_9");
        assert_eq!(b.webhook_id(2), "batch_3_9_r2");
        let b = select_batch(&[7], 100, now).unwrap();
        assert_eq!((b.first, b.last), (7, 7));
    }

    fn failed(retry_after: Option<Duration>) -> Attempt {
        Attempt::Failed {
            retry_after,
            error: "HTTP 500".into(),
        }
    }

    /// Runs a receiver that always fails from t=0, in simulated time: returns the attempt
    /// times (ms) and the final decision.
    fn simulate(policy: &Policy, retry_after: Option<Duration>) -> (Vec<i64>, Next) {
        let start = Timestamp(1_000_000);
        let batch = Batch {
            first: 1,
            last: 5,
            since: start,
        };
        let mut now = start;
        let mut failed_before = 0;
        let mut times = vec![];
        loop {
            times.push(now.0 - start.0);
            match after_attempt(policy, &batch, failed_before, now, &failed(retry_after)) {
                Next::Retry { at, attempts } => {
                    assert!(at > now, "a retry is always later");
                    assert!(due(Some(at), at) && !due(Some(at), Timestamp(at.0 - 1)));
                    now = at;
                    failed_before = attempts;
                }
                n => return (times, n),
            }
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_parks_after_dead_after() {
        let policy = Policy::new(100, 60 * S, 42);
        let (times, next) = simulate(&policy, None);
        // Gaps: 1 s, 2 s, 4 s, 8 s, 16 s (each + up to 25%), then the deadline.
        let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for (gap, base) in gaps.iter().zip([1_000i64, 2_000, 4_000, 8_000, 16_000]) {
            assert!(
                *gap >= base && *gap <= base + base / 4,
                "gap {gap} vs {base}: {gaps:?}"
            );
        }
        assert_eq!(
            *times.last().unwrap(),
            60_000,
            "the last try is at the deadline"
        );
        assert_eq!(
            next,
            Next::Park {
                attempts: times.len() as u32
            }
        );
        // The jitter is seeded: the same schedule again.
        assert_eq!(simulate(&policy, None).0, times);
    }

    #[test]
    fn retry_after_is_a_floor_and_is_capped() {
        let policy = Policy::new(100, 3600 * S, 1);
        let (times, _) = simulate(&policy, Some(20 * S));
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 20_000), "{times:?}");
        let batch = Batch {
            first: 1,
            last: 1,
            since: Timestamp(0),
        };
        let long = after_attempt(
            &Policy::new(1, 30 * 86_400 * S, 1),
            &batch,
            0,
            Timestamp(0),
            &failed(Some(86_400 * S)),
        );
        assert_eq!(
            long,
            Next::Retry {
                at: Timestamp(3_600_000),
                attempts: 1
            }
        );
    }

    #[test]
    fn retry_after_past_the_deadline_is_still_honoured_then_parks() {
        let policy = Policy::new(100, 3 * S, 1);
        let (times, next) = simulate(&policy, Some(2 * S));
        assert_eq!(times, vec![0, 2_000, 4_000]);
        assert_eq!(next, Next::Park { attempts: 3 });
    }

    #[test]
    fn success_acknowledges_whatever_failed_before() {
        let policy = Policy::new(100, 3 * S, 1);
        let batch = Batch {
            first: 1,
            last: 1,
            since: Timestamp(0),
        };
        assert_eq!(
            after_attempt(&policy, &batch, 7, Timestamp(999_999), &Attempt::Delivered),
            Next::Acknowledged
        );
    }
}
