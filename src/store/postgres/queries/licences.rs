//! The rows of the licence report (`crate::store::licences`): the mirrored assets and
//! assignments of a token and the request bodies of its tracked ASSOCIATE events.

use tokio_postgres::Transaction;

use crate::store::licences::{build_report, requested_by_events, MirrorAssignment};
use crate::store::{AssetLicences, StoreError};

/// The report of `token`, or of every token in the mirror.
pub async fn licence_report(
    tx: &Transaction<'_>,
    token: Option<&str>,
) -> Result<Vec<AssetLicences>, StoreError> {
    let tokens: Vec<String> = match token {
        Some(t) => vec![t.to_string()],
        None => tx
            .query(
                "SELECT token FROM mirror_assets UNION SELECT token FROM mirror_assignments \
                 ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    let mut out = Vec::new();
    for t in tokens {
        let assets: Vec<AssetLicences> = tx
            .query(
                "SELECT adam_id, pricing_param, total_count, assigned_count, available_count, \
                 json::jsonb ->> 'productType' FROM mirror_assets WHERE token = $1",
                &[&t],
            )
            .await?
            .iter()
            .map(|r| AssetLicences {
                token: t.clone(),
                adam_id: r.get(0),
                pricing_param: r.get(1),
                total: r.get(2),
                assigned: r.get(3),
                available: r.get(4),
                product_type: r.get(5),
                tracked: 0,
                unknown_origin: 0,
                unknown_origin_assignments: vec![],
            })
            .collect();
        let assignments: Vec<MirrorAssignment> = tx
            .query(
                "SELECT adam_id, pricing_param, client_user_id, serial_number \
                 FROM mirror_assignments WHERE token = $1",
                &[&t],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let bodies: Vec<String> = tx
            .query(
                "SELECT request FROM events WHERE token = $1 AND type = 'ASSOCIATE' \
                 AND request IS NOT NULL",
                &[&t],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.extend(build_report(
            &t,
            assets,
            &assignments,
            &requested_by_events(&bodies),
        ));
    }
    Ok(out)
}
