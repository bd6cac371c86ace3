//! Lenient decoding helpers: Apple may evolve a field's shape, and one odd value should not
//! fail a whole response.

use std::ops::{Deref, DerefMut};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A list that decodes leniently: absent or `null` is empty, and an entry that does not decode
/// is skipped rather than failing the response (one malformed record must not fail a whole
/// page, and a whole sync). Serialises as a plain list; reads like a slice.
///
/// No `#[serde(default)]` is needed on the field: serde decodes a missing field as `null`
/// for a type that asks for an option, which this one does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LenientVec<T>(pub Vec<T>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for LenientVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
        Ok(LenientVec(
            v.into_iter()
                .filter_map(|x| serde_json::from_value(x).ok())
                .collect(),
        ))
    }
}

impl<T: Serialize> Serialize for LenientVec<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<T> Default for LenientVec<T> {
    fn default() -> Self {
        LenientVec(Vec::new())
    }
}

impl<T> Deref for LenientVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> DerefMut for LenientVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T> From<Vec<T>> for LenientVec<T> {
    fn from(v: Vec<T>) -> Self {
        LenientVec(v)
    }
}

impl<T> From<LenientVec<T>> for Vec<T> {
    fn from(v: LenientVec<T>) -> Self {
        v.0
    }
}

impl<T> FromIterator<T> for LenientVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        LenientVec(it.into_iter().collect())
    }
}

impl<T> IntoIterator for LenientVec<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a LenientVec<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Undecodable records kept as samples per page, at most (the count covers them all).
pub const UNDECODABLE_SAMPLES: usize = 10;

/// A record of a page that did not decode: where it was, which record it names (its ids, if
/// it carries any), and why. Apple's data, never a secret of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// The page's index, when the pager knows it (set by the pager, `None` when decoded).
    pub page: Option<u32>,
    /// Position of the record in the page's list, 0-based.
    pub index: usize,
    /// `adamId=…`, `clientUserId=…`, `serialNumber=…` as present in the record.
    pub id: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record {}", self.index)?;
        if let Some(p) = self.page {
            write!(f, " of page {p}")?;
        }
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The records of one page of a paginated read. Like [`LenientVec`], a record that does not
/// decode does not fail the page, but unlike it nothing is dropped silently: every such
/// record is counted (and the first [`UNDECODABLE_SAMPLES`] described), because a sync that
/// could not read a record must not conclude that the record is gone. Reads like a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRecords<T> {
    pub records: Vec<T>,
    /// Records that did not decode, in all.
    pub undecodable: u64,
    /// The first of them.
    pub samples: Vec<Undecodable>,
}

/// The ids a record carries, for naming it when it does not decode.
fn record_id(v: &Value) -> Option<String> {
    let obj = v.as_object()?;
    let parts: Vec<String> = ["adamId", "clientUserId", "serialNumber"]
        .iter()
        .filter_map(|k| {
            let v = match obj.get(*k)? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(format!("{k}={}", truncate_chars(&v, 64)))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for PageRecords<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
        let mut out = PageRecords::default();
        for (index, x) in v.into_iter().enumerate() {
            match serde_path_to_error::deserialize::<_, T>(&x) {
                Ok(r) => out.records.push(r),
                Err(e) => {
                    out.undecodable += 1;
                    if out.samples.len() < UNDECODABLE_SAMPLES {
                        let at = e.path().to_string();
                        let detail = if at == "." {
                            e.inner().to_string()
                        } else {
                            format!("at {at}: {}", e.inner())
                        };
                        out.samples.push(Undecodable {
                            page: None,
                            index,
                            id: record_id(&x),
                            detail: truncate_chars(&detail, 200),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

impl<T: Serialize> Serialize for PageRecords<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.records.serialize(s)
    }
}

impl<T> Default for PageRecords<T> {
    fn default() -> Self {
        PageRecords {
            records: Vec::new(),
            undecodable: 0,
            samples: Vec::new(),
        }
    }
}

impl<T> Deref for PageRecords<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.records
    }
}

impl<T> From<Vec<T>> for PageRecords<T> {
    fn from(records: Vec<T>) -> Self {
        PageRecords {
            records,
            ..PageRecords::default()
        }
    }
}

/// `Option<Secret>` on the wire: the value is exposed only when serialising a request to Apple.
pub(super) mod secret_opt {
    use super::*;
    use crate::secret::Secret;

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
pub(super) fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or number, got {}",
            kind_of(&other)
        ))),
    }
}

pub(super) fn opt_string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Integers that may arrive as numbers or numeric strings; anything else is `None`.
pub(super) fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

pub(super) fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    lenient_i64(d).map(|v| v.unwrap_or(0))
}

/// A list that is `[]` when absent or `null`. Unlike [`LenientVec`], a bad entry is an error:
/// request bodies and notifications must name it rather than silently drop an id.
pub(super) fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
