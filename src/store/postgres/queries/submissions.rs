//! `submissions`: pruning the idempotency keys along the events' retention, as
//! `store::sqlite::queries::submissions`. The rest is written once in `store::submissions`;
//! this twin goes when the events' queries move onto `store::sql::Tx` (issue 17).

use tokio_postgres::Transaction;

use crate::store::StoreError;
use crate::time::Timestamp;

pub async fn prune_submissions(
    tx: &Transaction<'_>,
    before: Timestamp,
    batch: u32,
) -> Result<u64, StoreError> {
    Ok(tx
        .execute(
            "DELETE FROM submissions WHERE (token, kind, idem_key) IN \
             (SELECT token, kind, idem_key FROM submissions WHERE created_at < $1 LIMIT $2)",
            &[&before.0, &i64::from(batch)],
        )
        .await?)
}
