//! Entry points for fuzzing every decoder that reads external input: each takes untrusted
//! bytes, runs one decoder the way the daemon runs it (and touches what the daemon then reads
//! of the result), and must never panic, whatever the bytes. Errors are fine.
//!
//! Shared by the cargo-fuzz targets in `fuzz/` (one target per function, same name) and by
//! the bounded proptest run in `tests/fuzz_lite.rs`, so both exercise the same code.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use crate::apple::model::{
    Assignee, GetAssetsResponse, GetAssignmentsResponse, GetUsersResponse, ServiceConfig,
};
use crate::apple::pagination::{dedupe, Page, Record};
use crate::apple::{
    decode_response, parse_notification, parse_retry_after, ApiError, ClientConfigResponse,
    EventResponse, StatusResponse,
};
use crate::config::{parse_content_token, parse_public, LoadEnv};
use crate::time::Timestamp;

/// A fuzz entry point: untrusted bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by name (the cargo-fuzz target and corpus directory names).
pub const TARGETS: &[(&str, Target)] = &[
    ("webhook", webhook),
    ("service_config", service_config),
    ("client_config", client_config),
    ("assets_page", assets_page),
    ("assignments_page", assignments_page),
    ("users_page", users_page),
    ("event_status", event_status),
    ("write_answer", write_answer),
    ("error_classify", error_classify),
    ("retry_after", retry_after),
    ("vpptoken", vpptoken),
    ("config", config),
];

/// A fixed "now" (2026-01-01) so runs are reproducible.
const NOW_MS: i64 = 1_767_225_600_000;

fn touch<T: std::fmt::Debug>(v: &T) {
    std::hint::black_box(format!("{v:?}"));
}

fn touch_err(e: &ApiError) {
    std::hint::black_box((
        e.to_string(),
        e.error_number(),
        e.is_retryable(),
        e.is_token_problem(),
        e.retry_after(),
    ));
}

/// The client's decode of a 200 answer.
fn answer<T: DeserializeOwned + std::fmt::Debug>(endpoint: &str, body: &[u8]) -> Option<T> {
    match decode_response::<T>(endpoint, 200, body, None) {
        Ok(v) => {
            touch(&v);
            Some(v)
        }
        Err(e) => {
            touch_err(&e);
            None
        }
    }
}

/// A page as the traversal consumes it: decoded, cut to a [`Page`], deduplicated.
fn page<R, T>(endpoint: &str, body: &[u8]) -> Option<Vec<T>>
where
    R: DeserializeOwned + std::fmt::Debug + Into<Page<T>>,
    T: Record + std::fmt::Debug,
{
    let p: Page<T> = answer::<R>(endpoint, body)?.into();
    std::hint::black_box((p.next_page_index, p.total_pages, &p.version_id));
    Some(dedupe(p.records))
}

/// Webhook bodies (`POST /apple/notify/...`): [`parse_notification`].
pub fn webhook(data: &[u8]) {
    match parse_notification(data) {
        Ok(n) => {
            std::hint::black_box(n.event_id());
            touch(&n);
            std::hint::black_box(serde_json::to_vec(&n).ok());
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

/// `GET service/config`, and the limits the client reads from it.
pub fn service_config(data: &[u8]) {
    if let Some(c) = answer::<ServiceConfig>("service/config", data) {
        let l = &c.limits;
        std::hint::black_box((
            l.max_assets(),
            l.max_client_user_ids(),
            l.max_serial_numbers(),
            l.max_revoke_client_user_ids(),
            l.max_revoke_serial_numbers(),
            l.max_users(),
            l.max_request_per_second(),
            l.max_notification_length(),
            l.max_mdm_name_length(),
            l.max_mdm_metadata_length(),
            l.max_mdm_id_length(),
        ));
    }
}

/// `GET`/`POST client/config`.
pub fn client_config(data: &[u8]) {
    if let Some(c) = answer::<ClientConfigResponse>("client/config", data) {
        std::hint::black_box(serde_json::to_vec(&c).ok());
    }
}

/// One Get Assets page.
pub fn assets_page(data: &[u8]) {
    if let Some(assets) = page::<GetAssetsResponse, _>("assets", data) {
        std::hint::black_box(assets.iter().filter(|a| a.is_unlimited()).count());
    }
}

/// One Get Assignments page.
pub fn assignments_page(data: &[u8]) {
    if let Some(assignments) = page::<GetAssignmentsResponse, _>("assignments", data) {
        let unassigned = assignments
            .iter()
            .filter(|a| a.assignee() == Assignee::None);
        std::hint::black_box(unassigned.count());
    }
}

/// One Get Users page.
pub fn users_page(data: &[u8]) {
    std::hint::black_box(page::<GetUsersResponse, _>("users", data));
}

/// `GET status?eventId=…`, and the failures the core records from it.
pub fn event_status(data: &[u8]) {
    if let Some(s) = answer::<StatusResponse>("status", data) {
        std::hint::black_box(s.event_type());
        for f in s.failures.iter() {
            touch(&f.to_failure());
        }
    }
}

/// The answer to an asset or user write (associate, disassociate, revoke, create, update,
/// retire; one shape for all): an `eventId`.
pub fn write_answer(data: &[u8]) {
    if let Some(e) = answer::<EventResponse>("assets/associate", data) {
        std::hint::black_box(serde_json::to_vec(&e).ok());
    }
}

/// [`ApiError::classify`]: the first two bytes are the HTTP status, the third says whether a
/// Retry-After came with it, the rest is the body.
pub fn error_classify(data: &[u8]) {
    let (status, retry, body) = match data {
        [a, b, r, body @ ..] => (
            u16::from_be_bytes([*a, *b]),
            (r & 1 == 1).then(|| Duration::from_secs(u64::from(*r))),
            body,
        ),
        _ => (200, None, data),
    };
    if let Some(e) = ApiError::classify(status, body, retry) {
        touch_err(&e);
        // The client scrubs the token's text out of every error.
        let secret = String::from_utf8_lossy(body.get(..body.len().min(8)).unwrap_or_default());
        touch_err(&e.redact(&secret));
    }
}

/// The Retry-After header: the first four bytes are "now" (seconds since the epoch), the rest
/// the header value.
pub fn retry_after(data: &[u8]) {
    let (now, value) = match data {
        [a, b, c, d, rest @ ..] => (u64::from(u32::from_be_bytes([*a, *b, *c, *d])), rest),
        _ => (1_767_225_600, data),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
    let value = String::from_utf8_lossy(value);
    std::hint::black_box(parse_retry_after(&value, now));
}

/// A `.vpptoken` file's content.
pub fn vpptoken(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_content_token(&text) {
        Ok(t) => {
            std::hint::black_box(t.is_expired(Timestamp(NOW_MS)));
            std::hint::black_box(t.exp_date.to_datetime().format("%Y-%m-%d").to_string());
            touch(&t);
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

/// The configuration file: TOML parse and validation ([`parse_public`]); an odd length
/// resolves secret paths under a `$CREDENTIALS_DIRECTORY`.
pub fn config(data: &[u8]) {
    let env = LoadEnv {
        now: Timestamp(NOW_MS),
        credentials_directory: (data.len() % 2 == 1)
            .then(|| "/run/credentials/vpp-reconciler.service".into()),
    };
    match parse_public(Path::new("/etc/vpp-reconciler/config.toml"), data, &env) {
        Ok(l) => {
            touch(&l.config);
            for f in l.config.secret_files() {
                std::hint::black_box(f.shown());
            }
            for t in &l.config.tokens {
                std::hint::black_box(l.config.webhook.route_for(&t.name));
            }
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}
