//! Answers to writes (an `eventId`) and to Event Status polls.

use serde::{Deserialize, Serialize};

use super::lenient::{lenient_i64, opt_string_or_number, LenientVec};
use super::{apple_date, ErrorResponse, EventStatus, MdmInfo};
use crate::core::model::EventType;
use crate::time::Timestamp;

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
    pub failures: LenientVec<ErrorResponse>,
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
