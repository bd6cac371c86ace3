//! Apple dates (`2030-11-08T22:33:22+0000`; RFC 3339 also accepted) as `Option<Timestamp>`.
//! Anything unparseable becomes `None`. Use as `#[serde(with = "apple_date")]`.

use serde::{Deserialize, Deserializer, Serializer};
use serde_json::Value;

use crate::time::Timestamp;

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
