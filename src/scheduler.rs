//! Periodic work, as thin adapters: the cron full sync per token (one timer; it only sends
//! inputs to the executor), and the upkeep chore the executor runs on its clock
//! (Service Config, Client Config, token expiry warnings). None of it holds business logic of
//! the event core.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;

use crate::apple::model::{ClientConfigRequest, MdmInfo};
use crate::apple::AppleClient;
use crate::config::TokenConfig;
use crate::core::SyncKind;
use crate::executor::{ExecutorHandle, Input};
use crate::store::{Store, TokenStatus};
use crate::time::Timestamp;
use crate::tokens::Registry;

/// Notification types the daemon subscribes to when it keeps Client Config pointing at it.
pub const NOTIFICATION_TYPES: [&str; 4] = [
    "ASSET_MANAGEMENT",
    "USER_MANAGEMENT",
    "ASSET_COUNT",
    "USER_ASSOCIATED",
];

/// Longest single sleep of the cron loop: the wall clock is read again at least this often,
/// so a clock step (NTP, suspend) moves the next run with it.
const CRON_MAX_NAP: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks the executor for a full sync of every token and kind at each time of `schedule`
/// (UTC), until `shutdown`. One timer until the next time (at most [`CRON_MAX_NAP`]): the
/// tokio-cron-scheduler it replaces checked its jobs every 500 ms, waking an idle daemon 120
/// times a minute for a once-a-day job.
pub async fn run_cron(
    schedule: croner::Cron,
    tokens: Registry,
    executor: ExecutorHandle,
    shutdown: CancellationToken,
) {
    let next_after =
        |t: chrono::DateTime<chrono::Utc>| match schedule.find_next_occurrence(&t, false) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(error = %e, "scheduled full syncs stop: no next time");
                None
            }
        };
    let Some(mut next) = next_after(chrono::Utc::now()) else {
        return;
    };
    loop {
        let now = chrono::Utc::now();
        if now >= next {
            for token in tokens.names() {
                for kind in SyncKind::ALL {
                    let _ = executor
                        .inputs
                        .send(Input::Sync {
                            token: token.clone(),
                            kind,
                            full: true,
                            cause: "scheduled full sync".into(),
                            reply: None,
                        })
                        .await;
                }
            }
            match next_after(now) {
                Some(n) => next = n,
                None => return,
            }
            continue;
        }
        let wait = (next - now).to_std().unwrap_or_default().min(CRON_MAX_NAP);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Keeps what the daemon knows about Apple fresh: Service Config (URLs, limits), each token's
/// Client Config (uId, location, mdmInfo ownership, notification URL), health and expiry.
pub struct Upkeep {
    pub client: AppleClient,
    pub store: Store,
    pub tokens: Registry,
    warned: HashSet<(String, u32)>,
    /// The last mdmInfo conflict logged per token, so each change is logged once.
    conflicts: HashMap<String, Option<String>>,
}

impl Upkeep {
    pub fn new(client: AppleClient, store: Store, tokens: Registry) -> Upkeep {
        Upkeep {
            client,
            store,
            tokens,
            warned: HashSet::new(),
            conflicts: HashMap::new(),
        }
    }

    /// One round, as of `now` (the executor's clock).
    pub async fn once(&mut self, now: Timestamp) {
        if let Err(e) = self.client.service_config().await {
            tracing::warn!(error = %e, "cannot read Service Config; keeping the last URLs and limits");
        }
        for t in self.tokens.configs() {
            // Each token's upkeep is its lease holder's (several instances).
            if !self.client.may_call(&t.name) {
                continue;
            }
            if let Some(status) = self.expiry_warning(&t, now) {
                let r = self.store.record_token_status(&t.name, status, now).await;
                if let Err(e) = r {
                    tracing::error!(token = %t.name, error = %e, "cannot record the token's expiry in the feed");
                }
            }
            self.client_config(&t).await;
        }
    }

    /// Logs the expiry warning due now (once per threshold) and returns the token's status
    /// for the feed: `expiring_soon` with the days left, or `expired`.
    fn expiry_warning(&mut self, t: &TokenConfig, now: Timestamp) -> Option<TokenStatus> {
        let exp = t.content_token.exp_date;
        let threshold = expiry_threshold(now, exp)?;
        if !self.warned.insert((t.name.clone(), threshold)) {
            return None;
        }
        let days_left = (exp.since(now).as_secs() / 86_400) as i64;
        if threshold == 0 {
            tracing::error!(token = %t.name, expired_at = %exp,
                "content token has expired; download a new one from Apple Business/School Manager");
            Some(TokenStatus::new(
                "expired",
                Some(format!("the content token expired at {exp}")),
            ))
        } else {
            tracing::warn!(token = %t.name, expires_at = %exp, days_left,
                "content token expires within {}", crate::time::count(threshold, "day", "days"));
            Some(TokenStatus {
                health: "expiring_soon".into(),
                reason: Some(format!("the content token expires at {exp}")),
                days_left: Some(days_left),
                threshold: Some(threshold),
            })
        }
    }

    async fn client_config(&mut self, t: &TokenConfig) {
        let cc = match self.client.client_config(&t.name).await {
            Ok(cc) => cc,
            Err(e) => {
                tracing::warn!(token = %t.name, error = %e, "cannot read Client Config");
                return;
            }
        };
        if let Some(uid) = &cc.u_id {
            self.tokens.set_uid(&t.name, uid);
        }
        let on_location = cc.mdm_info.as_ref().map(|m| m.id.clone());
        let decision = ownership(
            on_location.as_deref(),
            t.mdm_id.as_deref(),
            t.claim_location,
            t.notification_url.is_some(),
        );
        let conflict = match &decision {
            Ownership::Conflict(c) => Some(c.clone()),
            _ => None,
        };
        let recorded = self
            .store
            .set_token_location(
                &t.name,
                cc.u_id.clone(),
                cc.location_name.clone(),
                on_location,
                conflict.clone(),
            )
            .await;
        if let Err(e) = recorded {
            tracing::error!(token = %t.name, error = %e, "cannot record Client Config");
            return;
        }
        // Logged once per change, not on every refresh.
        let before = self
            .conflicts
            .insert(t.name.clone(), conflict.clone())
            .flatten();
        if before != conflict {
            match &conflict {
                Some(c) => tracing::error!(token = %t.name, conflict = %c,
                    "not changing this location's Client Config"),
                None => tracing::info!(token = %t.name, "mdmInfo conflict resolved"),
            }
        }
        let mdm_info = match decision {
            Ownership::Passive | Ownership::Conflict(_) => return,
            Ownership::Ours => cc.mdm_info.clone(),
            Ownership::Claim => t.mdm_id.as_ref().map(|id| MdmInfo {
                id: id.clone(),
                name: MDM_NAME.to_string(),
                metadata: t
                    .notification_url
                    .as_deref()
                    .and_then(|u| reqwest::Url::parse(u).ok())
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_else(|| MDM_NAME.to_string()),
            }),
        };
        let Some(url) = &t.notification_url else {
            return;
        };
        let subscribed: Vec<String> = cc.subscribed_notification_types.clone();
        let missing: Vec<&str> = NOTIFICATION_TYPES
            .iter()
            .copied()
            .filter(|n| !subscribed.iter().any(|s| s == n))
            .collect();
        let ours = cc.notification_url.as_deref() == Some(url.as_str())
            && cc
                .notification_auth_token
                .as_ref()
                .is_some_and(|a| a.expose() == t.notification_auth_token.expose())
            && missing.is_empty()
            && cc.mdm_info == mdm_info;
        if ours {
            return;
        }
        // notificationTypes replaces the whole set: keep what the MDM subscribed to and add
        // ours. An mdmInfo already on the location is sent back exactly as read.
        let mut types = subscribed;
        types.extend(missing.iter().map(|s| s.to_string()));
        let req = ClientConfigRequest {
            mdm_info,
            notification_auth_token: Some(t.notification_auth_token.clone()),
            notification_types: Some(types),
            notification_url: Some(url.clone()),
        };
        match self.client.set_client_config(&t.name, &req).await {
            Ok(_) => {
                tracing::info!(token = %t.name, url = %url, "Client Config now points notifications at this daemon")
            }
            Err(e) => tracing::warn!(token = %t.name, error = %e, "cannot set Client Config"),
        }
    }
}

/// The `mdmInfo.name` the daemon writes when it claims a location without mdmInfo.
pub const MDM_NAME: &str = "vpp-reconciler";

/// What the Client Config upkeep may do with a token's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// No `notification_url`: Client Config is only read, never written.
    Passive,
    /// The location's mdmInfo.id equals the token's `mdm_id`: keep Client Config pointing here.
    Ours,
    /// No mdmInfo on the location and `claim_location = true`: set Client Config (and
    /// mdmInfo from `mdm_id` when given).
    Claim,
    /// Leave Client Config alone; the sentence is recorded as the token's mdm_conflict.
    Conflict(String),
}

/// The ownership rule (config/vpp-reconciler.toml): Client Config is changed only while the location's
/// mdmInfo.id equals the token's `mdm_id`, or when the location has no mdmInfo and the
/// operator opted in to claiming it. Without `notification_url` nothing is written; another
/// MDM's mdmInfo is still reported when `mdm_id` says whose the location should be.
pub fn ownership(
    on_location: Option<&str>,
    mdm_id: Option<&str>,
    claim_location: bool,
    has_notification_url: bool,
) -> Ownership {
    match (on_location, mdm_id) {
        (Some(found), Some(ours)) if found == ours => {
            if has_notification_url {
                Ownership::Ours
            } else {
                Ownership::Passive
            }
        }
        (Some(found), Some(ours)) => Ownership::Conflict(format!(
            "the location's mdmInfo id {found:?} is another MDM's (mdm_id is {ours:?}); \
             Client Config left alone"
        )),
        (Some(found), None) if has_notification_url => Ownership::Conflict(format!(
            "the location's mdmInfo id {found:?} is not this token's (no mdm_id is configured); \
             Client Config left alone: set mdm_id = {found:?} if that MDM is this one"
        )),
        (None, _) if has_notification_url && claim_location => Ownership::Claim,
        (None, _) if has_notification_url => Ownership::Conflict(
            "the location has no mdmInfo and claim_location is not set; Client Config left alone"
                .to_string(),
        ),
        _ => Ownership::Passive,
    }
}

/// The expiry warning due now: `Some(0)` once expired, `Some(1 | 7 | 30)` within that many
/// days, `None` before. Each is logged once per token and threshold.
pub fn expiry_threshold(now: Timestamp, expires: Timestamp) -> Option<u32> {
    if expires <= now {
        return Some(0);
    }
    let days = expires.since(now).as_secs() / 86_400;
    [1u32, 7, 30].into_iter().find(|t| days < u64::from(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_rule() {
        use Ownership::*;
        let conflict = |o: Ownership| matches!(o, Conflict(_));
        // Our mdm_id on the location: keep it pointed here (only with a notification_url).
        assert_eq!(ownership(Some("m1"), Some("m1"), false, true), Ours);
        assert_eq!(ownership(Some("m1"), Some("m1"), true, false), Passive);
        // Another MDM's mdmInfo: never touched, always reported when mdm_id is known.
        assert!(conflict(ownership(Some("m2"), Some("m1"), true, true)));
        assert!(conflict(ownership(Some("m2"), Some("m1"), false, false)));
        // An mdmInfo but no mdm_id: not assumed to be ours.
        assert!(conflict(ownership(Some("m2"), None, true, true)));
        assert_eq!(ownership(Some("m2"), None, false, false), Passive);
        // No mdmInfo: claimed only with the opt-in.
        assert_eq!(ownership(None, Some("m1"), true, true), Claim);
        assert_eq!(ownership(None, None, true, true), Claim);
        assert!(conflict(ownership(None, Some("m1"), false, true)));
        assert_eq!(ownership(None, Some("m1"), true, false), Passive);
        let Conflict(why) = ownership(Some("m2"), Some("m1"), false, true) else {
            unreachable!()
        };
        assert!(why.contains("\"m2\"") && why.contains("\"m1\""), "{why}");
    }

    #[test]
    fn expiry_thresholds() {
        let day = 86_400_000;
        let now = Timestamp(1_000 * day);
        let at = |days: i64| Timestamp(now.0 + days * day);
        assert_eq!(expiry_threshold(now, at(90)), None);
        assert_eq!(expiry_threshold(now, at(30)), None);
        assert_eq!(expiry_threshold(now, Timestamp(at(30).0 - 1)), Some(30));
        assert_eq!(expiry_threshold(now, at(8)), Some(30));
        assert_eq!(expiry_threshold(now, at(6)), Some(7));
        assert_eq!(expiry_threshold(now, Timestamp(now.0 + day / 2)), Some(1));
        assert_eq!(expiry_threshold(now, now), Some(0));
        assert_eq!(expiry_threshold(now, at(-3)), Some(0));
    }
}
