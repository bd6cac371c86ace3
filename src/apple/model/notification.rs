//! Webhook notification bodies: the envelope, the typed payloads, and a parser whose errors
//! name the offending field path.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lenient::{kind_of, lenient_count, null_as_empty, string_or_number};
use super::{
    default_pricing_enum, AssetManagementType, Assignment, ErrorResponse, NotificationResult,
    NotificationType, PricingParam, ResponseUser, UserManagementType,
};

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
