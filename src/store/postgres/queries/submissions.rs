//! `submissions`: the idempotency keys of submissions through the daemon, as
//! `store::sqlite::queries::submissions`.

use tokio_postgres::Transaction;

use crate::store::submissions::SubmissionRow;
use crate::store::StoreError;
use crate::time::Timestamp;

pub async fn claim_submission(
    tx: &Transaction<'_>,
    token: &str,
    kind: &str,
    key: &str,
    body_hash: &str,
    now: Timestamp,
) -> Result<(Option<SubmissionRow>, bool), StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO submissions (token, kind, idem_key, body_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&token, &kind, &key, &body_hash, &now.0],
        )
        .await?;
    if inserted == 1 {
        return Ok((None, true));
    }
    let row = tx
        .query_opt(
            "SELECT body_hash, status, answer, created_at FROM submissions \
             WHERE token = $1 AND kind = $2 AND idem_key = $3",
            &[&token, &kind, &key],
        )
        .await?
        .map(|r| SubmissionRow {
            body_hash: r.get(0),
            status: r
                .get::<_, Option<i64>>(1)
                .and_then(|s| u16::try_from(s).ok()),
            answer: r.get(2),
            created_at: Timestamp(r.get(3)),
        });
    Ok((row, false))
}

pub async fn finish_submission(
    tx: &Transaction<'_>,
    token: &str,
    kind: &str,
    key: &str,
    status: u16,
    answer: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE submissions SET status = $4, answer = $5, finished_at = $6 \
         WHERE token = $1 AND kind = $2 AND idem_key = $3",
        &[&token, &kind, &key, &i64::from(status), &answer, &now.0],
    )
    .await?;
    Ok(())
}

pub async fn release_submission(
    tx: &Transaction<'_>,
    token: &str,
    kind: &str,
    key: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM submissions WHERE token = $1 AND kind = $2 AND idem_key = $3 \
         AND status IS NULL",
        &[&token, &kind, &key],
    )
    .await?;
    Ok(())
}

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
