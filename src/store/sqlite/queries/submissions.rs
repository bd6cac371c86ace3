//! `submissions`: the idempotency keys of submissions through the daemon
//! (`store::submissions`).

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::submissions::SubmissionRow;
use crate::store::StoreError;
use crate::time::Timestamp;

/// Inserts the key's row unless it exists; returns the row that was there (if any) and
/// whether the insert took.
pub fn claim_submission(
    conn: &Connection,
    token: &str,
    kind: &str,
    key: &str,
    body_hash: &str,
    now: Timestamp,
) -> Result<(Option<SubmissionRow>, bool), StoreError> {
    let inserted = conn.execute(
        "INSERT INTO submissions (token, kind, idem_key, body_hash, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        params![token, kind, key, body_hash, now.0],
    )?;
    if inserted == 1 {
        return Ok((None, true));
    }
    let row = conn
        .query_row(
            "SELECT body_hash, status, answer, created_at FROM submissions \
             WHERE token = ?1 AND kind = ?2 AND idem_key = ?3",
            params![token, kind, key],
            |r| {
                Ok(SubmissionRow {
                    body_hash: r.get(0)?,
                    status: r.get::<_, Option<u16>>(1)?,
                    answer: r.get(2)?,
                    created_at: Timestamp(r.get(3)?),
                })
            },
        )
        .optional()?;
    Ok((row, false))
}

pub fn finish_submission(
    conn: &Connection,
    token: &str,
    kind: &str,
    key: &str,
    status: u16,
    answer: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE submissions SET status = ?4, answer = ?5, finished_at = ?6 \
         WHERE token = ?1 AND kind = ?2 AND idem_key = ?3",
        params![token, kind, key, status, answer, now.0],
    )?;
    Ok(())
}

pub fn release_submission(
    conn: &Connection,
    token: &str,
    kind: &str,
    key: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM submissions WHERE token = ?1 AND kind = ?2 AND idem_key = ?3 \
         AND status IS NULL",
        params![token, kind, key],
    )?;
    Ok(())
}

/// Deletes up to `batch` keys first used before `before` (the events they made are pruned
/// on the same retention).
pub fn prune_submissions(
    conn: &Connection,
    before: Timestamp,
    batch: u32,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM submissions WHERE rowid IN \
         (SELECT rowid FROM submissions WHERE created_at < ?1 LIMIT ?2)",
        params![before.0, batch],
    )?)
}
