//! Notifications: what the webhook received, stored (and applied to the mirror) with one
//! commit before it answers, and the unparseable bodies it keeps aside.

use super::postgres::{notify as pn, queries as pq};
use super::sqlite::{notify, queries as q};
use super::{Handoff, Store, StoreError};
use crate::apple::model::Notification;
use crate::core::Failure;
use crate::time::Timestamp;

/// A received notification, as stored.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub notification_id: String,
    pub token: String,
    pub notification_type: String,
    pub event_id: Option<String>,
    pub result: Option<String>,
    pub entities: Option<u32>,
    pub error: Option<Failure>,
    pub received_at: Timestamp,
    pub body: String,
}

impl Store {
    /// Stores a received notification and, when it is new, applies its data to the mirror of
    /// `token`, in one transaction; answers once committed. `false`: its `notificationId` was
    /// already stored (a duplicate, nothing written).
    pub async fn record_notification(
        &self,
        row: NewNotification,
        note: Notification,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.record_notification_for(row, note, now, Vec::new())
            .await
    }

    /// [`Store::record_notification`], leaving `handoffs` (what the notification asks of the
    /// token's holder) in the same transaction when this instance does not hold the token's
    /// lease (several instances on PostgreSQL; see `store::handoffs`).
    pub async fn record_notification_for(
        &self,
        row: NewNotification,
        note: Notification,
        now: Timestamp,
        handoffs: Vec<Handoff>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| notify::record_notification(c, &row, &note, now))
                    .await
            }
            Store::Postgres(p) => {
                let me = p.instance().map(str::to_string);
                p.write(move |tx| {
                    Box::pin(async move {
                        let new = pq::insert_notification(tx, &row).await?;
                        if new {
                            pn::apply_notification(tx, &row.token, &note, now).await?;
                            if let (Some(me), false) = (me, handoffs.is_empty()) {
                                if !pq::handoffs::holds(tx, &me, &row.token).await? {
                                    pq::handoffs::hand_off(tx, &row.token, &handoffs, now).await?;
                                }
                            }
                        }
                        Ok(new)
                    })
                })
                .await
            }
        }
    }

    /// Keeps an unparseable body from an authenticated sender, dropping the oldest beyond
    /// `cap`.
    pub async fn quarantine(
        &self,
        token: &str,
        at: Timestamp,
        reason: &str,
        body: Vec<u8>,
        cap: u32,
    ) -> Result<(), StoreError> {
        let (token, reason) = (token.to_string(), reason.to_string());
        match self {
            Store::Sqlite(s) => {
                s.write(move |c| q::quarantine(c, &token, at, &reason, &body, cap))
                    .await
            }
            Store::Postgres(p) => {
                p.write(move |tx| {
                    Box::pin(
                        async move { pq::quarantine(tx, &token, at, &reason, &body, cap).await },
                    )
                })
                .await
            }
        }
    }
}
