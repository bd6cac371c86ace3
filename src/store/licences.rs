//! The licence report (README "Using it", `report licences`): per asset of a token, the counts
//! from the mirror, and the mirrored assignments split by origin: created through a tracked
//! ASSOCIATE event (its stored request body names the asset and the serial number or
//! clientUserId) or not ("unknown origin": assigned by another tool or a person, candidates
//! for reclaiming). Read from the store only, never from Apple. The backends read the rows;
//! [`build_report`] makes the report.
//!
//! Events pruned by retention no longer vouch for their assignments, which then show as
//! unknown origin.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::postgres::queries as pq;
use super::sqlite::queries as q;
use super::{Store, StoreError};
use crate::apple::model::ManageAssetsRequest;

/// One assignment, by serial number (device) or clientUserId (user).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_user_id: Option<String>,
}

/// One asset's line of the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssetLicences {
    pub token: String,
    pub adam_id: String,
    pub pricing_param: String,
    pub product_type: Option<String>,
    /// From the mirrored asset (None when the asset itself is not mirrored yet).
    pub total: Option<i64>,
    pub assigned: Option<i64>,
    pub available: Option<i64>,
    /// Mirrored assignments that a tracked ASSOCIATE event requested.
    pub tracked: u64,
    /// Mirrored assignments no tracked event created.
    pub unknown_origin: u64,
    pub unknown_origin_assignments: Vec<AssignmentRef>,
}

/// A mirrored assignment row: (adamId, pricingParam, clientUserId, serialNumber), '' = none.
pub type MirrorAssignment = (String, String, String, String);

/// What tracked ASSOCIATE events requested: (adamId, "u:" clientUserId | "s:" serial).
pub fn requested_by_events(bodies: &[String]) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for body in bodies {
        // A body that is not a ManageAssetsRequest vouches for nothing.
        let Ok(req) = serde_json::from_str::<ManageAssetsRequest>(body) else {
            continue;
        };
        for a in &req.assets {
            for u in &req.client_user_ids {
                out.insert((a.adam_id.clone(), format!("u:{u}")));
            }
            for s in &req.serial_numbers {
                out.insert((a.adam_id.clone(), format!("s:{s}")));
            }
        }
    }
    out
}

/// The report of one token from its mirrored assets and assignments and the stored request
/// bodies of its tracked ASSOCIATE events. Pure: no IO.
pub fn build_report(
    token: &str,
    assets: Vec<AssetLicences>,
    assignments: &[MirrorAssignment],
    requested: &HashSet<(String, String)>,
) -> Vec<AssetLicences> {
    let mut by_key: BTreeMap<(String, String), AssetLicences> = assets
        .into_iter()
        .map(|a| ((a.adam_id.clone(), a.pricing_param.clone()), a))
        .collect();
    for (adam, pricing, user, serial) in assignments {
        let line = by_key
            .entry((adam.clone(), pricing.clone()))
            .or_insert_with(|| AssetLicences {
                token: token.to_string(),
                adam_id: adam.clone(),
                pricing_param: pricing.clone(),
                product_type: None,
                total: None,
                assigned: None,
                available: None,
                tracked: 0,
                unknown_origin: 0,
                unknown_origin_assignments: vec![],
            });
        let key = if serial.is_empty() {
            format!("u:{user}")
        } else {
            format!("s:{serial}")
        };
        if requested.contains(&(adam.clone(), key)) {
            line.tracked += 1;
        } else {
            line.unknown_origin += 1;
            line.unknown_origin_assignments.push(AssignmentRef {
                serial_number: (!serial.is_empty()).then(|| serial.clone()),
                client_user_id: (!user.is_empty()).then(|| user.clone()),
            });
        }
    }
    let mut out: Vec<AssetLicences> = by_key.into_values().collect();
    for l in &mut out {
        l.unknown_origin_assignments.sort();
    }
    out
}

impl Store {
    /// The report of `token`, or of every token in the mirror.
    pub async fn licence_report(
        &self,
        token: Option<String>,
    ) -> Result<Vec<AssetLicences>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(move |c| q::licence_report(c, token.as_deref()))
                    .await
            }
            Store::Postgres(p) => {
                p.read(move |tx| {
                    Box::pin(async move { pq::licence_report(tx, token.as_deref()).await })
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(adam: &str, total: i64, assigned: i64) -> AssetLicences {
        AssetLicences {
            token: "acme".into(),
            adam_id: adam.into(),
            pricing_param: "STDQ".into(),
            product_type: Some("App".into()),
            total: Some(total),
            assigned: Some(assigned),
            available: Some(total - assigned),
            tracked: 0,
            unknown_origin: 0,
            unknown_origin_assignments: vec![],
        }
    }

    fn row(adam: &str, user: &str, serial: &str) -> MirrorAssignment {
        (adam.into(), "STDQ".into(), user.into(), serial.into())
    }

    #[test]
    fn assignments_split_by_whether_a_tracked_associate_requested_them() {
        let bodies = vec![
            r#"{"assets":[{"adamId":"1"},{"adamId":"2"}],"serialNumbers":["S1"]}"#.to_string(),
            r#"{"assets":[{"adamId":1,"pricingParam":"STDQ"}],"clientUserIds":["u1"]}"#.to_string(),
            "not json".to_string(),
        ];
        let requested = requested_by_events(&bodies);
        let report = build_report(
            "acme",
            vec![asset("1", 5, 4), asset("3", 2, 0)],
            &[
                row("1", "", "S1"),
                row("1", "u1", ""),
                row("1", "u9", ""),
                row("1", "", "S7"),
                // An assignment of an asset the mirror does not hold (yet).
                row("2", "", "S1"),
                row("2", "u1", ""),
            ],
            &requested,
        );
        assert_eq!(report.len(), 3);
        let one = &report[0];
        assert_eq!(
            (one.adam_id.as_str(), one.tracked, one.unknown_origin),
            ("1", 2, 2)
        );
        assert_eq!(
            (one.total, one.assigned, one.available),
            (Some(5), Some(4), Some(1))
        );
        assert_eq!(
            one.unknown_origin_assignments,
            vec![
                AssignmentRef {
                    serial_number: None,
                    client_user_id: Some("u9".into())
                },
                AssignmentRef {
                    serial_number: Some("S7".into()),
                    client_user_id: None
                },
            ]
        );
        let two = &report[1];
        assert_eq!((two.tracked, two.unknown_origin, two.total), (1, 1, None));
        let three = &report[2];
        assert_eq!((three.tracked, three.unknown_origin), (0, 0));
    }
}
