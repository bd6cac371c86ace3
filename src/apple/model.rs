//! Serde models of Apple's `mdm/v2` requests, responses and notifications (apple-api.md §3, §5).
//!
//! Invariants: decoding is lenient where Apple may evolve — unknown fields are ignored, optional
//! fields are `Option` or defaulted, enums have an `Unknown` arm, counts are `i64`
//! (`totalCount` is `i32::MAX` for unlimited assets), and a malformed date becomes `None`
//! instead of failing the whole response. Only fields the daemon cannot work without
//! (e.g. a notification's `eventId`) are required.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::core::model::EventType;
use crate::secret::Secret;
use crate::time::Timestamp;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Apple dates (`2030-11-08T22:33:22+0000`; RFC 3339 also accepted) as `Option<Timestamp>`.
/// Anything unparseable becomes `None`.
pub mod apple_date {
    use super::*;

    pub fn parse(s: &str) -> Option<Timestamp> {
        let s = s.trim();
        chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
            .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
            .ok()
            .map(|d| Timestamp::from_datetime(d.with_timezone(&chrono::Utc)))
            .or_else(|| Timestamp::parse_rfc3339(s))
    }

    pub fn format(t: Timestamp) -> String {
        t.to_datetime().format("%Y-%m-%dT%H:%M:%S%z").to_string()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.as_ref().and_then(Value::as_str).and_then(parse))
    }

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format(*t)),
            None => s.serialize_none(),
        }
    }
}

/// `Option<Secret>` on the wire: the value is exposed only when serialising a request to Apple.
mod secret_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secret) => s.serialize_str(secret.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}

/// Identifiers Apple sends as strings in asset APIs but as numbers elsewhere.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or number, got {}",
            kind_of(&other)
        ))),
    }
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Integers that may arrive as numbers or numeric strings; anything else is `None`.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    lenient_i64(d).map(|v| v.unwrap_or(0))
}

/// A list that is `[]` when absent or `null`.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

macro_rules! apple_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $s)] $variant,)+
            /// A value this build does not know (Apple adds values over time).
            #[serde(other)]
            Unknown,
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)+ $name::Unknown => "Unknown" }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

apple_enum!(PricingParam { Stdq => "STDQ", Plus => "PLUS" });
apple_enum!(ProductType { App => "App", Book => "Book" });
apple_enum!(Platform { Ios => "iOS", MacOs => "macOS", TvOs => "tvOS", WatchOs => "watchOS", VisionOs => "visionOS" });
apple_enum!(UserStatus { Registered => "Registered", Associated => "Associated", Retired => "Retired", Deleted => "Deleted" });
apple_enum!(EventStatus { Pending => "PENDING", Complete => "COMPLETE", Failed => "FAILED" });
apple_enum!(NotificationResult { Success => "SUCCESS", Failure => "FAILURE" });
apple_enum!(AssetManagementType { Associate => "ASSOCIATE", Disassociate => "DISASSOCIATE", Revoke => "REVOKE" });
apple_enum!(UserManagementType { Create => "CREATE", Update => "UPDATE", Retire => "RETIRE" });
apple_enum!(NotificationType {
    AssetManagement => "ASSET_MANAGEMENT",
    UserManagement => "USER_MANAGEMENT",
    AssetCount => "ASSET_COUNT",
    UserAssociated => "USER_ASSOCIATED",
    TestNotification => "TEST_NOTIFICATION",
    SubscriptionManagement => "SUBSCRIPTION_MANAGEMENT",
    SubscriptionCount => "SUBSCRIPTION_COUNT",
    UnlimitedAsset => "UNLIMITED_ASSET",
});

impl AssetManagementType {
    pub fn event_type(self) -> Option<EventType> {
        match self {
            AssetManagementType::Associate => Some(EventType::Associate),
            AssetManagementType::Disassociate => Some(EventType::Disassociate),
            AssetManagementType::Revoke => Some(EventType::Revoke),
            AssetManagementType::Unknown => None,
        }
    }
}

impl UserManagementType {
    pub fn event_type(self) -> Option<EventType> {
        match self {
            UserManagementType::Create => Some(EventType::Create),
            UserManagementType::Update => Some(EventType::Update),
            UserManagementType::Retire => Some(EventType::Retire),
            UserManagementType::Unknown => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Common objects

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MdmInfo {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub metadata: String,
}

/// An asset reference (`Asset`): identified by (adamId, pricingParam).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetRef {
    #[serde(deserialize_with = "string_or_number")]
    pub adam_id: String,
    #[serde(default = "default_pricing")]
    pub pricing_param: String,
}

fn default_pricing() -> String {
    "STDQ".to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub assets: Vec<AssetRef>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub client_user_ids: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub serial_numbers: Vec<String>,
}

/// Apple's `ErrorResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    pub error_number: i32,
    #[serde(default)]
    pub error_message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_info: Option<ErrorInfo>,
}

impl ErrorResponse {
    /// As recorded by the core.
    pub fn to_failure(&self) -> crate::core::model::Failure {
        crate::core::model::Failure {
            error_number: i64::from(self.error_number),
            error_message: self.error_message.clone(),
            error_info: self
                .error_info
                .as_ref()
                .and_then(|i| serde_json::to_value(i).ok()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service Config

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseErrorCode {
    pub error_number: i32,
    #[serde(default)]
    pub error_message: String,
}

/// Service Config `limits`. Named accessors for the keys the daemon uses; every key is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits(pub BTreeMap<String, Value>);

impl Limits {
    /// A positive integer limit, or `None` when absent, zero, negative or not a number.
    pub fn get(&self, key: &str) -> Option<u32> {
        let v = self.0.get(key)?;
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))?;
        u32::try_from(n).ok().filter(|n| *n > 0)
    }
    pub fn max_assets(&self) -> Option<u32> {
        self.get("maxAssets")
    }
    pub fn max_client_user_ids(&self) -> Option<u32> {
        self.get("maxClientUserIds")
    }
    pub fn max_serial_numbers(&self) -> Option<u32> {
        self.get("maxSerialNumbers")
    }
    pub fn max_revoke_client_user_ids(&self) -> Option<u32> {
        self.get("maxRevokeClientUserIds")
    }
    pub fn max_revoke_serial_numbers(&self) -> Option<u32> {
        self.get("maxRevokeSerialNumbers")
    }
    pub fn max_users(&self) -> Option<u32> {
        self.get("maxUsers")
    }
    pub fn max_request_per_second(&self) -> Option<u32> {
        self.get("maxRequestPerSecond")
    }
    pub fn max_notification_length(&self) -> Option<u32> {
        self.get("maxNotificationLength")
    }
    pub fn max_mdm_name_length(&self) -> Option<u32> {
        self.get("maxMdmNameLength")
    }
    pub fn max_mdm_metadata_length(&self) -> Option<u32> {
        self.get("maxMdmMetadataLength")
    }
    pub fn max_mdm_id_length(&self) -> Option<u32> {
        self.get("maxMdmIdLength")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    #[serde(default, deserialize_with = "lenient_list")]
    pub error_codes: Vec<ResponseErrorCode>,
    #[serde(default)]
    pub limits: Limits,
    /// Raw strings: this list is informational and may carry types this build does not know.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub notification_types: Vec<String>,
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
}

/// A list whose malformed elements are skipped rather than failing the response.
fn lenient_list<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let v = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
    Ok(v.into_iter()
        .filter_map(|x| serde_json::from_value(x).ok())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Client Config

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfigRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mdm_info: Option<MdmInfo>,
    /// The shared secret Apple will send as Bearer on notifications.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "secret_opt")]
    pub notification_auth_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfigResponse {
    #[serde(default, rename = "countryISO2ACode")]
    pub country_iso2a_code: Option<String>,
    #[serde(default)]
    pub default_platform: Option<String>,
    #[serde(default)]
    pub location_name: Option<String>,
    #[serde(default)]
    pub mdm_info: Option<MdmInfo>,
    /// Never serialised back out (so a response dumped as JSON cannot leak it).
    #[serde(
        default,
        deserialize_with = "secret_opt::deserialize",
        skip_serializing
    )]
    pub notification_auth_token: Option<Secret>,
    #[serde(default)]
    pub notification_url: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub subscribed_notification_types: Vec<String>,
    #[serde(default, with = "apple_date")]
    pub token_expiration_date: Option<Timestamp>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub u_id: Option<String>,
    #[serde(default, rename = "websiteURL")]
    pub website_url: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Reads

/// Pagination and token fields shared by the three paginated responses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub current_page_index: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub next_page_index: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub size: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub total_pages: Option<i64>,
    #[serde(default)]
    pub version_id: Option<String>,
    #[serde(default)]
    pub mdm_info: Option<MdmInfo>,
    #[serde(default, with = "apple_date")]
    pub token_expiration_date: Option<Timestamp>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub u_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseAsset {
    #[serde(deserialize_with = "string_or_number")]
    pub adam_id: String,
    pub pricing_param: PricingParam,
    #[serde(default)]
    pub product_type: Option<ProductType>,
    #[serde(default, deserialize_with = "lenient_count")]
    pub assigned_count: i64,
    #[serde(default, deserialize_with = "lenient_count")]
    pub available_count: i64,
    #[serde(default, deserialize_with = "lenient_count")]
    pub retired_count: i64,
    /// `i32::MAX` (2147483647) for unlimited assets.
    #[serde(default, deserialize_with = "lenient_count")]
    pub total_count: i64,
    #[serde(default)]
    pub device_assignable: Option<bool>,
    #[serde(default)]
    pub revocable: Option<bool>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub supported_platforms: Vec<Platform>,
}

impl ResponseAsset {
    pub fn is_unlimited(&self) -> bool {
        self.total_count >= i64::from(i32::MAX)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnlimitedResponseAsset {
    #[serde(deserialize_with = "string_or_number")]
    pub adam_id: String,
    pub pricing_param: PricingParam,
    #[serde(default)]
    pub product_type: Option<ProductType>,
    #[serde(default, deserialize_with = "lenient_count")]
    pub assigned_count: i64,
    #[serde(default)]
    pub device_assignable: Option<bool>,
    #[serde(default)]
    pub revocable: Option<bool>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub supported_platforms: Vec<Platform>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAssetsResponse {
    // One malformed record must not fail a whole page (and a whole sync): skip it.
    #[serde(default, deserialize_with = "lenient_list")]
    pub assets: Vec<ResponseAsset>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub unlimited_assets: Vec<UnlimitedResponseAsset>,
    #[serde(flatten)]
    pub page: PageInfo,
}

/// One license assignment: exactly one of `client_user_id` / `serial_number` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    #[serde(deserialize_with = "string_or_number")]
    pub adam_id: String,
    #[serde(default = "default_pricing_enum")]
    pub pricing_param: PricingParam,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_status: Option<UserStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_hash: Option<String>,
}

fn default_pricing_enum() -> PricingParam {
    PricingParam::Stdq
}

/// Who an assignment is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Assignee {
    User(String),
    Device(String),
    /// Neither field present (malformed); kept so nothing is silently dropped.
    None,
}

impl Assignment {
    pub fn assignee(&self) -> Assignee {
        match (&self.client_user_id, &self.serial_number) {
            (Some(u), _) => Assignee::User(u.clone()),
            (None, Some(s)) => Assignee::Device(s.clone()),
            (None, None) => Assignee::None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAssignmentsResponse {
    // One malformed record must not fail a whole page (and a whole sync): skip it.
    #[serde(default, deserialize_with = "lenient_list")]
    pub assignments: Vec<Assignment>,
    #[serde(flatten)]
    pub page: PageInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseUser {
    pub client_user_id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub id_hash: Option<String>,
    #[serde(default)]
    pub invite_code: Option<String>,
    #[serde(default)]
    pub managed_apple_id: Option<String>,
    #[serde(default = "unknown_status")]
    pub status: UserStatus,
}

fn unknown_status() -> UserStatus {
    UserStatus::Unknown
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetUsersResponse {
    // One malformed record must not fail a whole page (and a whole sync): skip it.
    #[serde(default, deserialize_with = "lenient_list")]
    pub users: Vec<ResponseUser>,
    #[serde(flatten)]
    pub page: PageInfo,
}

// ---------------------------------------------------------------------------------------------
// Writes and status

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResponse {
    pub event_id: String,
    #[serde(default)]
    pub mdm_info: Option<MdmInfo>,
    #[serde(default, with = "apple_date")]
    pub token_expiration_date: Option<Timestamp>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub u_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    pub event_status: EventStatus,
    /// Raw (ASSOCIATE … RETIRE); see [`StatusResponse::event_type`].
    #[serde(default, rename = "eventType")]
    pub event_type_raw: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub num_requested: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub num_completed: Option<i64>,
    // One malformed record must not fail a whole page (and a whole sync): skip it.
    #[serde(default, deserialize_with = "lenient_list")]
    pub failures: Vec<ErrorResponse>,
    #[serde(default)]
    pub mdm_info: Option<MdmInfo>,
    #[serde(default, with = "apple_date")]
    pub token_expiration_date: Option<Timestamp>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub u_id: Option<String>,
}

impl StatusResponse {
    pub fn event_type(&self) -> Option<EventType> {
        self.event_type_raw.as_deref().and_then(|s| s.parse().ok())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManageAssetsRequest {
    pub assets: Vec<AssetRef>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub client_user_ids: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub serial_numbers: Vec<String>,
}

impl ManageAssetsRequest {
    /// Entities Apple reports on: assets × (serial numbers + users), unique values counted.
    pub fn num_entities(&self) -> u64 {
        let assets = unique(self.assets.iter()).len() as u64;
        let users = unique(self.client_user_ids.iter()).len() as u64;
        let serials = unique(self.serial_numbers.iter()).len() as u64;
        assets.saturating_mul(users + serials)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokeAssetsRequest {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub client_user_ids: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub serial_numbers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestUser {
    pub client_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_apple_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManageUsersRequest {
    pub users: Vec<RequestUser>,
}

impl ManageUsersRequest {
    pub fn num_entities(&self) -> u64 {
        unique(self.users.iter().map(|u| &u.client_user_id)).len() as u64
    }
}

fn unique<T: Eq + std::hash::Hash, I: IntoIterator<Item = T>>(it: I) -> HashSet<T> {
    it.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Request kinds, counting and splitting

/// The write endpoints, named as in the local API route `/v1/tokens/{token}/requests/{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    Associate,
    Disassociate,
    Revoke,
    CreateUsers,
    UpdateUsers,
    RetireUsers,
}

impl RequestKind {
    pub const ALL: [RequestKind; 6] = [
        RequestKind::Associate,
        RequestKind::Disassociate,
        RequestKind::Revoke,
        RequestKind::CreateUsers,
        RequestKind::UpdateUsers,
        RequestKind::RetireUsers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Associate => "associate",
            RequestKind::Disassociate => "disassociate",
            RequestKind::Revoke => "revoke",
            RequestKind::CreateUsers => "create-users",
            RequestKind::UpdateUsers => "update-users",
            RequestKind::RetireUsers => "retire-users",
        }
    }

    pub fn event_type(self) -> EventType {
        match self {
            RequestKind::Associate => EventType::Associate,
            RequestKind::Disassociate => EventType::Disassociate,
            RequestKind::Revoke => EventType::Revoke,
            RequestKind::CreateUsers => EventType::Create,
            RequestKind::UpdateUsers => EventType::Update,
            RequestKind::RetireUsers => EventType::Retire,
        }
    }

    /// The endpoint that produces events of this type.
    pub fn for_event_type(t: EventType) -> RequestKind {
        match t {
            EventType::Associate => RequestKind::Associate,
            EventType::Disassociate => RequestKind::Disassociate,
            EventType::Revoke => RequestKind::Revoke,
            EventType::Create => RequestKind::CreateUsers,
            EventType::Update => RequestKind::UpdateUsers,
            EventType::Retire => RequestKind::RetireUsers,
        }
    }

    /// Service Config `urls` key of this endpoint.
    pub fn url_key(self) -> &'static str {
        match self {
            RequestKind::Associate => "associateAssets",
            RequestKind::Disassociate => "disassociateAssets",
            RequestKind::Revoke => "revokeAssets",
            RequestKind::CreateUsers => "createUsers",
            RequestKind::UpdateUsers => "updateUsers",
            RequestKind::RetireUsers => "retireUsers",
        }
    }

    /// Path under the base URL.
    pub fn default_path(self) -> &'static str {
        match self {
            RequestKind::Associate => "assets/associate",
            RequestKind::Disassociate => "assets/disassociate",
            RequestKind::Revoke => "assets/revoke",
            RequestKind::CreateUsers => "users/create",
            RequestKind::UpdateUsers => "users/update",
            RequestKind::RetireUsers => "users/retire",
        }
    }

    pub fn is_user_kind(self) -> bool {
        matches!(
            self,
            RequestKind::CreateUsers | RequestKind::UpdateUsers | RequestKind::RetireUsers
        )
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("request kind {s:?} is not one of associate, disassociate, revoke, create-users, update-users, retire-users")
            })
    }
}

/// Entities Apple will report on for this request (associate/disassociate: assets ×
/// (serial numbers + users); user requests: users). `None` for revoke (it touches every
/// assigned asset, unknown here) or a body that does not parse.
pub fn count_entities(kind: RequestKind, body: &Value) -> Option<u32> {
    let n = match kind {
        RequestKind::Associate | RequestKind::Disassociate => {
            ManageAssetsRequest::deserialize(body).ok()?.num_entities()
        }
        RequestKind::Revoke => return None,
        _ => ManageUsersRequest::deserialize(body).ok()?.num_entities(),
    };
    u32::try_from(n).ok()
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the {kind} request body is invalid at {path}: {detail}")]
    Invalid {
        kind: RequestKind,
        path: String,
        detail: String,
    },
    #[error("the {kind} request has no {what}")]
    Empty {
        kind: RequestKind,
        what: &'static str,
    },
    #[error("the {kind} request has an empty value at {path}")]
    EmptyValue { kind: RequestKind, path: String },
    #[error("the {kind} request lists user {client_user_id:?} twice with different details")]
    ConflictingUser {
        kind: RequestKind,
        client_user_id: String,
    },
}

// Apple's example limits, used when Service Config has not given one.
const DEFAULT_MAX_ASSETS: u32 = 25;
const DEFAULT_MAX_IDS: u32 = 1000;
const DEFAULT_MAX_REVOKE_IDS: u32 = 100;
const DEFAULT_MAX_USERS: u32 = 100;

fn parse_body<T: serde::de::DeserializeOwned>(
    kind: RequestKind,
    body: &Value,
) -> Result<T, SplitError> {
    serde_path_to_error::deserialize(body).map_err(|e| SplitError::Invalid {
        kind,
        path: if e.path().to_string() == "." {
            "(body)".to_string()
        } else {
            e.path().to_string()
        },
        detail: e.inner().to_string(),
    })
}

/// Dedupes `ids` (first occurrence kept) and rejects empty values, naming the field.
fn clean_ids(kind: RequestKind, field: &str, ids: Vec<String>) -> Result<Vec<String>, SplitError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.into_iter().enumerate() {
        if id.trim().is_empty() {
            return Err(SplitError::EmptyValue {
                kind,
                path: format!("{field}[{i}]"),
            });
        }
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    Ok(out)
}

fn chunks_of<T: Clone>(v: &[T], n: u32) -> Vec<Vec<T>> {
    v.chunks(n.max(1) as usize).map(<[T]>::to_vec).collect()
}

/// Pairs user-id chunks with serial-number chunks: request i carries chunk i of each.
fn zip_chunks(
    users: Vec<Vec<String>>,
    serials: Vec<Vec<String>>,
) -> Vec<(Vec<String>, Vec<String>)> {
    let n = users.len().max(serials.len());
    (0..n)
        .map(|i| {
            (
                users.get(i).cloned().unwrap_or_default(),
                serials.get(i).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// Splits a write body into bodies that each respect Service Config `limits`, after removing
/// duplicate ids (Apple rejects duplicates with 9703–9705 / 9715). Errors name the offending
/// field or value.
pub fn split_request(
    kind: RequestKind,
    body: &Value,
    limits: &Limits,
) -> Result<Vec<Value>, SplitError> {
    match kind {
        RequestKind::Associate | RequestKind::Disassociate => {
            let req: ManageAssetsRequest = parse_body(kind, body)?;
            if req.assets.is_empty() {
                return Err(SplitError::Empty {
                    kind,
                    what: "assets",
                });
            }
            let mut seen = HashSet::new();
            let mut assets = vec![];
            for (i, a) in req.assets.into_iter().enumerate() {
                if a.adam_id.trim().is_empty() {
                    return Err(SplitError::EmptyValue {
                        kind,
                        path: format!("assets[{i}].adamId"),
                    });
                }
                if seen.insert(a.clone()) {
                    assets.push(a);
                }
            }
            let users = clean_ids(kind, "clientUserIds", req.client_user_ids)?;
            let serials = clean_ids(kind, "serialNumbers", req.serial_numbers)?;
            if users.is_empty() && serials.is_empty() {
                return Err(SplitError::Empty {
                    kind,
                    what: "clientUserIds or serialNumbers",
                });
            }
            let pairs = zip_chunks(
                chunks_of(
                    &users,
                    limits.max_client_user_ids().unwrap_or(DEFAULT_MAX_IDS),
                ),
                chunks_of(
                    &serials,
                    limits.max_serial_numbers().unwrap_or(DEFAULT_MAX_IDS),
                ),
            );
            let mut out = vec![];
            for asset_chunk in chunks_of(&assets, limits.max_assets().unwrap_or(DEFAULT_MAX_ASSETS))
            {
                for (u, s) in &pairs {
                    out.push(to_value(&ManageAssetsRequest {
                        assets: asset_chunk.clone(),
                        client_user_ids: u.clone(),
                        serial_numbers: s.clone(),
                    }));
                }
            }
            Ok(out)
        }
        RequestKind::Revoke => {
            let req: RevokeAssetsRequest = parse_body(kind, body)?;
            let users = clean_ids(kind, "clientUserIds", req.client_user_ids)?;
            let serials = clean_ids(kind, "serialNumbers", req.serial_numbers)?;
            if users.is_empty() && serials.is_empty() {
                return Err(SplitError::Empty {
                    kind,
                    what: "clientUserIds or serialNumbers",
                });
            }
            let pairs = zip_chunks(
                chunks_of(
                    &users,
                    limits
                        .max_revoke_client_user_ids()
                        .unwrap_or(DEFAULT_MAX_REVOKE_IDS),
                ),
                chunks_of(
                    &serials,
                    limits
                        .max_revoke_serial_numbers()
                        .unwrap_or(DEFAULT_MAX_REVOKE_IDS),
                ),
            );
            Ok(pairs
                .into_iter()
                .map(|(u, s)| {
                    to_value(&RevokeAssetsRequest {
                        client_user_ids: u,
                        serial_numbers: s,
                    })
                })
                .collect())
        }
        RequestKind::CreateUsers | RequestKind::UpdateUsers | RequestKind::RetireUsers => {
            let req: ManageUsersRequest = parse_body(kind, body)?;
            if req.users.is_empty() {
                return Err(SplitError::Empty {
                    kind,
                    what: "users",
                });
            }
            let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
            let mut users: Vec<RequestUser> = vec![];
            for (i, u) in req.users.into_iter().enumerate() {
                if u.client_user_id.trim().is_empty() {
                    return Err(SplitError::EmptyValue {
                        kind,
                        path: format!("users[{i}].clientUserId"),
                    });
                }
                match by_id.get(&u.client_user_id) {
                    Some(&j) if users[j] == u => {}
                    Some(_) => {
                        return Err(SplitError::ConflictingUser {
                            kind,
                            client_user_id: u.client_user_id,
                        })
                    }
                    None => {
                        by_id.insert(u.client_user_id.clone(), users.len());
                        users.push(u);
                    }
                }
            }
            Ok(
                chunks_of(&users, limits.max_users().unwrap_or(DEFAULT_MAX_USERS))
                    .into_iter()
                    .map(|users| to_value(&ManageUsersRequest { users }))
                    .collect(),
            )
        }
    }
}

/// Serialises the request structs; cannot fail for them (strings and lists only).
fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// Notifications

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetManagementNotification {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub assignments: Vec<Assignment>,
    pub event_id: String,
    pub result: NotificationResult,
    #[serde(rename = "type")]
    pub kind: AssetManagementType,
    #[serde(default)]
    pub error: Option<ErrorResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserManagementNotification {
    pub event_id: String,
    pub result: NotificationResult,
    #[serde(rename = "type")]
    pub kind: UserManagementType,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub users: Vec<ResponseUser>,
    #[serde(default)]
    pub error: Option<ErrorResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetCountNotification {
    #[serde(deserialize_with = "string_or_number")]
    pub adam_id: String,
    #[serde(default, deserialize_with = "lenient_count")]
    pub count_delta: i64,
    #[serde(default = "default_pricing_enum")]
    pub pricing_param: PricingParam,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAssociatedNotification {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub associated_users: Vec<ResponseUser>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum NotificationPayload {
    AssetManagement(AssetManagementNotification),
    UserManagement(UserManagementNotification),
    AssetCount(AssetCountNotification),
    UserAssociated(UserAssociatedNotification),
    Test,
    /// Types without a typed payload here (subscriptions, UNLIMITED_ASSET, unknown): raw.
    Other(Value),
}

/// Apple's notification envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub notification_id: String,
    pub notification_type: NotificationType,
    /// The type string as sent (useful when `notification_type` is `Unknown`).
    pub notification_type_raw: String,
    pub u_id: String,
    pub notification: NotificationPayload,
}

impl Notification {
    /// The eventId this notification reports on, for ASSET_MANAGEMENT / USER_MANAGEMENT.
    pub fn event_id(&self) -> Option<&str> {
        match &self.notification {
            NotificationPayload::AssetManagement(n) => Some(&n.event_id),
            NotificationPayload::UserManagement(n) => Some(&n.event_id),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotificationParseError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not a JSON object")]
    NotObject,
    #[error("field {path}: {detail}")]
    Field { path: String, detail: String },
}

fn field_err(path: impl Into<String>, detail: impl Into<String>) -> NotificationParseError {
    NotificationParseError::Field {
        path: path.into(),
        detail: detail.into(),
    }
}

fn required_str(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    allow_number: bool,
) -> Result<String, NotificationParseError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(field_err(key, "missing")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(field_err(key, "empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) if allow_number => Ok(n.to_string()),
        Some(other) => Err(field_err(
            key,
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn typed_payload<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, NotificationParseError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            "notification".to_string()
        } else {
            format!("notification.{inner}")
        };
        field_err(path, e.inner().to_string())
    })
}

/// Parses a webhook body. The error names the offending field path
/// (e.g. `notification.assignments[1].adamId`).
pub fn parse_notification(body: &[u8]) -> Result<Notification, NotificationParseError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| NotificationParseError::NotJson(e.to_string()))?;
    let obj = v.as_object().ok_or(NotificationParseError::NotObject)?;
    let notification_id = required_str(obj, "notificationId", false)?;
    let notification_type_raw = required_str(obj, "notificationType", false)?;
    let u_id = required_str(obj, "uId", true)?;
    let notification_type =
        NotificationType::deserialize(Value::String(notification_type_raw.clone()))
            .unwrap_or(NotificationType::Unknown);
    // A test needs no payload; refusing one without it would fail Apple's set-up check.
    if notification_type == NotificationType::TestNotification {
        return Ok(Notification {
            notification_id,
            notification_type,
            notification_type_raw,
            u_id,
            notification: NotificationPayload::Test,
        });
    }
    let typed = matches!(
        notification_type,
        NotificationType::AssetManagement
            | NotificationType::UserManagement
            | NotificationType::AssetCount
            | NotificationType::UserAssociated
    );
    if !typed {
        // Types that drive nothing here are kept whatever their payload looks like: a 400
        // would only make Apple retry them.
        return Ok(Notification {
            notification_id,
            notification_type,
            notification_type_raw,
            u_id,
            notification: NotificationPayload::Other(
                obj.get("notification").cloned().unwrap_or(Value::Null),
            ),
        });
    }
    let payload = match obj.get("notification") {
        Some(p @ Value::Object(_)) => p,
        None | Some(Value::Null) => return Err(field_err("notification", "missing")),
        Some(other) => {
            return Err(field_err(
                "notification",
                format!("expected an object, got {}", kind_of(other)),
            ))
        }
    };
    let notification = match notification_type {
        NotificationType::AssetManagement => {
            NotificationPayload::AssetManagement(typed_payload(payload)?)
        }
        NotificationType::UserManagement => {
            NotificationPayload::UserManagement(typed_payload(payload)?)
        }
        NotificationType::AssetCount => NotificationPayload::AssetCount(typed_payload(payload)?),
        NotificationType::UserAssociated => {
            NotificationPayload::UserAssociated(typed_payload(payload)?)
        }
        NotificationType::TestNotification => NotificationPayload::Test,
        _ => NotificationPayload::Other(payload.clone()),
    };
    Ok(Notification {
        notification_id,
        notification_type,
        notification_type_raw,
        u_id,
        notification,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_notification_needs_no_payload() {
        for body in [
            r#"{"notificationId":"t1","notificationType":"TEST_NOTIFICATION","uId":"1"}"#,
            r#"{"notificationId":"t1","notificationType":"TEST_NOTIFICATION","uId":2049025000431439,"notification":{}}"#,
        ] {
            let n = parse_notification(body.as_bytes()).unwrap();
            assert_eq!(n.notification, NotificationPayload::Test);
        }
    }
    use serde_json::json;

    #[test]
    fn dates() {
        let t = apple_date::parse("2030-11-08T22:33:22+0000").unwrap();
        assert_eq!(apple_date::format(t), "2030-11-08T22:33:22+0000");
        assert_eq!(apple_date::parse("2030-11-08T22:33:22Z"), Some(t));
        assert_eq!(apple_date::parse("2030-11-08T23:33:22+01:00"), Some(t));
        assert_eq!(apple_date::parse("yesterday"), None);
    }

    #[test]
    fn kinds_round_trip() {
        for k in RequestKind::ALL {
            assert_eq!(k.as_str().parse::<RequestKind>(), Ok(k));
        }
        assert!("associate-users".parse::<RequestKind>().is_err());
        assert_eq!(RequestKind::RetireUsers.event_type(), EventType::Retire);
    }

    #[test]
    fn counting() {
        let body = json!({"assets":[{"adamId":"1","pricingParam":"STDQ"},{"adamId":"2","pricingParam":"STDQ"}],
            "clientUserIds":["u1","u2","u2"],"serialNumbers":["s1"]});
        assert_eq!(count_entities(RequestKind::Associate, &body), Some(6));
        assert_eq!(count_entities(RequestKind::Revoke, &body), None);
        let users = json!({"users":[{"clientUserId":"a"},{"clientUserId":"b"}]});
        assert_eq!(count_entities(RequestKind::CreateUsers, &users), Some(2));
        assert_eq!(
            count_entities(RequestKind::CreateUsers, &json!({"x":1})),
            None
        );
    }

    fn limits(pairs: &[(&str, i64)]) -> Limits {
        Limits(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        )
    }

    #[test]
    fn split_assets_by_limits_with_dedupe() {
        let assets: Vec<Value> = (0..5)
            .map(|i| json!({"adamId": i.to_string(), "pricingParam": "STDQ"}))
            .collect();
        let users: Vec<String> = (0..7)
            .map(|i| format!("u{i}"))
            .chain(["u0".into()])
            .collect();
        let body = json!({"assets": assets, "clientUserIds": users, "serialNumbers": ["s1"]});
        let l = limits(&[
            ("maxAssets", 2),
            ("maxClientUserIds", 3),
            ("maxSerialNumbers", 10),
        ]);
        let parts = split_request(RequestKind::Associate, &body, &l).unwrap();
        // 3 asset chunks × 3 user chunks (7 unique users / 3).
        assert_eq!(parts.len(), 9);
        let total: u32 = parts
            .iter()
            .map(|p| count_entities(RequestKind::Associate, p).unwrap())
            .sum();
        assert_eq!(total, 5 * (7 + 1));
        for p in &parts {
            let r: ManageAssetsRequest = serde_json::from_value(p.clone()).unwrap();
            assert!(r.assets.len() <= 2 && r.client_user_ids.len() <= 3);
        }
    }

    #[test]
    fn split_errors_name_the_value() {
        let l = Limits::default();
        let e = split_request(
            RequestKind::Associate,
            &json!({"assets":[{"adamId":"1"}],"clientUserIds":["a",""]}),
            &l,
        )
        .unwrap_err();
        assert!(e.to_string().contains("clientUserIds[1]"), "{e}");
        let e = split_request(
            RequestKind::Associate,
            &json!({"assets":[{"adamId":true}]}),
            &l,
        )
        .unwrap_err();
        assert!(e.to_string().contains("assets[0].adamId"), "{e}");
        let e = split_request(RequestKind::Revoke, &json!({}), &l).unwrap_err();
        assert!(matches!(e, SplitError::Empty { .. }));
        let e = split_request(
            RequestKind::UpdateUsers,
            &json!({"users":[{"clientUserId":"a","email":"x@y"},{"clientUserId":"a","email":"z@y"}]}),
            &l,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"a\""), "{e}");
    }

    #[test]
    fn split_users_and_revoke() {
        let users: Vec<Value> = (0..250)
            .map(|i| json!({"clientUserId": format!("u{i}")}))
            .collect();
        let mut with_dup = users.clone();
        with_dup.push(json!({"clientUserId": "u0"}));
        let parts = split_request(
            RequestKind::CreateUsers,
            &json!({"users": with_dup}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2]["users"].as_array().unwrap().len(), 50);
        let serials: Vec<String> = (0..150).map(|i| format!("s{i}")).collect();
        let parts = split_request(
            RequestKind::Revoke,
            &json!({"serialNumbers": serials, "clientUserIds": ["u1"]}),
            &limits(&[("maxRevokeSerialNumbers", 100)]),
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0]["clientUserIds"], json!(["u1"]));
        assert!(parts[1].get("clientUserIds").is_none());
    }

    #[test]
    fn notification_errors_have_paths() {
        let e = parse_notification(b"nope").unwrap_err();
        assert!(matches!(e, NotificationParseError::NotJson(_)));
        let e = parse_notification(b"[]").unwrap_err();
        assert_eq!(e, NotificationParseError::NotObject);
        let e = parse_notification(
            br#"{"notificationType":"TEST_NOTIFICATION","uId":"1","notification":{}}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "field notificationId: missing");
        let e = parse_notification(
            br#"{"notificationId":"n","notificationType":"ASSET_MANAGEMENT","uId":"1",
                "notification":{"eventId":"e","result":"SUCCESS","type":"ASSOCIATE",
                "assignments":[{"adamId":"1","serialNumber":"s"},{"serialNumber":"s"}]}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("notification.assignments[1]"), "{e}");
        let e = parse_notification(
            br#"{"notificationId":"n","notificationType":"USER_MANAGEMENT","uId":"1","notification":{"result":"SUCCESS","type":"CREATE"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("eventId"), "{e}");
    }
}
