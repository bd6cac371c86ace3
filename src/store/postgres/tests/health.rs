//! Failing writes on PostgreSQL, against the real server: the write health (`/healthz`'s
//! `store`) shows them and clears once a write commits, and a turn whose transaction does
//! not commit comes back with every change failed (to be retried), never lost.

use std::time::Duration;

use futures::FutureExt as _;

use super::TempDb;
use crate::core::{Change, EventRecord, EventType, Timings, TrackRequest};
use crate::store::postgres::{PgStore, SessionLimits};
use crate::store::{Store, StoreError, TurnCommit, TurnWrite};
use crate::time::Timestamp;

/// A turn inserting the events `ids`.
fn inserts(ids: &[&str]) -> TurnWrite {
    let changes = ids
        .iter()
        .map(|id| {
            let rec = EventRecord::new_tracked(
                Timestamp(1_000),
                TrackRequest {
                    event_id: (*id).into(),
                    token: "acme".into(),
                    event_type: EventType::Associate,
                    submitted_at: None,
                    num_requested: Some(1),
                    has_request: false,
                    supersedes: None,
                },
                &Timings::default(),
            );
            let mut c = Change::of(&rec);
            c.insert = true;
            c.feed = true;
            c
        })
        .collect();
    TurnWrite {
        changes,
        syncs: Vec::new(),
    }
}

/// Queues `turn` and waits for its answer (bounded).
async fn commit(store: &Store, turn: TurnWrite) -> Result<TurnCommit, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.commit_turn(turn, Timestamp(2_000), tx).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("a turn is answered")
        .expect("a turn is answered, not dropped")
}

/// The events of `ids` the database holds.
async fn stored(db: &TempDb, ids: &[&str]) -> Vec<String> {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    db.client()
        .await
        .query(
            "SELECT event_id FROM events WHERE event_id = ANY($1) ORDER BY event_id",
            &[&ids],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

/// Runs `sql` on the test server's admin database.
async fn admin(db: &TempDb, sql: &str) {
    let (client, conn) = tokio_postgres::connect(&db.admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}

/// Ends every session of `db` but the caller's (the store's pooled connections among them),
/// so the next ones start under the database's new settings.
fn end_sessions(db: &TempDb) -> String {
    format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    )
}

/// A commit the server refuses (a deferred trigger failing as a full disk would, at
/// `COMMIT`, after every change of the turn succeeded): the turn comes back undone, every
/// change failed; writes show failing, and a commit that wrote nothing (the ping, a write
/// that only read) does not clear it; once the server takes the commit, the same turn
/// commits and writes are no longer failing.
#[tokio::test]
async fn a_refused_commit_hands_the_turn_back_undone_and_shows_until_a_write_commits() {
    let db = TempDb::new().await;
    let store = Store::Postgres(PgStore::connect(&db.url, None).await.unwrap());
    let Store::Postgres(pg) = &store else {
        unreachable!()
    };
    assert_eq!(store.writes_failing(), None);
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             RAISE EXCEPTION 'could not extend file: No space left on device' \
             USING ERRCODE = 'disk_full'; END $$; \
             CREATE CONSTRAINT TRIGGER disk_full AFTER INSERT ON events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION disk_full();",
        )
        .await
        .unwrap();

    let c = commit(&store, inserts(&["e1", "e2"])).await.unwrap();
    assert_eq!(c.changes.len(), 2);
    assert_eq!(c.errors.len(), 2, "{c:?}");
    for e in &c.errors {
        let e = e.as_deref().expect("every change failed");
        assert!(
            e.contains("commit failed") && e.contains("No space left on device (53100)"),
            "{e}"
        );
    }
    assert!(c.early.is_empty());
    assert!(stored(&db, &["e1", "e2"]).await.is_empty());
    let failing = store.writes_failing().expect("writes failing");
    assert!(
        failing.error.contains("No space left on device"),
        "{failing:?}"
    );
    assert_eq!(failing.failed_commits, 1);

    // Neither the ping nor a write transaction that wrote nothing clears it.
    store.ping().await.unwrap();
    pg.write(|tx| {
        async move {
            tx.batch_execute("SELECT 1").await?;
            Ok(())
        }
        .boxed()
    })
    .await
    .unwrap();
    assert_eq!(store.writes_failing().map(|f| f.since), Some(failing.since));

    // The server takes commits again: the turn retried commits, and clears it.
    db.client()
        .await
        .batch_execute("DROP TRIGGER disk_full ON events")
        .await
        .unwrap();
    let c = commit(&store, inserts(&["e1", "e2"])).await.unwrap();
    assert_eq!(c.errors, vec![None, None]);
    assert_eq!(stored(&db, &["e1", "e2"]).await, ["e1", "e2"]);
    assert_eq!(store.writes_failing(), None);
    store.close().await.unwrap();
    db.drop_now().await;
}

/// A read-only server (a standby after a failover, or `default_transaction_read_only`):
/// every write fails, a single operation's and each change of a turn, and writes show
/// failing with the server's words; once it takes writes again, the next write clears it.
#[tokio::test]
async fn a_read_only_server_shows_failing_writes_until_one_commits() {
    let db = TempDb::new().await;
    let store = Store::Postgres(PgStore::connect(&db.url, None).await.unwrap());
    let Store::Postgres(pg) = &store else {
        unreachable!()
    };
    assert_eq!(
        commit(&store, inserts(&["before"])).await.unwrap().errors,
        [None]
    );
    admin(
        &db,
        &format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on; {}",
            db.name,
            end_sessions(&db)
        ),
    )
    .await;

    // A pooled connection that was just ended may fail first (no answer: a failure too);
    // then the server's own refusal.
    let write = || {
        pg.write(|tx| {
            async move {
                tx.batch_execute(
                    "INSERT INTO leases (token, holder, expires_at) VALUES ('t', 'me', 1)",
                )
                .await?;
                Ok(())
            }
            .boxed()
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = write().await.unwrap_err();
        let failing = store.writes_failing().expect("writes failing");
        if failing.error.contains("read-only transaction") {
            assert!(e.to_string().contains("(25006)"), "{e}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{failing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = store.writes_failing().unwrap();
    let c = commit(&store, inserts(&["during-1", "during-2"]))
        .await
        .unwrap();
    for e in &c.errors {
        let e = e.as_deref().expect("every change failed");
        assert!(e.contains("read-only transaction"), "{e}");
    }
    let after = store.writes_failing().expect("still failing");
    assert_eq!(after.since, before.since);
    assert_eq!(
        after.failed_commits,
        before.failed_commits + 1,
        "the turn's transaction committed nothing it was given: a failure"
    );

    admin(
        &db,
        &format!(
            "ALTER DATABASE {} RESET default_transaction_read_only; {}",
            db.name,
            end_sessions(&db)
        ),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = commit(&store, inserts(&["during-1", "during-2"]))
            .await
            .unwrap();
        if c.errors.iter().all(Option::is_none) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.writes_failing(), None);
    assert_eq!(
        stored(&db, &["before", "during-1", "during-2"]).await,
        ["before", "during-1", "during-2"]
    );
    store.close().await.unwrap();
    db.drop_now().await;
}

/// A batch that runs out of time (a table locked by another session): the turn running
/// and the ones queued behind it come back undone, every change failed with the timeout;
/// writes show failing until the lock goes and a turn commits.
#[tokio::test]
async fn turns_of_a_batch_past_its_limit_come_back_undone() {
    let db = TempDb::new().await;
    let mut limits = SessionLimits::new(crate::cluster::DEFAULT_LEASE_TTL);
    limits.operation_timeout = Duration::from_millis(700);
    let store = Store::Postgres(
        PgStore::connect_limited(&db.url, None, limits)
            .await
            .unwrap(),
    );
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        commit(&store, inserts(&["t1", "t2"])),
        commit(&store, inserts(&["t3"]))
    );
    for c in [a.unwrap(), b.unwrap()] {
        assert!(!c.changes.is_empty());
        assert_eq!(c.errors.len(), c.changes.len());
        for e in &c.errors {
            let e = e.as_deref().expect("every change failed");
            assert!(e.contains("did not finish the operation within"), "{e}");
        }
    }
    let failing = store.writes_failing().expect("writes failing");
    assert!(failing.error.contains("did not finish"), "{failing:?}");

    locker.batch_execute("ROLLBACK").await.unwrap();
    let c = commit(&store, inserts(&["t1", "t2", "t3"])).await.unwrap();
    assert_eq!(c.errors, vec![None, None, None]);
    assert_eq!(store.writes_failing(), None);
    assert_eq!(stored(&db, &["t1", "t2", "t3"]).await, ["t1", "t2", "t3"]);
    store.close().await.unwrap();
    db.drop_now().await;
}

/// A change failing on its own data (an event inserted twice breaks the primary key) is
/// not a store failure: it fails alone and writes are not failing.
#[tokio::test]
async fn a_change_failing_on_its_own_data_is_not_a_write_failure() {
    let db = TempDb::new().await;
    let store = Store::Postgres(PgStore::connect(&db.url, None).await.unwrap());
    let c = commit(&store, inserts(&["x", "x", "y"])).await.unwrap();
    assert!(c.errors[0].is_none() && c.errors[2].is_none(), "{c:?}");
    let e = c.errors[1].as_deref().expect("the second insert fails");
    assert!(e.contains("(23505)"), "{e}");
    assert_eq!(store.writes_failing(), None);
    assert_eq!(stored(&db, &["x", "y"]).await, ["x", "y"]);
    store.close().await.unwrap();
    db.drop_now().await;
}

/// No connection at all (the server refuses the database's connections, its sessions
/// ended): the turn comes back undone, every change failed, and writes show failing until
/// the server lets the store in again and a turn commits.
#[tokio::test]
async fn no_connection_hands_the_turn_back_undone() {
    let db = TempDb::new().await;
    let store = Store::Postgres(PgStore::connect(&db.url, None).await.unwrap());
    admin(
        &db,
        &format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false; {}",
            db.name,
            end_sessions(&db)
        ),
    )
    .await;
    // Until the pool tries a new connection (one just ended may fail first: undone too).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = commit(&store, inserts(&["n1", "n2"])).await.unwrap();
        assert_eq!(c.errors.len(), 2);
        assert!(c.errors.iter().all(Option::is_some), "{c:?}");
        let failing = store.writes_failing().expect("writes failing");
        if failing.error.contains("cannot connect to the database") {
            assert!(
                failing
                    .error
                    .contains("not currently accepting connections"),
                "{failing:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{failing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin(
        &db,
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name),
    )
    .await;
    let c = commit(&store, inserts(&["n1", "n2"])).await.unwrap();
    assert_eq!(c.errors, vec![None, None]);
    assert_eq!(store.writes_failing(), None);
    assert_eq!(stored(&db, &["n1", "n2"]).await, ["n1", "n2"]);
    store.close().await.unwrap();
    db.drop_now().await;
}
