//! Write request bodies, counting the entities Apple reports on, and splitting a body into
//! bodies that respect Service Config limits: lazily ([`Split`]), with the daemon's own caps
//! per submission ([`MAX_SUBMIT_REQUESTS`], [`MAX_SUBMIT_ENTITIES`]) checked before any
//! request is built.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lenient::null_as_empty;
use super::{AssetRef, Limits};
use crate::core::model::EventType;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManageAssetsRequest {
    pub assets: Vec<AssetRef>,
    #[serde(default, deserialize_with = "null_as_empty")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_user_ids: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
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
    #[serde(default, deserialize_with = "null_as_empty")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_user_ids: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
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

/// Most Apple requests one submission through the daemon may split into (documented in
/// README's API section): each spends Apple's rate budget and, for associations, licences, so
/// a caller's mistake must not become thousands of them.
pub const MAX_SUBMIT_REQUESTS: usize = 100;
/// Most entities one submission may name (associate/disassociate: assets × (serial numbers +
/// users); revoke: serial numbers + users; user requests: users).
pub const MAX_SUBMIT_ENTITIES: u64 = 100_000;

/// A submission over a cap of the daemon's (not Apple's): refused before any request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {kind} request would {what} {value}, over the limit of {limit} per submission; split it into smaller submissions")]
pub struct OverCap {
    pub kind: RequestKind,
    /// "make Apple requests" or "name entities".
    pub what: &'static str,
    pub limit: u64,
    pub value: u64,
}

/// A write body split within Service Config limits, built lazily: the deduplicated ids are
/// held once, and each Apple request is cut from them only when asked for (no list of copies
/// up front), so how many requests and entities a body makes is known before any is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    kind: RequestKind,
    body: Parts,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Parts {
    /// Associate/disassociate: request (a, p) carries asset chunk a with id chunk p of each list.
    Assets {
        assets: Vec<AssetRef>,
        users: Vec<String>,
        serials: Vec<String>,
        max_assets: usize,
        max_users: usize,
        max_serials: usize,
    },
    Revoke {
        users: Vec<String>,
        serials: Vec<String>,
        max_users: usize,
        max_serials: usize,
    },
    Users {
        users: Vec<RequestUser>,
        max: usize,
    },
}

fn chunk_count(len: usize, max: usize) -> usize {
    len.div_ceil(max)
}

fn chunk<T: Clone>(v: &[T], max: usize, i: usize) -> Vec<T> {
    v.chunks(max).nth(i).map(<[T]>::to_vec).unwrap_or_default()
}

fn limit(v: Option<u32>, default: u32) -> usize {
    v.unwrap_or(default).max(1) as usize
}

impl Split {
    pub fn kind(&self) -> RequestKind {
        self.kind
    }

    /// How many Apple requests the body makes.
    pub fn len(&self) -> usize {
        match &self.body {
            Parts::Assets {
                assets,
                users,
                serials,
                max_assets,
                max_users,
                max_serials,
            } => chunk_count(assets.len(), *max_assets).saturating_mul(
                chunk_count(users.len(), *max_users).max(chunk_count(serials.len(), *max_serials)),
            ),
            Parts::Revoke {
                users,
                serials,
                max_users,
                max_serials,
            } => chunk_count(users.len(), *max_users).max(chunk_count(serials.len(), *max_serials)),
            Parts::Users { users, max } => chunk_count(users.len(), *max),
        }
    }

    /// Never true for a split that [`split_request`] returned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entities the body names (see [`MAX_SUBMIT_ENTITIES`]).
    pub fn entities(&self) -> u64 {
        match &self.body {
            Parts::Assets {
                assets,
                users,
                serials,
                ..
            } => (assets.len() as u64).saturating_mul((users.len() + serials.len()) as u64),
            Parts::Revoke { users, serials, .. } => (users.len() + serials.len()) as u64,
            Parts::Users { users, .. } => users.len() as u64,
        }
    }

    /// Refuses a body over [`MAX_SUBMIT_REQUESTS`] or [`MAX_SUBMIT_ENTITIES`].
    pub fn within_caps(&self) -> Result<(), OverCap> {
        let requests = self.len() as u64;
        if requests > MAX_SUBMIT_REQUESTS as u64 {
            return Err(OverCap {
                kind: self.kind,
                what: "make Apple requests",
                limit: MAX_SUBMIT_REQUESTS as u64,
                value: requests,
            });
        }
        let entities = self.entities();
        if entities > MAX_SUBMIT_ENTITIES {
            return Err(OverCap {
                kind: self.kind,
                what: "name entities",
                limit: MAX_SUBMIT_ENTITIES,
                value: entities,
            });
        }
        Ok(())
    }

    /// The body of Apple request `i` (0-based), built now.
    pub fn get(&self, i: usize) -> Option<Value> {
        if i >= self.len() {
            return None;
        }
        Some(match &self.body {
            Parts::Assets {
                assets,
                users,
                serials,
                max_assets,
                max_users,
                max_serials,
            } => {
                let pairs = chunk_count(users.len(), *max_users)
                    .max(chunk_count(serials.len(), *max_serials));
                let (a, p) = (i / pairs, i % pairs);
                to_value(&ManageAssetsRequest {
                    assets: chunk(assets, *max_assets, a),
                    client_user_ids: chunk(users, *max_users, p),
                    serial_numbers: chunk(serials, *max_serials, p),
                })
            }
            Parts::Revoke {
                users,
                serials,
                max_users,
                max_serials,
            } => to_value(&RevokeAssetsRequest {
                client_user_ids: chunk(users, *max_users, i),
                serial_numbers: chunk(serials, *max_serials, i),
            }),
            Parts::Users { users, max } => to_value(&ManageUsersRequest {
                users: chunk(users, *max, i),
            }),
        })
    }

    /// The Apple requests in order, each built when reached.
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl<'a> IntoIterator for &'a Split {
    type Item = Value;
    type IntoIter = Box<dyn Iterator<Item = Value> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Splits a write body into bodies that each respect Service Config `limits`, after removing
/// duplicate ids (Apple rejects duplicates with 9703–9705 / 9715). Errors name the offending
/// field or value. The bodies are built lazily ([`Split::iter`]); check [`Split::within_caps`]
/// before submitting them.
pub fn split_request(
    kind: RequestKind,
    body: &Value,
    limits: &Limits,
) -> Result<Split, SplitError> {
    let body = match kind {
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
            Parts::Assets {
                assets,
                users,
                serials,
                max_assets: limit(limits.max_assets(), DEFAULT_MAX_ASSETS),
                max_users: limit(limits.max_client_user_ids(), DEFAULT_MAX_IDS),
                max_serials: limit(limits.max_serial_numbers(), DEFAULT_MAX_IDS),
            }
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
            Parts::Revoke {
                users,
                serials,
                max_users: limit(limits.max_revoke_client_user_ids(), DEFAULT_MAX_REVOKE_IDS),
                max_serials: limit(limits.max_revoke_serial_numbers(), DEFAULT_MAX_REVOKE_IDS),
            }
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
            Parts::Users {
                users,
                max: limit(limits.max_users(), DEFAULT_MAX_USERS),
            }
        }
    };
    Ok(Split { kind, body })
}

/// Serialises the request structs; cannot fail for them (strings and lists only).
fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
