//! Apple's routes under `/mdm/v2/`. One entry point resolves the endpoint, then applies the
//! checks in a fixed order (see the module doc of [`super`]) before the endpoint logic.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::errors::{message_of, ApiError, KNOWN_CODES};
use super::faults::TokenState;
use super::notify;
use super::process;
use super::rate::Admission;
use super::state::{
    apple_date, keyed, keyed_uuid, unit, DataSet, EventType, Location, Params, SimState,
    NOTIFICATION_TYPES,
};
use super::Shared;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ep {
    ServiceConfig,
    ClientConfig,
    GetAssets,
    GetAssignments,
    GetUsers,
    Write(EventType),
    /// `status/{eventId}`, or `status?eventId=` as docs/apple-api.md#event-status writes it.
    EventStatus(Option<String>),
}

impl Ep {
    fn resolve(path: &str) -> Option<Ep> {
        Some(match path.trim_end_matches('/') {
            "service/config" => Ep::ServiceConfig,
            "client/config" => Ep::ClientConfig,
            "assets" => Ep::GetAssets,
            "assignments" => Ep::GetAssignments,
            "users" => Ep::GetUsers,
            "assets/associate" => Ep::Write(EventType::Associate),
            "assets/disassociate" => Ep::Write(EventType::Disassociate),
            "assets/revoke" => Ep::Write(EventType::Revoke),
            "users/create" => Ep::Write(EventType::Create),
            "users/update" => Ep::Write(EventType::Update),
            "users/retire" => Ep::Write(EventType::Retire),
            "status" => Ep::EventStatus(None),
            p => match p.strip_prefix("status/") {
                Some(id) if !id.is_empty() && !id.contains('/') => {
                    Ep::EventStatus(Some(id.to_string()))
                }
                _ => return None,
            },
        })
    }

    /// The Service Config `urls` key naming this endpoint (used in `/_sim/stats`).
    fn name(&self) -> &'static str {
        match self {
            Ep::ServiceConfig => "serviceConfig",
            Ep::ClientConfig => "clientConfig",
            Ep::GetAssets => "getAssets",
            Ep::GetAssignments => "getAssignments",
            Ep::GetUsers => "getUsers",
            Ep::Write(EventType::Associate) => "associateAssets",
            Ep::Write(EventType::Disassociate) => "disassociateAssets",
            Ep::Write(EventType::Revoke) => "revokeAssets",
            Ep::Write(EventType::Create) => "createUsers",
            Ep::Write(EventType::Update) => "updateUsers",
            Ep::Write(EventType::Retire) => "retireUsers",
            Ep::EventStatus(_) => "eventStatus",
        }
    }

    fn allows(&self, m: &Method) -> bool {
        match self {
            Ep::ClientConfig => m == Method::GET || m == Method::POST,
            Ep::Write(_) => m == Method::POST,
            _ => m == Method::GET,
        }
    }
}

pub async fn entry(
    State(sh): State<Arc<Shared>>,
    Path(rest): Path<String>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let http200 = sh
        .state
        .lock()
        .map(|s| s.faults.errors_with_http200)
        .unwrap_or(false);
    let Some(ep) = Ep::resolve(&rest) else {
        return (
            StatusCode::NOT_FOUND,
            Json(super::errors::error_body(9602, None)),
        )
            .into_response();
    };
    if !ep.allows(&method) {
        return ApiError::new(9726).into_response_with(http200);
    }
    if ep == Ep::ServiceConfig {
        return service_config(&sh, &headers).into_response();
    }
    match authed(&sh, &ep, &method, &headers, &uri, &body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response_with(http200),
    }
}

/// `Authorization: Bearer <sToken>`; anything else is 9722 [C ERR].
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let v = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(9722))?;
    match v.strip_prefix("Bearer ") {
        Some(t) if !t.trim().is_empty() && !t.contains(' ') => Ok(t.trim()),
        _ => Err(ApiError::new(9722)),
    }
}

fn lock(sh: &Shared) -> Result<std::sync::MutexGuard<'_, SimState>, ApiError> {
    sh.state.lock().map_err(|_| ApiError::new(9603))
}

/// What a request is, for the 5xx fault: method, path with query, body.
struct Call<'a> {
    method: &'a Method,
    uri: &'a Uri,
    body: &'a [u8],
}

/// Auth, token state, Retry-After window, rate limit and the 5xx fault, in that order.
fn admit(sh: &Shared, ep: &Ep, headers: &HeaderMap, call: &Call<'_>) -> Result<String, ApiError> {
    let token = bearer(headers)?;
    let now = Instant::now();
    let mut guard = lock(sh)?;
    let st = &mut *guard;
    let uid = st
        .by_token
        .get(token)
        .cloned()
        .ok_or_else(|| ApiError::new(9622))?;
    let max = u64::try_from(st.limit("maxRequestPerSecond")).unwrap_or(0);
    let traffic = st.traffic.entry(uid.clone()).or_default();
    traffic.count(ep.name());
    match st.faults.token_state.get(&uid) {
        Some(TokenState::Revoked) => return Err(ApiError::new(9625)),
        Some(TokenState::Expired) => return Err(ApiError::new(9621)),
        _ => {}
    }
    if st
        .locations
        .get(&uid)
        .is_some_and(|l| l.exp_date < chrono::Utc::now())
    {
        return Err(ApiError::new(9621));
    }
    match traffic.admit(now, max) {
        Admission::Admit => {}
        Admission::RetryAfter(secs) => return Err(ApiError::new(9729).with_retry_after(secs)),
        Admission::RateLimited => return Err(ApiError::new(9646)),
    }
    let rate = st.faults.error_5xx_rate;
    // Rolled for this request and how often the same request came before, not drawn from a
    // stream that concurrent polls and syncs also consume: so a given write (and each resend
    // of it) meets the same 5xx in every run of one seed, and a resend rolls afresh.
    let roll = (rate > 0.0).then(|| {
        let path = call.uri.path_and_query().map_or("", |p| p.as_str());
        let body = String::from_utf8_lossy(call.body);
        let key = keyed(st.seed, &[&uid, call.method.as_str(), path, &body]);
        let seen = st.seen_requests.entry(key).or_insert(0);
        *seen += 1;
        keyed(key, &["attempt", &seen.to_string()])
    });
    if let Some(roll) = roll.filter(|r| unit(*r) < rate) {
        let secs = st.faults.retry_after_secs();
        let code = if roll & 1 == 0 { 9729 } else { 9603 };
        traffic.opened_retry_after(now, secs);
        return Err(ApiError::new(code).with_retry_after(secs));
    }
    Ok(uid)
}

/// `tokenExpirationDate`, `uId` and (once set) `mdmInfo` on every authenticated success [C OBJ].
fn with_token_fields(loc: &Location, mut m: Map<String, Value>) -> Value {
    m.insert(
        "tokenExpirationDate".into(),
        json!(apple_date(loc.exp_date)),
    );
    m.insert("uId".into(), json!(loc.uid));
    if let Some(mi) = &loc.config.mdm_info {
        m.insert("mdmInfo".into(), mi.clone());
    }
    Value::Object(m)
}

fn params(uri: &Uri) -> Result<Params, ApiError> {
    let q: Query<Vec<(String, String)>> =
        Query::try_from_uri(uri).map_err(|_| ApiError::new(9602))?;
    Ok(Params(q.0.into_iter().collect()))
}

async fn authed(
    sh: &Arc<Shared>,
    ep: &Ep,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    body: &[u8],
) -> Result<Value, ApiError> {
    let uid = admit(sh, ep, headers, &Call { method, uri, body })?;
    if method == Method::POST {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(9727));
        }
    }
    let gone = || ApiError::new(9622);
    match ep {
        Ep::ServiceConfig => Err(ApiError::new(9726)),
        Ep::ClientConfig if method == Method::POST => set_client_config(sh, &uid, body).await,
        Ep::ClientConfig => {
            let st = lock(sh)?;
            let loc = st.locations.get(&uid).ok_or_else(gone)?;
            Ok(client_config_json(loc))
        }
        Ep::GetAssets | Ep::GetAssignments | Ep::GetUsers => {
            let q = params(uri)?;
            let mut guard = lock(sh)?;
            let st = &mut *guard;
            let churn = st.faults.version_churn;
            let loc = st.locations.get_mut(&uid).ok_or_else(gone)?;
            let (m, ds) = match ep {
                Ep::GetAssets => (loc.get_assets(&q)?, DataSet::Assets),
                Ep::GetAssignments => (loc.get_assignments(&q)?, DataSet::Assignments),
                _ => (loc.get_users(&q)?, DataSet::Users),
            };
            if churn {
                loc.churn(ds);
            }
            Ok(with_token_fields(loc, m))
        }
        Ep::Write(kind) => {
            let mut st = lock(sh)?;
            let id = process::submit(&mut st, &uid, *kind, body)?;
            let loc = st.locations.get(&uid).ok_or_else(gone)?;
            let mut m = Map::new();
            m.insert("eventId".into(), json!(id));
            Ok(with_token_fields(loc, m))
        }
        Ep::EventStatus(path_id) => {
            let id = match path_id {
                Some(id) => id.clone(),
                None => params(uri)?
                    .str("eventId")
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::new(9602))?,
            };
            let st = lock(sh)?;
            let loc = st.locations.get(&uid).ok_or_else(gone)?;
            let ev = loc.event(&id).ok_or_else(|| ApiError::new(9708))?;
            let mut m = Map::new();
            m.insert("eventStatus".into(), json!(ev.status.name()));
            m.insert("eventType".into(), json!(ev.kind.name()));
            m.insert("failures".into(), json!(ev.failures));
            m.insert("numCompleted".into(), json!(ev.num_completed));
            m.insert("numRequested".into(), json!(ev.num_requested));
            Ok(with_token_fields(loc, m))
        }
    }
}

/// ClientConfigResponse [C CCRESP].
fn client_config_json(loc: &Location) -> Value {
    let mut m = Map::new();
    m.insert("countryISO2ACode".into(), json!("US"));
    m.insert("defaultPlatform".into(), json!("volumestore"));
    m.insert("locationName".into(), json!(loc.name));
    if let Some(u) = &loc.config.notification_url {
        m.insert("notificationUrl".into(), json!(u));
    }
    if let Some(t) = &loc.config.auth_token {
        m.insert("notificationAuthToken".into(), json!(t));
    }
    m.insert(
        "subscribedNotificationTypes".into(),
        json!(loc.config.types),
    );
    m.insert("websiteURL".into(), json!("https://business.apple.com"));
    with_token_fields(loc, m)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientConfigBody {
    notification_types: Option<Vec<String>>,
    notification_url: Option<String>,
    notification_auth_token: Option<String>,
    mdm_info: Option<MdmInfoBody>,
}

#[derive(Deserialize)]
struct MdmInfoBody {
    id: Option<String>,
    name: Option<String>,
    metadata: Option<String>,
}

/// HTTPS, or plain HTTP to a loopback host so tests and the demo need no TLS [I].
fn acceptable_url(s: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(s) else {
        return false;
    };
    match (u.scheme(), u.host_str()) {
        ("https", Some(_)) => true,
        ("http", Some(h)) => matches!(h, "127.0.0.1" | "localhost" | "[::1]" | "::1"),
        _ => false,
    }
}

async fn set_client_config(sh: &Arc<Shared>, uid: &str, body: &[u8]) -> Result<Value, ApiError> {
    let b: ClientConfigBody = serde_json::from_slice(body).map_err(|_| ApiError::new(9602))?;
    let (max_len, max_id, max_name, max_meta) = {
        let st = lock(sh)?;
        let l = |k: &str| usize::try_from(st.limit(k)).unwrap_or(usize::MAX);
        (
            l("maxNotificationLength"),
            l("maxMdmIdLength"),
            l("maxMdmNameLength"),
            l("maxMdmMetadataLength"),
        )
    };
    if let Some(types) = &b.notification_types {
        if types
            .iter()
            .any(|t| !NOTIFICATION_TYPES.contains(&t.as_str()))
        {
            return Err(ApiError::new(9602));
        }
    }
    // Some((url, token)) = set; Some(("","")) = clear; None = keep.
    let target = match (
        b.notification_url.as_deref(),
        b.notification_auth_token.as_deref(),
    ) {
        (None, None) => None,
        (Some(""), Some("")) => Some(None),
        (Some(u), Some(t)) if !u.is_empty() && !t.is_empty() => {
            if u.len() > max_len || t.len() > max_len {
                return Err(ApiError::new(9711));
            }
            if !acceptable_url(u) {
                return Err(ApiError::new(9712));
            }
            Some(Some((u.to_string(), t.to_string())))
        }
        _ => return Err(ApiError::new(9710)),
    };
    let mdm_info = match b.mdm_info {
        None => None,
        Some(MdmInfoBody {
            id: Some(id),
            name: Some(name),
            metadata: Some(metadata),
        }) => {
            if id.len() > max_id {
                return Err(ApiError::new(9724));
            }
            if name.len() > max_name {
                return Err(ApiError::new(9725));
            }
            if metadata.len() > max_meta {
                return Err(ApiError::new(9713));
            }
            Some(json!({"id": id, "metadata": metadata, "name": name}))
        }
        Some(_) => return Err(ApiError::new(9723)),
    };
    if let Some(Some((url, token))) = &target {
        // Apple sends TEST_NOTIFICATION and rejects the configuration if it fails [C NOTIF].
        let body = {
            let mut st = lock(sh)?;
            let loc = st
                .locations
                .get_mut(uid)
                .ok_or_else(|| ApiError::new(9622))?;
            loc.plain_notifications += 1;
            let n = loc.plain_notifications.to_string();
            let id = keyed_uuid(loc.derive(&["notification", "TEST_NOTIFICATION", &n]));
            st.notif.sent += 1;
            json!({"notification": {}, "notificationId": id, "notificationType": "TEST_NOTIFICATION", "uId": uid})
        };
        if !notify::deliver(&sh.http, url, token, body.to_string().as_bytes(), 1).await {
            return Err(ApiError::new(9728));
        }
    }
    let mut st = lock(sh)?;
    let loc = st
        .locations
        .get_mut(uid)
        .ok_or_else(|| ApiError::new(9622))?;
    match target {
        Some(Some((u, t))) => {
            loc.config.notification_url = Some(u);
            loc.config.auth_token = Some(t);
        }
        Some(None) => {
            loc.config.notification_url = None;
            loc.config.auth_token = None;
        }
        None => {}
    }
    if let Some(types) = b.notification_types {
        loc.config.types = types;
    }
    if mdm_info.is_some() {
        loc.config.mdm_info = mdm_info;
    }
    Ok(client_config_json(loc))
}

/// ServiceConfigResponse [C SVC]; `urls` point back at this simulator via the Host header.
fn service_config(sh: &Shared, headers: &HeaderMap) -> Json<Value> {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| sh.local_addr.to_string());
    let base = format!("http://{host}/mdm/v2/");
    let limits = sh
        .state
        .lock()
        .map(|s| s.limits.clone())
        .unwrap_or_default();
    let u = |p: &str| format!("{base}{p}");
    let urls = json!({
        "invitationEmail": u("invitation?inviteCode=%25inviteCode%25"),
        "clientConfig": u("client/config"),
        "createUsers": u("users/create"),
        "getAssignments": u("assignments"),
        "revokeAssets": u("assets/revoke"),
        "contentMetadataLookup": "https://uclient-api.itunes.apple.com/WebObjects/MZStorePlatform.woa/wa/lookup",
        "getUsers": u("users"),
        "eventStatus": u("status"),
        "associateAssets": u("assets/associate"),
        "disassociateAssets": u("assets/disassociate"),
        "updateUsers": u("users/update"),
        "getAssets": u("assets"),
        "retireUsers": u("users/retire"),
    });
    let codes: Vec<Value> = KNOWN_CODES
        .iter()
        .map(|&n| json!({"errorNumber": n, "errorMessage": message_of(n)}))
        .collect();
    Json(json!({
        "errorCodes": codes,
        "limits": limits,
        "notificationTypes": ["ASSET_COUNT", "ASSET_MANAGEMENT", "USER_MANAGEMENT", "USER_ASSOCIATED",
            "SUBSCRIPTION_MANAGEMENT", "SUBSCRIPTION_COUNT", "UNLIMITED_ASSET"],
        "urls": urls,
    }))
}
