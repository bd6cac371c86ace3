//! Vocabulary shared by the core and its adapters: event types, states, outcomes, sync kinds.
//! Names and spellings are the interface of docs/lifecycle.md.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Apple's event types. Asset events need an assignments (and assets) sync; user events a
/// users sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Associate,
    Disassociate,
    Revoke,
    Create,
    Update,
    Retire,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Associate,
        EventType::Disassociate,
        EventType::Revoke,
        EventType::Create,
        EventType::Update,
        EventType::Retire,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Associate => "ASSOCIATE",
            EventType::Disassociate => "DISASSOCIATE",
            EventType::Revoke => "REVOKE",
            EventType::Create => "CREATE",
            EventType::Update => "UPDATE",
            EventType::Retire => "RETIRE",
        }
    }

    pub fn is_asset_event(self) -> bool {
        matches!(
            self,
            EventType::Associate | EventType::Disassociate | EventType::Revoke
        )
    }

    /// The syncs that refresh the MDM's view after this event (docs/lifecycle.md).
    pub fn sync_kinds(self) -> &'static [SyncKind] {
        if self.is_asset_event() {
            &[SyncKind::Assignments, SyncKind::Assets]
        } else {
            &[SyncKind::Users]
        }
    }

    /// The sync kind whose completion settles an event in `syncing`.
    pub fn settling_sync(self) -> SyncKind {
        if self.is_asset_event() {
            SyncKind::Assignments
        } else {
            SyncKind::Users
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "event type {s:?} is not one of ASSOCIATE, DISASSOCIATE, REVOKE, CREATE, UPDATE, RETIRE"
                )
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Syncing,
    Settled,
}

impl State {
    pub const ALL: [State; 3] = [State::Pending, State::Syncing, State::Settled];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Syncing => "syncing",
            State::Settled => "settled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("state {s:?} is not one of pending, syncing, settled"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Complete,
    Failed,
    TimedOut,
    NotFound,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Complete,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::NotFound => "not_found",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("outcome {s:?} is not one of complete, failed, timed_out, not_found")
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    Assets,
    Assignments,
    Users,
}

impl SyncKind {
    pub const ALL: [SyncKind; 3] = [SyncKind::Assets, SyncKind::Assignments, SyncKind::Users];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncKind::Assets => "assets",
            SyncKind::Assignments => "assignments",
            SyncKind::Users => "users",
        }
    }

    /// Apple supports `sinceVersionId` only for assignments and users.
    pub fn supports_incremental(self) -> bool {
        !matches!(self, SyncKind::Assets)
    }
}

impl fmt::Display for SyncKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyncKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SyncKind::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("sync kind {s:?} is not one of assets, assignments, users"))
    }
}

/// Apple's error object (`ErrorResponse`), as recorded for failed events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub error_number: i64,
    #[serde(default)]
    pub error_message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_info: Option<serde_json::Value>,
}
