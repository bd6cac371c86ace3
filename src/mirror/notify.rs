//! What a notification does to the mirror (docs/architecture.md, "The mirror"), decided here
//! and written by the store: with the notification's own commit
//! ([`crate::store::Store::record_notification`]), and again after a sync that replaced the
//! mirror with pages read before the notification arrived (the replay of
//! [`crate::store::Store::commit_sync`]). Pure: every backend applies the same [`Effect`]s.

use crate::apple::model::{
    AssetManagementType, Assignment, Notification, NotificationPayload, NotificationResult,
    ResponseUser,
};

/// One change of the mirror a notification makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect<'a> {
    /// Assignments added (`associate`) or removed; the assets' counts follow.
    Assignments {
        associate: bool,
        assignments: &'a [Assignment],
    },
    /// Users created, updated or associated.
    Users(&'a [ResponseUser]),
    /// An asset's total count moved by `delta`.
    AssetCount {
        adam_id: &'a str,
        pricing_param: &'a str,
        delta: i64,
    },
}

/// What `n` does to the mirror, if anything (failed results and unknown kinds do nothing).
pub fn effect(n: &Notification) -> Option<Effect<'_>> {
    match &n.notification {
        NotificationPayload::AssetManagement(p)
            if p.result == NotificationResult::Success
                && p.kind != AssetManagementType::Unknown =>
        {
            Some(Effect::Assignments {
                associate: p.kind == AssetManagementType::Associate,
                assignments: &p.assignments,
            })
        }
        NotificationPayload::UserManagement(p) if p.result == NotificationResult::Success => {
            Some(Effect::Users(&p.users))
        }
        NotificationPayload::UserAssociated(p) => Some(Effect::Users(&p.associated_users)),
        NotificationPayload::AssetCount(p) => Some(Effect::AssetCount {
            adam_id: &p.adam_id,
            pricing_param: p.pricing_param.as_str(),
            delta: p.count_delta,
        }),
        _ => None,
    }
}

/// The assets (adamId, pricingParam) whose assignments `effect` changes: a replay recounts
/// each of them once at its end, since the sync may have replaced their counts with numbers
/// read before the change.
pub fn touched_assets(effect: &Effect<'_>) -> Vec<(String, String)> {
    match effect {
        Effect::Assignments { assignments, .. } => assignments
            .iter()
            .map(|a| (a.adam_id.clone(), a.pricing_param.as_str().to_string()))
            .collect(),
        _ => Vec::new(),
    }
}
