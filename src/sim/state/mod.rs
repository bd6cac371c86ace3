//! The model: locations with their assets, users, assignments, events and data-set versions,
//! and the read side (filters, pagination, `sinceVersionId`). All of it lives behind the one
//! `Mutex<SimState>` of [`super::Shared`].
//!
//! Here the [`SimState`], the [`Location`] and the keyed-id helpers; the modelled things and
//! their JSON in `model.rs`, a location's bookkeeping in `location.rs`, the reads in
//! `reads.rs`, event processing and the control API's changes in `events.rs`.

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

mod events;
mod location;
mod model;
mod reads;
#[cfg(test)]
mod tests;

pub use model::*;
pub use reads::*;

#[derive(Debug, Clone, Default)]
struct DataVersion {
    current: String,
    /// versionId -> modification counter at the time it was current.
    history: HashMap<String, u64>,
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
