//! Notification building and delivery (docs/apple-api.md#notifications, src/sim/mod.rs).
//!
//! - Envelope `{notification, notificationId, notificationType, uId}` [C NOTIF].
//! - ASSET_MANAGEMENT `{assignments, eventId, result, type, error?}` and USER_MANAGEMENT
//!   `{eventId, result, type, users, error?}`: SUCCESS chunks list succeeded entities, FAILURE
//!   chunks list failed entities of one error number with that one `error` [C ERR example];
//!   USER_MANAGEMENT failures use the same shape [I, docs/apple-api.md#notifications].
//! - At most 100 entities per notification [C NOTIF]. A REVOKE that removed nothing still sends
//!   one SUCCESS with an empty list, so the client hears about the event [I].
//! - POST with `Authorization: Bearer <authToken>` and `Content-Type: application/json`, up to
//!   3 attempts (Apple: 3 over 1–5 min [C NOTIF]; here 250 ms / 500 ms backoff so tests stay
//!   fast), 5 s timeout each. Any 2xx = delivered.
//! - Faults, decided when the notification is created from the seed and what the notification
//!   is about (location, type, entities; see [`content_key`]), never from a shared RNG stream,
//!   so one seed gives the same losses, duplicates and chunk order whatever else ran in
//!   between: `dropNotificationRate` (never sent), `duplicateNotificationRate` (same
//!   notificationId sent twice), `notificationDelay` (wait `delay + [0, delay)` before sending).
//! - The chunks of one event go one after the other, each once the previous one was answered,
//!   in an order their keys pick: a FAILURE may come before the SUCCESS of the same event (as
//!   Apple's may [I]), but the order is the same in every run and the chunks arrive close
//!   together, so a receiver that acts on the first does not race the rest by chance.
//! - At most 32 deliveries run at once; when more than [`MAX_QUEUED`] wait, new ones are dropped
//!   (counted in `dropped`) so a dead receiver cannot grow memory without bound.
//! - Counters: `sent` = notifications handed to delivery (once per notificationId, whatever
//!   the receiver answers), `dropped` = never sent, `duplicated` = sent a second time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::errors::error_body;
use super::state::{error_info, keyed_uuid, unit, Applied, EventType, SimState};
use super::Shared;

pub const CHUNK: usize = 100;
pub const MAX_QUEUED: usize = 10_000;
const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// One notification ready to go.
#[derive(Debug)]
pub struct Outgoing {
    pub url: String,
    pub auth: String,
    pub body: Vec<u8>,
    pub delay: Duration,
    pub duplicate: bool,
    /// Sent right after the previous item of the same batch was delivered (the next chunk of
    /// one event), instead of after `delay` on its own.
    pub after_previous: bool,
}

/// Builds the envelopes for a processed event and applies the drop/duplicate/delay faults.
/// Called under the state lock; returns what to send after the lock is released.
pub fn build(
    st: &mut SimState,
    uid: &str,
    event_id: &str,
    kind: EventType,
    applied: &Applied,
) -> Vec<Outgoing> {
    let Some(loc) = st.locations.get(uid) else {
        return Vec::new();
    };
    let (Some(url), Some(auth)) = (
        loc.config.notification_url.clone(),
        loc.config.auth_token.clone(),
    ) else {
        return Vec::new();
    };
    let ntype = if kind.is_asset_event() {
        "ASSET_MANAGEMENT"
    } else {
        "USER_MANAGEMENT"
    };
    if !loc.config.types.iter().any(|t| t == ntype) {
        return Vec::new();
    }
    let list_key = if kind.is_asset_event() {
        "assignments"
    } else {
        "users"
    };
    let mut payloads = Vec::new();
    let mk = |ents: &[Value], result: &str, error: Option<Value>| {
        let mut p =
            json!({ list_key: ents, "eventId": event_id, "result": result, "type": kind.name() });
        if let (Some(e), Some(obj)) = (error, p.as_object_mut()) {
            obj.insert("error".into(), e);
        }
        p
    };
    for chunk in applied.ok.chunks(CHUNK) {
        payloads.push(mk(chunk, "SUCCESS", None));
    }
    if applied.ok.is_empty() && applied.failed.is_empty() {
        payloads.push(mk(&[], "SUCCESS", None));
    }
    for (code, ents) in &applied.failed {
        for chunk in ents.chunks(CHUNK) {
            payloads.push(mk(
                chunk,
                "FAILURE",
                Some(error_body(*code, Some(error_info(*code, chunk)))),
            ));
        }
    }
    // The chunks' order is picked by their keys; the first that is not lost waits the delay
    // (placed by all the keys together) and the others follow it (see the module doc).
    let mut keyed: Vec<(u64, Value)> = payloads
        .into_iter()
        .map(|p| (content_key(st.seed, uid, ntype, &p) ^ ORDER_SALT, p))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    let spread = unit(
        keyed
            .iter()
            .fold(0u64, |a, (k, _)| a ^ k.rotate_left(17))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut out: Vec<Outgoing> = Vec::new();
    for (_, p) in keyed {
        if let Some(mut o) = envelope(st, uid, &url, &auth, ntype, p, spread) {
            if !out.is_empty() {
                o.delay = Duration::ZERO;
                o.after_previous = true;
            }
            out.push(o);
        }
    }
    out
}

/// Salts that make the order and delay keys independent of the drop and duplicate keys.
const ORDER_SALT: u64 = 0x6a09_e667_f3bc_c909;
const DUPLICATE_SALT: u64 = 0xD1B5_4A32_D192_ED03;

/// A notification outside event processing (ASSET_COUNT, USER_ASSOCIATED), if the location
/// has a target and subscribes to `ntype`.
pub fn simple(st: &mut SimState, uid: &str, ntype: &str, payload: Value) -> Option<Outgoing> {
    let loc = st.locations.get(uid)?;
    if !loc.config.types.iter().any(|t| t == ntype) {
        return None;
    }
    let url = loc.config.notification_url.clone()?;
    let auth = loc.config.auth_token.clone()?;
    let spread = unit(content_key(st.seed, uid, ntype, &payload) ^ ORDER_SALT);
    envelope(st, uid, &url, &auth, ntype, payload, spread)
}

/// A stable key for a notification: the seed, the location, the type and the payload without
/// the fields that differ between runs of one workload (the random eventId; the result, which
/// depends on which of two racing requests got the last licence).
fn content_key(seed: u64, uid: &str, ntype: &str, payload: &Value) -> u64 {
    let mut p = payload.clone();
    if let Some(o) = p.as_object_mut() {
        o.remove("eventId");
        o.remove("result");
        o.remove("error");
    }
    // serde_json's map is ordered by key, so the text is canonical.
    let text = format!("{uid}\u{0}{ntype}\u{0}{p}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    crate::core::backoff::splitmix64(h ^ seed)
}

/// The notificationId: named by the location and the whole payload (eventId included, so
/// each event's chunks are distinct); payloads that name no event also take a counter.
fn notification_id(st: &mut SimState, uid: &str, ntype: &str, payload: &Value) -> String {
    let Some(loc) = st.locations.get_mut(uid) else {
        return keyed_uuid(content_key(st.seed, uid, ntype, payload));
    };
    let text = payload.to_string();
    let key = if payload.get("eventId").is_some() {
        loc.derive(&["notification", ntype, &text])
    } else {
        loc.plain_notifications += 1;
        let n = loc.plain_notifications.to_string();
        loc.derive(&["notification", ntype, &text, &n])
    };
    keyed_uuid(key)
}

/// Wraps a payload, rolling the faults. `None` when the drop fault hits. `spread` in [0, 1)
/// places the notification within the delay window.
pub fn envelope(
    st: &mut SimState,
    uid: &str,
    url: &str,
    auth: &str,
    ntype: &str,
    payload: Value,
    spread: f64,
) -> Option<Outgoing> {
    let f = &st.faults;
    let (drop_rate, dup_rate, delay) = (
        f.drop_notification_rate,
        f.duplicate_notification_rate,
        f.notification_delay,
    );
    // Lost and duplicated are decided by what the notification is about (location, type,
    // entities), not by arrival order, so one seed loses the same notifications in every run
    // of one workload however the requests interleave.
    let key = content_key(st.seed, uid, ntype, &payload);
    if drop_rate > 0.0 && unit(key) < drop_rate {
        st.notif.dropped += 1;
        return None;
    }
    let duplicate = dup_rate > 0.0 && unit(key ^ DUPLICATE_SALT) < dup_rate;
    let id = notification_id(st, uid, ntype, &payload);
    let jitter = delay.mul_f64(spread.clamp(0.0, 1.0));
    st.notif.sent += 1;
    if duplicate {
        st.notif.duplicated += 1;
    }
    let body = json!({ "notification": payload, "notificationId": id, "notificationType": ntype, "uId": uid });
    Some(Outgoing {
        url: url.to_string(),
        auth: auth.to_string(),
        body: body.to_string().into_bytes(),
        delay: delay + jitter,
        duplicate,
        after_previous: false,
    })
}

/// Spawns the deliveries (bounded, see module doc): one task per batch of items that follow
/// each other (`after_previous`), delivering them in order.
pub fn dispatch(shared: &Arc<Shared>, items: Vec<Outgoing>) {
    let mut batches: Vec<Vec<Outgoing>> = Vec::new();
    for item in items {
        if shared.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            if let Ok(mut st) = shared.state.lock() {
                st.notif.sent = st.notif.sent.saturating_sub(1);
                st.notif.dropped += 1;
            }
            continue;
        }
        match batches.last_mut() {
            Some(batch) if item.after_previous => batch.push(item),
            _ => batches.push(vec![item]),
        }
    }
    for batch in batches {
        let sh = shared.clone();
        tokio::spawn(async move {
            if let Some(first) = batch.first().filter(|i| !i.delay.is_zero()) {
                tokio::time::sleep(first.delay).await;
            }
            let n = batch.len();
            if let Ok(_permit) = sh.slots.clone().acquire_owned().await {
                for item in &batch {
                    deliver(&sh.http, &item.url, &item.auth, &item.body, ATTEMPTS).await;
                    if item.duplicate {
                        deliver(&sh.http, &item.url, &item.auth, &item.body, ATTEMPTS).await;
                    }
                }
            }
            sh.queued.fetch_sub(n, Ordering::SeqCst);
        });
    }
}

/// POSTs `body` up to `attempts` times; true once a 2xx came back.
pub async fn deliver(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    body: &[u8],
    attempts: u32,
) -> bool {
    for attempt in 0..attempts {
        if attempt > 0 {
            let ms = crate::core::backoff::exponential_ms(250, attempt - 1, u64::MAX);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let res = http
            .post(url)
            .header("authorization", format!("Bearer {auth}"))
            .header("content-type", "application/json")
            .timeout(ATTEMPT_TIMEOUT)
            .body(body.to_vec())
            .send()
            .await;
        if matches!(&res, Ok(r) if r.status().is_success()) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::state::Location;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    #[test]
    fn chunks_follow_each_other_in_one_order_whatever_ran_before() {
        let mut st = SimState::with_seed(SmallRng::seed_from_u64(2), 5);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut loc = Location::new(
            "u1".into(),
            "L".into(),
            "t".into(),
            chrono::Utc::now(),
            10,
            &mut rng,
        );
        loc.config.notification_url = Some("http://127.0.0.1:9/".into());
        loc.config.auth_token = Some("a".into());
        st.locations.insert("u1".into(), loc);
        st.faults.notification_delay = Duration::from_millis(400);
        let ent = |i: usize| json!({"adamId": "1", "pricingParam": "STDQ", "serialNumber": format!("S{i}")});
        let applied = Applied {
            ok: (0..250).map(ent).collect(),
            failed: vec![(9709, (250..253).map(ent).collect())],
        };
        let first = build(&mut st, "u1", "e1", EventType::Associate, &applied);
        assert_eq!(first.len(), 4, "three SUCCESS chunks and one FAILURE");
        let lead = first[0].delay.as_millis();
        assert!(
            !first[0].after_previous && (400..800).contains(&lead),
            "{lead}"
        );
        assert!(first[1..]
            .iter()
            .all(|o| o.after_previous && o.delay.is_zero()));
        // Draws from the shared RNG (as other requests would make) change nothing.
        for _ in 0..17 {
            let _: u64 = st.rng.gen();
        }
        let again = build(&mut st, "u1", "e2", EventType::Associate, &applied);
        let entities = |v: &[Outgoing]| -> Vec<Value> {
            v.iter()
                .map(|o| {
                    let b: Value = serde_json::from_slice(&o.body).unwrap();
                    b["notification"]["assignments"].clone()
                })
                .collect()
        };
        assert_eq!(entities(&first), entities(&again), "the same order");
        assert_eq!(first[0].delay, again[0].delay);
        assert_ne!(
            first[0].body, again[0].body,
            "another event, another notification"
        );
    }

    #[test]
    fn loss_is_decided_by_content_not_by_ids_or_order() {
        let a = json!({"eventId": "e-1", "result": "SUCCESS", "type": "ASSOCIATE",
            "assignments": [{"adamId": "1", "serialNumber": "S1"}]});
        let same = json!({"eventId": "e-2", "result": "FAILURE", "type": "ASSOCIATE",
            "assignments": [{"adamId": "1", "serialNumber": "S1"}]});
        let other = json!({"eventId": "e-1", "result": "SUCCESS", "type": "ASSOCIATE",
            "assignments": [{"adamId": "1", "serialNumber": "S2"}]});
        let k = |seed, p: &Value| content_key(seed, "u1", "ASSET_MANAGEMENT", p);
        assert_eq!(k(3, &a), k(3, &same), "ids and results do not count");
        assert_ne!(k(3, &a), k(3, &other));
        assert_ne!(k(3, &a), k(4, &a), "the seed does");
        // About the requested share is lost.
        let lost = (0..10_000)
            .filter(|i| {
                let p = json!({"assignments": [{"serialNumber": format!("S{i}")}]});
                unit(k(7, &p)) < 0.3
            })
            .count();
        assert!((2_700..3_300).contains(&lost), "{lost}");
    }
}
