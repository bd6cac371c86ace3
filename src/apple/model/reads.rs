//! The paginated reads: assets, assignments and users, and their shared page fields.

use serde::{Deserialize, Serialize};

use super::lenient::{
    lenient_count, lenient_i64, null_as_empty, opt_string_or_number, string_or_number, PageRecords,
};
use super::{apple_date, MdmInfo, Platform, PricingParam, ProductType, UserStatus};
use crate::time::Timestamp;

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
    pub assets: PageRecords<ResponseAsset>,
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

pub(super) fn default_pricing_enum() -> PricingParam {
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
    pub assignments: PageRecords<Assignment>,
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
    pub users: PageRecords<ResponseUser>,
    #[serde(flatten)]
    pub page: PageInfo,
}
