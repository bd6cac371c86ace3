//! Objects shared by several endpoints, and Apple's `ErrorResponse`.

use serde::{Deserialize, Serialize};

use super::lenient::{null_as_empty, string_or_number};

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
    #[serde(default, deserialize_with = "null_as_empty")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assets: Vec<AssetRef>,
    #[serde(default, deserialize_with = "null_as_empty")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_user_ids: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
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
