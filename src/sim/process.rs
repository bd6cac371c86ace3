//! Writes: synchronous validation with Apple's error numbers (docs/apple-api.md#error-numbers), then an event processed
//! asynchronously, in submission order, by one worker per location after `processingDelay`.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::errors::ApiError;
use super::notify;
use super::state::{
    keyed_uuid, Event, EventStatus, EventType, Location, ReqUser, SimState, Target, WriteRequest,
};
use super::Shared;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssetRef {
    adam_id: String,
    /// Apple's Asset has both fields; a missing pricingParam is taken as STDQ [I].
    pricing_param: Option<String>,
}

/// ManageAssetsRequest and RevokeAssetsRequest [C OBJ]. `assets` on revoke is a simulator
/// extension (Apple's RevokeAssetsRequest has none): when given, only those assets are revoked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssetsBody {
    assets: Option<Vec<AssetRef>>,
    client_user_ids: Option<Vec<String>>,
    serial_numbers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserRef {
    client_user_id: String,
    email: Option<String>,
    managed_apple_id: Option<String>,
}

#[derive(Deserialize)]
struct UsersBody {
    users: Option<Vec<UserRef>>,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::new(9602))
}

fn limit(st: &SimState, key: &str) -> usize {
    usize::try_from(st.limit(key)).unwrap_or(usize::MAX)
}

fn has_dups<'a>(items: impl IntoIterator<Item = &'a String>) -> bool {
    let mut seen = HashSet::new();
    items.into_iter().any(|s| !seen.insert(s))
}

fn with_assets(code: i32, assets: &[(String, String)]) -> ApiError {
    let mut e = ApiError::new(code);
    let list: Vec<Value> = assets
        .iter()
        .map(|(a, p)| json!({"adamId": a, "pricingParam": p}))
        .collect();
    e.info = Some(json!({ "assets": list }));
    e
}

/// Plausibility check for emails (9717): one `@`, a dotted domain, no spaces [I].
pub fn valid_email(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && !s.chars().any(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// Validates a write body for `kind`; returns the request to queue and `numRequested`.
pub fn validate(
    st: &SimState,
    loc: &Location,
    kind: EventType,
    body: &[u8],
) -> Result<(WriteRequest, u64), ApiError> {
    match kind {
        EventType::Associate | EventType::Disassociate | EventType::Revoke => {
            let b: AssetsBody = parse(body)?;
            let revoke = kind == EventType::Revoke;
            let users = b.client_user_ids.unwrap_or_default();
            let serials = b.serial_numbers.unwrap_or_default();
            let assets_in = b.assets.unwrap_or_default();
            if assets_in.is_empty() && !revoke {
                return Err(ApiError::new(9718));
            }
            if users.is_empty() && serials.is_empty() {
                return Err(ApiError::new(9719));
            }
            let (max_users, max_serials) = if revoke {
                (
                    limit(st, "maxRevokeClientUserIds"),
                    limit(st, "maxRevokeSerialNumbers"),
                )
            } else {
                (limit(st, "maxClientUserIds"), limit(st, "maxSerialNumbers"))
            };
            if assets_in.len() > limit(st, "maxAssets") {
                return Err(ApiError::new(9700));
            }
            if users.len() > max_users {
                return Err(ApiError::new(9701));
            }
            if serials.len() > max_serials {
                return Err(ApiError::new(9702));
            }
            let mut assets = Vec::with_capacity(assets_in.len());
            for a in assets_in {
                let pp = a.pricing_param.unwrap_or_else(|| "STDQ".to_string());
                if a.adam_id.is_empty() || !(pp == "STDQ" || pp == "PLUS") {
                    return Err(ApiError::new(9602));
                }
                assets.push((a.adam_id, pp));
            }
            let mut seen = HashSet::new();
            if !assets.iter().all(|a| seen.insert(a)) {
                return Err(ApiError::new(9703));
            }
            if has_dups(&users) {
                return Err(ApiError::new(9704));
            }
            if has_dups(&serials) {
                return Err(ApiError::new(9705));
            }
            if users.iter().chain(&serials).any(String::is_empty) {
                return Err(ApiError::new(9602));
            }
            if kind == EventType::Associate && !serials.is_empty() {
                let bad: Vec<_> = assets
                    .iter()
                    .filter(|(a, p)| loc.asset(a, p).is_some_and(|x| !x.device_assignable))
                    .cloned()
                    .collect();
                if !bad.is_empty() {
                    return Err(with_assets(9707, &bad));
                }
            }
            if kind != EventType::Associate {
                // Disassociating or revoking a non-revocable asset (books) is refused [I from 9706].
                let bad: Vec<_> = assets
                    .iter()
                    .filter(|(a, p)| loc.asset(a, p).is_some_and(|x| !x.revocable))
                    .cloned()
                    .collect();
                if !bad.is_empty() {
                    return Err(with_assets(9706, &bad));
                }
            }
            let targets: Vec<Target> = serials
                .into_iter()
                .map(Target::Serial)
                .chain(users.into_iter().map(Target::User))
                .collect();
            // Revoke counts targets (users + devices), since the assets are not named [I].
            let n = if revoke {
                targets.len() as u64
            } else {
                (assets.len() * targets.len()) as u64
            };
            Ok((WriteRequest::Assets { assets, targets }, n))
        }
        EventType::Create | EventType::Update | EventType::Retire => {
            let b: UsersBody = parse(body)?;
            let users = b.users.unwrap_or_default();
            if users.is_empty() {
                return Err(ApiError::new(9720));
            }
            if users.len() > limit(st, "maxUsers") {
                return Err(ApiError::new(9714));
            }
            if has_dups(users.iter().map(|u| &u.client_user_id)) {
                return Err(ApiError::new(9715));
            }
            if users.iter().any(|u| u.client_user_id.is_empty()) {
                return Err(ApiError::new(9602));
            }
            if kind != EventType::Retire {
                if let Some(u) = users
                    .iter()
                    .find(|u| u.email.as_deref().is_some_and(|e| !valid_email(e)))
                {
                    let mut e = ApiError::new(9717);
                    e.info = Some(json!({ "clientUserIds": [u.client_user_id] }));
                    return Err(e);
                }
            }
            let n = users.len() as u64;
            let list = users
                .into_iter()
                .map(|u| ReqUser {
                    client_user_id: u.client_user_id,
                    email: u.email,
                    managed_apple_id: u.managed_apple_id,
                })
                .collect();
            Ok((WriteRequest::Users(list), n))
        }
    }
}

/// Validates and queues a write for location `uid`; returns the new eventId.
pub fn submit(
    st: &mut SimState,
    uid: &str,
    kind: EventType,
    body: &[u8],
) -> Result<String, ApiError> {
    let loc = st.locations.get(uid).ok_or_else(|| ApiError::new(9622))?;
    let (req, n) = validate(st, loc, kind, body)?;
    // Named by its place in this location's submissions, which the submitter controls, and
    // not by draws other requests made before it.
    let id = keyed_uuid(loc.derive(&["event", &loc.events.len().to_string()]));
    let due = tokio::time::Instant::now() + st.faults.processing_delay;
    let loc = st
        .locations
        .get_mut(uid)
        .ok_or_else(|| ApiError::new(9622))?;
    loc.add_event(Event {
        id: id.clone(),
        kind,
        status: EventStatus::Pending,
        num_requested: n,
        num_completed: 0,
        failures: Vec::new(),
        request: Some(req),
        due,
    });
    if let Some(q) = &loc.queue {
        // The worker lives as long as the runtime; a closed queue only happens at shutdown.
        let _ = q.send(id.clone());
    }
    Ok(id)
}

/// The per-location worker: processes events in submission order, each once it is due.
pub async fn worker(shared: Arc<Shared>, uid: String, mut rx: UnboundedReceiver<String>) {
    while let Some(eid) = rx.recv().await {
        let due = match shared.state.lock() {
            Ok(st) => st
                .locations
                .get(&uid)
                .and_then(|l| l.event(&eid))
                .map(|e| e.due),
            Err(_) => return,
        };
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        let out = {
            let Ok(mut guard) = shared.state.lock() else {
                return;
            };
            let st = &mut *guard;
            let Some(loc) = st.locations.get_mut(&uid) else {
                continue;
            };
            match loc.process(&eid) {
                Some((kind, applied)) => notify::build(st, &uid, &eid, kind, &applied),
                None => Vec::new(),
            }
        };
        notify::dispatch(&shared, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(valid_email("u1@example.com"));
        assert!(!valid_email("u1example.com"));
        assert!(!valid_email("u1@example"));
        assert!(!valid_email("a b@example.com"));
        assert!(!valid_email("@example.com"));
        assert!(!valid_email("a@b@example.com"));
    }
}
