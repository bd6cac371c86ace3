//! Fault injection (`PUT /_sim/faults`, src/sim/mod.rs). Omitted keys keep their value; `tokenState`
//! entries are merged per uId; unknown keys, rates outside 0..=1 and durations over 24 h are
//! refused with 400 and change nothing. Defaults: no faults, `processingDelay` 200 ms (so
//! PENDING is observable), `retryAfter` 1 s (Apple's example is 120 s [C ERR]).
//! With `error5xxRate`, each authenticated request is, with that probability, answered either
//! 503/9729 or 500/9603 (even odds) with `Retry-After: <retryAfter, whole seconds rounded up>`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::time::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    Expired,
    Revoked,
}

impl TokenState {
    fn parse(s: &str) -> Option<TokenState> {
        match s {
            "valid" => Some(TokenState::Valid),
            "expired" => Some(TokenState::Expired),
            "revoked" => Some(TokenState::Revoked),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Faults {
    pub drop_notification_rate: f64,
    pub duplicate_notification_rate: f64,
    pub notification_delay: Duration,
    pub error_5xx_rate: f64,
    pub retry_after: Duration,
    pub processing_delay: Duration,
    pub version_churn: bool,
    pub errors_with_http200: bool,
    pub token_state: BTreeMap<String, TokenState>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            drop_notification_rate: 0.0,
            duplicate_notification_rate: 0.0,
            notification_delay: Duration::ZERO,
            error_5xx_rate: 0.0,
            // Apple's example is 120 s [C ERR]; a short default keeps demos moving.
            retry_after: Duration::from_secs(1),
            // Non-zero so PENDING is observable by default.
            processing_delay: Duration::from_millis(200),
            version_churn: false,
            errors_with_http200: false,
            token_state: BTreeMap::new(),
        }
    }
}

/// The body of `PUT /_sim/faults`; every key optional.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsPatch {
    drop_notification_rate: Option<f64>,
    duplicate_notification_rate: Option<f64>,
    notification_delay: Option<String>,
    #[serde(rename = "error5xxRate")]
    error_5xx_rate: Option<f64>,
    retry_after: Option<String>,
    processing_delay: Option<String>,
    version_churn: Option<bool>,
    errors_with_http200: Option<bool>,
    token_state: Option<BTreeMap<String, String>>,
}

fn rate(name: &str, v: Option<f64>) -> Result<Option<f64>, String> {
    match v {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            Err(format!("{name} must be between 0 and 1, got {r}"))
        }
        other => Ok(other),
    }
}

/// Longest accepted fault duration; also keeps `Instant + duration` far from overflow.
const MAX_FAULT_DURATION: Duration = Duration::from_secs(24 * 3600);

fn dur(name: &str, v: &Option<String>) -> Result<Option<Duration>, String> {
    let Some(s) = v.as_deref() else {
        return Ok(None);
    };
    let d = parse_duration(s).map_err(|e| format!("{name}: invalid duration {s:?}: {e}"))?;
    if d > MAX_FAULT_DURATION {
        return Err(format!("{name}: {s:?} is longer than 24h"));
    }
    Ok(Some(d))
}

impl Faults {
    /// Applies a patch atomically: either every key is valid and applied, or nothing changes.
    pub fn apply(&mut self, p: FaultsPatch) -> Result<(), String> {
        let drop = rate("dropNotificationRate", p.drop_notification_rate)?;
        let dup = rate("duplicateNotificationRate", p.duplicate_notification_rate)?;
        let e5 = rate("error5xxRate", p.error_5xx_rate)?;
        let nd = dur("notificationDelay", &p.notification_delay)?;
        let ra = dur("retryAfter", &p.retry_after)?;
        let pd = dur("processingDelay", &p.processing_delay)?;
        let mut states = Vec::new();
        for (uid, s) in p.token_state.unwrap_or_default() {
            let st = TokenState::parse(&s).ok_or_else(|| {
                format!("tokenState for {uid}: expected valid|expired|revoked, got {s:?}")
            })?;
            states.push((uid, st));
        }
        if let Some(v) = drop {
            self.drop_notification_rate = v;
        }
        if let Some(v) = dup {
            self.duplicate_notification_rate = v;
        }
        if let Some(v) = e5 {
            self.error_5xx_rate = v;
        }
        if let Some(v) = nd {
            self.notification_delay = v;
        }
        if let Some(v) = ra {
            self.retry_after = v;
        }
        if let Some(v) = pd {
            self.processing_delay = v;
        }
        if let Some(v) = p.version_churn {
            self.version_churn = v;
        }
        if let Some(v) = p.errors_with_http200 {
            self.errors_with_http200 = v;
        }
        for (uid, st) in states {
            self.token_state.insert(uid, st);
        }
        Ok(())
    }

    /// Retry-After header value: whole seconds, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        let ms = self.retry_after.as_millis();
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    pub fn to_json(&self) -> Value {
        let ts: BTreeMap<&str, &str> = self
            .token_state
            .iter()
            .map(|(k, v)| (k.as_str(), v.name()))
            .collect();
        let d = |d: Duration| {
            if d.is_zero() {
                "0s".to_string()
            } else {
                fmt_ms(d)
            }
        };
        json!({
            "dropNotificationRate": self.drop_notification_rate,
            "duplicateNotificationRate": self.duplicate_notification_rate,
            "notificationDelay": d(self.notification_delay),
            "error5xxRate": self.error_5xx_rate,
            "retryAfter": d(self.retry_after),
            "processingDelay": d(self.processing_delay),
            "versionChurn": self.version_churn,
            "errorsWithHttp200": self.errors_with_http200,
            "tokenState": ts,
        })
    }
}

fn fmt_ms(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        // humantime's own spelling, which parse_duration reads back.
        humantime::format_duration(d).to_string()
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_keeps_omitted_keys_and_is_atomic() {
        let mut f = Faults::default();
        let p: FaultsPatch =
            serde_json::from_value(json!({"dropNotificationRate": 0.5, "retryAfter": "3s"}))
                .unwrap();
        f.apply(p).unwrap();
        assert_eq!(f.drop_notification_rate, 0.5);
        assert_eq!(f.retry_after_secs(), 3);
        assert_eq!(f.processing_delay, Duration::from_millis(200));
        let bad: FaultsPatch =
            serde_json::from_value(json!({"error5xxRate": 0.2, "tokenState": {"1": "weird"}}))
                .unwrap();
        assert!(f.apply(bad).is_err());
        assert_eq!(f.error_5xx_rate, 0.0);
        let long: FaultsPatch =
            serde_json::from_value(json!({"notificationDelay": "10000y"})).unwrap();
        assert!(f.apply(long).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        let f = Faults {
            retry_after: Duration::from_millis(1500),
            ..Faults::default()
        };
        assert_eq!(f.retry_after_secs(), 2);
    }
}
