//! The mirror of Apple's data per token, and the syncs that fill it (docs/architecture.md,
//! "The mirror"). This module decides; the store writes:
//! - [`plan`]: which read a sync makes (full or incremental from the stored versionId, and
//!   full again when Apple refuses that versionId with 9721);
//! - [`judge`]: whether what was read replaces the mirror or is upserted, and whether the
//!   run counts (a full read whose pages kept changing proves no removals, and no read with
//!   a record that did not decode does: that record may well still be at Apple);
//! - [`outcome_of`]: the typed outcome the core gets for a failed read;
//! - `run` applies a read and replays the notifications received meanwhile, `notify`
//!   decides what one notification does to the mirror (the store writes it).

pub mod notify;
pub mod run;

use crate::apple::ApiError;
use crate::core::{SyncKind, SyncOutcome};

/// The read a sync makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub kind: SyncKind,
    /// `sinceVersionId` for an incremental read; `None` reads everything.
    pub since: Option<String>,
}

impl Plan {
    pub fn is_full(&self) -> bool {
        self.since.is_none()
    }
}

/// Plans a sync: incremental from the stored versionId when the kind supports it and no full
/// read was asked for.
pub fn plan(kind: SyncKind, full: bool, stored_version: Option<String>) -> Plan {
    let since = if full || !kind.supports_incremental() {
        None
    } else {
        stored_version.filter(|v| !v.is_empty())
    };
    Plan { kind, since }
}

/// The plan after Apple refused the versionId (9721): read everything.
pub fn fallback(plan: &Plan, error: &ApiError) -> Option<Plan> {
    (matches!(error, ApiError::InvalidVersion) && plan.since.is_some()).then_some(Plan {
        kind: plan.kind,
        since: None,
    })
}

/// How a completed read is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The read is the whole truth: rows it does not hold are removed.
    Replace,
    /// Add and update only (incremental reads, or a full read that was not consistent).
    Upsert,
}

/// What to do with a read: how to write it, and whether the run counts as a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub write: Write,
    pub reliable: bool,
}

/// Judges a completed read. `incremental`: Apple answered from a versionId. `consistent`:
/// the pages of a full read described one version of the data. `complete`: every record
/// Apple sent decoded. Assets have no incremental read, so a consistent, complete assets
/// read always replaces.
pub fn judge(incremental: bool, consistent: bool, complete: bool) -> Judgement {
    let write = if !incremental && consistent && complete {
        Write::Replace
    } else {
        Write::Upsert
    };
    Judgement {
        write,
        // An incremental read holds every change by construction, a full read only if
        // consistent; neither if a record was lost to decoding (an incremental one would
        // store a versionId past a change it never applied).
        reliable: complete && (incremental || write == Write::Replace),
    }
}

/// The core's outcome for a read that failed.
pub fn outcome_of(error: &ApiError) -> SyncOutcome {
    if error.is_token_problem() {
        SyncOutcome::TokenProblem(error.to_string())
    } else {
        SyncOutcome::Transient(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_incremental_only_where_apple_supports_it() {
        let v = || Some("v7".to_string());
        assert_eq!(
            plan(SyncKind::Assignments, false, v()).since.as_deref(),
            Some("v7")
        );
        assert_eq!(
            plan(SyncKind::Users, false, v()).since.as_deref(),
            Some("v7")
        );
        assert!(plan(SyncKind::Assets, false, v()).is_full());
        assert!(plan(SyncKind::Assignments, true, v()).is_full());
        assert!(plan(SyncKind::Users, false, None).is_full());
        assert!(plan(SyncKind::Users, false, Some(String::new())).is_full());
    }

    #[test]
    fn a_refused_version_falls_back_to_a_full_read_once() {
        let p = plan(SyncKind::Users, false, Some("old".into()));
        let full = fallback(&p, &ApiError::InvalidVersion).unwrap();
        assert!(full.is_full());
        assert_eq!(fallback(&full, &ApiError::InvalidVersion), None);
        assert_eq!(fallback(&p, &ApiError::EventNotFound), None);
    }

    #[test]
    fn a_record_that_did_not_decode_makes_any_read_unreliable_and_removes_nothing() {
        for incremental in [false, true] {
            for consistent in [false, true] {
                assert_eq!(
                    judge(incremental, consistent, false),
                    Judgement {
                        write: Write::Upsert,
                        reliable: false
                    }
                );
            }
        }
    }

    #[test]
    fn only_consistent_full_reads_replace_and_unreliable_reads_do_not_count() {
        assert_eq!(
            judge(false, true, true),
            Judgement {
                write: Write::Replace,
                reliable: true
            }
        );
        assert_eq!(
            judge(false, false, true),
            Judgement {
                write: Write::Upsert,
                reliable: false
            }
        );
        assert_eq!(
            judge(true, true, true),
            Judgement {
                write: Write::Upsert,
                reliable: true
            }
        );
        assert_eq!(
            judge(true, false, true),
            Judgement {
                write: Write::Upsert,
                reliable: true
            }
        );
    }
}
