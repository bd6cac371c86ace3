//! Service Config (limits, URLs, error codes) and Client Config (notification settings).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lenient::{null_as_empty, opt_string_or_number, secret_opt, LenientVec};
use super::{apple_date, MdmInfo};
use crate::secret::Secret;
use crate::time::Timestamp;

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
    pub error_codes: LenientVec<ResponseErrorCode>,
    #[serde(default)]
    pub limits: Limits,
    /// Raw strings: this list is informational and may carry types this build does not know.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub notification_types: Vec<String>,
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
}

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
