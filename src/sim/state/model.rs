//! The things a location holds, as the simulator models them and shows them in Apple's JSON:
//! assets with their counts, assignments, users and their status, events (type, status,
//! requested users) and the client config; what processing an event produced ([`Applied`])
//! and the `errorInfo` of a failure.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSet {
    Assets = 0,
    Assignments = 1,
    Users = 2,
}

#[derive(Debug, Clone)]
pub struct Asset {
    pub adam_id: String,
    pub pricing_param: String,
    pub product_type: String,
    /// `None` = unlimited (free apps/books) [C MASSETS].
    pub total: Option<i64>,
    pub device_assignable: bool,
    pub revocable: bool,
    pub supported_platforms: Vec<String>,
    pub assigned: i64,
}

impl Asset {
    pub fn total_count(&self) -> i64 {
        self.total.unwrap_or(UNLIMITED_TOTAL)
    }
    /// For unlimited assets: i32::MAX minus assigned [I; Apple only documents totalCount].
    pub fn available_count(&self) -> i64 {
        (self.total_count() - self.assigned).max(0)
    }
    pub fn has_available(&self) -> bool {
        self.total.is_none() || self.available_count() > 0
    }
    /// ResponseAsset, or UnlimitedResponseAsset (no counts but assignedCount) [C OBJ].
    pub fn to_json(&self, unlimited_shape: bool) -> Value {
        let mut m = Map::new();
        m.insert("adamId".into(), json!(self.adam_id));
        m.insert("assignedCount".into(), json!(self.assigned));
        if !unlimited_shape {
            m.insert("availableCount".into(), json!(self.available_count()));
            m.insert("retiredCount".into(), json!(0));
            m.insert("totalCount".into(), json!(self.total_count()));
        }
        m.insert("deviceAssignable".into(), json!(self.device_assignable));
        m.insert("pricingParam".into(), json!(self.pricing_param));
        m.insert("productType".into(), json!(self.product_type));
        m.insert("revocable".into(), json!(self.revocable));
        m.insert("supportedPlatforms".into(), json!(self.supported_platforms));
        Value::Object(m)
    }
}

/// Who an assignment is for. Serial numbers sort before users so the order is stable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Serial(String),
    User(String),
}

impl Target {
    pub fn entity_json(&self) -> Value {
        match self {
            Target::Serial(s) => json!({ "serialNumber": s }),
            Target::User(u) => json!({ "clientUserId": u }),
        }
    }
}

/// An assignment is identified by (adamId, pricingParam, clientUserId|serialNumber) [C UPG].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssignKey {
    pub adam_id: String,
    pub pricing_param: String,
    pub target: Target,
}

impl AssignKey {
    /// Apple's `Assignment` object [C OBJ].
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("adamId".into(), json!(self.adam_id));
        m.insert("pricingParam".into(), json!(self.pricing_param));
        match &self.target {
            Target::Serial(s) => m.insert("serialNumber".into(), json!(s)),
            Target::User(u) => m.insert("clientUserId".into(), json!(u)),
        };
        Value::Object(m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Registered,
    Associated,
    Retired,
}

impl UserStatus {
    pub fn name(self) -> &'static str {
        match self {
            UserStatus::Registered => "Registered",
            UserStatus::Associated => "Associated",
            UserStatus::Retired => "Retired",
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub client_user_id: String,
    pub email: Option<String>,
    pub managed_apple_id: Option<String>,
    pub status: UserStatus,
    pub invite_code: String,
    pub id_hash: Option<String>,
    pub modified: u64,
}

impl User {
    /// Apple's `ResponseUser` [C OBJ]; `idHash` only once an Apple Account is associated.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("clientUserId".into(), json!(self.client_user_id));
        if let Some(e) = &self.email {
            m.insert("email".into(), json!(e));
        }
        if let Some(h) = &self.id_hash {
            m.insert("idHash".into(), json!(h));
        }
        m.insert("inviteCode".into(), json!(self.invite_code));
        if let Some(a) = &self.managed_apple_id {
            m.insert("managedAppleId".into(), json!(a));
        }
        m.insert("status".into(), json!(self.status.name()));
        Value::Object(m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Associate,
    Disassociate,
    Revoke,
    Create,
    Update,
    Retire,
}

impl EventType {
    pub fn name(self) -> &'static str {
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
}

#[derive(Debug, Clone)]
pub struct ReqUser {
    pub client_user_id: String,
    pub email: Option<String>,
    pub managed_apple_id: Option<String>,
}

/// A validated write, kept until the worker processes it.
#[derive(Debug, Clone)]
pub enum WriteRequest {
    /// Associate/disassociate: assets × targets. Revoke: `assets` empty means all revocable.
    Assets {
        assets: Vec<(String, String)>,
        targets: Vec<Target>,
    },
    Users(Vec<ReqUser>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Pending,
    Complete,
    Failed,
}

impl EventStatus {
    pub fn name(self) -> &'static str {
        match self {
            EventStatus::Pending => "PENDING",
            EventStatus::Complete => "COMPLETE",
            EventStatus::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: EventType,
    pub status: EventStatus,
    pub num_requested: u64,
    pub num_completed: u64,
    pub failures: Vec<Value>,
    pub request: Option<WriteRequest>,
    /// When the worker may process it (submission + processingDelay).
    pub due: tokio::time::Instant,
}

impl Event {
    pub fn to_json(&self) -> Value {
        json!({
            "eventId": self.id,
            "eventType": self.kind.name(),
            "eventStatus": self.status.name(),
            "numRequested": self.num_requested,
            "numCompleted": self.num_completed,
            "failures": self.failures,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    pub notification_url: Option<String>,
    pub auth_token: Option<String>,
    pub types: Vec<String>,
    pub mdm_info: Option<Value>,
}

/// All notification types a client may subscribe to [C CCREQ].
pub const NOTIFICATION_TYPES: &[&str] = &[
    "TEST_NOTIFICATION",
    "ASSET_MANAGEMENT",
    "USER_MANAGEMENT",
    "USER_ASSOCIATED",
    "ASSET_COUNT",
    "SUBSCRIPTION_MANAGEMENT",
    "SUBSCRIPTION_COUNT",
    "UNLIMITED_ASSET",
];

/// What processing one event produced, for its status and its notifications.
#[derive(Debug, Default)]
pub struct Applied {
    /// Entities (Assignment or ResponseUser objects) that succeeded.
    pub ok: Vec<Value>,
    /// Failed entities grouped by error number, in first-seen order.
    pub failed: Vec<(i32, Vec<Value>)>,
}

impl Applied {
    pub(super) fn fail(&mut self, code: i32, entity: Value) {
        match self.failed.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => v.push(entity),
            None => self.failed.push((code, vec![entity])),
        }
    }
}

/// `errorInfo` naming the entities a failure covers [C OBJ responseerrorinfo]. 9609/9716 name
/// only users, as in Apple's example; 9709 also names the assets that ran out.
pub fn error_info(code: i32, entities: &[Value]) -> Value {
    let mut assets: Vec<Value> = Vec::new();
    let mut seen_assets = BTreeSet::new();
    let mut users = Vec::new();
    let mut serials = Vec::new();
    let mut seen_users = BTreeSet::new();
    let mut seen_serials = BTreeSet::new();
    for e in entities {
        if let (Some(a), Some(p)) = (
            e.get("adamId").and_then(Value::as_str),
            e.get("pricingParam").and_then(Value::as_str),
        ) {
            if seen_assets.insert((a.to_string(), p.to_string())) {
                assets.push(json!({"adamId": a, "pricingParam": p}));
            }
        }
        if let Some(u) = e.get("clientUserId").and_then(Value::as_str) {
            if seen_users.insert(u.to_string()) {
                users.push(u.to_string());
            }
        }
        if let Some(s) = e.get("serialNumber").and_then(Value::as_str) {
            if seen_serials.insert(s.to_string()) {
                serials.push(s.to_string());
            }
        }
    }
    let mut m = Map::new();
    if !assets.is_empty() && !matches!(code, 9609 | 9716) {
        m.insert("assets".into(), Value::Array(assets));
    }
    if !users.is_empty() {
        m.insert("clientUserIds".into(), json!(users));
    }
    if !serials.is_empty() {
        m.insert("serialNumbers".into(), json!(serials));
    }
    Value::Object(m)
}
