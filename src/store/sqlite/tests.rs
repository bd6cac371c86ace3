//! Store tests on a temp file: migrations, the writer's group commit, and the queries'
//! contracts (idempotent tracking, the feed's order, dedupe, pruning, the mirror's rules).

use serde_json::json;

use super::queries;
use super::{migrations, mirror, SqliteStore as Store, StoreError};
use crate::apple::model::{Assignment, PricingParam, ResponseAsset, ResponseUser, UserStatus};
use crate::core::SyncKind;
use crate::core::{
    Change, EventRecord, EventType, HistoryEntry, Outcome, State, Timings, TrackRequest,
};
use crate::store::NewNotification;
use crate::time::Timestamp;

fn rec(id: &str, now: Timestamp) -> EventRecord {
    EventRecord::new_tracked(
        now,
        TrackRequest {
            event_id: id.into(),
            token: "acme".into(),
            event_type: EventType::Associate,
            submitted_at: None,
            num_requested: Some(2),
            has_request: true,
            supersedes: None,
        },
        &Timings::default(),
    )
}

use crate::store::sql::sqlite::run;

/// Runs a query written once on the connection `c` (`lite!(c, tokens::f(a, b))`).
macro_rules! lite {
    ($c:expr, $($f:ident)::+ ( $($a:expr),* $(,)? )) => {
        futures::executor::block_on(crate::store::$($f)::+(
            &mut crate::store::sql::sqlite::SqliteTx::new(&mut $c),
            $($a),*
        ))
    };
}

fn temp() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    (dir, path)
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, migrations::LATEST);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(c);
    // Reopening runs nothing twice.
    let c = super::open_write_connection(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, migrations::LATEST);
    // A newer schema is refused, not corrupted.
    c.pragma_update(None, "user_version", migrations::LATEST + 1)
        .unwrap();
    drop(c);
    assert!(matches!(
        super::open_write_connection(&path),
        Err(StoreError::SchemaTooNew { .. })
    ));
}

/// Inserts a newly tracked event the way the core emits it.
fn insert_tracked(
    c: &rusqlite::Connection,
    r: &EventRecord,
    body: Option<&str>,
    _cause: &str,
) -> Result<(), StoreError> {
    let mut change = Change::of(r);
    change.insert = true;
    change.feed = true;
    change.request_body = body.map(str::to_string);
    change.history.push(HistoryEntry {
        at: r.tracked_at,
        from: None,
        to: r.state,
        outcome: None,
        cause: "tracked".into(),
    });
    match queries::apply_changes(c, &[change]).remove(0) {
        None => Ok(()),
        Some(e) => Err(StoreError::Corrupt(e)),
    }
}

#[tokio::test]
async fn a_failing_job_rolls_back_alone() {
    let (_d, path) = temp();
    let store = Store::open(&path).unwrap();
    let now = Timestamp(1_000);
    let s1 = store.clone();
    let a = tokio::spawn(async move {
        s1.write(move |c| {
            insert_tracked(c, &rec("ok-1", now), None, "tracked")?;
            Ok(())
        })
        .await
    });
    let s2 = store.clone();
    let b = tokio::spawn(async move {
        s2.write(move |c| {
            // Half-done work, then a failure: none of it may stay.
            insert_tracked(c, &rec("bad", now), None, "tracked")?;
            Err::<(), _>(StoreError::Corrupt("boom".into()))
        })
        .await
    });
    assert!(a.await.unwrap().is_ok());
    assert!(b.await.unwrap().is_err());
    let ids = store
        .read(|c| {
            Ok(queries::list_events(
                c,
                &crate::store::EventFilter {
                    limit: 10,
                    ..Default::default()
                },
            )?
            .0)
        })
        .await
        .unwrap();
    let ids: Vec<&str> = ids.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, vec!["ok-1"]);
}

#[test]
fn tracking_is_idempotent_and_returns_early_notifications() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(5_000);
    let n = NewNotification {
        notification_id: "n1".into(),
        token: "acme".into(),
        notification_type: "ASSET_MANAGEMENT".into(),
        event_id: Some("e1".into()),
        result: Some("SUCCESS".into()),
        entities: Some(2),
        error: None,
        received_at: now,
        body: "{}".into(),
    };
    assert!(queries::insert_notification(&c, &n).unwrap());
    assert!(
        !queries::insert_notification(&c, &n).unwrap(),
        "duplicate id"
    );
    insert_tracked(&c, &rec("e1", now), Some("{\"assets\":[]}"), "tracked").unwrap();
    let notes = queries::unapplied_notifications_for(&c, "e1").unwrap();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].success);
    assert_eq!(notes[0].entities, 2);
    assert!(
        insert_tracked(&c, &rec("e1", now), None, "tracked").is_err(),
        "a second insert of one eventId is refused"
    );
    let kept = queries::get_event(&c, "e1").unwrap().unwrap();
    assert_eq!(
        (kept.token.as_str(), kept.event_type),
        ("acme", EventType::Associate)
    );
    assert_eq!(
        queries::request_body(&c, "e1").unwrap().as_deref(),
        Some("{\"assets\":[]}")
    );
}

#[test]
fn changes_feed_orders_by_commit_and_history_appends() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(10_000);
    for id in ["a", "b", "c"] {
        insert_tracked(&c, &rec(id, now), None, "tracked").unwrap();
    }
    // "a" settles later than the others were tracked: it moves to the end of the feed.
    let mut a = rec("a", now);
    a.state = State::Settled;
    a.outcome = Some(Outcome::Complete);
    a.settled_at = Some(now);
    let change = Change {
        event: a,
        insert: false,
        copy_request_from: None,
        history: vec![HistoryEntry {
            at: now,
            from: Some(State::Pending),
            to: State::Settled,
            outcome: Some(Outcome::Complete),
            cause: "notifications covered every entity".into(),
        }],
        failures: vec![],
        applied_notifications: vec![],
        polls: vec![],
        feed: true,
        request_body: None,
        rows_only: false,
    };
    assert_eq!(queries::apply_changes(&c, &[change]), vec![None]);
    let feed = queries::changes_after(&c, 0, 10).unwrap();
    let order: Vec<&str> = feed
        .iter()
        .map(|f| f.event().unwrap().event_id.as_str())
        .collect();
    assert_eq!(order, vec!["b", "c", "a"]);
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    let after = queries::changes_after(&c, feed[1].seq, 10).unwrap();
    assert_eq!(after.len(), 1);
    let d = queries::event_detail(&c, "a").unwrap().unwrap();
    assert_eq!(d.history.len(), 2);
    assert_eq!(d.history[1].to, State::Settled);
}

#[test]
fn prune_removes_old_settled_events_in_batches() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let old = Timestamp(1_000);
    for i in 0..5 {
        let mut r = rec(&format!("old-{i}"), old);
        insert_tracked(&c, &r, None, "tracked").unwrap();
        r.state = State::Settled;
        r.settled_at = Some(old);
        queries::apply_changes(
            &c,
            &[Change {
                event: r,
                insert: false,
                copy_request_from: None,
                history: vec![],
                failures: vec![],
                applied_notifications: vec![],
                polls: vec![],
                feed: true,
                request_body: None,
                rows_only: false,
            }],
        );
    }
    insert_tracked(&c, &rec("open", old), None, "tracked").unwrap();
    assert_eq!(queries::prune(&c, Timestamp(2_000), 3).unwrap(), 3);
    assert_eq!(queries::prune(&c, Timestamp(2_000), 3).unwrap(), 2);
    assert_eq!(queries::prune(&c, Timestamp(2_000), 3).unwrap(), 0);
    let left: i64 = c
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 1, "unsettled events are never pruned");
    let hist: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM event_history WHERE event_id LIKE 'old-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hist, 0);
}

fn asset(total: i64, assigned: i64) -> ResponseAsset {
    serde_json::from_value(json!({"adamId": "1", "pricingParam": "STDQ", "productType": "App",
        "assignedCount": assigned, "availableCount": total - assigned, "retiredCount": 0,
        "totalCount": total, "deviceAssignable": true, "revocable": true, "supportedPlatforms": ["iOS"]}))
    .unwrap()
}

fn assignment(serial: Option<&str>, user: Option<&str>) -> Assignment {
    Assignment {
        adam_id: "1".into(),
        pricing_param: PricingParam::Stdq,
        client_user_id: user.map(str::to_string),
        serial_number: serial.map(str::to_string),
        user_status: None,
        id_hash: None,
    }
}

#[test]
fn mirror_follows_notifications_and_syncs() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(1);
    mirror::apply_assets(&c, "acme", &[asset(10, 0)], true, now).unwrap();
    let counts = |c: &rusqlite::Connection| -> (i64, i64) {
        c.query_row(
            "SELECT assigned_count, available_count FROM mirror_assets WHERE token = 'acme'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let two = [assignment(Some("S1"), None), assignment(None, Some("u1"))];
    mirror::apply_asset_notification(&c, "acme", true, &two, now, mirror::Counts::Adjust).unwrap();
    assert_eq!(counts(&c), (2, 8));
    // The same notification again (a replay) changes nothing.
    mirror::apply_asset_notification(&c, "acme", true, &two, now, mirror::Counts::Adjust).unwrap();
    assert_eq!(counts(&c), (2, 8));
    mirror::apply_asset_notification(&c, "acme", false, &two[..1], now, mirror::Counts::Recount)
        .unwrap();
    assert_eq!(counts(&c), (1, 9));
    // Retiring u1 drops their assignment.
    let retired: ResponseUser = serde_json::from_value(
        json!({"clientUserId": "u1", "status": "Retired", "inviteCode": "X"}),
    )
    .unwrap();
    assert_eq!(retired.status, UserStatus::Retired);
    mirror::apply_user_notification(&c, "acme", &[retired], now).unwrap();
    assert_eq!(counts(&c), (0, 10));
    // An incremental assignments sync only adds; a full one replaces.
    mirror::apply_assignments(&c, "acme", &[assignment(Some("S9"), None)], false, now).unwrap();
    mirror::apply_assignments(&c, "acme", &[assignment(Some("S8"), None)], false, now).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM mirror_assignments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    mirror::apply_assignments(&c, "acme", &[assignment(Some("S8"), None)], true, now).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM mirror_assignments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // ASSET_COUNT: licences bought.
    mirror::apply_asset_count(&c, "acme", "1", "STDQ", 5, now).unwrap();
    let (total, available): (i64, i64) = c
        .query_row(
            "SELECT total_count, available_count FROM mirror_assets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((total, available), (15, 14));
}

#[test]
fn feed_seq_only_grows_across_pruning_and_reopening() {
    let (_d, path) = temp();
    let old = Timestamp(1_000);
    let top = {
        let c = super::open_write_connection(&path).unwrap();
        insert_tracked(&c, &rec("a", old), None, "tracked").unwrap();
        let mut b = rec("b", old);
        insert_tracked(&c, &b, None, "tracked").unwrap();
        b.state = State::Settled;
        b.settled_at = Some(old);
        let mut settle = Change::of(&b);
        settle.feed = true;
        assert_eq!(queries::apply_changes(&c, &[settle]), vec![None]);
        let feed = queries::changes_after(&c, 0, 10).unwrap();
        let top = feed.last().unwrap();
        assert_eq!(
            top.event().unwrap().event_id,
            "b",
            "the settled event holds the highest seq"
        );
        // Retention prunes it: its seq must never be handed out again.
        assert_eq!(queries::prune(&c, Timestamp(2_000), 10).unwrap(), 1);
        top.seq
    };
    // Reopened, as after a restart.
    let c = super::open_write_connection(&path).unwrap();
    insert_tracked(&c, &rec("c", old), None, "tracked").unwrap();
    let after = queries::changes_after(&c, top, 10).unwrap();
    assert_eq!(
        after.len(),
        1,
        "a consumer resuming after {top} sees the new change"
    );
    assert_eq!(after[0].event().unwrap().event_id, "c");
    assert!(after[0].seq > top);
}

#[test]
fn store_stats_groups_events_and_reports_configured_tokens_only() {
    use super::stats::store_stats;
    use crate::store::{EventCount, TokenExpiry};
    let (_d, path) = temp();
    let mut c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(5_000);
    for id in ["e1", "e2"] {
        insert_tracked(&c, &rec(id, now), None, "tracked").unwrap();
    }
    let rows = [
        crate::store::TokenRow {
            name: "acme".into(),
            org_name: None,
            expires_at: Some(Timestamp(9_000)),
        },
        crate::store::TokenRow {
            name: "gone".into(),
            org_name: None,
            expires_at: Some(Timestamp(1)),
        },
    ];
    lite!(c, tokens::upsert_tokens(&rows, now)).unwrap();
    let configured = ["acme".to_string()].into_iter().collect();
    let stats = store_stats(&c, &configured).unwrap();
    assert_eq!(
        stats.events,
        vec![EventCount {
            token: "acme".into(),
            state: "pending".into(),
            outcome: None,
            count: 2,
        }]
    );
    assert_eq!(
        stats.token_expiry,
        vec![TokenExpiry {
            token: "acme".into(),
            expires_at: Timestamp(9_000),
        }]
    );
}

#[test]
fn status_snapshot_counts_by_state_and_hour_within_bounds() {
    use crate::store::status::HOUR_MS;
    let (_d, path) = temp();
    let mut c = super::open_write_connection(&path).unwrap();
    // 10:30 on some day; the chart starts at 11:00 the day before.
    let now = Timestamp(1_764_000_000_000 / HOUR_MS * HOUR_MS + HOUR_MS / 2);
    let since = crate::store::status::chart_start(now);
    assert_eq!(since.0, now.0 - now.0 % HOUR_MS - 23 * HOUR_MS);
    for id in ["p1", "p2", "s-new", "s-old"] {
        insert_tracked(&c, &rec(id, Timestamp(since.0 - 48 * HOUR_MS)), None, "t").unwrap();
    }
    let settle = |id: &str, at: Timestamp, outcome: Outcome| {
        let mut r = rec(id, Timestamp(since.0 - 48 * HOUR_MS));
        r.state = State::Settled;
        r.outcome = Some(outcome);
        r.settled_at = Some(at);
        let mut change = Change::of(&r);
        change.feed = true;
        assert_eq!(queries::apply_changes(&c, &[change]), vec![None]);
    };
    settle("s-new", Timestamp(now.0 - 10_000), Outcome::Failed);
    settle("s-old", Timestamp(since.0 - 1), Outcome::Complete);
    c.execute_batch(&format!(
        "INSERT INTO polls (event_id, at, result) VALUES ('p1', {a}, 'pending'), ('p1', {b}, 'pending'), ('p2', {old}, 'pending');
         INSERT INTO failures (event_id, at, source, error_number, error_message) VALUES ('s-new', {a}, 'poll', 9609, 'user <b>not</b> found');",
        a = since.0 + 5,
        b = now.0 - 1,
        old = since.0 - 5,
    ))
    .unwrap();
    queries::sync_started(
        &c,
        1,
        "acme",
        crate::core::SyncKind::Assets,
        true,
        "test",
        Timestamp(since.0 + HOUR_MS),
    )
    .unwrap();
    queries::sync_finished(
        &c,
        1,
        Timestamp(since.0 + HOUR_MS + 500),
        &crate::store::SyncEnd {
            pages: 3,
            records: 250,
            ok: true,
            ..Default::default()
        },
    )
    .unwrap();

    let s = run(&mut c, |tx| {
        Box::pin(crate::store::status::status_snapshot(tx, now))
    })
    .unwrap();
    assert_eq!(s.since, since);
    let counts: Vec<(&str, Option<&str>, u64)> = s
        .events
        .iter()
        .map(|e| (e.state.as_str(), e.outcome.as_deref(), e.count))
        .collect();
    // The one settled before the window is not counted.
    assert_eq!(
        counts,
        vec![("pending", None, 2), ("settled", Some("failed"), 1)]
    );
    assert_eq!(s.hours.len(), 24);
    assert_eq!(s.hours[0].polls, 1);
    assert_eq!(s.hours[1].sync_pages, 3);
    assert_eq!(s.hours[1].apple_calls(), 3);
    assert_eq!(s.hours[23].polls, 1);
    assert_eq!(s.hours[23].settled, 1);
    assert_eq!(s.hours.iter().map(|h| h.settled).sum::<u64>(), 1);
    assert_eq!(s.failures.len(), 1);
    assert_eq!(s.failures[0].token.as_deref(), Some("acme"));
    assert_eq!(s.failures[0].error_number, 9609);
    assert_eq!(s.syncs.len(), 1);
    assert_eq!(s.syncs[0].pages, 3);
}

#[test]
fn status_queries_read_through_indexes_never_a_whole_table() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    for (sql, args) in crate::store::status::planned() {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for step in &plan {
            // `SCAN f` is the failures table read newest first by rowid, stopped by LIMIT.
            let bounded = !step.starts_with("SCAN")
                || step.contains("USING INDEX")
                || step.contains("USING COVERING INDEX")
                || (step == "SCAN f" && sql.contains("ORDER BY f.id DESC LIMIT"));
            assert!(bounded, "{sql}\nscans a whole table: {plan:?}");
        }
    }
}

#[test]
fn event_counts_kept_by_triggers_equal_a_full_count() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let old = Timestamp(1_000);
    for i in 0..30 {
        let mut r = rec(&format!("e{i}"), old);
        r.token = ["acme", "beta"][i % 2].to_string();
        insert_tracked(&c, &r, None, "tracked").unwrap();
        if i % 3 == 0 {
            r.state = State::Syncing;
            r.outcome = Some(Outcome::Failed);
            assert_eq!(queries::apply_changes(&c, &[Change::of(&r)]), vec![None]);
        }
        if i % 5 == 0 {
            r.state = State::Settled;
            r.outcome = Some(Outcome::Complete);
            r.settled_at = Some(old);
            assert_eq!(queries::apply_changes(&c, &[Change::of(&r)]), vec![None]);
        }
    }
    queries::prune(&c, Timestamp(2_000), 2).unwrap();
    let counted: Vec<(String, String, String, i64)> = c
        .prepare(
            "SELECT token, state, COALESCE(outcome, ''), COUNT(*) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let kept: Vec<(String, String, String, i64)> = c
        .prepare("SELECT token, state, outcome, n FROM event_counts WHERE n != 0 ORDER BY 1, 2, 3")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kept, counted);
    assert!(kept.iter().any(|k| k.1 == "syncing"));
}

// ---- streamed syncs: the stage ------------------------------------------------------------

fn serials(c: &rusqlite::Connection) -> Vec<String> {
    c.prepare("SELECT serial_number FROM mirror_assignments WHERE token = 'acme' ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn staged(c: &rusqlite::Connection) -> i64 {
    c.query_row(
        "SELECT (SELECT COUNT(*) FROM mirror_stage_assets) + (SELECT COUNT(*) FROM mirror_stage_assignments) \
         + (SELECT COUNT(*) FROM mirror_stage_users)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn streamed(consistent: bool) -> crate::apple::Streamed {
    crate::apple::Streamed {
        version_id: Some("v2".into()),
        pages: 2,
        records: 2,
        consistent,
        incremental: false,
        ..Default::default()
    }
}

#[test]
fn a_staged_full_sync_interrupted_before_the_swap_leaves_the_mirror_as_it_was() {
    let (_d, path) = temp();
    {
        let c = super::open_write_connection(&path).unwrap();
        let now = Timestamp(1);
        mirror::apply_assets(&c, "acme", &[asset(10, 2)], true, now).unwrap();
        let old = [assignment(Some("S1"), None), assignment(Some("S2"), None)];
        mirror::apply_assignments(&c, "acme", &old, true, now).unwrap();
        queries::sync_started(&c, 7, "acme", SyncKind::Assignments, true, "test", now).unwrap();
        // Two pages staged, each committed on its own, then the process dies: no swap.
        mirror::stage_assignments(&c, 7, &[assignment(Some("S3"), None)]).unwrap();
        mirror::stage_assignments(&c, 7, &[assignment(Some("S4"), None)]).unwrap();
        assert_eq!(staged(&c), 2);
        assert_eq!(serials(&c), ["S1", "S2"], "the mirror never sees the stage");
    }
    // The next start discards the stale stage; the mirror is untouched.
    let c = super::open_write_connection(&path).unwrap();
    assert_eq!(mirror::discard_all_stages(&c).unwrap(), 2);
    assert_eq!(staged(&c), 0);
    assert_eq!(serials(&c), ["S1", "S2"]);
    let assigned: i64 = c
        .query_row("SELECT assigned_count FROM mirror_assets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(assigned, 2);
}

#[test]
fn an_unreliable_full_read_adds_but_deletes_nothing_and_a_reliable_one_replaces() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(1);
    let old = [assignment(Some("S1"), None), assignment(Some("S2"), None)];
    mirror::apply_assignments(&c, "acme", &old, true, now).unwrap();
    queries::sync_started(&c, 1, "acme", SyncKind::Assignments, true, "test", now).unwrap();
    // Pages that kept changing: S2 is missing from this read, S3 is new.
    let page = [assignment(Some("S1"), None), assignment(Some("S3"), None)];
    mirror::stage_assignments(&c, 1, &page).unwrap();
    // A record seen twice (it moved between pages) is staged once.
    mirror::stage_assignments(&c, 1, &page[1..]).unwrap();
    let n = super::mirror::commit_sync(
        &c,
        crate::mirror::run::sync_commit("acme", 1, SyncKind::Assignments, now, &streamed(false)),
    )
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        serials(&c),
        ["S1", "S2", "S3"],
        "an unreliable read deletes nothing"
    );
    let (result, finished): (String, Option<i64>) = c
        .query_row(
            "SELECT result, finished_at FROM syncs WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(result, "failed");
    assert!(
        finished.is_some_and(|f| f > 1),
        "finishedAt stamped at the final step"
    );
    // Discarded in small steps.
    assert_eq!(
        mirror::discard_stage(&c, 1, SyncKind::Assignments, 1).unwrap(),
        1
    );
    assert_eq!(
        mirror::discard_stage(&c, 1, SyncKind::Assignments, 10).unwrap(),
        1
    );
    assert_eq!(staged(&c), 0);

    // The same read, consistent this time, replaces (and stores the versionId).
    c.execute(
        "INSERT INTO tokens (name, updated_at) VALUES ('acme', 0)",
        [],
    )
    .unwrap();
    queries::sync_started(&c, 2, "acme", SyncKind::Assignments, true, "test", now).unwrap();
    mirror::stage_assignments(&c, 2, &page).unwrap();
    super::mirror::commit_sync(
        &c,
        crate::mirror::run::sync_commit("acme", 2, SyncKind::Assignments, now, &streamed(true)),
    )
    .unwrap();
    assert_eq!(serials(&c), ["S1", "S3"]);
    let version = mirror::get_version(&c, "acme", SyncKind::Assignments).unwrap();
    assert_eq!(version.as_deref(), Some("v2"));
}

#[test]
fn the_replay_after_the_swap_keeps_a_notification_that_arrived_mid_sync() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let t0 = Timestamp(1_000);
    mirror::apply_assets(&c, "acme", &[asset(10, 1)], true, t0).unwrap();
    mirror::apply_assignments(&c, "acme", &[assignment(Some("S1"), None)], true, t0).unwrap();
    queries::sync_started(&c, 3, "acme", SyncKind::Assignments, true, "test", t0).unwrap();
    // The sync's page is read before the notification: S1 only.
    mirror::stage_assignments(&c, 3, &[assignment(Some("S1"), None)]).unwrap();
    // Mid-sync: S1 unassigned and S2 assigned; stored and applied with their own commits.
    let t1 = Timestamp(2_000);
    let note = |id: &str, kind: &str, serial: &str| {
        json!({"notificationId": id, "notificationType": "ASSET_MANAGEMENT", "uId": "1",
            "notification": {"eventId": format!("e-{id}"), "result": "SUCCESS", "type": kind,
                "assignments": [{"adamId": "1", "pricingParam": "STDQ", "serialNumber": serial}]}})
    };
    for (id, kind, serial) in [("n1", "DISASSOCIATE", "S1"), ("n2", "ASSOCIATE", "S2")] {
        let body = note(id, kind, serial).to_string();
        queries::insert_notification(
            &c,
            &NewNotification {
                notification_id: id.into(),
                token: "acme".into(),
                notification_type: "ASSET_MANAGEMENT".into(),
                event_id: Some(format!("e-{id}")),
                result: Some("SUCCESS".into()),
                entities: Some(1),
                error: None,
                received_at: t1,
                body: body.clone(),
            },
        )
        .unwrap();
        let parsed = crate::apple::parse_notification(body.as_bytes()).unwrap();
        super::notify::apply_notification(&c, "acme", &parsed, t1).unwrap();
    }
    assert_eq!(serials(&c), ["S2"]);
    // The swap puts back what the page said (S1, no S2); the replay in the same transaction
    // re-applies both notifications and recounts the asset they name.
    super::mirror::commit_sync(
        &c,
        crate::mirror::run::sync_commit("acme", 3, SyncKind::Assignments, t0, &streamed(true)),
    )
    .unwrap();
    assert_eq!(serials(&c), ["S2"]);
    let (assigned, available): (i64, i64) = c
        .query_row(
            "SELECT assigned_count, available_count FROM mirror_assets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((assigned, available), (1, 9));
}

#[test]
fn a_users_stage_keeps_the_live_entry_of_a_user_listed_twice() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(1);
    let user = |status: &str, invite: &str| -> ResponseUser {
        serde_json::from_value(
            json!({"clientUserId": "u1", "status": status, "inviteCode": invite}),
        )
        .unwrap()
    };
    queries::sync_started(&c, 4, "acme", SyncKind::Users, true, "test", now).unwrap();
    mirror::stage_users(&c, 4, &[user("Associated", "A")]).unwrap();
    mirror::stage_users(&c, 4, &[user("Retired", "B")]).unwrap();
    super::mirror::commit_sync(
        &c,
        crate::mirror::run::sync_commit("acme", 4, SyncKind::Users, now, &streamed(true)),
    )
    .unwrap();
    let rows: Vec<(String, String)> = c
        .prepare("SELECT status, invite_code FROM mirror_users WHERE token = 'acme'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [("Associated".to_string(), "A".to_string())]);
}

fn feed_kinds(c: &rusqlite::Connection) -> Vec<(i64, String, serde_json::Value)> {
    queries::changes_after(c, 0, 100)
        .unwrap()
        .into_iter()
        .map(|ch| {
            let v = serde_json::to_value(&ch).unwrap();
            (ch.seq, v["kind"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn licence_items_follow_available_transitions_atomically() {
    let (_d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(1);
    // First sight of an asset is not a transition.
    mirror::apply_assets(&c, "acme", &[asset(2, 0)], true, now).unwrap();
    assert!(feed_kinds(&c).is_empty());
    let a = [assignment(Some("S1"), None)];
    let b = [assignment(Some("S2"), None)];
    mirror::apply_asset_notification(&c, "acme", true, &a, now, mirror::Counts::Adjust).unwrap();
    assert!(feed_kinds(&c).is_empty(), "2 -> 1 is no transition");
    mirror::apply_asset_notification(&c, "acme", true, &b, now, mirror::Counts::Adjust).unwrap();
    let f = feed_kinds(&c);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].1, "licence");
    assert_eq!(f[0].2["change"], "exhausted");
    assert_eq!(f[0].2["availableCount"], 0);
    assert_eq!(f[0].2["previousAvailableCount"], 1);
    assert_eq!(f[0].2["adamId"], "1");
    // Disassociation frees one: 0 -> 1.
    mirror::apply_asset_notification(&c, "acme", false, &a, now, mirror::Counts::Recount).unwrap();
    let f = feed_kinds(&c);
    assert_eq!(f.len(), 2);
    assert_eq!(f[1].2["change"], "available");
    // A sync that says 0 again: exhausted; an ASSET_COUNT that adds licences: available.
    mirror::apply_assets(&c, "acme", &[asset(2, 2)], true, now).unwrap();
    mirror::apply_asset_count(&c, "acme", "1", "STDQ", 3, now).unwrap();
    let f = feed_kinds(&c);
    let changes: Vec<&str> = f.iter().map(|x| x.2["change"].as_str().unwrap()).collect();
    assert_eq!(
        changes,
        ["exhausted", "available", "exhausted", "available"]
    );
    assert!(f.windows(2).all(|w| w[0].0 < w[1].0));
    // A rolled-back transaction takes its licence item with it.
    c.execute_batch("BEGIN").unwrap();
    mirror::apply_assets(&c, "acme", &[asset(5, 5)], true, now).unwrap();
    c.execute_batch("ROLLBACK").unwrap();
    assert_eq!(feed_kinds(&c).len(), 4);
}

#[test]
fn token_items_share_the_seq_counter_and_skip_unchanged_states() {
    let (_d, path) = temp();
    let mut c = super::open_write_connection(&path).unwrap();
    let now = Timestamp(1_000);
    let acme = [crate::store::TokenRow {
        name: "acme".into(),
        ..Default::default()
    }];
    lite!(c, tokens::upsert_tokens(&acme, now)).unwrap();
    let healthy = crate::store::TokenStatus::new("healthy", None);
    let revoked = crate::store::TokenStatus::new("revoked", Some("9625".into()));
    // A first healthy is no change.
    lite!(
        c,
        tokens::set_token_health("acme", "healthy", None, now, &healthy)
    )
    .unwrap();
    insert_tracked(&c, &rec("e1", now), None, "tracked").unwrap();
    lite!(
        c,
        tokens::set_token_health("acme", "unhealthy", Some("9625"), now, &revoked)
    )
    .unwrap();
    lite!(
        c,
        tokens::set_token_health("acme", "unhealthy", Some("9625"), now, &revoked)
    )
    .unwrap();
    let soon = crate::store::TokenStatus {
        health: "expiring_soon".into(),
        reason: None,
        days_left: Some(6),
        threshold: Some(7),
    };
    assert!(lite!(c, feed::record_token_status("acme", &soon, now))
        .unwrap()
        .is_some());
    assert!(lite!(c, feed::record_token_status("acme", &soon, now))
        .unwrap()
        .is_none());
    let f = feed_kinds(&c);
    let kinds: Vec<&str> = f.iter().map(|x| x.1.as_str()).collect();
    assert_eq!(kinds, ["event", "token", "token"]);
    assert!(f.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(f[1].2["health"], "revoked");
    assert_eq!(f[2].2["daysLeft"], 6);
    // Event items keep their shape, plus the kind.
    assert_eq!(f[0].2["eventId"], "e1");
    let (n, top) = queries::backlog(&c, 0).unwrap();
    assert_eq!((n, top), (3, f[2].0));
}

/// A batch as the writer runs it: each job inserts into `t` and answers on its channel.
fn insert_jobs(
    rows: &[(i64, usize)],
) -> (
    Vec<super::Job>,
    Vec<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>,
) {
    rows.iter()
        .map(|&(id, size)| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let job = super::detached_job(
                move |c| {
                    c.execute(
                        "INSERT INTO t (id, b) VALUES (?1, zeroblob(?2))",
                        rusqlite::params![id, size as i64],
                    )?;
                    Ok(())
                },
                tx,
                |_, e| Err(e),
            );
            (job, rx)
        })
        .unzip()
}

fn ids_in_t(c: &rusqlite::Connection) -> Vec<i64> {
    let mut stmt = c.prepare("SELECT id FROM t ORDER BY id").unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// A database that is full beyond its current pages: SQLITE_FULL for a write needing more,
/// after which SQLite rolls the whole transaction back by itself (a real automatic
/// rollback, as on a full disk, without filling one).
fn nearly_full() -> (tempfile::TempDir, rusqlite::Connection) {
    let (d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    c.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB); INSERT INTO t VALUES (0, x'00');",
    )
    .unwrap();
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    c.pragma_update(None, "max_page_count", pages).unwrap();
    (d, c)
}

#[test]
fn an_automatic_rollback_mid_batch_fails_exactly_the_jobs_it_undid() {
    let (_d, mut c) = nearly_full();
    let health = crate::store::health::WriteHealth::default();
    // 1 fits; 2 needs pages the database may not grow by: SQLITE_FULL, and SQLite rolls
    // back the transaction, 1 with it; 3 and 4 come after.
    let (mut batch, answers) = insert_jobs(&[(1, 10), (2, 100_000), (3, 10), (4, 10)]);
    super::commit_batch(&mut c, &mut batch, &health);
    let answers: Vec<Result<(), StoreError>> = answers
        .into_iter()
        .map(|mut rx| rx.try_recv().expect("every job answered"))
        .collect();
    let e1 = answers[0].as_ref().unwrap_err().to_string();
    assert!(e1.contains("not written") && e1.contains("full"), "{e1}");
    let e2 = answers[1].as_ref().unwrap_err().to_string();
    assert!(
        e2.contains("database or disk is full") && !e2.contains("error: database error"),
        "{e2}"
    );
    assert!(answers[2].is_ok() && answers[3].is_ok(), "{answers:?}");
    // What was answered done is there, what was answered failed is not.
    assert_eq!(ids_in_t(&c), vec![0, 3, 4]);
    assert!(c.is_autocommit(), "no transaction left open");
    // The fresh transaction's commit wrote rows: writes work again.
    assert_eq!(health.failing(), None);
}

#[test]
fn writes_failing_until_a_write_commits() {
    let (_d, mut c) = nearly_full();
    let health = crate::store::health::WriteHealth::default();
    let (mut batch, answers) = insert_jobs(&[(1, 10), (2, 100_000)]);
    super::commit_batch(&mut c, &mut batch, &health);
    for mut rx in answers {
        assert!(rx.try_recv().unwrap().is_err());
    }
    let failing = health.failing().expect("writes failing");
    assert!(failing.error.contains("full"), "{failing:?}");
    assert_eq!(failing.failed_commits, 1);
    // The ping (an empty commit) does not clear it: it wrote nothing.
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let mut ping = vec![super::detached_job(
        |c| Ok(c.execute_batch("SELECT 1")?),
        tx,
        |_, e| Err(e),
    )];
    super::commit_batch(&mut c, &mut ping, &health);
    assert!(rx.try_recv().unwrap().is_ok());
    assert_eq!(health.failing().map(|f| f.since), Some(failing.since));
    // A write that commits does.
    let (mut batch, answers) = insert_jobs(&[(5, 10)]);
    super::commit_batch(&mut c, &mut batch, &health);
    assert!(answers
        .into_iter()
        .all(|mut rx| rx.try_recv().unwrap().is_ok()));
    assert_eq!(health.failing(), None);
    assert_eq!(ids_in_t(&c), vec![0, 5]);
}

#[test]
fn a_job_failing_on_its_own_is_not_a_write_failure() {
    let (_d, path) = temp();
    let mut c = super::open_write_connection(&path).unwrap();
    c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
        .unwrap();
    let health = crate::store::health::WriteHealth::default();
    // 1 twice: the second breaks the primary key, is undone alone; the others commit.
    let (mut batch, answers) = insert_jobs(&[(1, 1), (1, 1), (2, 1)]);
    super::commit_batch(&mut c, &mut batch, &health);
    let ok: Vec<bool> = answers
        .into_iter()
        .map(|mut rx| rx.try_recv().unwrap().is_ok())
        .collect();
    assert_eq!(ok, vec![true, false, true]);
    assert_eq!(ids_in_t(&c), vec![1, 2]);
    assert_eq!(health.failing(), None);
}

#[test]
fn database_wal_and_shm_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let (d, path) = temp();
    let c = super::open_write_connection(&path).unwrap();
    let wal = super::beside(&path, "-wal");
    let shm = super::beside(&path, "-shm");
    assert_eq!((mode(&path), mode(&wal), mode(&shm)), (0o600, 0o600, 0o600));
    c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    // Left looser by an earlier version, with data in the WAL: tightened at the next open.
    for p in [&path, &wal, &shm] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let c2 = super::open_write_connection(&path).unwrap();
    assert_eq!((mode(&path), mode(&wal), mode(&shm)), (0o600, 0o600, 0o600));
    drop((c, c2));
    // A backup is private too.
    let dest = d.path().join("copy.db");
    super::backup::backup(&path, &dest, false).unwrap();
    assert_eq!(mode(&dest), 0o600);
}
