//! Input checks shared by the handlers and the CLI: track requests, event ids, list and page
//! queries.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{ApiState, HttpError};
use crate::apple::model::{count_entities, RequestKind};
use crate::core::{EventRecord, EventType, Outcome, State as EventState, Timings, TrackRequest};
use crate::store::EventFilter;
use crate::time::Timestamp;

/// Validates an eventId: Apple's are UUIDs; accept any short printable id without spaces.
pub fn validate_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "eventId {:?} must be 1 to 128 printable characters without spaces",
            truncate(id, 140)
        ));
    }
    Ok(())
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// What the tracker passed, validated: the record to insert and the body to keep.
pub struct ValidTrack {
    pub record: EventRecord,
    pub request: Option<String>,
}

/// A track request as received (API body or CLI arguments).
#[derive(Debug, Default)]
pub struct TrackFields<'a> {
    pub token: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub submitted_at: Option<&'a str>,
    pub request: Option<&'a Value>,
}

/// Validates a track request against the configured tokens (pure apart from `now`).
pub fn validate_track(
    now: Timestamp,
    fields: &TrackFields<'_>,
    is_token: impl Fn(&str) -> bool,
    timings: &Timings,
) -> Result<ValidTrack, HttpError> {
    let TrackFields {
        token,
        event_id,
        event_type,
        submitted_at,
        request,
    } = *fields;
    validate_event_id(event_id).map_err(HttpError::bad_request)?;
    let event_type: EventType = event_type.parse().map_err(HttpError::bad_request)?;
    if !is_token(token) {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            format!("token {:?} is not configured", truncate(token, 64)),
        ));
    }
    let submitted_at = match submitted_at {
        None => None,
        Some(s) => Some(Timestamp::parse_rfc3339(s).ok_or_else(|| {
            HttpError::bad_request(format!(
                "submittedAt {:?} is not an RFC 3339 time",
                truncate(s, 64)
            ))
        })?),
    };
    if let Some(body) = request {
        if !body.is_object() {
            return Err(HttpError::bad_request(
                "request must be the JSON object sent to Apple",
            ));
        }
    }
    let num_requested =
        request.and_then(|b| count_entities(RequestKind::for_event_type(event_type), b));
    let record = EventRecord::new_tracked(
        now,
        TrackRequest {
            event_id: event_id.to_string(),
            token: token.to_string(),
            event_type,
            submitted_at,
            num_requested,
            has_request: request.is_some(),
            supersedes: None,
        },
        timings,
    );
    Ok(ValidTrack {
        record,
        request: request.map(|b| b.to_string()),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub state: Option<String>,
    pub outcome: Option<String>,
    pub token: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl ListQuery {
    pub fn to_filter(&self) -> Result<EventFilter, String> {
        Ok(EventFilter {
            state: self
                .state
                .as_deref()
                .map(str::parse::<EventState>)
                .transpose()?,
            outcome: self
                .outcome
                .as_deref()
                .map(str::parse::<Outcome>)
                .transpose()?,
            token: self.token.clone(),
            event_type: self
                .event_type
                .as_deref()
                .map(str::parse::<EventType>)
                .transpose()?,
            limit: self.limit.unwrap_or(100),
            cursor: self.cursor.clone(),
        })
    }
}

/// 404 `unknown_token` unless `token` is configured.
pub(super) fn known_token(state: &ApiState, token: &str) -> Result<(), HttpError> {
    if state.tokens.contains(token) {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            format!("token {:?} is not configured", truncate(token, 64)),
        ))
    }
}

/// Query strings as received: numbers are parsed by hand so a bad one gets our JSON error.
#[derive(Deserialize, Default)]
pub struct PageQuery {
    pub after: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
    pub token: Option<String>,
}

pub(super) fn page_query(
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<PageQuery, HttpError> {
    q.map(|Query(q)| q)
        .map_err(|e| HttpError::bad_request(format!("invalid query string: {}", e.body_text())))
}

/// `limit` within 1..=`max` (larger values are clamped: a client asking for too much still
/// gets pages), `default` when absent.
pub(super) fn parse_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, HttpError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(max).min(max)),
            _ => Err(HttpError::bad_request(format!(
                "limit {:?} must be a whole number from 1 to {max}",
                truncate(s, 32)
            ))),
        },
    }
}

pub(super) fn parse_cursor(name: &str, raw: &str) -> Result<u64, HttpError> {
    raw.trim().parse::<u64>().map_err(|_| {
        HttpError::bad_request(format!(
            "{name} {:?} must be a cursor from a previous page (a whole number)",
            truncate(raw, 32)
        ))
    })
}
