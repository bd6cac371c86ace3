//! The executor and the store together, with a fake Apple: a change that cannot be committed
//! is retried for its own event only, and never rolls back or blocks other events' changes.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use vpp_reconciler::core::periodic::Chore;
use vpp_reconciler::core::{
    Core, EventRecord, EventType, State, StatusResult, SyncKind, SyncOutcome, Timings, TrackRequest,
};
use vpp_reconciler::executor::{Effects, Executor, ResubmitError, TrackReply};
use vpp_reconciler::store::{open_write_connection, Store};
use vpp_reconciler::time::Timestamp;

/// Apple as this test needs it: "old" stays PENDING (so it is resubmitted, as "new"),
/// "other" is COMPLETE, syncs succeed.
struct FakeApple;

impl Effects for FakeApple {
    fn poll_status(&self, _token: String, event_id: String) -> BoxFuture<'static, StatusResult> {
        Box::pin(async move {
            if event_id == "other" {
                StatusResult::Complete {
                    num_requested: 1,
                    num_completed: 1,
                }
            } else {
                StatusResult::Pending
            }
        })
    }
    fn resubmit(
        &self,
        _token: String,
        _event_type: EventType,
        _body: String,
    ) -> BoxFuture<'static, Result<String, ResubmitError>> {
        Box::pin(async { Ok("new".to_string()) })
    }
    fn sync(
        &self,
        _sync_id: u64,
        _token: String,
        _kind: SyncKind,
        _full: bool,
    ) -> BoxFuture<'static, SyncOutcome> {
        Box::pin(async { SyncOutcome::Ok })
    }
    fn chore(&self, _chore: Chore, _now: Timestamp) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

fn timings() -> Timings {
    Timings {
        notification_grace: Duration::from_millis(10),
        poll_min: Duration::from_millis(50),
        poll_max: Duration::from_millis(200),
        resubmit_after: Duration::from_millis(100),
        give_up_after: Duration::from_secs(3600),
        jitter_seed: 1,
        max_in_flight_per_token: 10,
        sync_retry_max: Duration::from_millis(200),
        sync_min_interval: Duration::from_millis(50),
        sync_max_staleness: Duration::from_millis(50),
    }
}

fn record(id: &str, has_request: bool, t: &Timings) -> EventRecord {
    EventRecord::new_tracked(
        Timestamp::now(),
        TrackRequest {
            event_id: id.into(),
            token: "acme".into(),
            event_type: EventType::Associate,
            submitted_at: None,
            num_requested: Some(1),
            has_request,
            supersedes: None,
        },
        t,
    )
}

/// Waits (bounded) until `check` holds for the stored event `id`.
async fn until<F>(store: &Store, what: &str, id: &str, check: F)
where
    F: Fn(Option<EventRecord>) -> bool,
{
    for _ in 0..400 {
        if check(store.get_event(id).await.ok().flatten()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_insert_of_a_resubmission_does_not_poison_other_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    // The store refuses to insert the resubmission's event, as a full disk or a bug would.
    open_write_connection(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_new BEFORE INSERT ON events WHEN NEW.event_id = 'new' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let store = Store::open(&path).unwrap();
    let t = timings();
    let (executor, handle) = Executor::new(
        Core::new(t.clone(), 1),
        store.clone(),
        Arc::new(FakeApple),
        Default::default(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let exec = tokio::spawn(executor.run(shutdown.clone(), Duration::from_secs(1)));

    let old = handle
        .track(record("old", true, &t), Some(r#"{"assets":[]}"#.into()))
        .await;
    assert!(matches!(old, TrackReply::Created(_)), "{old:?}");
    // Resubmitted as "new", whose insert now fails (and is retried with backoff).
    until(&store, "old superseded", "old", |e| {
        e.is_some_and(|e| e.superseded_by.as_deref() == Some("new"))
    })
    .await;
    // Meanwhile another event is tracked, polled, synced and settled: its changes commit in
    // the same turns as the failing ones, and none is rolled back.
    let other = handle.track(record("other", false, &t), None).await;
    assert!(matches!(other, TrackReply::Created(_)), "{other:?}");
    until(&store, "other settled", "other", |e| {
        e.map(|e| e.state) == Some(State::Settled)
    })
    .await;
    let history = store.event_detail("other").await.unwrap().unwrap().history;
    assert!(
        history.len() >= 3,
        "every step of 'other' is kept: {history:?}"
    );
    assert_eq!(
        store.get_event("new").await.unwrap(),
        None,
        "the refused insert left nothing half-written"
    );
    // The store recovers: the retry inserts the resubmission with everything that happened
    // to it meanwhile.
    // (Through a connection of its own: the store's interface has no SQL.)
    open_write_connection(&path)
        .unwrap()
        .execute_batch("DROP TRIGGER refuse_new")
        .unwrap();
    until(&store, "new inserted", "new", |e| {
        e.is_some_and(|e| e.supersedes.as_deref() == Some("old"))
    })
    .await;
    assert_eq!(
        store.request_body("new").await.unwrap().as_deref(),
        Some(r#"{"assets":[]}"#),
        "the request body was copied with the retried insert"
    );
    shutdown.cancel();
    exec.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_answers_after_the_commit_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let mut t = timings();
    t.notification_grace = Duration::from_secs(3600);
    let (executor, handle) = Executor::new(
        Core::new(t.clone(), 1),
        store.clone(),
        Arc::new(FakeApple),
        Default::default(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let exec = tokio::spawn(executor.run(shutdown.clone(), Duration::from_secs(1)));
    let rec = record("e1", false, &t);
    let (a, b) = tokio::join!(
        handle.track(rec.clone(), None),
        handle.track(rec.clone(), None)
    );
    // One of the two created it; the other waited for the same commit.
    let created = [&a, &b]
        .iter()
        .filter(|r| matches!(r, TrackReply::Created(_)))
        .count();
    assert_eq!(created, 1, "{a:?} {b:?}");
    assert!(matches!(
        a,
        TrackReply::Created(_) | TrackReply::Existing(_)
    ));
    assert!(matches!(
        b,
        TrackReply::Created(_) | TrackReply::Existing(_)
    ));
    // Answered only once durable: the row is there.
    assert!(store.get_event("e1").await.unwrap().is_some());
    let mut other_type = rec;
    other_type.event_type = EventType::Revoke;
    assert!(matches!(
        handle.track(other_type, None).await,
        TrackReply::Conflict { .. }
    ));
    shutdown.cancel();
    exec.await.unwrap();
}
