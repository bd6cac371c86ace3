//! `.vpptoken` decoding: the file is base64 of a JSON object `{token, expDate, orgName}`.

use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::secret::Secret;
use crate::time::Timestamp;

/// A decoded `.vpptoken` (docs/apple-api.md#token-file).
#[derive(Debug, Clone, PartialEq)]
pub struct ContentToken {
    /// The whole file content without whitespace: this is what is sent as `Bearer`.
    pub raw: Secret,
    pub org_name: String,
    pub exp_date: Timestamp,
    /// The inner `token` field. Never sent (Apple answers 9622); kept only for completeness.
    pub inner_token: Secret,
}

impl ContentToken {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.exp_date <= now
    }
}

/// Why a content token could not be decoded. The messages never include the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentTokenError {
    #[error("the file is empty")]
    Empty,
    #[error("not valid base64")]
    NotBase64,
    #[error("the decoded content is not JSON")]
    NotJson,
    #[error("the decoded JSON is not an object")]
    NotObject,
    #[error("the decoded JSON has no string field \"{0}\"")]
    MissingField(&'static str),
    #[error("the field \"{0}\" is empty")]
    EmptyField(&'static str),
    #[error("\"expDate\" is not a date like \"2030-11-08T22:33:22+0000\"")]
    BadExpDate,
}

/// Decodes a `.vpptoken` file's content: base64 (standard alphabet, padding optional,
/// whitespace ignored) of `{"token", "expDate", "orgName"}`.
pub fn parse_content_token(text: &str) -> Result<ContentToken, ContentTokenError> {
    // Whitespace can only come from editors or line wrapping; it must not reach the header.
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(ContentTokenError::Empty);
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = engine
        .decode(compact.as_bytes())
        .map_err(|_| ContentTokenError::NotBase64)?;
    let value: serde_json::Value =
        serde_json::from_slice(&decoded).map_err(|_| ContentTokenError::NotJson)?;
    let obj = value.as_object().ok_or(ContentTokenError::NotObject)?;
    let field = |name: &'static str| -> Result<&str, ContentTokenError> {
        let s = obj
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or(ContentTokenError::MissingField(name))?;
        if s.trim().is_empty() {
            return Err(ContentTokenError::EmptyField(name));
        }
        Ok(s)
    };
    let inner = field("token")?;
    let exp = field("expDate")?;
    let org = field("orgName")?;
    let exp_date = parse_apple_date(exp).ok_or(ContentTokenError::BadExpDate)?;
    Ok(ContentToken {
        raw: Secret::new(compact),
        org_name: org.to_string(),
        exp_date,
        inner_token: Secret::new(inner),
    })
}

/// Apple's dates (`2030-11-08T22:33:22+0000`), or RFC 3339.
pub fn parse_apple_date(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    for fmt in ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(d) = DateTime::parse_from_str(s, fmt) {
            return Some(Timestamp::from_datetime(d.with_timezone(&Utc)));
        }
    }
    Timestamp::parse_rfc3339(s)
}
