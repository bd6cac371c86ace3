//! The rows of the licence report (`crate::store::licences`): the mirrored assets and
//! assignments of a token and the request bodies of its tracked ASSOCIATE events.

use rusqlite::{params, Connection};

use crate::store::licences::{build_report, requested_by_events, MirrorAssignment};
use crate::store::{AssetLicences, StoreError};

/// The report of `token`, or of every token in the mirror.
pub fn licence_report(
    conn: &Connection,
    token: Option<&str>,
) -> Result<Vec<AssetLicences>, StoreError> {
    let tokens: Vec<String> = match token {
        Some(t) => vec![t.to_string()],
        None => conn
            .prepare(
                "SELECT token FROM mirror_assets UNION SELECT token FROM mirror_assignments ORDER BY 1",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::new();
    for t in tokens {
        let assets: Vec<AssetLicences> = conn
            .prepare_cached(
                "SELECT adam_id, pricing_param, total_count, assigned_count, available_count, \
                 json_extract(json, '$.productType') FROM mirror_assets WHERE token = ?1",
            )?
            .query_map([&t], |r| {
                Ok(AssetLicences {
                    token: t.clone(),
                    adam_id: r.get(0)?,
                    pricing_param: r.get(1)?,
                    total: r.get(2)?,
                    assigned: r.get(3)?,
                    available: r.get(4)?,
                    product_type: r.get(5).ok().flatten(),
                    tracked: 0,
                    unknown_origin: 0,
                    unknown_origin_assignments: vec![],
                })
            })?
            .collect::<Result<_, _>>()?;
        let assignments: Vec<MirrorAssignment> = conn
            .prepare_cached(
                "SELECT adam_id, pricing_param, client_user_id, serial_number FROM mirror_assignments \
                 WHERE token = ?1",
            )?
            .query_map([&t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let bodies: Vec<String> = conn
            .prepare_cached(
                "SELECT request FROM events WHERE token = ?1 AND type = ?2 AND request IS NOT NULL",
            )?
            .query_map(params![t, "ASSOCIATE"], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        out.extend(build_report(
            &t,
            assets,
            &assignments,
            &requested_by_events(&bodies),
        ));
    }
    Ok(out)
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
