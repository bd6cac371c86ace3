//! The changes feed (design §5, §10): events, token and licence items in one `seq` order.

use super::sqlite::queries as q;
use super::views::ChangeView;
use super::{Store, StoreError};
use crate::time::Timestamp;

/// A token's health as the feed reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenStatus {
    /// healthy, expired, revoked, unauthorized, mdm_conflict, expiring_soon or unhealthy.
    pub health: String,
    pub reason: Option<String>,
    /// With `expiring_soon`: whole days left.
    pub days_left: Option<i64>,
    /// With `expiring_soon`: the warning threshold crossed (30, 7 or 1 days); a new item is
    /// written once per threshold, not every day.
    pub threshold: Option<u32>,
}

impl TokenStatus {
    pub fn new(health: &str, reason: Option<String>) -> TokenStatus {
        TokenStatus {
            health: health.to_string(),
            reason,
            days_left: None,
            threshold: None,
        }
    }

    /// The state a feed item records: the health, with the threshold when there is one.
    pub fn state(&self) -> String {
        match self.threshold {
            Some(t) => format!("{}:{t}", self.health),
            None => self.health.clone(),
        }
    }
}

/// An asset's counts before and after a change of the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenceCounts<'a> {
    pub adam_id: &'a str,
    pub pricing_param: &'a str,
    pub product_type: Option<&'a str>,
    /// `None`: the asset was not mirrored before.
    pub before: Option<i64>,
    pub available: i64,
    pub assigned: i64,
    pub total: i64,
}

/// The licence transition of a change of counts, if any: `available` when the available
/// count went from 0 to more, `exhausted` when it reached 0. An asset seen for the first
/// time is not a transition (nothing was known before).
pub fn licence_transition(before: Option<i64>, after: i64) -> Option<&'static str> {
    match before? {
        0 if after > 0 => Some("available"),
        b if b > 0 && after <= 0 => Some("exhausted"),
        _ => None,
    }
}

impl Store {
    /// At most `limit` changes with `seq > after`, in `seq` order.
    pub async fn changes_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeView>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(move |c| q::changes_after(c, after, limit)).await,
        }
    }

    /// At most `limit` changes with `after < seq <= last`, in `seq` order.
    pub async fn changes_between(
        &self,
        after: i64,
        last: i64,
        limit: u32,
    ) -> Result<Vec<ChangeView>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(move |c| q::changes_between(c, after, last, limit))
                    .await
            }
        }
    }

    /// Writes a `token` feed item when the token's status differs from its last item;
    /// returns its seq.
    pub async fn record_token_status(
        &self,
        token: &str,
        status: TokenStatus,
        now: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let token = token.to_string();
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::record_token_status(c, &token, &status, now))
                    .await
            }
        }
    }
}
