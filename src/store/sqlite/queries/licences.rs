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
