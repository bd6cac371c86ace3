//! Control routes under `/_sim/` (listed in the module docs of `sim`). Errors here are `{"error": "..."}` with 400/404;
//! they are the test harness's API, not Apple's.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::FaultsPatch;
use super::state::{apple_date, random_hex, Asset, Location, User, UserStatus, NOTIFICATION_TYPES};
use super::{notify, process, Shared};

fn bad(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewAsset {
    adam_id: String,
    pricing_param: Option<String>,
    product_type: Option<String>,
    /// Licences owned; omit with `unlimited: true` for a free asset.
    total: Option<i64>,
    unlimited: Option<bool>,
    device_assignable: Option<bool>,
    revocable: Option<bool>,
    supported_platforms: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewUser {
    client_user_id: String,
    email: Option<String>,
    managed_apple_id: Option<String>,
    /// Registered (default) or Associated (gets an idHash).
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewLocation {
    name: Option<String>,
    /// Apple format or RFC 3339; default one year from now. A past date makes the token expired.
    exp_date: Option<String>,
    #[serde(default)]
    assets: Vec<NewAsset>,
    #[serde(default)]
    users: Vec<NewUser>,
    page_size: Option<usize>,
}

fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// `POST /_sim/locations` -> `{"uId", "sToken"}`.
pub async fn create_location(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let req: NewLocation = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let exp = match req.exp_date.as_deref() {
        None => Utc::now() + ChronoDuration::days(365),
        Some(s) => match parse_date(s) {
            Some(d) => d,
            None => return bad(StatusCode::BAD_REQUEST, format!("invalid expDate {s:?}")),
        },
    };
    let page_size = req.page_size.unwrap_or(1000);
    if page_size == 0 {
        return bad(StatusCode::BAD_REQUEST, "pageSize must be at least 1");
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let uid = {
        let Ok(mut guard) = sh.state.lock() else {
            return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
        };
        let st = &mut *guard;
        let uid = loop {
            let n: u64 = st
                .rng
                .gen_range(1_000_000_000_000_000..10_000_000_000_000_000);
            if !st.locations.contains_key(&n.to_string()) {
                break n.to_string();
            }
        };
        let org = req
            .name
            .clone()
            .unwrap_or_else(|| format!("ORG{}", &uid[..6]));
        let mut raw = [0u8; 48];
        st.rng.fill(&mut raw[..]);
        let inner = base64::engine::general_purpose::STANDARD.encode(raw);
        let json_token =
            json!({"token": inner, "expDate": apple_date(exp), "orgName": org}).to_string();
        let stoken = base64::engine::general_purpose::STANDARD.encode(json_token);
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| format!("Location {uid}"));
        let mut loc = Location::new(
            uid.clone(),
            name,
            stoken.clone(),
            exp,
            page_size,
            &mut st.rng,
        );
        for a in req.assets {
            let pp = a.pricing_param.unwrap_or_else(|| "STDQ".into());
            let pt = a.product_type.unwrap_or_else(|| "App".into());
            if !matches!(pp.as_str(), "STDQ" | "PLUS") || !matches!(pt.as_str(), "App" | "Book") {
                return bad(
                    StatusCode::BAD_REQUEST,
                    format!("asset {}: bad pricingParam or productType", a.adam_id),
                );
            }
            let total = match (a.unlimited.unwrap_or(false), a.total) {
                (true, _) => None,
                (false, Some(t)) if t >= 0 => Some(t),
                _ => {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        format!("asset {}: total (>= 0) or unlimited required", a.adam_id),
                    )
                }
            };
            let book = pt == "Book";
            let asset = Asset {
                adam_id: a.adam_id,
                pricing_param: pp,
                product_type: pt,
                total,
                // Books are neither device-assignable nor revocable [C START].
                device_assignable: a.device_assignable.unwrap_or(!book),
                revocable: a.revocable.unwrap_or(!book),
                supported_platforms: a
                    .supported_platforms
                    .unwrap_or_else(|| vec!["iOS".into(), "macOS".into()]),
                assigned: 0,
            };
            if let Err(e) = loc.add_asset(asset) {
                return bad(StatusCode::BAD_REQUEST, e);
            }
        }
        for u in req.users {
            let status = match u.status.as_deref() {
                None | Some("Registered") => UserStatus::Registered,
                Some("Associated") => UserStatus::Associated,
                Some(s) => {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        format!("user status {s:?}: Registered or Associated"),
                    )
                }
            };
            let id_hash = (status == UserStatus::Associated).then(|| random_hex(&mut st.rng, 20));
            let user = User {
                client_user_id: u.client_user_id,
                email: u.email,
                managed_apple_id: u.managed_apple_id,
                status,
                invite_code: random_hex(&mut st.rng, 16),
                id_hash,
                modified: 0,
            };
            if let Err(e) = loc.add_user(user) {
                return bad(StatusCode::BAD_REQUEST, e);
            }
        }
        loc.queue = Some(tx);
        st.by_token.insert(stoken, uid.clone());
        // So /_sim/stats lists every location, even before its first request.
        st.traffic.entry(uid.clone()).or_default();
        st.locations.insert(uid.clone(), loc);
        uid
    };
    tokio::spawn(process::worker(sh.clone(), uid.clone(), rx));
    let st = sh.state.lock().ok();
    let stoken = st
        .as_ref()
        .and_then(|s| s.locations.get(&uid))
        .map(|l| l.stoken.clone())
        .unwrap_or_default();
    (
        StatusCode::OK,
        Json(json!({ "uId": uid, "sToken": stoken })),
    )
        .into_response()
}

/// `PUT /_sim/faults`: returns the faults now in force.
pub async fn put_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch: FaultsPatch = match parse(&body) {
        Ok(p) => p,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let Ok(mut st) = sh.state.lock() else {
        return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    match st.faults.apply(patch) {
        Ok(()) => Json(st.faults.to_json()).into_response(),
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotifyBody {
    u_id: String,
    url: String,
    auth_token: String,
}

/// `PUT /_sim/notify`: like POST client/config, without the API call or TEST_NOTIFICATION;
/// subscribes to every notification type.
pub async fn put_notify(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: NotifyBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    if reqwest::Url::parse(&b.url).is_err() {
        return bad(StatusCode::BAD_REQUEST, format!("invalid url {:?}", b.url));
    }
    let Ok(mut st) = sh.state.lock() else {
        return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    let Some(loc) = st.locations.get_mut(&b.u_id) else {
        return bad(StatusCode::NOT_FOUND, format!("unknown uId {}", b.u_id));
    };
    loc.config.notification_url = Some(b.url);
    loc.config.auth_token = Some(b.auth_token);
    loc.config.types = NOTIFICATION_TYPES.iter().map(|s| s.to_string()).collect();
    Json(json!({ "uId": b.u_id })).into_response()
}

/// `PUT /_sim/limits`: any Service Config limit keys (integers), merged into the limits that
/// Service Config shows and the validation and rate limit use. Returns all limits.
pub async fn put_limits(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: BTreeMap<String, i64> = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    if let Some((k, v)) = b.iter().find(|(_, v)| **v < 0) {
        return bad(
            StatusCode::BAD_REQUEST,
            format!("{k} must be >= 0, got {v}"),
        );
    }
    let Ok(mut st) = sh.state.lock() else {
        return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    st.limits.extend(b);
    Json(json!(st.limits)).into_response()
}

/// `GET /_sim/stats`.
pub async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    let Ok(st) = sh.state.lock() else {
        return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    let tokens: serde_json::Map<String, Value> = st
        .traffic
        .iter()
        .map(|(k, t)| (k.clone(), t.to_json()))
        .collect();
    Json(json!({
        "tokens": tokens,
        "notifications": {"sent": st.notif.sent, "dropped": st.notif.dropped, "duplicated": st.notif.duplicated},
    }))
    .into_response()
}

/// `GET /_sim/truth/{uId}`.
pub async fn truth(State(sh): State<Arc<Shared>>, Path(uid): Path<String>) -> Response {
    let Ok(st) = sh.state.lock() else {
        return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
    };
    match st.locations.get(&uid) {
        Some(loc) => Json(loc.truth()).into_response(),
        None => bad(StatusCode::NOT_FOUND, format!("unknown uId {uid}")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssetCountBody {
    u_id: String,
    adam_id: String,
    pricing_param: Option<String>,
    count_delta: i64,
}

/// `POST /_sim/asset-count` `{"uId", "adamId", "pricingParam"?, "countDelta"}`: changes an
/// asset's licence total as a purchase, refund or transfer would, and sends ASSET_COUNT
/// `{adamId, countDelta, pricingParam}` [C NOTIF]. Returns the ResponseAsset.
pub async fn asset_count(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: AssetCountBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let pp = b.pricing_param.unwrap_or_else(|| "STDQ".into());
    let (resp, out) = {
        let Ok(mut guard) = sh.state.lock() else {
            return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
        };
        let st = &mut *guard;
        let Some(loc) = st.locations.get_mut(&b.u_id) else {
            return bad(StatusCode::NOT_FOUND, format!("unknown uId {}", b.u_id));
        };
        let asset = match loc.change_count(&b.adam_id, &pp, b.count_delta) {
            Ok(a) => a,
            Err(e) => return bad(StatusCode::BAD_REQUEST, e),
        };
        let payload = json!({"adamId": b.adam_id, "countDelta": b.count_delta, "pricingParam": pp});
        (asset, notify::simple(st, &b.u_id, "ASSET_COUNT", payload))
    };
    notify::dispatch(&sh, out.into_iter().collect());
    Json(resp).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssociateUserBody {
    u_id: String,
    client_user_id: String,
}

/// `POST /_sim/associate-user` `{"uId", "clientUserId"}`: the user accepts the invitation
/// (status Associated, with an idHash) and USER_ASSOCIATED `{associatedUsers: [ResponseUser]}`
/// is sent [C NOTIF]. Returns the ResponseUser.
pub async fn associate_user(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let b: AssociateUserBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let (resp, out) = {
        let Ok(mut guard) = sh.state.lock() else {
            return bad(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned");
        };
        let st = &mut *guard;
        let Some(loc) = st.locations.get_mut(&b.u_id) else {
            return bad(StatusCode::NOT_FOUND, format!("unknown uId {}", b.u_id));
        };
        let user = match loc.associate_user(&b.client_user_id) {
            Ok(u) => u,
            Err(e) => return bad(StatusCode::BAD_REQUEST, e),
        };
        let payload = json!({ "associatedUsers": [user.clone()] });
        (
            user,
            notify::simple(st, &b.u_id, "USER_ASSOCIATED", payload),
        )
    };
    notify::dispatch(&sh, out.into_iter().collect());
    Json(resp).into_response()
}
