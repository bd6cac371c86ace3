//! The JSON shapes of events, changes, tokens and syncs as the local API and the CLI print
//! them (docs/architecture.md#local-http-api). They live in the store, not in `crate::api`,
//! because the store's queries build them and the store never imports from the API.

use serde::Serialize;

use crate::core::{EventRecord, EventType, Failure, Outcome, State};
use crate::time::Timestamp;

/// An event as listed (docs/architecture.md#local-http-api).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub event_id: String,
    pub token: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub state: State,
    pub outcome: Option<Outcome>,
    pub tracked_at: Timestamp,
    pub settled_at: Option<Timestamp>,
    pub num_requested: Option<u32>,
    pub num_completed: u32,
    pub polls: u32,
    pub next_check_at: Option<Timestamp>,
    pub failures: Vec<Failure>,
    pub superseded_by: Option<String>,
    pub supersedes: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    pub at: Timestamp,
    pub from: Option<State>,
    pub to: State,
    pub outcome: Option<Outcome>,
    pub cause: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub notification_id: String,
    #[serde(rename = "type")]
    pub notification_type: String,
    pub result: Option<String>,
    pub entities: Option<u32>,
    pub received_at: Timestamp,
    pub applied_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PollView {
    pub at: Timestamp,
    pub result: String,
    pub detail: Option<String>,
}

/// One event with everything known about it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: EventView,
    pub submitted_at: Timestamp,
    pub outcome_at: Option<Timestamp>,
    pub has_request: bool,
    pub history: Vec<HistoryView>,
    pub notifications: Vec<NotificationView>,
    /// The Event Status calls (the `polls` field keeps the count, as in list views).
    pub poll_log: Vec<PollView>,
}

impl EventView {
    pub fn from_record(rec: EventRecord, failures: Vec<Failure>) -> EventView {
        EventView {
            event_id: rec.event_id,
            token: rec.token,
            event_type: rec.event_type,
            state: rec.state,
            outcome: rec.outcome,
            tracked_at: rec.tracked_at,
            settled_at: rec.settled_at,
            num_requested: rec.num_requested,
            num_completed: rec.num_completed,
            polls: rec.polls,
            next_check_at: rec.next_check_at,
            failures,
            superseded_by: rec.superseded_by,
            supersedes: rec.supersedes,
        }
    }
}

/// One item of the outcome feed (README "Using it"): `seq` from the one `change_seq` counter,
/// and a `kind`. `event` items are the event's JSON as listed (an event whose state or
/// outcome changed); `token` and `licence` items carry the fields stored with them. Old
/// consumers that ignore `kind` see event items exactly as before, plus that key.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeView {
    pub seq: i64,
    pub item: FeedItem,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FeedItem {
    Event(EventView),
    /// A token's health changed: `health` is healthy, expired, revoked, unauthorized,
    /// mdm_conflict, expiring_soon (with `daysLeft`) or unhealthy.
    Token(serde_json::Map<String, serde_json::Value>),
    /// An asset's available count went from 0 to more, or reached 0.
    Licence(serde_json::Map<String, serde_json::Value>),
}

impl FeedItem {
    pub fn kind(&self) -> &'static str {
        match self {
            FeedItem::Event(_) => "event",
            FeedItem::Token(_) => "token",
            FeedItem::Licence(_) => "licence",
        }
    }
}

impl ChangeView {
    /// The event of an `event` item.
    pub fn event(&self) -> Option<&EventView> {
        match &self.item {
            FeedItem::Event(e) => Some(e),
            _ => None,
        }
    }
}

impl Serialize for ChangeView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let fields = match &self.item {
            FeedItem::Event(e) => match serde_json::to_value(e).map_err(S::Error::custom)? {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
            FeedItem::Token(m) | FeedItem::Licence(m) => m.clone(),
        };
        let mut map = s.serialize_map(Some(fields.len() + 2))?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("kind", self.item.kind())?;
        for (k, v) in fields.iter().filter(|(k, _)| *k != "seq" && *k != "kind") {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Token health and counts for `tokens` / `GET /v1/tokens`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub name: String,
    pub u_id: Option<String>,
    pub org_name: Option<String>,
    pub location: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub health: String,
    pub health_reason: Option<String>,
    pub health_since: Option<Timestamp>,
    pub mdm_conflict: Option<String>,
    pub pending: u64,
    pub syncing: u64,
    pub last_syncs: Vec<SyncView>,
}

/// One sync run.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    pub id: u64,
    pub token: String,
    pub kind: String,
    pub full: bool,
    pub cause: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub duration_ms: Option<i64>,
    pub pages: u32,
    pub records: u64,
    pub result: String,
    pub error: Option<String>,
}
