//! Whether the store's writes are failing (disk full, I/O errors), for `/healthz`: a ping
//! commits an empty transaction, which succeeds on a full disk, so the writer itself records
//! how its transactions end. A cheap shared cell; the rule is [`WriteState::after`], pure.
//!
//! What counts: a transaction that could not begin, could not commit, or that SQLite rolled
//! back by itself mid-batch is a failure; a commit that wrote rows is a success and clears
//! it. A commit that wrote nothing (the ping, a batch whose every job failed on its own)
//! changes nothing: it says nothing about whether the disk takes data. A job refused for its
//! own reasons (not found, lease lost) is not a write failure.
//!
//! PostgreSQL (a pool of transactions, not one writer; `store::postgres`) keeps the same
//! cell by the same rule: a write transaction that could not get a connection, begin or
//! commit, or that ran out of time, is a failure; so is a statement in it that the server
//! refused for a reason of its own ([`is_database_failure`]), even when the job absorbed it
//! (a change of a turn fails alone, the rest commits). A commit that wrote (the transaction
//! had a transaction id) clears it; a write transaction that wrote nothing, and the ping (a
//! plain `SELECT`, no write transaction), change nothing. By SQLSTATE: the server refusing
//! writes or failing to take them is the database's failure; a constraint or data error is
//! the job's own data, and a serialization failure or deadlock (class 40) a conflict between
//! concurrent transactions that running again resolves: neither is.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::time::Timestamp;

/// Whether a PostgreSQL error is the database's failure to take writes rather than the
/// job's own, by its SQLSTATE (`None`: no answer from the server: it could not be reached,
/// the connection was lost or the operation timed out).
///
/// The database's: connection exceptions (class 08), a connection refused by the server (28:
/// the role or its password, 3D: no such database), insufficient resources (53: disk full,
/// out of memory, too many connections), operator intervention (57: shutdown, recovery,
/// `statement_timeout`), system errors (58: I/O), internal errors (XX: corruption), a
/// read-only transaction (25006: a standby after a failover, `default_transaction_read_only`),
/// `idle_in_transaction_session_timeout` (25P03), `lock_timeout` (55P03) and a role that may
/// not write (42501). Everything else (constraints, data, serialization, a bug's syntax error)
/// is the job's.
pub fn is_database_failure(sqlstate: Option<&str>) -> bool {
    let Some(code) = sqlstate else {
        return true;
    };
    matches!(
        code.get(..2),
        Some("08" | "28" | "3D" | "53" | "57" | "58" | "XX")
    ) || matches!(code, "25006" | "25P03" | "55P03" | "42501")
}

/// An error message kept at most this long (bytes), so `/healthz` stays small.
const ERROR_CAP: usize = 512;

/// How one transaction of the writer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed, with rows written.
    Wrote,
    /// Committed, nothing written.
    NothingWritten,
    /// Not committed: the engine's error.
    Failed(String),
}

/// While writes fail: since when, the latest error, how many transactions failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WritesFailing {
    /// The first failure since the last successful write.
    pub since: Timestamp,
    pub last_failure_at: Timestamp,
    /// The latest failure's error.
    pub error: String,
    /// Transactions failed since `since`.
    pub failed_commits: u64,
}

/// The writer's state: `None` while writes succeed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteState(pub Option<WritesFailing>);

impl WriteState {
    /// The state after a transaction ended with `outcome` at `now`.
    pub fn after(self, outcome: &WriteOutcome, now: Timestamp) -> WriteState {
        match outcome {
            WriteOutcome::Wrote => WriteState(None),
            WriteOutcome::NothingWritten => self,
            WriteOutcome::Failed(error) => {
                let error = capped(error);
                WriteState(Some(match self.0 {
                    Some(f) => WritesFailing {
                        last_failure_at: now,
                        error,
                        failed_commits: f.failed_commits.saturating_add(1),
                        ..f
                    },
                    None => WritesFailing {
                        since: now,
                        last_failure_at: now,
                        error,
                        failed_commits: 1,
                    },
                }))
            }
        }
    }
}

fn capped(s: &str) -> String {
    if s.len() <= ERROR_CAP {
        return s.to_string();
    }
    let mut end = ERROR_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The shared cell: written by the writer after each transaction, read by `/healthz`.
#[derive(Clone, Default)]
pub struct WriteHealth(Arc<Mutex<WriteState>>);

impl WriteHealth {
    /// Records how a transaction ended (reads the clock: called by the writer, an adapter).
    pub fn record(&self, outcome: &WriteOutcome) {
        let now = Timestamp::now();
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let was_failing = state.0.is_some();
        *state = std::mem::take(&mut *state).after(outcome, now);
        if was_failing && state.0.is_none() {
            tracing::info!("store writes succeed again");
        }
    }

    /// `Some` while writes fail.
    pub fn failing(&self) -> Option<WritesFailing> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_until_a_write_succeeds() {
        let t = Timestamp::from_millis;
        let s = WriteState::default();
        let s = s.after(&WriteOutcome::NothingWritten, t(1));
        assert_eq!(s, WriteState(None));
        let s = s.after(&WriteOutcome::Failed("disk full".into()), t(2));
        let s = s.after(&WriteOutcome::NothingWritten, t(3));
        let s = s.after(&WriteOutcome::Failed("disk I/O error".into()), t(4));
        assert_eq!(
            s.0,
            Some(WritesFailing {
                since: t(2),
                last_failure_at: t(4),
                error: "disk I/O error".into(),
                failed_commits: 2,
            }),
            "an empty commit (the ping) does not clear it; since stays the first failure"
        );
        assert_eq!(s.after(&WriteOutcome::Wrote, t(5)), WriteState(None));
    }

    #[test]
    fn whose_failure_a_postgresql_error_is() {
        for code in [
            None,
            Some("08006"), // connection failure
            Some("28P01"), // password authentication failed
            Some("3D000"), // no such database
            Some("53100"), // disk full
            Some("57P01"), // admin shutdown
            Some("57014"), // statement_timeout
            Some("58030"), // I/O error
            Some("XX001"), // data corrupted
            Some("25006"), // read-only transaction
            Some("25P03"),
            Some("55P03"),
            Some("42501"), // insufficient privilege
        ] {
            assert!(is_database_failure(code), "{code:?}");
        }
        for code in [
            "23505", // unique violation: the job's data
            "23503", "22001", // value too long
            "40001", // serialization failure: running again resolves it
            "40P01", // deadlock
            "42601", // syntax error
            "42P01", "25P02", // in a failed transaction: the earlier error counts
        ] {
            assert!(!is_database_failure(Some(code)), "{code}");
        }
    }

    #[test]
    fn errors_are_capped() {
        let long = "é".repeat(1000);
        let s = WriteState::default().after(&WriteOutcome::Failed(long), Timestamp::ZERO);
        let e = s.0.unwrap().error;
        assert!(e.len() <= ERROR_CAP + '…'.len_utf8(), "{}", e.len());
    }
}
