//! PostgreSQL backend tests, against a real server: `VPPR_TEST_PG_URL`, or a throwaway one
//! started for the test process ([`super::test_server_url`]); without one they fail (a
//! backend test that skips proves nothing). Each makes a database of its own and drops it.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::NoTls;

use super::{migrations, url::redact, PgStore};
use crate::store::sqlite;
use crate::store::StoreError;

mod fake_server;
mod health;
mod tls;

#[test]
fn the_same_schema_versions_as_sqlite() {
    assert_eq!(migrations::LATEST, sqlite::migrations::LATEST);
    assert_eq!(migrations::LATEST, crate::store::SCHEMA_VERSION);
}

#[test]
fn a_password_never_shows_in_messages() {
    assert_eq!(
        redact("postgres://vppr:s3cret@db.example.com:5432/vppr"),
        "postgres://vppr:(not shown)@db.example.com:5432/vppr"
    );
    assert_eq!(
        redact("postgres://vppr@db.example.com/vppr"),
        "postgres://vppr@db.example.com/vppr"
    );
    assert_eq!(redact("host=db user=vppr"), "host=db user=vppr");
}

/// A password in the URL is refused, as the configuration refuses it, and not shown.
#[tokio::test]
async fn a_password_in_the_url_is_refused_and_not_shown() {
    for url in [
        "postgres://vppr@127.0.0.1:1/vppr?password=hunter2",
        "postgres://vppr:hunter2@127.0.0.1:1/vppr",
        "host=127.0.0.1 port=1 user=vppr password=hunter2",
    ] {
        let e = PgStore::connect(url, None).await.err().unwrap();
        assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("the URL holds a password (not shown)"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}

/// Every pooled connection runs under the session's limits, and the URL's own `options`
/// are kept beside them (and win where they say the same).
#[tokio::test]
async fn sessions_run_under_the_limits_with_the_urls_options() {
    use futures::FutureExt as _;
    let db = TempDb::new().await;
    let url = format!(
        "{}?options=-c%20work_mem%3D8MB%20-c%20lock_timeout%3D7s",
        db.url
    );
    let store = PgStore::connect_with(&url, None, std::time::Duration::from_secs(6))
        .await
        .unwrap();
    let shown: Vec<String> = store
        .read(|tx| {
            async move {
                let mut v = Vec::new();
                for name in [
                    "statement_timeout",
                    "lock_timeout",
                    "idle_in_transaction_session_timeout",
                    "tcp_user_timeout",
                    "tcp_keepalives_idle",
                    "tcp_keepalives_interval",
                    "tcp_keepalives_count",
                    "work_mem",
                ] {
                    let row = tx.query_one(&format!("SHOW {name}"), &[]).await?;
                    v.push(row.get::<_, String>(0));
                }
                Ok(v)
            }
            .boxed()
        })
        .await
        .unwrap();
    assert_eq!(
        shown,
        ["2min", "7s", "2s", "2000", "2", "1", "3", "8MB"],
        "statement, lock (the URL's), idle in transaction, TCP user timeout, keepalives, \
         the URL's work_mem"
    );
    store.close().await.unwrap();
    db.drop_now().await;
}

/// An operation that outlives its limit fails with `StoreError::Timeout`, and its
/// connection is closed (the server sees its session end), not handed to the next caller;
/// the pool makes a new one.
#[tokio::test]
async fn an_operation_past_its_limit_fails_and_its_connection_is_closed() {
    use futures::FutureExt as _;
    let db = TempDb::new().await;
    let mut store = PgStore::connect(&db.url, None).await.unwrap();
    store.limits.operation_timeout = std::time::Duration::from_millis(500);
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel::<i32>();
    let e = store
        .write(|tx| {
            async move {
                let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                let _ = pid_tx.send(pid);
                // A link that stops answering: the transaction never ends on its own.
                futures::future::pending::<()>().await;
                Ok(())
            }
            .boxed()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Timeout(_)), "{e:?}");
    assert!(e.to_string().contains("(connection closed)"), "{e}");
    let pid = pid_rx.await.unwrap();
    let admin = db.client().await;
    let start = std::time::Instant::now();
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the timed-out session {pid} is still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The next operations get a working connection.
    for _ in 0..3 {
        store.ping().await.unwrap();
    }
    store.close().await.unwrap();
    db.drop_now().await;
}

/// A database of its own on the test server, dropped by [`TempDb::drop_now`]. (Also used by
/// the lease keeper's tests, `crate::cluster::keeper`.)
pub(crate) struct TempDb {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl TempDb {
    pub(crate) async fn new() -> TempDb {
        let admin = super::test_server_url();
        let name = format!("vppr_test_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&admin, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').expect("a URL with a database").0;
        let url = format!("{base}/{name}");
        TempDb { admin, name, url }
    }

    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    pub(crate) async fn drop_now(self) {
        let (client, conn) = tokio_postgres::connect(&self.admin, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

/// (table → column → (type, NOT NULL)) and the index names of the SQLite schema, in
/// PostgreSQL's words (the translation rules of `postgres::migrations`).
type Columns = BTreeMap<String, BTreeMap<String, (String, bool)>>;

fn sqlite_schema() -> (Columns, BTreeSet<String>) {
    const FLAGS: [&str; 4] = ["resubmitted", "needs_full_sync", "full", "full_sync"];
    let dir = tempfile::tempdir().unwrap();
    let conn = sqlite::open_write_connection(&dir.path().join("s.db")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut columns = Columns::new();
    for t in tables {
        let cols: Vec<(String, String, bool, bool)> = conn
            .prepare(&format!(
                "SELECT name, type, \"notnull\", pk FROM pragma_table_info('{t}')"
            ))
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? > 0))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let entry = columns.entry(t).or_default();
        for (name, ty, not_null, pk) in cols {
            let ty = match ty.as_str() {
                "INTEGER" if FLAGS.contains(&name.as_str()) => "boolean",
                "INTEGER" => "bigint",
                "TEXT" => "text",
                "BLOB" => "bytea",
                other => panic!("SQLite type {other} has no translation rule"),
            };
            // A primary key column is NOT NULL in PostgreSQL whether said or not.
            entry.insert(name, (ty.to_string(), not_null || pk));
        }
    }
    let indexes: BTreeSet<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (columns, indexes)
}

async fn pg_schema(client: &tokio_postgres::Client) -> (Columns, BTreeSet<String>) {
    let mut columns = Columns::new();
    for row in client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'NO' \
             FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name <> 'schema_version'",
            &[],
        )
        .await
        .unwrap()
    {
        columns
            .entry(row.get(0))
            .or_default()
            .insert(row.get(1), (row.get(2), row.get(3)));
    }
    // Named indexes only: PostgreSQL names its primary-key and UNIQUE-constraint indexes
    // itself, where SQLite makes `sqlite_autoindex_*`.
    let indexes = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' \
             AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    (columns, indexes)
}

#[tokio::test]
async fn migrations_make_the_sqlite_schema_in_postgresql() {
    let db = TempDb::new().await;
    let store = PgStore::connect(&db.url, None).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), migrations::LATEST);
    store.ping().await.unwrap();
    let (pg_cols, pg_idx) = pg_schema(&db.client().await).await;
    let (sq_cols, sq_idx) = sqlite_schema();
    assert!(
        sq_cols.len() >= 19 && sq_idx.len() >= 18,
        "{sq_cols:?} {sq_idx:?}"
    );
    assert_eq!(
        pg_cols.keys().collect::<Vec<_>>(),
        sq_cols.keys().collect::<Vec<_>>(),
        "tables"
    );
    for (table, cols) in &sq_cols {
        assert_eq!(&pg_cols[table], cols, "columns of {table}");
    }
    assert_eq!(pg_idx, sq_idx, "indexes");
    // Seeded rows as in SQLite.
    let c = db.client().await;
    let seq: i64 = c
        .query_one("SELECT value FROM counters WHERE name = 'change_seq'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 0);
    let pushed: i64 = c
        .query_one("SELECT delivered_seq FROM push_state WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pushed, 0);
    store.close().await.unwrap();
    assert!(matches!(store.ping().await, Err(StoreError::Closed)));
    db.drop_now().await;
}

#[tokio::test]
async fn instances_starting_together_migrate_once_and_again_is_a_no_op() {
    let db = TempDb::new().await;
    let (a, b, c) = tokio::join!(
        PgStore::connect(&db.url, None),
        PgStore::connect(&db.url, None),
        PgStore::connect(&db.url, None)
    );
    for s in [a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(s.schema_version().await.unwrap(), migrations::LATEST);
        s.close().await.unwrap();
    }
    let again = PgStore::connect(&db.url, None).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), migrations::LATEST);
    again.close().await.unwrap();
    db.drop_now().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let db = TempDb::new().await;
    PgStore::connect(&db.url, None)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute(&format!(
            "UPDATE schema_version SET version = {}",
            migrations::LATEST + 1
        ))
        .await
        .unwrap();
    match PgStore::connect(&db.url, None).await {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!(
                (found, supported),
                (migrations::LATEST + 1, migrations::LATEST)
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
    db.drop_now().await;
}

/// The triggers of migration 6 keep `event_counts` as SQLite's do.
#[tokio::test]
async fn event_counts_follow_every_insert_update_and_delete() {
    let db = TempDb::new().await;
    PgStore::connect(&db.url, None)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let c = db.client().await;
    let insert = "INSERT INTO events (event_id, token, type, state, tracked_at, submitted_at, \
                  change_seq) VALUES ($1, 'acme', 'ASSOCIATE', 'pending', 0, 0, $2)";
    c.execute(insert, &[&"e1", &1i64]).await.unwrap();
    c.execute(insert, &[&"e2", &2i64]).await.unwrap();
    c.execute(
        "UPDATE events SET state = 'settled', outcome = 'succeeded' WHERE event_id = 'e1'",
        &[],
    )
    .await
    .unwrap();
    // Not a change of token, state or outcome: counts untouched.
    c.execute("UPDATE events SET polls = 3 WHERE event_id = 'e2'", &[])
        .await
        .unwrap();
    c.execute("DELETE FROM events WHERE event_id = 'e2'", &[])
        .await
        .unwrap();
    let counts: Vec<(String, String, i64)> = c
        .query(
            "SELECT state, outcome, n FROM event_counts WHERE token = 'acme' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("pending".to_string(), String::new(), 0),
            ("settled".to_string(), "succeeded".to_string(), 1),
        ]
    );
    db.drop_now().await;
}

/// The same sync runs written through both backends' queries read back the same.
#[tokio::test]
async fn syncs_queries_answer_alike_on_both_backends() {
    use crate::core::SyncKind;
    use crate::store::{syncs, SyncEnd, SyncStart};
    use crate::time::Timestamp;

    let (_dir, lite, pg, db) = crate::store::sql::tests::both_stores().await;
    let end = SyncEnd {
        pages: 3,
        records: 250,
        ok: true,
        error: None,
        version_id: Some("v1".into()),
    };
    let failed = SyncEnd {
        ok: false,
        error: Some("boom".into()),
        ..SyncEnd::default()
    };
    let runs = [
        (1u64, "acme", SyncKind::Assets, true, "start"),
        (2, "beta", SyncKind::Assignments, false, "notification"),
        (3, "acme", SyncKind::Users, false, "cron"),
        (4, "acme", SyncKind::Assignments, true, "counts"),
        // Restarting run 4 starts its row over, as INSERT OR REPLACE does.
        (4, "acme", SyncKind::Assignments, true, "again"),
    ];
    let mut answers = Vec::new();
    for store in [&lite, &pg] {
        for (id, token, kind, full, cause) in runs {
            let start = SyncStart {
                id,
                token: token.into(),
                kind,
                full,
                cause: cause.into(),
            };
            let at = Timestamp(1_000 * id as i64 + if cause == "again" { 500 } else { 0 });
            store.sync_started(start, at).await.unwrap();
        }
        store
            .sync_finished(1, Timestamp(1_700), end.clone())
            .await
            .unwrap();
        store
            .sync_finished(2, Timestamp(2_100), failed.clone())
            .await
            .unwrap();
        let abandoned = store
            .write(|tx| Box::pin(syncs::abandon_running_syncs(tx, Timestamp(9_000))))
            .await
            .unwrap();
        // A failing operation leaves nothing behind.
        let refused = store
            .write(|tx| {
                Box::pin(async move {
                    let s = SyncStart {
                        id: 9,
                        token: "acme".into(),
                        kind: SyncKind::Assets,
                        full: true,
                        cause: "x".into(),
                    };
                    syncs::sync_started(tx, &s, Timestamp(1)).await?;
                    Err::<(), _>(StoreError::Corrupt("refused".into()))
                })
            })
            .await;
        assert!(refused.is_err());
        answers.push((
            abandoned,
            store.list_syncs(None, 10).await.unwrap(),
            store.list_syncs(Some("acme".into()), 2).await.unwrap(),
            store
                .list_syncs_page(Some("acme".into()), Some(4), 10)
                .await
                .unwrap(),
            store
                .read(|tx| Box::pin(syncs::next_sync_id(tx)))
                .await
                .unwrap(),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    let pg_views = &answers[1];
    assert_eq!(pg_views.0, 2);
    assert_eq!(pg_views.1.len(), 4);
    assert_eq!(pg_views.1[0].cause.as_deref(), Some("again"));
    assert_eq!(pg_views.4, 5, "the refused run was rolled back");
    pg.close().await.unwrap();
    db.drop_now().await;
}

/// The same outbox steps through both backends' queries answer, and leave, the same.
#[tokio::test]
async fn push_queries_answer_as_sqlites() {
    use crate::store::postgres::queries as pq;
    use crate::store::sqlite::queries as sq;
    use crate::time::Timestamp;

    let db = TempDb::new().await;
    let pg = PgStore::connect(&db.url, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite::open_write_connection(&dir.path().join("s.db")).unwrap();
    // Five changes in the feed (token items), seq 1..=5.
    let feed = "INSERT INTO feed_items (seq, kind, token, subject, state, at, body) \
                SELECT s, 'token', 'acme', 'acme', 'healthy', s, '{}' FROM generate_series(1, 5) s; \
                UPDATE counters SET value = 5 WHERE name = 'change_seq';";
    lite.execute_batch(
        &feed.replace(
            "FROM generate_series(1, 5) s",
            "FROM (WITH RECURSIVE n(s) AS (SELECT 1 UNION ALL SELECT s + 1 FROM n WHERE s < 5) SELECT s FROM n)",
        ),
    )
    .unwrap();
    db.client().await.batch_execute(feed).await.unwrap();

    let t = Timestamp;
    let items = vec![
        (3i64, r#"{"seq":3}"#.to_string()),
        (4, r#"{"seq":4}"#.to_string()),
    ];
    let lite_steps = vec![
        sq::push_pin(&lite, 0, 1, 2, t(10)).unwrap(),
        sq::push_pin(&lite, 0, 1, 2, t(10)).unwrap(), // already pinned
        sq::push_failed(&lite, 1, 2, 1, t(20), "503", t(11)).unwrap(),
        sq::push_ack(&lite, 9, 9, t(12)).unwrap(), // not the pinned batch
        sq::push_ack(&lite, 1, 2, t(13)).unwrap(),
        sq::push_pin(&lite, 2, 3, 4, t(14)).unwrap(),
        sq::push_park(&lite, 3, 4, t(14), 7, "gone", &items, t(15)).unwrap(),
    ];
    let lite_replay = (
        sq::push_replay(&lite, 9).unwrap(),
        sq::push_replay(&lite, 3).unwrap(),
    );
    let lite_end = (
        sq::push_state(&lite).unwrap(),
        sq::push_status(&lite).unwrap(),
        sq::backlog(&lite, 1).unwrap(),
    );

    let it = items.clone();
    let pg_steps = pg
        .write(move |tx| {
            Box::pin(async move {
                Ok(vec![
                    pq::push_pin(tx, 0, 1, 2, t(10)).await?,
                    pq::push_pin(tx, 0, 1, 2, t(10)).await?,
                    pq::push_failed(tx, 1, 2, 1, t(20), "503", t(11)).await?,
                    pq::push_ack(tx, 9, 9, t(12)).await?,
                    pq::push_ack(tx, 1, 2, t(13)).await?,
                    pq::push_pin(tx, 2, 3, 4, t(14)).await?,
                    pq::push_park(tx, 3, 4, t(14), 7, "gone", &it, t(15)).await?,
                ])
            })
        })
        .await
        .unwrap();
    let pg_replay = pg
        .write(|tx| {
            Box::pin(
                async move { Ok((pq::push_replay(tx, 9).await?, pq::push_replay(tx, 3).await?)) },
            )
        })
        .await
        .unwrap();
    let pg_end = pg
        .read(|tx| {
            Box::pin(async move {
                Ok((
                    pq::push_state(tx).await?,
                    pq::push_status(tx).await?,
                    pq::backlog(tx, 1).await?,
                ))
            })
        })
        .await
        .unwrap();
    assert_eq!(pg_steps, lite_steps);
    assert_eq!(lite_steps, vec![true, false, true, false, true, true, true]);
    assert_eq!(pg_replay, lite_replay);
    assert_eq!(pg_end, lite_end);
    assert_eq!(
        pg_end.1.parked, 1,
        "seq 4, after the replay point, is re-queued; seq 3 stays parked"
    );
    pg.close().await.unwrap();
    db.drop_now().await;
}

/// The same turns of changes through both backends' queries leave the same events.
#[tokio::test]
async fn events_queries_answer_as_sqlites() {
    use crate::core::{
        Change, EventRecord, EventType, Failure, FailureSource, HistoryEntry, Outcome, PollRecord,
        State, Timings, TrackRequest,
    };
    use crate::store::postgres::queries as pq;
    use crate::store::sqlite::queries as sq;
    use crate::time::Timestamp;

    let db = TempDb::new().await;
    let pg = PgStore::connect(&db.url, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite::open_write_connection(&dir.path().join("s.db")).unwrap();
    let note = "INSERT INTO notifications (notification_id, token, type, event_id, received_at, \
                body) VALUES ('n1', 'acme', 'ASSET_MANAGEMENT', 'e1', 5, '{}')";
    lite.execute_batch(note).unwrap();
    db.client().await.batch_execute(note).await.unwrap();

    let track = |id: &str, at: i64| {
        let rec = EventRecord::new_tracked(
            Timestamp(at),
            TrackRequest {
                event_id: id.into(),
                token: "acme".into(),
                event_type: EventType::Associate,
                submitted_at: None,
                num_requested: Some(3),
                has_request: true,
                supersedes: None,
            },
            &Timings::default(),
        );
        let mut c = Change::of(&rec);
        c.insert = true;
        c.feed = true;
        c.request_body = Some(format!(r#"{{"for":"{id}"}}"#));
        c.history.push(HistoryEntry {
            at: Timestamp(at),
            from: None,
            to: rec.state,
            outcome: None,
            cause: "tracked".into(),
        });
        (rec, c)
    };
    let (e1, t1) = track("e1", 10);
    let (_, t2) = track("e2", 11);
    // e1 settles failed, with a failure, a poll and the notification applied.
    let mut done = e1.clone();
    done.state = State::Settled;
    done.outcome = Some(Outcome::Failed);
    done.settled_at = Some(Timestamp(20));
    done.polls = 1;
    let mut s1 = Change::of(&done);
    s1.feed = true;
    s1.history.push(HistoryEntry {
        at: Timestamp(20),
        from: Some(e1.state),
        to: State::Settled,
        outcome: Some(Outcome::Failed),
        cause: "notification".into(),
    });
    s1.failures.push((
        FailureSource::Notification,
        Failure {
            error_number: 9610,
            error_message: "nope".into(),
            error_info: Some(serde_json::json!({"serialNumbers": ["S1"]})),
        },
    ));
    s1.polls.push(PollRecord {
        at: Timestamp(19),
        result: "PENDING".into(),
        detail: None,
    });
    s1.applied_notifications.push("n1".into());
    // e3 resubmits e2: a new event copying e2's body.
    let (mut e3, mut t3) = track("e3", 30);
    e3.supersedes = Some("e2".into());
    t3.event = e3.clone();
    t3.request_body = None;
    t3.copy_request_from = Some("e2".into());
    // An update of an event that was never inserted fails alone.
    let (ghost, _) = track("ghost", 31);
    let g = Change::of(&ghost);

    let turns = vec![vec![t1, t2], vec![s1, g, t3]];
    let mut lite_errors = Vec::new();
    for turn in &turns {
        lite_errors.push(sq::apply_changes(&lite, turn));
    }
    let mut pg_errors = Vec::new();
    for turn in turns.clone() {
        pg_errors.push(
            pg.write(move |tx| Box::pin(async move { Ok(pq::apply_changes(tx, &turn).await) }))
                .await
                .unwrap(),
        );
    }
    let shape = |errs: &Vec<Vec<Option<String>>>| -> Vec<Vec<bool>> {
        errs.iter()
            .map(|t| t.iter().map(Option::is_some).collect())
            .collect()
    };
    assert_eq!(
        shape(&pg_errors),
        shape(&lite_errors),
        "{pg_errors:?} {lite_errors:?}"
    );
    assert_eq!(
        shape(&pg_errors),
        vec![vec![false, false], vec![false, true, false]]
    );

    let ids = ["e1", "e2", "e3", "ghost"];
    let mut lite_view = Vec::new();
    for id in ids {
        lite_view.push((
            sq::get_event(&lite, id).unwrap(),
            sq::event_detail(&lite, id).unwrap(),
            sq::request_body(&lite, id).unwrap(),
        ));
    }
    let mut unsettled = sq::load_unsettled(&lite).unwrap();
    unsettled.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let pg_view = pg
        .read(move |tx| {
            Box::pin(async move {
                let mut out = Vec::new();
                for id in ids {
                    out.push((
                        pq::get_event(tx, id).await?,
                        pq::event_detail(tx, id).await?,
                        pq::request_body(tx, id).await?,
                    ));
                }
                let mut unsettled = pq::load_unsettled(tx).await?;
                unsettled.sort_by(|a, b| a.event_id.cmp(&b.event_id));
                Ok((out, unsettled))
            })
        })
        .await
        .unwrap();
    assert_eq!(pg_view.0, lite_view);
    assert_eq!(pg_view.1, unsettled);
    assert_eq!(
        pg_view.0[2].2.as_deref(),
        Some(r#"{"for":"e2"}"#),
        "body copied"
    );
    assert_eq!(pg_view.1.len(), 2);
    // The feed counter: three inserts and one fed update.
    let seq: i64 = db
        .client()
        .await
        .query_one("SELECT value FROM counters WHERE name = 'change_seq'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 4);
    pg.close().await.unwrap();
    db.drop_now().await;
}

/// Tokens, their feed items, notifications and the quarantine answer the same on both
/// backends.
#[tokio::test]
async fn tokens_feed_and_notifications_answer_alike_on_both_backends() {
    use crate::core::{Change, EventRecord, EventType, Failure, Timings, TrackRequest};
    use crate::store::sql::tests::{old, on_both};
    use crate::store::sql::Tx;
    use crate::store::{feed, tokens};
    use crate::store::{
        ChangeView, FeedItem, LicenceCounts, NewNotification, TokenRow, TokenStatus,
    };
    use crate::time::Timestamp;

    async fn steps(tx: &mut dyn Tx) -> Result<impl PartialEq + std::fmt::Debug, StoreError> {
        let t = Timestamp;
        let rows = vec![
            TokenRow {
                name: "acme".into(),
                org_name: Some("Acme".into()),
                expires_at: Some(t(99_000)),
            },
            TokenRow {
                name: "beta".into(),
                org_name: None,
                expires_at: None,
            },
        ];
        let revoked = TokenStatus::new("revoked", Some("9625".into()));
        let healthy = TokenStatus::new("healthy", None);
        let soon = TokenStatus {
            health: "expiring_soon".into(),
            reason: Some("soon".into()),
            days_left: Some(5),
            threshold: Some(7),
        };
        let counts = LicenceCounts {
            adam_id: "42",
            pricing_param: "STDQ",
            product_type: Some("App"),
            before: Some(0),
            available: 5,
            assigned: 1,
            total: 6,
        };
        let note = |id: &str| NewNotification {
            notification_id: id.into(),
            token: "acme".into(),
            notification_type: "ASSET_MANAGEMENT".into(),
            event_id: Some("e1".into()),
            result: Some("FAILURE".into()),
            entities: Some(2),
            error: Some(Failure {
                error_number: 9610,
                error_message: "x".into(),
                error_info: None,
            }),
            received_at: t(50),
            body: format!(r#"{{"id":"{id}"}}"#),
        };
        let rec = EventRecord::new_tracked(
            t(40),
            TrackRequest {
                event_id: "e1".into(),
                token: "acme".into(),
                event_type: EventType::Associate,
                submitted_at: None,
                num_requested: Some(2),
                has_request: false,
                supersedes: None,
            },
            &Timings::default(),
        );
        let mut tracked = Change::of(&rec);
        tracked.insert = true;
        tracked.feed = true;

        tokens::upsert_tokens(tx, &rows, t(1)).await?;
        tokens::set_token_health(tx, "acme", "unhealthy", Some("9625"), t(10), &revoked).await?;
        tokens::set_token_health(tx, "acme", "healthy", None, t(20), &healthy).await?;
        let items = vec![
            feed::record_token_status(tx, "beta", &soon, t(30)).await?,
            feed::record_token_status(tx, "beta", &soon, t(31)).await?,
            feed::record_licence_counts(tx, "acme", &counts, t(32)).await?,
        ];
        tokens::set_token_location(
            tx,
            "beta",
            Some("u1"),
            Some("HQ"),
            Some("m1"),
            Some("other"),
        )
        .await?;
        tokens::set_token_location(tx, "beta", None, None, Some("m1"), None).await?;
        let applied = old!(tx, apply_changes(&[tracked.clone()]));
        let mut notes = Vec::new();
        for id in ["n1", "n1", "n2"] {
            notes.push(old!(tx, insert_notification(&note(id)))?);
        }
        for i in 0..3u8 {
            old!(tx, quarantine("acme", t(60), "bad", &[i], 2))?;
        }
        let mut quarantined = Vec::new();
        for r in tx
            .query("SELECT body FROM quarantine ORDER BY id", &[])
            .await?
        {
            quarantined.push(r.opt_blob(0)?.map(<[u8]>::to_vec));
        }
        // set_token_location stamps its items with the clock: compare without `at`.
        let no_at = |v: Vec<ChangeView>| -> Vec<ChangeView> {
            v.into_iter()
                .map(|mut c| {
                    if let FeedItem::Token(m) = &mut c.item {
                        m.remove("at");
                    }
                    c
                })
                .collect()
        };
        Ok((
            items,
            applied,
            notes,
            quarantined,
            tokens::list_tokens(tx).await?,
            tokens::unhealthy_tokens(tx)
                .await?
                .into_iter()
                .map(|u| (u.name, u.health, u.reason, u.mdm_conflict))
                .collect::<Vec<_>>(),
            no_at(old!(tx, changes_after(0, 100))?),
            no_at(old!(tx, changes_between(2, 4, 10))?),
            old!(tx, unapplied_notifications_for("e1"))?,
            old!(tx, unapplied_for_unsettled())?,
            old!(tx, mirror_notification_bodies_since("acme", t(50)))?,
        ))
    }

    let (lite, pg) = on_both(|tx| Box::pin(steps(tx))).await;
    assert_eq!(lite, pg);
    let dbg = format!("{pg:?}");
    // Spot checks of what both answered.
    assert!(
        dbg.starts_with(
            "([Some(3), None, Some(4)], [None], [true, false, true], [Some([1]), Some([2])]"
        ),
        "{dbg}"
    );
    assert!(dbg.contains("pending: 1"), "{dbg}");
}

/// Listing, the status page, the metrics' counts, the licence report and retention through
/// both backends' queries answer the same.
#[tokio::test]
async fn reads_and_retention_answer_as_sqlites() {
    use std::collections::HashSet;

    use crate::core::{
        Change, EventRecord, EventType, Failure, FailureSource, HistoryEntry, Outcome, PollRecord,
        State, Timings, TrackRequest,
    };
    use crate::store::postgres::queries as pq;
    use crate::store::sqlite::queries as sq;
    use crate::store::EventFilter;
    use crate::time::Timestamp;

    let db = TempDb::new().await;
    let pg = PgStore::connect(&db.url, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut lite = sqlite::open_write_connection(&dir.path().join("s.db")).unwrap();
    let t = Timestamp;
    let hour = 3_600_000i64;
    let now = t(100 * hour);
    let mut changes = Vec::new();
    for i in 0..12i64 {
        let token = if i % 3 == 0 { "beta" } else { "acme" };
        let ty = if i % 2 == 0 {
            EventType::Associate
        } else {
            EventType::Revoke
        };
        let mut rec = EventRecord::new_tracked(
            t(now.0 - (12 - i) * hour),
            TrackRequest {
                event_id: format!("e{i:02}"),
                token: token.into(),
                event_type: ty,
                submitted_at: None,
                num_requested: Some(1),
                has_request: true,
                supersedes: None,
            },
            &Timings::default(),
        );
        if i % 4 == 0 {
            rec.state = State::Settled;
            rec.outcome = Some(if i == 0 {
                Outcome::Failed
            } else {
                Outcome::Complete
            });
            rec.settled_at = Some(t(now.0 - (10 - i).max(1) * hour));
        }
        let mut c = Change::of(&rec);
        c.insert = true;
        c.feed = true;
        c.request_body = Some(
            r#"{"assets":[{"adamId":"1","pricingParam":"STDQ"}],"serialNumbers":["S1"]}"#.into(),
        );
        c.history.push(HistoryEntry {
            at: rec.tracked_at,
            from: None,
            to: rec.state,
            outcome: rec.outcome,
            cause: "tracked".into(),
        });
        if i % 5 == 0 {
            c.failures.push((
                FailureSource::Status,
                Failure {
                    error_number: 9600 + i,
                    error_message: "bad".into(),
                    error_info: None,
                },
            ));
        }
        c.polls.push(PollRecord {
            at: t(now.0 - i * hour / 2),
            result: "PENDING".into(),
            detail: None,
        });
        changes.push(c);
    }
    let setup = format!(
        "INSERT INTO tokens (name, expires_at, updated_at) VALUES ('acme', 5, 1), ('beta', 6, 1), \
           ('gone', 7, 1); \
         INSERT INTO syncs (id, token, kind, \"full\", started_at, pages) VALUES \
           (1, 'acme', 'assets', TRUE, {a}, 3), (2, 'acme', 'assignments', FALSE, {b}, 4); \
         INSERT INTO mirror_assets (token, adam_id, pricing_param, assigned_count, \
           available_count, retired_count, total_count, json, updated_at) VALUES \
           ('acme', '1', 'STDQ', 2, 3, 0, 5, '{{\"productType\":\"App\"}}', 1); \
         INSERT INTO mirror_assignments (token, adam_id, pricing_param, client_user_id, \
           serial_number, updated_at) VALUES ('acme', '1', 'STDQ', '', 'S1', 1), \
           ('acme', '1', 'STDQ', 'u9', '', 1), ('beta', '2', 'STDQ', '', 'S2', 1);",
        a = now.0 - 2 * hour,
        b = now.0 - hour / 2
    );
    lite.execute_batch(&setup.replace("TRUE", "1").replace("FALSE", "0"))
        .unwrap();
    db.client().await.batch_execute(&setup).await.unwrap();
    assert!(sq::apply_changes(&lite, &changes)
        .iter()
        .all(Option::is_none));
    let ch = changes.clone();
    let errs = pg
        .write(move |tx| Box::pin(async move { Ok(pq::apply_changes(tx, &ch).await) }))
        .await
        .unwrap();
    assert!(errs.iter().all(Option::is_none), "{errs:?}");

    let filters = vec![
        EventFilter {
            limit: 5,
            ..Default::default()
        },
        EventFilter {
            limit: 3,
            token: Some("acme".into()),
            event_type: Some(EventType::Revoke),
            ..Default::default()
        },
        EventFilter {
            limit: 10,
            state: Some(State::Settled),
            outcome: Some(Outcome::Complete),
            ..Default::default()
        },
    ];
    let configured: HashSet<String> = ["acme".to_string(), "beta".to_string()].into();
    let lite_reads = |c: &mut rusqlite::Connection| {
        let mut pages = Vec::new();
        for f in &filters {
            let mut f = f.clone();
            loop {
                let (views, next) = sq::list_events(c, &f).unwrap();
                pages.push(views);
                match next {
                    Some(n) => f.cursor = Some(n),
                    None => break,
                }
            }
        }
        (
            pages,
            sq::list_event_view(c, "e05").unwrap(),
            sq::due_events(c, t(i64::MAX), 100).unwrap(),
            crate::store::sql::sqlite::run(c, |tx| {
                Box::pin(crate::store::status::status_snapshot(tx, now))
            })
            .unwrap(),
            super::super::sqlite::stats::store_stats(c, &configured).unwrap(),
            sq::licence_report(c, None).unwrap(),
            sq::licence_report(c, Some("acme")).unwrap(),
        )
    };
    let lite_before = lite_reads(&mut lite);
    let (fs, cf) = (filters.clone(), configured.clone());
    let pg_reads = move |pg: PgStore| {
        let (fs, cf) = (fs.clone(), cf.clone());
        async move {
            pg.read(move |tx| {
                Box::pin(async move {
                    let mut pages = Vec::new();
                    for f in &fs {
                        let mut f = f.clone();
                        loop {
                            let (views, next) = pq::list_events(tx, &f).await?;
                            pages.push(views);
                            match next {
                                Some(n) => f.cursor = Some(n),
                                None => break,
                            }
                        }
                    }
                    Ok((
                        pages,
                        pq::list_event_view(tx, "e05").await?,
                        pq::due_events(tx, t(i64::MAX), 100).await?,
                        crate::store::status::status_snapshot(
                            &mut super::super::sql::postgres::PgTx::new(tx),
                            now,
                        )
                        .await?,
                        pq::stats::store_stats(tx, &cf).await?,
                        pq::licence_report(tx, None).await?,
                        pq::licence_report(tx, Some("acme")).await?,
                    ))
                })
            })
            .await
            .unwrap()
        }
    };
    let pg_before = pg_reads(pg.clone()).await;
    assert_eq!(pg_before.0, lite_before.0, "list_events pages");
    assert!(pg_before.0.len() >= 5, "{:?}", pg_before.0.len());
    assert_eq!(pg_before.1, lite_before.1, "list_event_view");
    assert_eq!(pg_before.2, lite_before.2, "due_events");
    assert_eq!(pg_before.3, lite_before.3, "status_snapshot");
    assert!(pg_before
        .3
        .hours
        .iter()
        .any(|h| h.sync_pages > 0 && h.polls > 0));
    assert_eq!(pg_before.4, lite_before.4, "store_stats");
    assert_eq!(pg_before.5, lite_before.5, "licence_report");
    assert_eq!(pg_before.6, lite_before.6, "licence_report acme");
    assert_eq!(pg_before.6[0].unknown_origin, 1, "{:?}", pg_before.6);

    // Retention, in two bounded batches.
    let before = t(now.0 - 5 * hour);
    let lite_pruned = (
        sq::prune(&lite, before, 2).unwrap(),
        sq::prune(&lite, before, 2).unwrap(),
    );
    let pg_pruned = pg
        .write(move |tx| {
            Box::pin(async move {
                let a = pq::prune(tx, before, 2).await?;
                Ok((a, pq::prune(tx, before, 2).await?))
            })
        })
        .await
        .unwrap();
    assert_eq!(pg_pruned, lite_pruned);
    assert_eq!(pg_pruned.0, 2);
    let lite_after = lite_reads(&mut lite);
    let pg_after = pg_reads(pg.clone()).await;
    assert_eq!(pg_after.0, lite_after.0);
    assert_eq!(pg_after.3, lite_after.3);
    assert_eq!(pg_after.4, lite_after.4);
    pg.close().await.unwrap();
    db.drop_now().await;
}

/// A sync's lifetime on the mirror through both backends: pages staged, digests, the final
/// step (replace, with the replay of notifications that arrived meanwhile), notifications of
/// every kind, reads, versions and the stage discarded.
#[tokio::test]
async fn mirror_answers_as_sqlites() {
    use serde_json::json;

    use crate::apple::model::{Assignment, ResponseAsset, ResponseUser};
    use crate::apple::{parse_notification, Streamed};
    use crate::core::SyncKind;
    use crate::mirror::run::sync_commit;
    use crate::store::postgres::{mirror as pm, notify as pn, queries as pq};
    use crate::store::sqlite::{mirror as sm, notify as sn, queries as sq};
    use crate::store::{ChangeView, FeedItem, MirrorKind, NewNotification};
    use crate::time::Timestamp;

    let db = TempDb::new().await;
    let pg = PgStore::connect(&db.url, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite::open_write_connection(&dir.path().join("s.db")).unwrap();
    let t = Timestamp;
    let asset = |adam: &str, total: i64, assigned: i64| -> ResponseAsset {
        serde_json::from_value(json!({"adamId": adam, "pricingParam": "STDQ",
            "productType": "App", "assignedCount": assigned, "availableCount": total - assigned,
            "retiredCount": 0, "totalCount": total, "deviceAssignable": true,
            "revocable": true, "supportedPlatforms": ["iOS"]}))
        .unwrap()
    };
    let assignment = |serial: Option<&str>, user: Option<&str>| -> Assignment {
        serde_json::from_value(json!({"adamId": "1", "pricingParam": "STDQ",
            "serialNumber": serial, "clientUserId": user}))
        .unwrap()
    };
    let user = |id: &str, status: &str, invite: Option<&str>| -> ResponseUser {
        serde_json::from_value(json!({"clientUserId": id, "status": status,
            "inviteCode": invite, "email": format!("{id}@example.com")}))
        .unwrap()
    };
    let read = |version: &str| Streamed {
        version_id: Some(version.into()),
        pages: 1,
        records: 0,
        consistent: true,
        incremental: false,
        ..Streamed::default()
    };
    let note = |id: &str, ty: &str, body: serde_json::Value| {
        let body = json!({"notificationId": id, "notificationType": ty, "uId": "1",
            "notification": body})
        .to_string();
        (
            NewNotification {
                notification_id: id.into(),
                token: "acme".into(),
                notification_type: ty.into(),
                event_id: None,
                result: Some("SUCCESS".into()),
                entities: Some(1),
                error: None,
                received_at: t(2_000),
                body: body.clone(),
            },
            parse_notification(body.as_bytes()).unwrap(),
        )
    };
    let managed = |id: &str, kind: &str, serial: &str| {
        note(
            id,
            "ASSET_MANAGEMENT",
            json!({"eventId": format!("e-{id}"), "result": "SUCCESS", "type": kind,
                "assignments": [{"adamId": "1", "pricingParam": "STDQ", "serialNumber": serial}]}),
        )
    };
    let mid_sync = vec![
        managed("n1", "DISASSOCIATE", "S1"),
        managed("n2", "ASSOCIATE", "S3"),
    ];
    let later = vec![
        note(
            "n3",
            "USER_MANAGEMENT",
            json!({"eventId": "e-n3", "result": "SUCCESS", "type": "UPDATE",
                "users": [{"clientUserId": "u1", "status": "Associated", "email": null}]}),
        ),
        note(
            "n4",
            "ASSET_COUNT",
            json!({"adamId": "1", "countDelta": 5, "pricingParam": "STDQ"}),
        ),
        note(
            "n5",
            "USER_MANAGEMENT",
            json!({"eventId": "e-n5", "result": "SUCCESS", "type": "RETIRE",
                "users": [{"clientUserId": "u2", "status": "Retired", "inviteCode": "C"}]}),
        ),
    ];
    let assets = vec![asset("1", 1, 0), asset("2", 1, 1)];
    let page = vec![
        assignment(Some("S1"), None),
        assignment(Some("S2"), None),
        assignment(None, Some("u2")),
    ];
    let users = vec![
        user("u1", "Associated", Some("A")),
        user("u1", "Retired", Some("B")),
        user("u2", "Registered", Some("C")),
    ];

    // SQLite, job by job as the store runs them.
    let lite_digests = {
        sq::sync_started(&lite, 1, "acme", SyncKind::Assets, true, "t", t(1)).unwrap();
        sm::stage_assets(&lite, 1, &assets).unwrap();
        let d1 = sm::stage_digest(&lite, 1, SyncKind::Assets).unwrap();
        sm::commit_sync(
            &lite,
            sync_commit("acme", 1, SyncKind::Assets, t(1), &read("v1")),
        )
        .unwrap();
        sq::sync_started(&lite, 2, "acme", SyncKind::Assignments, true, "t", t(1)).unwrap();
        sm::stage_assignments(&lite, 2, &page).unwrap();
        let d2 = sm::stage_digest(&lite, 2, SyncKind::Assignments).unwrap();
        sm::commit_sync(
            &lite,
            sync_commit("acme", 2, SyncKind::Assignments, t(1), &read("v2")),
        )
        .unwrap();
        sq::sync_started(&lite, 3, "acme", SyncKind::Assignments, true, "t", t(1_500)).unwrap();
        sm::stage_assignments(&lite, 3, &page[..1]).unwrap();
        for (row, parsed) in &mid_sync {
            assert!(sq::insert_notification(&lite, row).unwrap());
            sn::apply_notification(&lite, "acme", parsed, t(2_000)).unwrap();
        }
        sm::commit_sync(
            &lite,
            sync_commit("acme", 3, SyncKind::Assignments, t(1_500), &read("v3")),
        )
        .unwrap();
        sq::sync_started(&lite, 4, "acme", SyncKind::Users, true, "t", t(3_000)).unwrap();
        sm::stage_users(&lite, 4, &users).unwrap();
        let d4 = sm::stage_digest(&lite, 4, SyncKind::Users).unwrap();
        sm::commit_sync(
            &lite,
            sync_commit("acme", 4, SyncKind::Users, t(3_000), &read("v4")),
        )
        .unwrap();
        for (row, parsed) in &later {
            assert!(sq::insert_notification(&lite, row).unwrap());
            sn::apply_notification(&lite, "acme", parsed, t(4_000)).unwrap();
        }
        (d1, d2, d4)
    };
    let lite_reads = (
        sm::list(&lite, "acme", MirrorKind::Assets, 100, 0).unwrap(),
        sm::list(&lite, "acme", MirrorKind::Assignments, 100, 0).unwrap(),
        sm::list(&lite, "acme", MirrorKind::Users, 100, 0).unwrap(),
        sm::list(&lite, "acme", MirrorKind::Assignments, 1, 1).unwrap(),
        sm::get_version(&lite, "acme", SyncKind::Assignments).unwrap(),
        sm::stage_count(&lite, 3, SyncKind::Assignments).unwrap(),
        sq::licence_report(&lite, Some("acme")).unwrap(),
    );
    let lite_feed = sq::changes_after(&lite, 0, 100).unwrap();
    let lite_discard = (
        sm::discard_stage(&lite, 2, SyncKind::Assignments, 2).unwrap(),
        sm::discard_stage(&lite, 2, SyncKind::Assignments, 2).unwrap(),
        sm::discard_all_stages(&lite).unwrap(),
    );

    // PostgreSQL, one transaction per job.
    macro_rules! job {
        ($body:expr) => {
            pg.write(move |tx| Box::pin(async move { $body(tx).await }))
                .await
                .unwrap()
        };
    }
    let (a, p, u) = (assets.clone(), page.clone(), users.clone());
    job!(|tx| pq::sync_started(tx, 1, "acme", SyncKind::Assets, true, "t", t(1)));
    job!(|tx| pm::stage_assets(tx, 1, &a));
    let d1 = job!(|tx| pm::stage_digest(tx, 1, SyncKind::Assets));
    job!(|tx| pm::commit_sync(
        tx,
        sync_commit("acme", 1, SyncKind::Assets, t(1), &read("v1"))
    ));
    job!(|tx| pq::sync_started(tx, 2, "acme", SyncKind::Assignments, true, "t", t(1)));
    let p2 = p.clone();
    job!(|tx| pm::stage_assignments(tx, 2, &p2));
    let d2 = job!(|tx| pm::stage_digest(tx, 2, SyncKind::Assignments));
    job!(|tx| pm::commit_sync(
        tx,
        sync_commit("acme", 2, SyncKind::Assignments, t(1), &read("v2"))
    ));
    job!(|tx| pq::sync_started(tx, 3, "acme", SyncKind::Assignments, true, "t", t(1_500)));
    job!(|tx| pm::stage_assignments(tx, 3, &p[..1]));
    for (row, parsed) in mid_sync.clone() {
        let new = job!(|tx| async move {
            let new = pq::insert_notification(tx, &row).await?;
            pn::apply_notification(tx, "acme", &parsed, t(2_000)).await?;
            Ok::<_, StoreError>(new)
        });
        assert!(new);
    }
    job!(|tx| pm::commit_sync(
        tx,
        sync_commit("acme", 3, SyncKind::Assignments, t(1_500), &read("v3"))
    ));
    job!(|tx| pq::sync_started(tx, 4, "acme", SyncKind::Users, true, "t", t(3_000)));
    job!(|tx| pm::stage_users(tx, 4, &u));
    let d4 = job!(|tx| pm::stage_digest(tx, 4, SyncKind::Users));
    job!(|tx| pm::commit_sync(
        tx,
        sync_commit("acme", 4, SyncKind::Users, t(3_000), &read("v4"))
    ));
    for (row, parsed) in later.clone() {
        job!(|tx| async move {
            pq::insert_notification(tx, &row).await?;
            pn::apply_notification(tx, "acme", &parsed, t(4_000)).await
        });
    }
    let pg_reads = job!(|tx| async move {
        Ok::<_, StoreError>((
            pm::list(tx, "acme", MirrorKind::Assets, 100, 0).await?,
            pm::list(tx, "acme", MirrorKind::Assignments, 100, 0).await?,
            pm::list(tx, "acme", MirrorKind::Users, 100, 0).await?,
            pm::list(tx, "acme", MirrorKind::Assignments, 1, 1).await?,
            pm::get_version(tx, "acme", SyncKind::Assignments).await?,
            pm::stage_count(tx, 3, SyncKind::Assignments).await?,
            pq::licence_report(tx, Some("acme")).await?,
        ))
    });
    let pg_feed = job!(|tx| pq::changes_after(tx, 0, 100));
    let pg_discard = job!(|tx| async move {
        Ok::<_, StoreError>((
            pm::discard_stage(tx, 2, SyncKind::Assignments, 2).await?,
            pm::discard_stage(tx, 2, SyncKind::Assignments, 2).await?,
            pm::discard_all_stages(tx).await?,
        ))
    });

    assert_eq!((d1, d2, d4), lite_digests, "stage digests");
    assert_eq!(pg_reads.0, lite_reads.0, "assets");
    assert_eq!(pg_reads.1, lite_reads.1, "assignments");
    assert_eq!(pg_reads.2, lite_reads.2, "users");
    assert_eq!(pg_reads.3, lite_reads.3, "a page of assignments");
    assert_eq!(pg_reads.4, lite_reads.4, "versionId");
    assert_eq!(pg_reads.5, lite_reads.5, "stage count");
    assert_eq!(pg_reads.6, lite_reads.6, "licence report");
    // The read held S1 only (S2 left the mirror with the replace); the replay kept n1 and n2:
    // S1 gone again, S3 there although the page predates it.
    let serials: Vec<&str> = pg_reads
        .1
        .iter()
        .filter_map(|v| v["serialNumber"].as_str())
        .collect();
    assert_eq!(serials, ["S3"]);
    // Licence items are stamped with the clock at the final step: compare without `at`.
    let no_at = |v: &Vec<ChangeView>| -> Vec<ChangeView> {
        v.iter()
            .cloned()
            .map(|mut c| {
                if let FeedItem::Licence(m) | FeedItem::Token(m) = &mut c.item {
                    m.remove("at");
                }
                c
            })
            .collect()
    };
    assert_eq!(no_at(&pg_feed), no_at(&lite_feed), "feed");
    assert_eq!(
        pg_feed.len(),
        2,
        "exhausted by n2, available again by n4: {pg_feed:?}"
    );
    assert_eq!(pg_discard, lite_discard, "discard");
    pg.close().await.unwrap();
    db.drop_now().await;
}

/// The executor over `Store::Postgres`: tracking answers after the commit and is
/// idempotent, an early notification reaches its event, the feed's seq grows in commit
/// order, and a restart recovers every unsettled event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_runs_on_the_postgres_store() {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::apple::parse_notification;
    use crate::core::{Core, EventRecord, EventType, Timings, TrackRequest};
    use crate::executor::{Executor, NoApple, TrackReply};
    use crate::store::{NewNotification, Store, TokenRow};
    use crate::time::Timestamp;

    let db = TempDb::new().await;
    let store = Store::connect_postgres(&db.url, None).await.unwrap();
    let now = Timestamp::now();
    let token = TokenRow {
        name: "acme".into(),
        ..TokenRow::default()
    };
    store.prepare_start(vec![token.clone()], now).await.unwrap();
    let start = |store: Store| {
        let (executor, handle) = Executor::new(
            Core::new(Timings::default(), 1),
            store.clone(),
            Arc::new(NoApple {
                store,
                retention: Duration::from_secs(86_400),
            }),
            Default::default(),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(executor.run(shutdown.clone(), Duration::from_secs(1)));
        (handle, shutdown, run)
    };
    let record = |id: String| {
        EventRecord::new_tracked(
            Timestamp::now(),
            TrackRequest {
                event_id: id,
                token: "acme".into(),
                event_type: EventType::Associate,
                submitted_at: None,
                num_requested: Some(1),
                has_request: false,
                supersedes: None,
            },
            &Timings::default(),
        )
    };
    let (handle, shutdown, run) = start(store.clone());

    // A notification for e2 arrives before e2 is tracked.
    let body = r#"{"notificationId":"n-e2","notificationType":"ASSET_MANAGEMENT","uId":"1",
        "notification":{"eventId":"e2","result":"SUCCESS","type":"ASSOCIATE","assignments":[]}}"#;
    let row = NewNotification {
        notification_id: "n-e2".into(),
        token: "acme".into(),
        notification_type: "ASSET_MANAGEMENT".into(),
        event_id: Some("e2".into()),
        result: Some("SUCCESS".into()),
        entities: Some(1),
        error: None,
        received_at: Timestamp::now(),
        body: body.into(),
    };
    let parsed = parse_notification(body.as_bytes()).unwrap();
    assert!(store
        .record_notification(row.clone(), parsed.clone(), Timestamp::now())
        .await
        .unwrap());
    assert!(!store
        .record_notification(row, parsed, Timestamp::now())
        .await
        .unwrap());

    let (a, b) = tokio::join!(
        handle.track(record("e1".into()), Some("{}".into())),
        handle.track(record("e1".into()), Some("{}".into()))
    );
    let created = [&a, &b]
        .iter()
        .filter(|r| matches!(r, TrackReply::Created(_)))
        .count();
    assert_eq!(created, 1, "{a:?} {b:?}");
    assert!(
        store.get_event("e1").await.unwrap().is_some(),
        "answered after the commit"
    );
    assert_eq!(
        store.request_body("e1").await.unwrap().as_deref(),
        Some("{}")
    );
    assert!(matches!(
        handle.track(record("e2".into()), None).await,
        TrackReply::Created(_)
    ));
    let mut applied = false;
    for _ in 0..200 {
        let detail = store.event_detail("e2").await.unwrap().unwrap();
        if detail.notifications.iter().any(|n| n.applied_at.is_some()) {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(applied, "the early notification reached e2");
    let e2 = store.get_event("e2").await.unwrap().unwrap();
    assert_eq!(
        (e2.state, e2.outcome),
        (
            crate::core::State::Settled,
            Some(crate::core::Outcome::Complete)
        ),
        "its SUCCESS settled it"
    );
    let many: Vec<_> = (0..40)
        .map(|i| handle.track(record(format!("m{i:02}")), None))
        .collect();
    for r in futures::future::join_all(many).await {
        assert!(matches!(r, TrackReply::Created(_)), "{r:?}");
    }
    let feed = store.changes_after(0, 1000).await.unwrap();
    assert!(feed.len() >= 42, "{}", feed.len());
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.list_tokens().await.unwrap()[0].name, "acme");
    shutdown.cancel();
    run.await.unwrap();
    store.close().await.unwrap();
    assert!(store.ping().await.is_err(), "closed");

    // A restart recovers every unsettled event.
    let again = Store::connect_postgres(&db.url, None).await.unwrap();
    again
        .prepare_start(vec![token], Timestamp::now())
        .await
        .unwrap();
    let (ids, n) = again
        .recover(
            |_| Vec::new(),
            |ids: &mut Vec<String>, rec| ids.push(rec.event_id),
        )
        .await
        .unwrap();
    assert_eq!(n, 41, "e1 and the 40, not the settled e2");
    assert_eq!(ids.len(), 41);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "paged by eventId");
    again.close().await.unwrap();
    db.drop_now().await;
}

/// The early notifications of a turn's inserted events, read in one query, come as the
/// per-event reads would: the first event's in arrival order, then the next's; applied ones
/// and other events' left out.
#[tokio::test]
async fn early_notifications_of_several_events_in_one_query() {
    use crate::store::postgres::queries as pq;

    let db = TempDb::new().await;
    let pg = PgStore::connect(&db.url, None).await.unwrap();
    db.client()
        .await
        .batch_execute(
            "INSERT INTO notifications (notification_id, token, type, event_id, received_at, \
             body, applied_at) VALUES \
             ('a', 'acme', 'ASSET_MANAGEMENT', 'e2', 1, '{}', NULL), \
             ('b', 'acme', 'ASSET_MANAGEMENT', 'e1', 2, '{}', NULL), \
             ('c', 'acme', 'ASSET_MANAGEMENT', 'e3', 3, '{}', NULL), \
             ('d', 'acme', 'ASSET_MANAGEMENT', 'e2', 4, '{}', NULL), \
             ('e', 'acme', 'ASSET_MANAGEMENT', 'e1', 5, '{}', 6)",
        )
        .await
        .unwrap();
    let (one_by_one, at_once, none) = pg
        .read(|tx| {
            Box::pin(async move {
                let mut one_by_one = pq::unapplied_notifications_for(tx, "e1").await?;
                one_by_one.extend(pq::unapplied_notifications_for(tx, "e2").await?);
                Ok((
                    one_by_one,
                    pq::unapplied_notifications_for_all(tx, &["e1", "e2"]).await?,
                    pq::unapplied_notifications_for_all(tx, &[]).await?,
                ))
            })
        })
        .await
        .unwrap();
    let ids = |v: &[crate::core::NotificationInput]| {
        v.iter()
            .map(|n| n.notification_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&at_once), ["b", "a", "d"]);
    assert_eq!(ids(&at_once), ids(&one_by_one));
    assert!(none.is_empty());
    pg.close().await.unwrap();
    db.drop_now().await;
}
