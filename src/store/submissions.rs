//! Idempotency keys of submissions through the daemon (`Idempotency-Key` on
//! `POST /v1/tokens/{token}/requests/{kind}`, see `api::submit`): the first submission with a
//! key claims it here before any request reaches Apple, and records its answer when it ends,
//! so a retry with the key answers the same eventIds instead of spending licences twice, also
//! after a restart and on another instance. Pruned with the settled events (`retention`).

use super::sql::args;
use super::sql::Tx;
use super::{Store, StoreError};
use crate::time::Timestamp;

/// A key's row as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmissionRow {
    /// SHA-256 (hex) of the body the key was first used with.
    pub body_hash: String,
    /// The first submission's HTTP status; `None` while it runs.
    pub status: Option<u16>,
    pub answer: Option<String>,
    pub created_at: Timestamp,
}

/// What claiming a key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmissionClaim {
    /// New: this request submits, and records its answer with [`Store::finish_submission`].
    Claimed,
    /// The first submission ended with this answer: give it again.
    Done { status: u16, answer: String },
    /// The first submission has not ended (still running, or cut off by a crash).
    Running { since: Timestamp },
    /// The key was first used with another body.
    Mismatch,
}

/// Decides from the row that was already there (`None`: the claim inserted it). Pure.
pub fn claim_of(existing: Option<SubmissionRow>, body_hash: &str) -> SubmissionClaim {
    match existing {
        None => SubmissionClaim::Claimed,
        Some(row) if row.body_hash != body_hash => SubmissionClaim::Mismatch,
        Some(SubmissionRow {
            status: Some(status),
            answer,
            ..
        }) => SubmissionClaim::Done {
            status,
            answer: answer.unwrap_or_default(),
        },
        Some(row) => SubmissionClaim::Running {
            since: row.created_at,
        },
    }
}

impl Store {
    /// Claims `key` for a submission of `kind` to `token` with a body hashing to `body_hash`,
    /// atomically (two requests with one key: one claims, the other sees it running).
    pub async fn claim_submission(
        &self,
        token: &str,
        kind: &str,
        key: &str,
        body_hash: &str,
        now: Timestamp,
    ) -> Result<SubmissionClaim, StoreError> {
        let (token, kind, key, hash) = (
            token.to_string(),
            kind.to_string(),
            key.to_string(),
            body_hash.to_string(),
        );
        let existing = self
            .write(move |tx| {
                Box::pin(async move { claim(tx, &token, &kind, &key, &hash, now).await })
            })
            .await?;
        Ok(match existing {
            (_, true) => SubmissionClaim::Claimed,
            // Released between the insert and the read (PostgreSQL): ask again shortly.
            (None, false) => SubmissionClaim::Running { since: now },
            (row, false) => claim_of(row, body_hash),
        })
    }

    /// Records the answer of the submission that claimed `key`.
    pub async fn finish_submission(
        &self,
        token: &str,
        kind: &str,
        key: &str,
        status: u16,
        answer: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (token, kind, key, answer) = (
            token.to_string(),
            kind.to_string(),
            key.to_string(),
            answer.to_string(),
        );
        self.write(move |tx| {
            Box::pin(async move { finish(tx, &token, &kind, &key, status, &answer, now).await })
        })
        .await
    }

    /// Gives `key` up (its submission reached Apple with no part): a retry submits anew.
    pub async fn release_submission(
        &self,
        token: &str,
        kind: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let (token, kind, key) = (token.to_string(), kind.to_string(), key.to_string());
        self.write(move |tx| Box::pin(async move { release(tx, &token, &kind, &key).await }))
            .await
    }
}

/// Inserts the key's row unless it exists; returns the row that was there (if any) and
/// whether the insert took.
async fn claim(
    tx: &mut dyn Tx,
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
            args![token, kind, key, body_hash, now],
        )
        .await?;
    if inserted == 1 {
        return Ok((None, true));
    }
    let row = tx
        .query_opt(
            "SELECT body_hash, status, answer, created_at FROM submissions \
             WHERE token = $1 AND kind = $2 AND idem_key = $3",
            args![token, kind, key],
        )
        .await?;
    let row = match row {
        None => None,
        Some(r) => Some(SubmissionRow {
            body_hash: r.string(0)?,
            status: r
                .opt_i64(1)?
                .map(|s| {
                    u16::try_from(s)
                        .map_err(|_| StoreError::Corrupt(format!("submissions.status {s}")))
                })
                .transpose()?,
            answer: r.opt_string(2)?,
            created_at: r.ts(3)?,
        }),
    };
    Ok((row, false))
}

async fn finish(
    tx: &mut dyn Tx,
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
        args![token, kind, key, u32::from(status), answer, now],
    )
    .await?;
    Ok(())
}

async fn release(tx: &mut dyn Tx, token: &str, kind: &str, key: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM submissions WHERE token = $1 AND kind = $2 AND idem_key = $3 \
         AND status IS NULL",
        args![token, kind, key],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_answers_by_its_row() {
        let row = |status: Option<u16>| SubmissionRow {
            body_hash: "h".into(),
            status,
            answer: status.map(|_| "{}".into()),
            created_at: Timestamp(5),
        };
        assert_eq!(claim_of(None, "h"), SubmissionClaim::Claimed);
        assert_eq!(
            claim_of(Some(row(None)), "other"),
            SubmissionClaim::Mismatch
        );
        assert_eq!(
            claim_of(Some(row(Some(201))), "other"),
            SubmissionClaim::Mismatch
        );
        assert_eq!(
            claim_of(Some(row(None)), "h"),
            SubmissionClaim::Running {
                since: Timestamp(5)
            }
        );
        assert_eq!(
            claim_of(Some(row(Some(201))), "h"),
            SubmissionClaim::Done {
                status: 201,
                answer: "{}".into()
            }
        );
    }
}
