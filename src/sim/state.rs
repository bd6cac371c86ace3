//! The model: locations with their assets, users, assignments, events and data-set versions,
//! and the read side (filters, pagination, `sinceVersionId`). All of it lives behind the one
//! `Mutex<SimState>` of [`super::Shared`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::errors::ApiError;
use super::faults::Faults;
use super::rate::Traffic;

/// `totalCount` of an unlimited asset listed in `assets` [C MASSETS].
pub const UNLIMITED_TOTAL: i64 = 2_147_483_647;

/// Apple's date format, e.g. `2030-11-08T22:33:22+0000` [C OBJ].
pub fn apple_date(dt: DateTime<Utc>) -> String {
    dt.format("%Y-%m-%dT%H:%M:%S%z").to_string()
}

pub fn random_hex(rng: &mut SmallRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// A well-mixed 64-bit key for `parts` under `base` (a seed or a location's key). Decisions
/// and ids derived from such keys depend on what they are about, not on how many draws other
/// (concurrent, timing-dependent) requests took from a shared RNG first, so one seed gives one
/// result however requests interleave.
pub fn keyed(base: u64, parts: &[&str]) -> u64 {
    // FNV-1a over the parts, NUL-separated, then splitmix for avalanche.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    crate::core::backoff::splitmix64(h ^ base)
}

/// A key as a number in [0, 1).
pub fn unit(key: u64) -> f64 {
    (key >> 11) as f64 / (1u64 << 53) as f64
}

/// A random-looking (version 4) UUID determined by `key`.
pub fn keyed_uuid(key: u64) -> String {
    let hi = crate::core::backoff::splitmix64(key);
    let lo = crate::core::backoff::splitmix64(hi ^ 0x9e37_79b9_7f4a_7c15);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_le_bytes());
    b[8..].copy_from_slice(&lo.to_le_bytes());
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// `bytes` random-looking bytes as hex, determined by `key`.
pub fn keyed_hex(key: u64, bytes: usize) -> String {
    let mut k = key;
    (0..bytes)
        .map(|i| {
            if i % 8 == 0 {
                k = crate::core::backoff::splitmix64(k);
            }
            format!("{:02x}", (k >> (8 * (i % 8))) as u8)
        })
        .collect()
}

/// Service Config `limits`, Apple's example values [C SVC].
pub fn default_limits() -> BTreeMap<String, i64> {
    [
        ("maxAssets", 25),
        ("maxUsers", 100),
        ("maxNotificationLength", 512),
        ("maxRevokeClientUserIds", 100),
        ("maxClientUserIds", 1000),
        ("maxSerialNumbers", 1000),
        ("maxRevokeSerialNumbers", 100),
        ("maxRequestPerSecond", 15),
        ("maxSubscriptions", 25),
        ("maxSubscriptionClientUserIds", 1000),
        ("maxMdmNameLength", 100),
        ("maxMdmMetadataLength", 255),
        ("maxMdmIdLength", 100),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[derive(Debug, Default)]
pub struct NotifStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

/// Everything the simulator knows. One instance behind one mutex; keep critical sections short.
pub struct SimState {
    pub rng: SmallRng,
    /// The seed, for decisions keyed by content rather than drawn in arrival order.
    pub seed: u64,
    pub locations: HashMap<String, Location>,
    /// Whole sToken (the Bearer value) -> uId.
    pub by_token: HashMap<String, String>,
    pub faults: Faults,
    pub limits: BTreeMap<String, i64>,
    pub traffic: BTreeMap<String, Traffic>,
    pub notif: NotifStats,
    /// How often each distinct request (by key) reached the 5xx fault, so each resend of a
    /// request rolls afresh yet the same in every run. Only filled while that fault is on.
    pub seen_requests: HashMap<u64, u32>,
}

impl SimState {
    pub fn new(rng: SmallRng) -> SimState {
        SimState::with_seed(rng, 0)
    }

    pub fn with_seed(rng: SmallRng, seed: u64) -> SimState {
        SimState {
            rng,
            seed,
            locations: HashMap::new(),
            by_token: HashMap::new(),
            faults: Faults::default(),
            limits: default_limits(),
            traffic: BTreeMap::new(),
            notif: NotifStats::default(),
            seen_requests: HashMap::new(),
        }
    }

    pub fn limit(&self, key: &str) -> i64 {
        self.limits.get(key).copied().unwrap_or(i64::MAX)
    }
}

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

#[derive(Debug, Clone, Default)]
struct DataVersion {
    current: String,
    /// versionId -> modification counter at the time it was current.
    history: HashMap<String, u64>,
}

/// What processing one event produced, for its status and its notifications.
#[derive(Debug, Default)]
pub struct Applied {
    /// Entities (Assignment or ResponseUser objects) that succeeded.
    pub ok: Vec<Value>,
    /// Failed entities grouped by error number, in first-seen order.
    pub failed: Vec<(i32, Vec<Value>)>,
}

impl Applied {
    fn fail(&mut self, code: i32, entity: Value) {
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

/// Parsed query string; the last occurrence of a key wins.
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.str(k) {
            None => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(_) => Err(ApiError::new(9602)),
        }
    }
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        self.str(k)
            .map(|s| s.parse::<i64>().map_err(|_| ApiError::new(9602)))
            .transpose()
    }
    fn one_of(&self, k: &str, allowed: &[&str]) -> Result<Option<&str>, ApiError> {
        match self.str(k) {
            Some(v) if !allowed.contains(&v) => Err(ApiError::new(9602)),
            other => Ok(other),
        }
    }
}

/// Cuts one page out of `items`. `totalPages` is at least 1 so page 0 of an empty result is
/// valid [I]; out-of-range pageIndex -> 9650 [C PAG].
fn paginate<T>(
    items: Vec<T>,
    page_size: usize,
    page_index: Option<i64>,
) -> Result<(Vec<T>, Map<String, Value>), ApiError> {
    let total = items.len();
    paginate_iter(items.into_iter(), total, page_size, page_index)
}

/// [`paginate`] over an iterator of `total` items, so a page can be taken without collecting
/// the others first.
fn paginate_iter<T>(
    items: impl Iterator<Item = T>,
    total: usize,
    page_size: usize,
    page_index: Option<i64>,
) -> Result<(Vec<T>, Map<String, Value>), ApiError> {
    let page_size = page_size.max(1);
    let total_pages = total.div_ceil(page_size).max(1);
    let idx = page_index.unwrap_or(0);
    if idx < 0 || idx as u64 >= total_pages as u64 {
        return Err(ApiError::new(9650));
    }
    let idx = idx as usize;
    let page: Vec<T> = items.skip(idx * page_size).take(page_size).collect();
    let mut m = Map::new();
    m.insert("currentPageIndex".into(), json!(idx));
    if idx + 1 < total_pages {
        m.insert("nextPageIndex".into(), json!(idx + 1));
    }
    m.insert("size".into(), json!(page.len()));
    m.insert("totalPages".into(), json!(total_pages));
    Ok((page, m))
}

pub struct Location {
    pub uid: String,
    pub name: String,
    pub stoken: String,
    pub exp_date: DateTime<Utc>,
    pub page_size: usize,
    pub assets: Vec<Asset>,
    asset_index: HashMap<(String, String), usize>,
    /// Every user entry ever created, in creation order (retired entries stay) [C MUSERS].
    pub users: Vec<User>,
    /// clientUserId -> index of its one non-retired entry.
    active_user: HashMap<String, usize>,
    /// Assignment -> modification counter when it was (re)created.
    pub assignments: BTreeMap<AssignKey, u64>,
    pub events: Vec<Event>,
    event_index: HashMap<String, usize>,
    pub config: ClientConfig,
    seq: u64,
    versions: [DataVersion; 3],
    /// FIFO of eventIds for this location's worker.
    pub queue: Option<mpsc::UnboundedSender<String>>,
    /// Drawn once at creation; the ids this location issues later (eventIds, versionIds,
    /// inviteCodes, notificationIds) are derived from it and what they name (see [`keyed`]).
    pub key: u64,
    /// Notifications issued that name no event (their ids need a counter to be unique).
    pub plain_notifications: u64,
}

impl Location {
    pub fn new(
        uid: String,
        name: String,
        stoken: String,
        exp_date: DateTime<Utc>,
        page_size: usize,
        rng: &mut SmallRng,
    ) -> Location {
        let mut loc = Location {
            uid,
            name,
            stoken,
            exp_date,
            page_size,
            assets: Vec::new(),
            asset_index: HashMap::new(),
            users: Vec::new(),
            active_user: HashMap::new(),
            assignments: BTreeMap::new(),
            events: Vec::new(),
            event_index: HashMap::new(),
            config: ClientConfig {
                types: NOTIFICATION_TYPES.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            seq: 0,
            versions: Default::default(),
            queue: None,
            key: rng.gen(),
            plain_notifications: 0,
        };
        for ds in [DataSet::Assets, DataSet::Assignments, DataSet::Users] {
            loc.bump(ds, 0);
        }
        loc
    }

    pub fn add_asset(&mut self, a: Asset) -> Result<(), String> {
        let key = (a.adam_id.clone(), a.pricing_param.clone());
        if self.asset_index.contains_key(&key) {
            return Err(format!("duplicate asset {}/{}", key.0, key.1));
        }
        self.asset_index.insert(key, self.assets.len());
        self.assets.push(a);
        Ok(())
    }

    pub fn asset(&self, adam_id: &str, pricing_param: &str) -> Option<&Asset> {
        self.asset_index
            .get(&(adam_id.to_string(), pricing_param.to_string()))
            .map(|&i| &self.assets[i])
    }

    fn asset_mut(&mut self, adam_id: &str, pricing_param: &str) -> Option<&mut Asset> {
        match self
            .asset_index
            .get(&(adam_id.to_string(), pricing_param.to_string()))
        {
            Some(&i) => self.assets.get_mut(i),
            None => None,
        }
    }

    pub fn add_user(&mut self, u: User) -> Result<(), String> {
        if self.active_user.contains_key(&u.client_user_id) {
            return Err(format!("duplicate user {}", u.client_user_id));
        }
        if u.status != UserStatus::Retired {
            self.active_user
                .insert(u.client_user_id.clone(), self.users.len());
        }
        self.users.push(u);
        Ok(())
    }

    pub fn active_user(&self, id: &str) -> Option<&User> {
        self.active_user.get(id).map(|&i| &self.users[i])
    }

    pub fn version_id(&self, ds: DataSet) -> &str {
        &self.versions[ds as usize].current
    }

    /// A key for something this location issues (see [`keyed`]).
    pub fn derive(&self, parts: &[&str]) -> u64 {
        keyed(self.key, parts)
    }

    /// A new versionId for `ds`, mapped to modification counter `seq` (one bump per data set
    /// and counter, so the pair names it).
    fn bump(&mut self, ds: DataSet, seq: u64) {
        let id = keyed_uuid(self.derive(&["version", &(ds as u8).to_string(), &seq.to_string()]));
        let v = &mut self.versions[ds as usize];
        v.history.insert(id.clone(), seq);
        v.current = id;
    }

    /// The `versionChurn` fault: another writer touched unrelated data.
    pub fn churn(&mut self, ds: DataSet) {
        self.seq += 1;
        let seq = self.seq;
        self.bump(ds, seq);
    }

    fn since(&self, ds: DataSet, q: &Params) -> Result<Option<u64>, ApiError> {
        match q.str("sinceVersionId") {
            None => Ok(None),
            Some(v) => self.versions[ds as usize]
                .history
                .get(v)
                .copied()
                .map(Some)
                .ok_or_else(|| ApiError::new(9721)),
        }
    }

    pub fn add_event(&mut self, ev: Event) {
        self.event_index.insert(ev.id.clone(), self.events.len());
        self.events.push(ev);
    }

    pub fn event(&self, id: &str) -> Option<&Event> {
        self.event_index.get(id).map(|&i| &self.events[i])
    }

    /// `GET assets` body (without token fields) [C ASSETS, MASSETS].
    pub fn get_assets(&self, q: &Params) -> Result<Map<String, Value>, ApiError> {
        let product_type = q.one_of("productType", &["App", "Book"])?;
        let pricing = q.one_of("pricingParam", &["STDQ", "PLUS"])?;
        let revocable = q.bool("revocable")?;
        let device = q.bool("deviceAssignable")?;
        let unlimited = q.bool("unlimited")?;
        let (max_av, min_av) = (q.int("maxAvailableCount")?, q.int("minAvailableCount")?);
        let (max_as, min_as) = (q.int("maxAssignedCount")?, q.int("minAssignedCount")?);
        let adam = q.str("adamId");
        let page_index = q.int("pageIndex")?;
        let items: Vec<&Asset> = self
            .assets
            .iter()
            .filter(|a| product_type.is_none_or(|v| a.product_type == v))
            .filter(|a| pricing.is_none_or(|v| a.pricing_param == v))
            .filter(|a| revocable.is_none_or(|v| a.revocable == v))
            .filter(|a| device.is_none_or(|v| a.device_assignable == v))
            .filter(|a| adam.is_none_or(|v| a.adam_id == v))
            .filter(|a| max_av.is_none_or(|v| a.available_count() <= v))
            .filter(|a| min_av.is_none_or(|v| a.available_count() >= v))
            .filter(|a| max_as.is_none_or(|v| a.assigned <= v))
            .filter(|a| min_as.is_none_or(|v| a.assigned >= v))
            .filter(|a| unlimited != Some(false) || a.total.is_some())
            .collect();
        let (page, mut m) = paginate(items, self.page_size, page_index)?;
        let mut assets = Vec::new();
        let mut unl = Vec::new();
        for a in page {
            if unlimited == Some(true) && a.total.is_none() {
                unl.push(a.to_json(true));
            } else {
                assets.push(a.to_json(false));
            }
        }
        m.insert("assets".into(), Value::Array(assets));
        if unlimited == Some(true) {
            m.insert("unlimitedAssets".into(), Value::Array(unl));
        }
        m.insert("versionId".into(), json!(self.version_id(DataSet::Assets)));
        Ok(m)
    }

    /// `GET assignments` body [C ASSIGN]. Removed assignments never appear (see module doc).
    /// The assignments matching a query's filters, paginated (filters combine with AND).
    #[allow(clippy::too_many_arguments)]
    fn filtered_assignments(
        &self,
        since: Option<u64>,
        adam: Option<&str>,
        pricing: Option<&str>,
        user: Option<&str>,
        serial: Option<&str>,
        exclude_inactive: bool,
        page_index: Option<i64>,
    ) -> Result<(Vec<&AssignKey>, Map<String, Value>), ApiError> {
        let items: Vec<&AssignKey> = self
            .assignments
            .iter()
            .filter(|(_, &m)| since.is_none_or(|s| m > s))
            .map(|(k, _)| k)
            .filter(|k| adam.is_none_or(|v| k.adam_id == v))
            .filter(|k| pricing.is_none_or(|v| k.pricing_param == v))
            // Filters combine with AND; an assignment has either a user or a serial number.
            .filter(|k| match &k.target {
                Target::User(u) => serial.is_none() && user.is_none_or(|v| u == v),
                Target::Serial(s) => user.is_none() && serial.is_none_or(|v| s == v),
            })
            .filter(|k| match &k.target {
                Target::User(u) if exclude_inactive => self.active_user(u).is_some(),
                _ => true,
            })
            .collect();
        paginate(items, self.page_size, page_index)
    }

    pub fn get_assignments(&self, q: &Params) -> Result<Map<String, Value>, ApiError> {
        let pricing = q.one_of("pricingParam", &["STDQ", "PLUS"])?;
        let adam = q.str("adamId");
        let user = q.str("clientUserId");
        let serial = q.str("serialNumber");
        let exclude_inactive = q.bool("excludeInactiveUsers")?.unwrap_or(false);
        let include_state = q.bool("includeUserState")?.unwrap_or(false);
        let page_index = q.int("pageIndex")?;
        let since = self.since(DataSet::Assignments, q)?;
        // A full sync's traversal (no filter) steps to its page instead of collecting every
        // assignment for every page: the same pages, without the per-page cost in the size of
        // the location that made a 1,000,000-assignment sync simulator-bound.
        let unfiltered = since.is_none()
            && adam.is_none()
            && pricing.is_none()
            && user.is_none()
            && serial.is_none()
            && !exclude_inactive;
        let (page, mut m) = if unfiltered {
            paginate_iter(
                self.assignments.keys(),
                self.assignments.len(),
                self.page_size,
                page_index,
            )?
        } else {
            self.filtered_assignments(
                since,
                adam,
                pricing,
                user,
                serial,
                exclude_inactive,
                page_index,
            )?
        };
        let list: Vec<Value> = page
            .into_iter()
            .map(|k| {
                let mut v = k.to_json();
                if let (true, Target::User(u), Some(obj)) =
                    (include_state, &k.target, v.as_object_mut())
                {
                    if let Some(user) = self.active_user(u) {
                        obj.insert("userStatus".into(), json!(user.status.name()));
                        if let Some(h) = &user.id_hash {
                            obj.insert("idHash".into(), json!(h));
                        }
                    }
                }
                v
            })
            .collect();
        m.insert("assignments".into(), Value::Array(list));
        m.insert(
            "versionId".into(),
            json!(self.version_id(DataSet::Assignments)),
        );
        Ok(m)
    }

    /// `GET users` body [C USERS].
    pub fn get_users(&self, q: &Params) -> Result<Map<String, Value>, ApiError> {
        let active_only = q.bool("activeOnly")?.unwrap_or(false);
        let retired_only = q.bool("retiredOnly")?.unwrap_or(false);
        let id = q.str("clientUserId");
        let page_index = q.int("pageIndex")?;
        let since = self.since(DataSet::Users, q)?;
        let items: Vec<&User> = self
            .users
            .iter()
            .filter(|u| since.is_none_or(|s| u.modified > s))
            .filter(|u| id.is_none_or(|v| u.client_user_id == v))
            .filter(|u| !active_only || u.status != UserStatus::Retired)
            .filter(|u| !retired_only || u.status == UserStatus::Retired)
            .collect();
        let (page, mut m) = paginate(items, self.page_size, page_index)?;
        m.insert(
            "users".into(),
            Value::Array(page.into_iter().map(User::to_json).collect()),
        );
        m.insert("versionId".into(), json!(self.version_id(DataSet::Users)));
        Ok(m)
    }

    /// Processes event `event_id` (the worker calls this once, after processingDelay).
    pub fn process(&mut self, event_id: &str) -> Option<(EventType, Applied)> {
        let idx = *self.event_index.get(event_id)?;
        let kind = self.events[idx].kind;
        let req = self.events[idx].request.take()?;
        self.seq += 1;
        let seq = self.seq;
        let mut out = Applied::default();
        let mut completed = 0u64;
        match (kind, req) {
            (EventType::Associate, WriteRequest::Assets { assets, targets }) => {
                for (adam, pp) in &assets {
                    for t in &targets {
                        let key = AssignKey {
                            adam_id: adam.clone(),
                            pricing_param: pp.clone(),
                            target: t.clone(),
                        };
                        if let Target::User(u) = t {
                            if !self.active_user.contains_key(u) {
                                out.fail(9609, key.to_json());
                                continue;
                            }
                        }
                        if self.assignments.contains_key(&key) {
                            // Re-associating is a no-op success and uses no licence.
                            completed += 1;
                            out.ok.push(key.to_json());
                            continue;
                        }
                        match self.asset_mut(adam, pp) {
                            Some(a) if a.has_available() => {
                                a.assigned += 1;
                                completed += 1;
                                out.ok.push(key.to_json());
                                self.assignments.insert(key, seq);
                            }
                            // Unknown asset: the location owns no licence for it.
                            _ => out.fail(9709, key.to_json()),
                        }
                    }
                }
            }
            (EventType::Disassociate, WriteRequest::Assets { assets, targets }) => {
                for (adam, pp) in &assets {
                    for t in &targets {
                        let key = AssignKey {
                            adam_id: adam.clone(),
                            pricing_param: pp.clone(),
                            target: t.clone(),
                        };
                        if self.assignments.remove(&key).is_some() {
                            if let Some(a) = self.asset_mut(adam, pp) {
                                a.assigned -= 1;
                            }
                        } else if let Target::User(u) = t {
                            if !self.active_user.contains_key(u) {
                                out.fail(9609, key.to_json());
                                continue;
                            }
                        }
                        completed += 1;
                        out.ok.push(key.to_json());
                    }
                }
            }
            (EventType::Revoke, WriteRequest::Assets { assets, targets }) => {
                let only: BTreeSet<(String, String)> = assets.into_iter().collect();
                for t in &targets {
                    if let Target::User(u) = t {
                        if !self.active_user.contains_key(u) {
                            out.fail(9609, t.entity_json());
                            continue;
                        }
                    }
                    let keys: Vec<AssignKey> = self
                        .assignments
                        .keys()
                        .filter(|k| &k.target == t)
                        .filter(|k| {
                            only.is_empty()
                                || only.contains(&(k.adam_id.clone(), k.pricing_param.clone()))
                        })
                        .filter(|k| {
                            self.asset(&k.adam_id, &k.pricing_param)
                                .is_none_or(|a| a.revocable)
                        })
                        .cloned()
                        .collect();
                    for k in keys {
                        self.assignments.remove(&k);
                        if let Some(a) = self.asset_mut(&k.adam_id, &k.pricing_param) {
                            a.assigned -= 1;
                        }
                        out.ok.push(k.to_json());
                    }
                    completed += 1;
                }
            }
            (EventType::Create, WriteRequest::Users(users)) => {
                for u in users {
                    if self.active_user.contains_key(&u.client_user_id) {
                        out.fail(9716, req_user_json(&u));
                        continue;
                    }
                    // The entry's index names it: a clientUserId can be created again after
                    // retirement.
                    let code = self.derive(&["invite", &self.users.len().to_string()]);
                    let user = User {
                        client_user_id: u.client_user_id,
                        email: u.email,
                        managed_apple_id: u.managed_apple_id,
                        status: UserStatus::Registered,
                        invite_code: keyed_hex(code, 16),
                        id_hash: None,
                        modified: seq,
                    };
                    out.ok.push(user.to_json());
                    completed += 1;
                    self.active_user
                        .insert(user.client_user_id.clone(), self.users.len());
                    self.users.push(user);
                }
            }
            (EventType::Update, WriteRequest::Users(users)) => {
                for u in users {
                    let Some(&i) = self.active_user.get(&u.client_user_id) else {
                        out.fail(9609, req_user_json(&u));
                        continue;
                    };
                    let user = &mut self.users[i];
                    if u.email.is_some() {
                        user.email = u.email;
                    }
                    if u.managed_apple_id.is_some() {
                        user.managed_apple_id = u.managed_apple_id;
                    }
                    user.modified = seq;
                    out.ok.push(user.to_json());
                    completed += 1;
                }
            }
            (EventType::Retire, WriteRequest::Users(users)) => {
                for u in users {
                    let Some(i) = self.active_user.remove(&u.client_user_id) else {
                        out.fail(9609, req_user_json(&u));
                        continue;
                    };
                    let user = &mut self.users[i];
                    user.status = UserStatus::Retired;
                    user.modified = seq;
                    out.ok.push(user.to_json());
                    completed += 1;
                    // Retiring a user releases all of its licences [C MUSERS].
                    let t = Target::User(u.client_user_id.clone());
                    let keys: Vec<AssignKey> = self
                        .assignments
                        .keys()
                        .filter(|k| k.target == t)
                        .cloned()
                        .collect();
                    for k in keys {
                        self.assignments.remove(&k);
                        if let Some(a) = self.asset_mut(&k.adam_id, &k.pricing_param) {
                            a.assigned -= 1;
                        }
                    }
                }
            }
            _ => return None,
        }
        let touched: &[DataSet] = match kind {
            EventType::Associate | EventType::Disassociate | EventType::Revoke => {
                &[DataSet::Assets, DataSet::Assignments]
            }
            EventType::Create | EventType::Update => &[DataSet::Users],
            EventType::Retire => &[DataSet::Users, DataSet::Assignments, DataSet::Assets],
        };
        for &ds in touched {
            self.bump(ds, seq);
        }
        let ev = &mut self.events[idx];
        ev.num_completed = completed;
        ev.failures = out
            .failed
            .iter()
            .map(|(code, ents)| super::errors::error_body(*code, Some(error_info(*code, ents))))
            .collect();
        ev.status = if out.failed.is_empty() {
            EventStatus::Complete
        } else {
            EventStatus::Failed
        };
        Some((kind, out))
    }

    /// `POST /_sim/asset-count`: licences bought (+) or refunded / moved away (−).
    pub fn change_count(
        &mut self,
        adam_id: &str,
        pricing_param: &str,
        delta: i64,
    ) -> Result<Value, String> {
        let a = self
            .asset_mut(adam_id, pricing_param)
            .ok_or_else(|| format!("unknown asset {adam_id}/{pricing_param}"))?;
        let Some(total) = a.total else {
            return Err(format!("asset {adam_id} is unlimited"));
        };
        let new = total.saturating_add(delta);
        if new < a.assigned {
            return Err(format!(
                "total {new} would be below assignedCount {}",
                a.assigned
            ));
        }
        a.total = Some(new);
        let json = a.to_json(false);
        self.seq += 1;
        let seq = self.seq;
        self.bump(DataSet::Assets, seq);
        Ok(json)
    }

    /// `POST /_sim/associate-user`: the user accepted the invitation (Registered -> Associated).
    pub fn associate_user(&mut self, client_user_id: &str) -> Result<Value, String> {
        let &i = self
            .active_user
            .get(client_user_id)
            .ok_or_else(|| format!("no active user {client_user_id}"))?;
        if self.users[i].status == UserStatus::Associated {
            return Err(format!("user {client_user_id} is already Associated"));
        }
        self.seq += 1;
        let seq = self.seq;
        let hash = keyed_hex(self.derive(&["idHash", &i.to_string()]), 20);
        let u = &mut self.users[i];
        u.status = UserStatus::Associated;
        u.id_hash = Some(hash);
        u.modified = seq;
        let json = u.to_json();
        self.bump(DataSet::Users, seq);
        Ok(json)
    }

    /// `GET /_sim/truth/{uId}` body.
    pub fn truth(&self) -> Value {
        json!({
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
            "assets": self.assets.iter().map(|a| a.to_json(false)).collect::<Vec<_>>(),
            "assignments": self.assignments.keys().map(AssignKey::to_json).collect::<Vec<_>>(),
            "users": self.users.iter().map(User::to_json).collect::<Vec<_>>(),
        })
    }
}

fn req_user_json(u: &ReqUser) -> Value {
    let mut m = Map::new();
    m.insert("clientUserId".into(), json!(u.client_user_id));
    if let Some(e) = &u.email {
        m.insert("email".into(), json!(e));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn loc() -> Location {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut l = Location::new("1".into(), "L".into(), "t".into(), Utc::now(), 2, &mut rng);
        l.add_asset(Asset {
            adam_id: "A".into(),
            pricing_param: "STDQ".into(),
            product_type: "App".into(),
            total: Some(2),
            device_assignable: true,
            revocable: true,
            supported_platforms: vec!["iOS".into()],
            assigned: 0,
        })
        .unwrap();
        l
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn pagination_bounds() {
        let (p, m) = paginate(vec![1, 2, 3], 2, Some(1)).unwrap();
        assert_eq!(p, vec![3]);
        assert!(m.get("nextPageIndex").is_none());
        assert_eq!(m["totalPages"], 2);
        let (_, m) = paginate(vec![1, 2, 3], 2, None).unwrap();
        assert_eq!(m["nextPageIndex"], 1);
        let (p, m) = paginate(Vec::<i32>::new(), 2, Some(0)).unwrap();
        assert!(p.is_empty());
        assert_eq!(m["totalPages"], 1);
        assert_eq!(paginate(vec![1], 2, Some(1)).unwrap_err().number, 9650);
        assert_eq!(paginate(vec![1], 2, Some(-1)).unwrap_err().number, 9650);
    }

    #[test]
    fn associate_runs_out_and_since_version_hides_removals() {
        let mut l = loc();
        let v0 = l.version_id(DataSet::Assignments).to_string();
        let targets = vec![
            Target::Serial("a".into()),
            Target::Serial("b".into()),
            Target::Serial("c".into()),
        ];
        l.add_event(Event {
            id: "e1".into(),
            kind: EventType::Associate,
            status: EventStatus::Pending,
            num_requested: 3,
            num_completed: 0,
            failures: vec![],
            request: Some(WriteRequest::Assets {
                assets: vec![("A".into(), "STDQ".into())],
                targets,
            }),
            due: tokio::time::Instant::now(),
        });
        let (_, applied) = l.process("e1").unwrap();
        assert_eq!(applied.ok.len(), 2);
        assert_eq!(applied.failed[0].0, 9709);
        let ev = l.event("e1").unwrap();
        assert_eq!((ev.status, ev.num_completed), (EventStatus::Failed, 2));
        assert_eq!(l.asset("A", "STDQ").unwrap().available_count(), 0);
        // A second processing is a no-op.
        assert!(l.process("e1").is_none());

        let m = l
            .get_assignments(&params(&[("sinceVersionId", &v0)]))
            .unwrap();
        assert_eq!(m["assignments"].as_array().unwrap().len(), 2);
        let v1 = l.version_id(DataSet::Assignments).to_string();
        l.add_event(Event {
            id: "e2".into(),
            kind: EventType::Disassociate,
            status: EventStatus::Pending,
            num_requested: 1,
            num_completed: 0,
            failures: vec![],
            request: Some(WriteRequest::Assets {
                assets: vec![("A".into(), "STDQ".into())],
                targets: vec![Target::Serial("a".into())],
            }),
            due: tokio::time::Instant::now(),
        });
        l.process("e2").unwrap();
        let m = l
            .get_assignments(&params(&[("sinceVersionId", &v1)]))
            .unwrap();
        assert_eq!(m["assignments"], json!([]));
        assert_ne!(m["versionId"], json!(v1));
        assert_eq!(
            l.get_assignments(&params(&[("sinceVersionId", "x")]))
                .unwrap_err()
                .number,
            9721
        );
    }

    #[test]
    fn keyed_ids_follow_what_they_name() {
        let a = keyed(7, &["event", "0"]);
        assert_eq!(a, keyed(7, &["event", "0"]));
        assert_ne!(a, keyed(7, &["event", "1"]));
        assert_ne!(a, keyed(8, &["event", "0"]));
        // Part boundaries count: ("ab", "c") is not ("a", "bc").
        assert_ne!(keyed(7, &["ab", "c"]), keyed(7, &["a", "bc"]));
        let id = keyed_uuid(a);
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        assert_ne!(id, keyed_uuid(a ^ 1));
        assert_eq!(keyed_hex(a, 20).len(), 40);
        assert!((0.0..1.0).contains(&unit(u64::MAX)));
    }

    #[test]
    fn unfiltered_pages_are_the_filtered_path_s_pages() {
        let mut l = loc();
        l.page_size = 3;
        for i in 0..7 {
            let target = if i % 2 == 0 {
                Target::Serial(format!("s{i}"))
            } else {
                Target::User(format!("u{i}"))
            };
            let key = AssignKey {
                adam_id: "A".into(),
                pricing_param: "STDQ".into(),
                target,
            };
            l.assignments.insert(key, i);
        }
        // Every assignment is STDQ, so the filter keeps them all but takes the filtered path.
        for page in ["0", "1", "2"] {
            let fast = l.get_assignments(&params(&[("pageIndex", page)])).unwrap();
            let slow = l
                .get_assignments(&params(&[("pageIndex", page), ("pricingParam", "STDQ")]))
                .unwrap();
            assert_eq!(fast, slow, "page {page}");
        }
        let fast = l.get_assignments(&params(&[])).unwrap();
        assert_eq!(fast["totalPages"], json!(3));
        assert_eq!(fast["nextPageIndex"], json!(1));
        assert_eq!(fast["assignments"].as_array().unwrap().len(), 3);
        assert_eq!(
            l.get_assignments(&params(&[("pageIndex", "3")]))
                .unwrap_err()
                .number,
            9650
        );
    }
}
