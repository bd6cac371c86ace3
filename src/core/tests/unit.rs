//! One test per transition of docs/lifecycle.md, driven through the simulated harness (or the core
//! directly where the exact action sequence matters).

use std::time::Duration;

use super::harness::*;
use crate::core::backoff;
use crate::core::{
    Action, Core, EventRecord, EventType, FailureSource, HistoryEntry, Outcome, PollRecord, State,
    StatusResult, SyncKind, SyncOutcome, TrackDecision,
};

const POLL_MIN: Duration = Duration::from_secs(30);
const POLL_MAX: Duration = Duration::from_secs(600);

fn harness() -> Harness {
    Harness::new(timings())
}

fn drain(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn delay_ms(attempt: u32, key: &str) -> i64 {
    backoff::delay(attempt, POLL_MIN, POLL_MAX, backoff::seed_for(7, key)).as_millis() as i64
}

fn sync_summary(h: &Harness) -> Vec<(SyncKind, bool, i64)> {
    h.syncs
        .iter()
        .map(|s| (s.kind, s.full, rel(s.start_wall)))
        .collect()
}

#[test]
fn all_success_chunks_settle_directly_without_polls() {
    let mut h = harness();
    let apple = AppleEvent::new(Truth::Complete, 30 * SEC, 250);
    h.event(
        0,
        track_req("e1", "acme", EventType::Associate, Some(250)),
        apple,
    );
    h.notify(MIN, note("n1", "acme", "e1", true, 100));
    h.notify(MIN, note("n2", "acme", "e1", true, 100));
    h.notify(2 * MIN, note("n3", "acme", "e1", true, 50));
    h.run_until(2 * DAY);

    assert_eq!(h.poll_times("e1"), Vec::<i64>::new());
    assert!(h.syncs.is_empty());
    let ch = h.changes("e1");
    assert_eq!(ch.len(), 3);
    assert_eq!(ch[0].1.event.state, State::Pending);
    assert_eq!(ch[0].1.event.notified_success, 100);
    assert_eq!(ch[0].1.applied_notifications, vec!["n1".to_string()]);
    assert!(!ch[0].1.feed);
    assert_eq!(ch[1].1.event.notified_success, 200);
    let last = &ch[2].1;
    assert_eq!(last.event.state, State::Settled);
    assert_eq!(last.event.outcome, Some(Outcome::Complete));
    assert_eq!(last.event.settled_at, Some(ts(2 * MIN)));
    assert_eq!(last.event.num_completed, 250);
    assert!(last.feed);
    assert_eq!(last.history.len(), 1);
    assert_eq!(
        (last.history[0].at, last.history[0].from, last.history[0].to),
        (ts(2 * MIN), Some(State::Pending), State::Settled)
    );
    assert!(
        last.history[0].cause.contains("n3"),
        "{}",
        last.history[0].cause
    );
    assert!(h.core.is_empty(), "settled events leave memory");
    h.check_invariants();
}

#[test]
fn partial_chunks_then_silence_poll_after_grace_then_sync() {
    let mut h = harness();
    let apple = AppleEvent::new(Truth::Complete, 30 * SEC, 250);
    h.event(
        0,
        track_req("e1", "acme", EventType::Associate, Some(250)),
        apple,
    );
    h.notify(MIN, note("n1", "acme", "e1", true, 100));
    h.run_until(2 * DAY);

    assert_eq!(h.poll_times("e1"), vec![5 * MIN]);
    assert_eq!(
        sync_summary(&h),
        vec![
            (SyncKind::Assignments, false, 5 * MIN),
            (SyncKind::Assets, true, 5 * MIN)
        ]
    );
    let states: Vec<(State, Option<Outcome>)> = h
        .changes("e1")
        .iter()
        .map(|(_, c)| (c.event.state, c.event.outcome))
        .collect();
    // n1, poll sent, COMPLETE, sync done.
    assert_eq!(
        states,
        vec![
            (State::Pending, None),
            (State::Pending, None),
            (State::Syncing, Some(Outcome::Complete)),
            (State::Settled, Some(Outcome::Complete)),
        ]
    );
    let last = h.last("e1");
    assert_eq!(last.state, State::Settled);
    assert_eq!(last.outcome, Some(Outcome::Complete));
    assert_eq!(last.outcome_at, Some(ts(5 * MIN)));
    assert_eq!(last.settled_at, Some(ts(6 * MIN)));
    assert_eq!((last.num_requested, last.num_completed), (Some(250), 250));
    assert_eq!(last.polls, 1);
    let polls: Vec<PollRecord> = h
        .changes("e1")
        .iter()
        .filter_map(|(_, c)| c.polls.last().cloned())
        .collect();
    assert_eq!(
        polls,
        vec![PollRecord {
            at: ts(5 * MIN),
            result: "COMPLETE".into(),
            detail: Some("250/250 completed".into()),
        }]
    );
    h.check_invariants();
}

#[test]
fn grace_counts_from_submission() {
    let mut h = harness();
    let mut late = track_req("late", "acme", EventType::Create, Some(1));
    late.submitted_at = Some(ts(-4 * MIN));
    let mut old = track_req("old", "acme", EventType::Create, Some(1));
    old.submitted_at = Some(ts(-HOUR));
    h.event(0, late, AppleEvent::new(Truth::Complete, 0, 1));
    h.event(0, old, AppleEvent::new(Truth::Complete, 0, 1));
    h.run_until(HOUR);
    assert_eq!(h.poll_times("late"), vec![MIN]);
    assert_eq!(h.poll_times("old"), vec![0]);
    h.check_invariants();
}

#[test]
fn failure_chunk_fails_and_settles_only_after_a_later_sync() {
    let mut h = harness();
    h.sync_duration = 2 * MIN;
    h.at(
        30 * SEC,
        Input::RequestSync("acme".into(), SyncKind::Assignments, false),
    );
    let apple = AppleEvent::new(Truth::Failed, 30 * SEC, 2);
    h.event(
        0,
        track_req("e1", "acme", EventType::Associate, Some(2)),
        apple,
    );
    h.notify(MIN, note("n1", "acme", "e1", false, 1));
    h.run_until(3 * MIN);

    let ch = h.changes("e1");
    assert_eq!(ch.len(), 1);
    let c = ch[0].1;
    assert_eq!(c.event.state, State::Syncing);
    assert_eq!(c.event.outcome, Some(Outcome::Failed));
    assert_eq!(c.event.outcome_at, Some(ts(MIN)));
    assert_eq!(c.failures.len(), 1);
    assert_eq!(c.failures[0].0, FailureSource::Notification);
    assert_eq!(c.failures[0].1.error_number, 9609);
    assert_eq!(
        c.failures[0].1.error_info,
        Some(serde_json::json!({"clientUserIds": ["u1"]}))
    );
    // The assignments sync running since 30 s finished at 2m30s: too early to settle it.
    assert_eq!(h.last("e1").state, State::Syncing);

    h.run_until(2 * DAY);
    assert_eq!(
        sync_summary(&h),
        vec![
            (SyncKind::Assignments, false, 30 * SEC),
            (SyncKind::Assets, true, MIN),
            (SyncKind::Assignments, false, 2 * MIN + 30 * SEC),
        ]
    );
    let last = h.last("e1");
    assert_eq!(last.state, State::Settled);
    assert_eq!(last.outcome, Some(Outcome::Failed));
    assert_eq!(last.settled_at, Some(ts(4 * MIN + 30 * SEC)));
    assert!(h.poll_times("e1").is_empty());
    h.check_invariants();
}

#[test]
fn unknown_count_success_is_confirmed_by_one_poll() {
    let mut h = harness();
    h.poll_latency = 2 * SEC;
    // No body: count unknown.
    h.event(
        0,
        track_req("c1", "acme", EventType::Create, None),
        AppleEvent::new(Truth::Complete, 0, 7),
    );
    h.notify(MIN, note("n1", "acme", "c1", true, 7));
    // REVOKE: the count in the request is not the number of entities Apple reports.
    h.event(
        0,
        track_req("r1", "acme", EventType::Revoke, Some(3)),
        AppleEvent::new(Truth::Complete, 0, 3),
    );
    h.notify(2 * MIN, note("n2", "acme", "r1", true, 3));
    h.event(
        0,
        track_req("r2", "acme", EventType::Revoke, None),
        AppleEvent::new(Truth::Complete, 0, 4),
    );
    h.notify(3 * MIN, note("n3", "acme", "r2", true, 4));
    h.run_until(2 * DAY);

    for (id, at) in [("c1", MIN), ("r1", 2 * MIN), ("r2", 3 * MIN)] {
        assert_eq!(h.poll_times(id), vec![at], "{id}");
        let last = h.last(id);
        assert_eq!(last.state, State::Settled, "{id}");
        assert_eq!(last.outcome, Some(Outcome::Complete), "{id}");
        assert_eq!(last.settled_at, Some(ts(at + 2 * SEC)), "{id}");
    }
    assert!(h.syncs.is_empty(), "{:?}", h.syncs);
    h.check_invariants();
}

#[test]
fn unknown_count_confirm_showing_more_entities_goes_to_sync() {
    let mut h = harness();
    h.event(
        0,
        track_req("c1", "acme", EventType::Create, None),
        AppleEvent::new(Truth::Complete, 0, 10),
    );
    h.notify(MIN, note("n1", "acme", "c1", true, 7));
    h.run_until(2 * DAY);
    assert_eq!(h.poll_times("c1"), vec![MIN]);
    assert_eq!(sync_summary(&h), vec![(SyncKind::Users, false, MIN)]);
    let last = h.last("c1");
    assert_eq!(
        (last.state, last.outcome),
        (State::Settled, Some(Outcome::Complete))
    );
    assert_eq!(last.settled_at, Some(ts(2 * MIN)));
    h.check_invariants();
}

/// The exact poll schedule of an event that stays PENDING, for jitter seed 7.
#[test]
fn pending_polls_back_off_exactly() {
    let mut h = harness();
    h.event(
        0,
        track_req("e1", "acme", EventType::Associate, Some(1)),
        AppleEvent::new(Truth::Never, 0, 1),
    );
    h.run_until(2 * HOUR);
    let polls = h.poll_times("e1");

    // The schedule derived from the backoff function...
    let mut expected = vec![5 * MIN];
    for attempt in 0.. {
        let next = expected.last().unwrap() + delay_ms(attempt, "e1");
        if next > 2 * HOUR {
            break;
        }
        expected.push(next);
    }
    assert_eq!(polls, expected);
    // ...and pinned, so a change to the jitter or the doubling shows up here.
    let gaps: Vec<i64> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps[..7],
        [36_474, 73_956, 132_201, 286_519, 536_784, 600_000, 600_000]
    );
    // Doubling from poll_min with at most +25% jitter, capped at poll_max.
    for (i, g) in gaps.iter().enumerate() {
        let base = (30_000i64 << i.min(20)).min(600_000);
        assert!(
            *g >= base && *g <= (base + base / 4).min(600_000),
            "gap {i}: {g}"
        );
    }
    assert!(h.resubmits().is_empty(), "no body, no resubmission");
    h.check_invariants();
}

#[test]
fn retry_after_is_respected() {
    let mut h = harness();
    let mut apple = AppleEvent::new(Truth::Never, 0, 1);
    apple.script = [Scripted::Retry(Some(2 * HOUR)), Scripted::Retry(None)].into();
    h.event(
        0,
        track_req("e1", "acme", EventType::Create, Some(1)),
        apple,
    );
    h.run_until(3 * HOUR);
    let polls = h.poll_times("e1");
    let p1 = 5 * MIN;
    let p2 = p1 + 2 * HOUR; // not_before, well past the backoff
    let p3 = p2 + delay_ms(1, "e1"); // plain retry: backoff continues
    let p4 = p3 + delay_ms(2, "e1");
    assert_eq!(polls[..4], [p1, p2, p3, p4]);
    let polls_recorded: Vec<String> = h
        .changes("e1")
        .iter()
        .filter_map(|(_, c)| c.polls.last().map(|p| p.result.clone()))
        .collect();
    assert_eq!(polls_recorded[..3], ["RETRY", "RETRY", "PENDING"]);
    h.check_invariants();
}

#[test]
fn gives_up_after_give_up_after_then_syncs() {
    let mut h = harness();
    h.event(
        0,
        track_req("e1", "acme", EventType::Update, Some(1)),
        AppleEvent::new(Truth::Never, 0, 1),
    );
    h.run_until(3 * DAY);
    let polls = h.poll_times("e1");
    assert!(*polls.last().unwrap() < DAY);
    assert!(polls.len() > 140 && polls.len() < 150, "{}", polls.len());
    assert_eq!(sync_summary(&h), vec![(SyncKind::Users, false, DAY)]);
    let last = h.last("e1");
    assert_eq!(last.outcome, Some(Outcome::TimedOut));
    assert_eq!(last.outcome_at, Some(ts(DAY)));
    assert_eq!(
        (last.state, last.settled_at),
        (State::Settled, Some(ts(DAY + MIN)))
    );
    h.check_invariants();
}

#[test]
fn not_found_goes_to_syncing_then_settles() {
    let mut h = harness();
    h.at(
        0,
        Input::Track(track_req("ghost", "acme", EventType::Associate, Some(1))),
    );
    h.run_until(DAY);
    assert_eq!(h.poll_times("ghost"), vec![5 * MIN]);
    let ch = h.changes("ghost");
    let (_, c) = ch
        .iter()
        .find(|(_, c)| c.event.state == State::Syncing)
        .expect("syncing");
    assert_eq!(c.event.outcome, Some(Outcome::NotFound));
    assert_eq!(c.history[0].cause, "Event Status answered NOT_FOUND");
    let last = h.last("ghost");
    assert_eq!(
        (last.state, last.outcome),
        (State::Settled, Some(Outcome::NotFound))
    );
    assert_eq!(last.settled_at, Some(ts(6 * MIN)));
    h.check_invariants();
}

#[test]
fn resubmits_once_after_resubmit_after_and_links_both() {
    let mut h = harness();
    let mut req = track_req("e1", "acme", EventType::Associate, Some(5));
    req.has_request = true;
    h.event(0, req, AppleEvent::new(Truth::Never, 0, 1));
    h.resubmit_plans.insert(
        "e1".into(),
        ResubmitPlan {
            new_id: "e1r".into(),
            apple: AppleEvent::new(Truth::Complete, 2 * MIN, 5),
            notes: vec![(10 * SEC, true, 5)],
        },
    );
    h.run_until(3 * DAY);

    // Polls before the deadline, the last one pulled in to exactly resubmit_after.
    let polls = h.poll_times("e1");
    let mut expected = vec![5 * MIN];
    for a in 0..3 {
        expected.push(expected.last().unwrap() + delay_ms(a, "e1"));
    }
    expected.push(10 * MIN);
    assert_eq!(polls[..5], expected[..]);
    assert_eq!(h.resubmits(), vec![(10 * MIN, "e1".to_string())]);

    let ins: Vec<_> = h
        .changes("e1r")
        .into_iter()
        .filter(|(_, c)| c.insert)
        .collect();
    assert_eq!(ins.len(), 1);
    let new = &ins[0].1;
    assert_eq!(new.copy_request_from.as_deref(), Some("e1"));
    assert_eq!(new.event.supersedes.as_deref(), Some("e1"));
    assert!(new.event.has_request && new.event.resubmitted);
    assert_eq!(new.event.num_requested, Some(5));
    assert_eq!(new.event.tracked_at, ts(10 * MIN + SEC));
    assert!(new.feed);
    let linked = h
        .changes("e1")
        .into_iter()
        .find(|(_, c)| c.event.superseded_by.is_some())
        .expect("old event linked");
    assert_eq!(linked.1.event.superseded_by.as_deref(), Some("e1r"));
    assert_eq!(linked.1.history[0].cause, "resubmitted as e1r");

    // The new event completes by notification; the old one keeps polling until it gives up.
    let new_last = h.last("e1r");
    assert_eq!(new_last.outcome, Some(Outcome::Complete));
    assert_eq!(new_last.settled_at, Some(ts(12 * MIN + 10 * SEC)));
    let old_last = h.last("e1");
    assert_eq!(old_last.outcome, Some(Outcome::TimedOut));
    assert_eq!(old_last.state, State::Settled);
    assert_eq!(old_last.superseded_by.as_deref(), Some("e1r"));
    h.check_invariants();
}

#[test]
fn failed_resubmission_is_not_retried() {
    let mut h = harness();
    let mut req = track_req("e1", "acme", EventType::Associate, Some(5));
    req.has_request = true;
    h.event(0, req, AppleEvent::new(Truth::Never, 0, 1));
    h.run_until(3 * DAY);
    assert_eq!(h.resubmits(), vec![(10 * MIN, "e1".to_string())]);
    let last = h.last("e1");
    assert_eq!(
        (last.state, last.outcome),
        (State::Settled, Some(Outcome::TimedOut))
    );
    assert_eq!(last.superseded_by, None);
    h.check_invariants();
}

/// A resubmission is in flight when the old event settles (its notifications arrived
/// late): the new eventId Apple returns must still be tracked, or a live Apple event
/// would never get an outcome.
#[test]
fn resubmission_answer_after_the_old_event_settled_is_tracked() {
    let mut h = harness();
    h.resubmit_latency = MIN;
    let mut req = track_req("e1", "acme", EventType::Associate, Some(5));
    req.has_request = true;
    h.event(0, req, AppleEvent::new(Truth::Never, 0, 5));
    h.notify(10 * MIN + 30 * SEC, note("n1", "acme", "e1", true, 5));
    h.resubmit_plans.insert(
        "e1".into(),
        ResubmitPlan {
            new_id: "e1r".into(),
            apple: AppleEvent::new(Truth::Complete, 2 * MIN, 5),
            notes: vec![],
        },
    );
    h.run_until(2 * DAY);
    assert_eq!(h.resubmits(), vec![(10 * MIN, "e1".to_string())]);
    assert_eq!(h.last("e1").settled_at, Some(ts(10 * MIN + 30 * SEC)));
    let new = h.last("e1r");
    assert_eq!(new.supersedes.as_deref(), Some("e1"));
    assert_eq!(
        (new.state, new.outcome),
        (State::Settled, Some(Outcome::Complete))
    );
    assert!(h.core.is_empty());
    h.check_invariants();
}

#[test]
fn notifications_before_tracking_are_applied_on_track() {
    let mut h = harness();
    let mut req = track_req("e1", "acme", EventType::Associate, Some(3));
    req.submitted_at = Some(ts(0));
    h.notify(MIN, note("n1", "acme", "e1", true, 2));
    h.notify(90 * SEC, note("n2", "acme", "e1", true, 1));
    h.apple
        .insert("e1".into(), AppleEvent::new(Truth::Complete, 0, 3));
    h.at(3 * MIN, Input::Track(req));
    h.run_until(DAY);
    assert!(h.poll_times("e1").is_empty());
    let ch = h.changes("e1");
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0].1.applied_notifications, vec!["n1".to_string()]);
    assert_eq!(ch[1].1.applied_notifications, vec!["n2".to_string()]);
    let last = h.last("e1");
    assert_eq!(last.settled_at, Some(ts(3 * MIN)));
    assert_eq!(last.outcome, Some(Outcome::Complete));
    h.check_invariants();
}

#[test]
fn duplicate_notification_has_no_second_effect() {
    let mut h = harness();
    h.event(
        0,
        track_req("e1", "acme", EventType::Associate, Some(200)),
        AppleEvent::new(Truth::Complete, 0, 200),
    );
    h.notify(MIN, note("n1", "acme", "e1", true, 100));
    h.notify(90 * SEC, note("n1", "acme", "e1", true, 100));
    h.run_until(2 * MIN);
    assert_eq!(h.changes("e1").len(), 1);
    assert_eq!(h.last("e1").notified_success, 100);
    assert_eq!(h.last("e1").state, State::Pending);
    h.notify(3 * MIN, note("n2", "acme", "e1", true, 100));
    h.run_until(DAY);
    assert_eq!(h.changes("e1").len(), 2);
    assert_eq!(h.last("e1").settled_at, Some(ts(3 * MIN)));
    h.check_invariants();

    // Directly: the duplicate is acknowledged (true) and produces nothing.
    let t = timings();
    let mut core = Core::new(t.clone(), 1);
    let rec = EventRecord::new_tracked(
        ts(0),
        track_req("f1", "acme", EventType::Create, Some(2)),
        &t,
    );
    core.track(ts(0), rec, None);
    assert!(
        matches!(drain(&mut core)[..], [Action::Persist(_)]),
        "the insert"
    );
    assert!(core.notification(ts(1), note("x", "acme", "f1", false, 1)));
    let first = drain(&mut core);
    assert_eq!(first.len(), 2, "{first:?}"); // persist + users sync
    assert!(core.notification(ts(2), note("x", "acme", "f1", false, 1)));
    assert_eq!(drain(&mut core), vec![]);
    // Unknown event or another token's: not applied, kept by the store.
    assert!(!core.notification(ts(3), note("y", "acme", "nope", true, 1)));
    assert!(!core.notification(ts(3), note("z", "other", "f1", true, 1)));
    assert_eq!(drain(&mut core), vec![]);
}

#[test]
fn hundred_failures_during_a_sync_coalesce_into_one_follow_up() {
    let mut h = harness();
    h.sync_duration = 10 * MIN;
    h.at(
        0,
        Input::RequestSync("acme".into(), SyncKind::Assignments, false),
    );
    for i in 0..100 {
        let id = format!("e{i}");
        h.event(
            0,
            track_req(&id, "acme", EventType::Associate, Some(1)),
            AppleEvent::new(Truth::Failed, 0, 1),
        );
        h.notify(MIN + i * 500, note(&format!("n{i}"), "acme", &id, false, 1));
    }
    h.run_until(DAY);
    assert_eq!(
        sync_summary(&h),
        vec![
            (SyncKind::Assignments, false, 0),
            (SyncKind::Assets, true, MIN),
            (SyncKind::Assignments, false, 10 * MIN),
            (SyncKind::Assets, true, 11 * MIN),
        ]
    );
    let settle_steps: std::collections::BTreeSet<usize> = (0..100)
        .map(|i| {
            let id = format!("e{i}");
            let ch = h.changes(&id);
            let (step, c) = ch.last().unwrap();
            assert_eq!(c.event.state, State::Settled);
            assert_eq!(c.event.settled_at, Some(ts(20 * MIN)));
            *step
        })
        .collect();
    assert_eq!(settle_steps.len(), 1, "all settle together");
    let step = &h.steps[*settle_steps.first().unwrap()];
    assert!(
        matches!(step.input, Input::SyncDone(3, true)),
        "{:?}",
        step.input
    );
    assert!(h.core.is_empty());
    assert_eq!(
        h.core
            .sync_state("acme", SyncKind::Assignments)
            .map(|s| (s.running, s.queued, s.waiting)),
        Some((None, false, 0))
    );
    h.check_invariants();
}

#[test]
fn failed_syncs_are_retried_with_backoff() {
    let mut h = harness();
    h.sync_results = [false, false, true].into();
    h.event(
        0,
        track_req("u1", "acme", EventType::Create, Some(1)),
        AppleEvent::new(Truth::Failed, 0, 1),
    );
    h.notify(MIN, note("n1", "acme", "u1", false, 1));
    h.run_until(DAY);
    let runs = h.syncs_of(SyncKind::Users);
    assert_eq!(runs.len(), 3);
    assert!(runs[0].cause.contains("event u1"), "{}", runs[0].cause);
    assert_eq!(runs[1].cause, "retry after failed sync 1");
    let seed = backoff::seed_for(7, "acme");
    let retry = |attempt: u32, id: u64| {
        backoff::delay(attempt, POLL_MIN, Duration::from_secs(600), seed ^ id).as_millis() as i64
    };
    let starts: Vec<i64> = runs.iter().map(|r| r.start_real).collect();
    let r1 = 2 * MIN + retry(0, 1);
    let r2 = r1 + MIN + retry(1, 2);
    assert_eq!(starts, vec![MIN, r1, r2]);
    assert!((30 * SEC..=37_500).contains(&(r1 - 2 * MIN)));
    assert!((60 * SEC..=75 * SEC).contains(&(r2 - r1 - MIN)));
    let last = h.last("u1");
    assert_eq!(last.settled_at, Some(ts(r2 + MIN)));
    h.check_invariants();
}

/// DISASSOCIATE (and REVOKE) removals are invisible to incremental assignment syncs.
#[test]
fn disassociate_needs_a_full_assignments_sync() {
    let t = timings();
    let mut core = Core::new(t.clone(), 1);
    core.request_sync(ts(0), "acme", SyncKind::Assignments, false, "cron");
    assert!(matches!(
        drain(&mut core)[..],
        [Action::StartSync {
            sync_id: 1,
            full: false,
            kind: SyncKind::Assignments,
            ..
        }]
    ));
    let syncing = |id: &str, ty| {
        let mut r = EventRecord::new_tracked(ts(-2 * HOUR), track_req(id, "acme", ty, Some(1)), &t);
        r.state = State::Syncing;
        r.outcome = Some(Outcome::Failed);
        r.outcome_at = Some(ts(-HOUR));
        r.next_check_at = None;
        r
    };
    core.recover(ts(SEC), syncing("d1", EventType::Disassociate), vec![]);
    core.recover(ts(SEC), syncing("a1", EventType::Associate), vec![]);
    let acts = drain(&mut core);
    assert!(
        matches!(
            acts[..],
            [Action::StartSync {
                sync_id: 2,
                kind: SyncKind::Assets,
                full: true,
                ..
            }]
        ),
        "{acts:?}"
    );
    // The incremental run started after both outcomes: it settles a1 only.
    core.sync_finished(ts(2 * SEC), 1, SyncOutcome::Ok);
    let acts = drain(&mut core);
    assert_eq!(acts.len(), 1, "{acts:?}");
    match &acts[0] {
        Action::Persist(c) => {
            assert_eq!(c.event.event_id, "a1");
            assert_eq!(c.event.state, State::Settled);
        }
        a => panic!("{a:?}"),
    }
    // The full run d1 needs waits out sync_min_interval from the previous start (at 0).
    let next = ts(0).saturating_add(t.sync_min_interval);
    assert_eq!(core.poll_timeout(), Some(next));
    core.timeout(ts(3 * SEC));
    assert_eq!(drain(&mut core), vec![], "too early is a no-op");
    core.timeout(next);
    assert!(matches!(
        drain(&mut core)[..],
        [Action::StartSync {
            sync_id: 3,
            kind: SyncKind::Assignments,
            full: true,
            ..
        }]
    ));
    assert_eq!(core.event("d1").map(|r| r.state), Some(State::Syncing));
    let done = next.saturating_add(Duration::from_secs(1));
    core.sync_finished(done, 3, SyncOutcome::Ok);
    let acts = drain(&mut core);
    match &acts[..] {
        [Action::Persist(c)] => {
            assert_eq!(c.event.event_id, "d1");
            assert_eq!(c.event.state, State::Settled);
            assert_eq!(c.event.settled_at, Some(done));
        }
        a => panic!("{a:?}"),
    }
    // a1's request for an assets sync arrived while run 2 was running: one follow-up, at
    // once since the interval from run 2's start (at 1 s) has passed.
    let assets_at = ts(SEC).saturating_add(t.sync_min_interval);
    assert!(done >= assets_at);
    core.sync_finished(done, 2, SyncOutcome::Ok);
    assert!(matches!(
        drain(&mut core)[..],
        [Action::StartSync {
            sync_id: 4,
            kind: SyncKind::Assets,
            full: true,
            ..
        }]
    ));
    core.sync_finished(assets_at, 4, SyncOutcome::Ok);
    assert_eq!(drain(&mut core), vec![]);
    assert!(core.is_empty());
}

#[test]
fn disassociate_failure_asks_for_a_full_sync() {
    let mut h = harness();
    h.event(
        0,
        track_req("d1", "acme", EventType::Disassociate, Some(1)),
        AppleEvent::new(Truth::Failed, 0, 1),
    );
    h.notify(MIN, note("n1", "acme", "d1", false, 1));
    h.run_until(DAY);
    assert_eq!(
        sync_summary(&h),
        vec![
            (SyncKind::Assignments, true, MIN),
            (SyncKind::Assets, true, MIN)
        ]
    );
    assert_eq!(h.last("d1").settled_at, Some(ts(2 * MIN)));
    h.check_invariants();
}

#[test]
fn recover_syncing_requests_its_sync_and_pending_keeps_its_schedule() {
    let t = timings();
    let mut core = Core::new(t.clone(), 40);
    let mut s = EventRecord::new_tracked(
        ts(0),
        track_req("u1", "acme", EventType::Retire, Some(1)),
        &t,
    );
    s.state = State::Syncing;
    s.outcome = Some(Outcome::Complete);
    s.outcome_at = Some(ts(MIN));
    s.next_check_at = None;
    let mut p = EventRecord::new_tracked(
        ts(0),
        track_req("p1", "acme", EventType::Create, Some(2)),
        &t,
    );
    p.next_check_at = Some(ts(7 * MIN));
    core.recover(ts(HOUR), s, vec![]);
    core.recover(ts(HOUR), p, vec![note("n1", "acme", "p1", true, 1)]);
    let acts = drain(&mut core);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(matches!(
        &acts[0],
        Action::StartSync { sync_id: 40, kind: SyncKind::Users, full: false, token, .. } if token == "acme"
    ));
    match &acts[1] {
        Action::Persist(c) => {
            assert_eq!(c.event.event_id, "p1");
            assert_eq!(c.event.notified_success, 1);
            assert_eq!(c.event.next_check_at, Some(ts(7 * MIN)));
        }
        a => panic!("{a:?}"),
    }
    // Overdue: due at once.
    assert_eq!(core.poll_timeout(), Some(ts(7 * MIN)));
    // A recovered settled event is ignored.
    let mut done =
        EventRecord::new_tracked(ts(0), track_req("x", "acme", EventType::Create, None), &t);
    done.state = State::Settled;
    core.recover(ts(HOUR), done, vec![]);
    assert!(core.event("x").is_none());
    core.sync_finished(ts(HOUR + MIN), 40, SyncOutcome::Ok);
    let acts = drain(&mut core);
    assert!(
        matches!(&acts[..], [Action::Persist(c)] if c.event.event_id == "u1" && c.event.state == State::Settled)
    );
}

#[test]
fn in_flight_cap_limits_concurrent_polls_without_spinning() {
    let mut t = timings();
    t.max_in_flight_per_token = 2;
    let mut core = Core::new(t.clone(), 1);
    for i in 0..5 {
        let rec = EventRecord::new_tracked(
            ts(0),
            track_req(&format!("e{i}"), "acme", EventType::Create, Some(1)),
            &t,
        );
        core.track(ts(0), rec, None);
        assert!(
            matches!(drain(&mut core)[..], [Action::Persist(_)]),
            "the insert"
        );
    }
    assert_eq!(core.poll_timeout(), Some(ts(5 * MIN)));
    core.timeout(ts(5 * MIN));
    let polled: Vec<String> = drain(&mut core)
        .into_iter()
        .filter_map(|a| match a {
            Action::Poll { event_id, .. } => Some(event_id),
            _ => None,
        })
        .collect();
    assert_eq!(polled, vec!["e0", "e1"]);
    // Three more are due, but the token is at its cap: no wake-up until an answer.
    assert_eq!(core.poll_timeout(), None);
    core.timeout(ts(5 * MIN + SEC));
    assert_eq!(drain(&mut core), vec![]);
    core.status_result(ts(6 * MIN), "e0", StatusResult::Pending);
    drain(&mut core);
    assert_eq!(core.poll_timeout(), Some(ts(5 * MIN)));
    core.timeout(ts(6 * MIN));
    let polled: Vec<String> = drain(&mut core)
        .into_iter()
        .filter_map(|a| match a {
            Action::Poll { event_id, .. } => Some(event_id),
            _ => None,
        })
        .collect();
    assert_eq!(polled, vec!["e2"]);
    assert_eq!(core.poll_timeout(), None);

    // Through the harness: never more than two in flight, and no idle spinning.
    let mut h = Harness::new(t);
    h.poll_latency = MIN;
    for i in 0..5 {
        h.event(
            0,
            track_req(&format!("e{i}"), "acme", EventType::Create, Some(1)),
            AppleEvent::new(Truth::Complete, 8 * MIN, 1),
        );
    }
    h.run_until(DAY);
    let mut all: Vec<i64> = h.polls.iter().map(|p| p.real).collect();
    all.sort();
    assert_eq!(all[..5], [5 * MIN, 5 * MIN, 6 * MIN, 6 * MIN, 7 * MIN]);
    let idle = h
        .steps
        .iter()
        .filter(|s| matches!(s.input, Input::Timeout) && s.actions.is_empty())
        .count();
    assert_eq!(idle, 0, "timeouts that did nothing");
    for i in 0..5 {
        assert_eq!(h.last(&format!("e{i}")).state, State::Settled);
    }
    h.check_invariants();
}

#[test]
fn clock_going_backwards_never_polls_closer_than_poll_min() {
    // Directly: after a poll at 5m, wake-ups at earlier or too-close times do nothing.
    let t = timings();
    let mut core = Core::new(t.clone(), 1);
    let rec = EventRecord::new_tracked(ts(0), track_req("e1", "acme", EventType::Create, None), &t);
    core.track(ts(0), rec, None);
    assert!(
        matches!(drain(&mut core)[..], [Action::Persist(_)]),
        "the insert"
    );
    core.timeout(ts(5 * MIN));
    assert_eq!(drain(&mut core).len(), 2);
    core.status_result(ts(5 * MIN), "e1", StatusResult::Pending);
    drain(&mut core);
    let next = core.poll_timeout().unwrap();
    assert_eq!(rel(next), 5 * MIN + delay_ms(0, "e1"));
    for back in [ts(MIN), ts(-HOUR), ts(5 * MIN + 29 * SEC)] {
        core.timeout(back);
        assert_eq!(drain(&mut core), vec![]);
    }
    // Retry with a not_before in the past (clock skew) still respects the floor.
    core.timeout(next);
    assert_eq!(drain(&mut core).len(), 2);
    core.status_result(
        ts(-HOUR),
        "e1",
        StatusResult::Retry {
            not_before: Some(ts(-2 * HOUR)),
            reason: "503".into(),
        },
    );
    drain(&mut core);
    assert!(core.poll_timeout().unwrap() >= next.saturating_add(POLL_MIN));

    // A recovered event whose last poll is "in the future" waits for the clock.
    let mut core = Core::new(t.clone(), 1);
    let mut rec =
        EventRecord::new_tracked(ts(0), track_req("e2", "acme", EventType::Create, None), &t);
    rec.last_poll_at = Some(ts(HOUR));
    rec.polls = 1;
    rec.next_check_at = Some(ts(MIN));
    core.recover(ts(0), rec, vec![]);
    let mut now = ts(MIN);
    let mut wakes = 0;
    loop {
        core.timeout(now);
        let acts = drain(&mut core);
        if acts.iter().any(|a| matches!(a, Action::Poll { .. })) {
            break;
        }
        wakes += 1;
        let next = core.poll_timeout().unwrap();
        assert!(next > now, "spin");
        now = next;
    }
    assert!(now >= ts(HOUR + 30 * SEC), "{now:?}");
    assert!(wakes <= 122, "{wakes} wake-ups");

    // Through the harness with the clock jumping back an hour and then forward again.
    let mut h = harness();
    h.poll_latency = 3 * SEC;
    h.event(
        0,
        track_req("e3", "acme", EventType::Associate, Some(1)),
        AppleEvent::new(Truth::Never, 0, 1),
    );
    h.at(5 * MIN + 10 * SEC, Input::Skew(-HOUR));
    h.at(2 * HOUR, Input::Skew(0));
    h.run_until(DAY);
    let polls = h.poll_times("e3");
    assert_eq!(polls[..2], [5 * MIN, 5 * MIN + 3 * SEC + delay_ms(0, "e3")]);
    h.check_invariants();
}

#[test]
fn early_or_spurious_timeout_is_a_no_op() {
    let t = timings();
    let mut core = Core::new(t.clone(), 1);
    assert_eq!(core.poll_timeout(), None);
    core.timeout(ts(0));
    assert_eq!(drain(&mut core), vec![]);
    let rec = EventRecord::new_tracked(
        ts(0),
        track_req("e1", "acme", EventType::Create, Some(1)),
        &t,
    );
    core.track(ts(0), rec.clone(), None);
    assert!(
        matches!(drain(&mut core)[..], [Action::Persist(_)]),
        "the insert"
    );
    assert_eq!(drain(&mut core), vec![]);
    assert_eq!(core.poll_timeout(), Some(ts(5 * MIN)));
    for at in [ts(0), ts(MIN), ts(5 * MIN - 1), ts(-DAY)] {
        core.timeout(at);
        assert_eq!(drain(&mut core), vec![]);
        assert_eq!(core.event("e1"), Some(rec.clone()));
        assert_eq!(core.poll_timeout(), Some(ts(5 * MIN)));
    }
    core.timeout(ts(5 * MIN));
    assert_eq!(drain(&mut core).len(), 2);
    // In flight: a second wake-up at the same time does nothing.
    core.timeout(ts(5 * MIN));
    assert_eq!(drain(&mut core), vec![]);
    // Tracking twice is a no-op too.
    assert!(matches!(
        core.track(ts(MIN), rec, None),
        TrackDecision::Existing { .. }
    ));
    assert_eq!(drain(&mut core), vec![]);
    assert_eq!(core.event("e1").unwrap().polls, 1);
    // Answers for unknown events and unknown syncs are ignored.
    core.status_result(ts(6 * MIN), "nope", StatusResult::Pending);
    core.sync_finished(ts(6 * MIN), 99, SyncOutcome::Ok);
    core.resubmit_result(ts(6 * MIN), "nope", Ok("x".into()));
    assert_eq!(drain(&mut core), vec![]);
}

/// With the clock stepped back while an event waits in `syncing`, the sync that starts after
/// its outcome (in causal order) still settles it; it must not wait forever.
#[test]
fn syncing_event_settles_when_the_clock_went_back() {
    let mut h = harness();
    h.sync_duration = 10 * MIN;
    h.at(0, Input::RequestSync("acme".into(), SyncKind::Users, false));
    h.event(
        0,
        track_req("u1", "acme", EventType::Create, Some(1)),
        AppleEvent::new(Truth::Failed, 0, 1),
    );
    h.notify(MIN, note("n1", "acme", "u1", false, 1));
    h.at(2 * MIN, Input::Skew(-HOUR));
    h.run_until(2 * DAY);
    let last = h.last("u1");
    assert_eq!(last.state, State::Settled);
    assert_eq!(last.settled_at, Some(ts(20 * MIN - HOUR)));
    assert_eq!(h.syncs_of(SyncKind::Users).len(), 2);
    h.check_invariants();
}

#[test]
fn failure_after_timed_out_records_failed_and_needs_a_new_sync() {
    let t = timings();
    let mut core = Core::new(t.clone(), 1);
    let rec = EventRecord::new_tracked(
        ts(0),
        track_req("u1", "acme", EventType::Create, Some(2)),
        &t,
    );
    core.track(ts(0), rec, None);
    assert!(
        matches!(drain(&mut core)[..], [Action::Persist(_)]),
        "the insert"
    );
    // Only wake at the deadline (as if every poll had been answered elsewhere).
    core.timeout(ts(DAY));
    let acts = drain(&mut core);
    assert!(matches!(&acts[0], Action::Persist(c) if c.event.outcome == Some(Outcome::TimedOut)));
    assert!(matches!(&acts[1], Action::StartSync { sync_id: 1, .. }));
    core.notification(ts(DAY + SEC), note("n1", "acme", "u1", false, 1));
    let acts = drain(&mut core);
    match &acts[..] {
        [Action::Persist(c)] => {
            assert_eq!(c.event.outcome, Some(Outcome::Failed));
            assert_eq!(c.event.outcome_at, Some(ts(DAY + SEC)));
            assert_eq!(
                c.history,
                vec![HistoryEntry {
                    at: ts(DAY + SEC),
                    from: Some(State::Syncing),
                    to: State::Syncing,
                    outcome: Some(Outcome::Failed),
                    cause: "notification n1 FAILURE for 1 entity".into(),
                }]
            );
        }
        a => panic!("{a:?}"),
    }
    // Sync 1 started before the failure was known: not enough.
    core.sync_finished(ts(DAY + MIN), 1, SyncOutcome::Ok);
    let acts = drain(&mut core);
    assert!(
        matches!(&acts[..], [Action::StartSync { sync_id: 2, .. }]),
        "{acts:?}"
    );
    core.sync_finished(ts(DAY + 2 * MIN), 2, SyncOutcome::Ok);
    let acts = drain(&mut core);
    assert!(
        matches!(&acts[..], [Action::Persist(c)] if c.event.state == State::Settled && c.event.outcome == Some(Outcome::Failed))
    );
}

/// A late SUCCESS covering everything for a timed-out event in `syncing` records
/// `complete`, but the event still settles only on a sync started after that.
#[test]
fn late_success_after_timed_out_still_settles_on_a_sync() {
    let t = timings();
    let mut core = Core::new(t.clone(), 1);
    let rec = EventRecord::new_tracked(
        ts(0),
        track_req("u1", "acme", EventType::Create, Some(2)),
        &t,
    );
    core.track(ts(0), rec, None);
    assert!(
        matches!(drain(&mut core)[..], [Action::Persist(_)]),
        "the insert"
    );
    core.timeout(ts(DAY));
    drain(&mut core);
    core.notification(ts(DAY + SEC), note("n1", "acme", "u1", true, 2));
    let acts = drain(&mut core);
    match &acts[..] {
        [Action::Persist(c)] => {
            assert_eq!(c.event.outcome, Some(Outcome::Complete));
            assert_eq!(c.event.state, State::Syncing);
            assert!(c.feed);
        }
        a => panic!("{a:?}"),
    }
    core.sync_finished(ts(DAY + MIN), 1, SyncOutcome::Ok);
    let acts = drain(&mut core);
    assert!(
        matches!(&acts[..], [Action::StartSync { sync_id: 2, .. }]),
        "{acts:?}"
    );
    core.sync_finished(ts(DAY + 2 * MIN), 2, SyncOutcome::Ok);
    let acts = drain(&mut core);
    assert!(
        matches!(&acts[..], [Action::Persist(c)] if c.event.state == State::Settled && c.event.outcome == Some(Outcome::Complete))
    );
    assert!(core.is_empty());
}

/// A SUCCESS chunk right after a poll asks for a confirming poll, but not before Apple's
/// floor between two polls.
#[test]
fn confirm_poll_waits_for_poll_min_after_the_last_poll() {
    let mut h = harness();
    h.event(
        0,
        track_req("c1", "acme", EventType::Update, None),
        AppleEvent::new(Truth::Complete, 5 * MIN + 5 * SEC, 3),
    );
    h.notify(5 * MIN + 10 * SEC, note("n1", "acme", "c1", true, 3));
    h.run_until(DAY);
    assert_eq!(h.poll_times("c1"), vec![5 * MIN, 5 * MIN + 30 * SEC]);
    let last = h.last("c1");
    assert_eq!(
        (last.state, last.outcome),
        (State::Settled, Some(Outcome::Complete))
    );
    assert_eq!(last.settled_at, Some(ts(5 * MIN + 30 * SEC)));
    assert!(h.syncs.is_empty());
    h.check_invariants();
}

/// kill -9 with a poll and a sync in flight: the new core recovers both events from their
/// last snapshots, polls again no sooner than poll_min after the lost poll, and re-syncs.
#[test]
fn crash_with_requests_in_flight_recovers_from_snapshots() {
    let mut h = harness();
    h.poll_latency = MIN;
    h.sync_duration = 10 * MIN;
    h.event(
        0,
        track_req("p1", "acme", EventType::Associate, Some(1)),
        AppleEvent::new(Truth::Complete, 0, 1),
    );
    h.event(
        0,
        track_req("s1", "acme", EventType::Create, Some(1)),
        AppleEvent::new(Truth::Failed, 0, 1),
    );
    h.notify(MIN, note("n1", "acme", "s1", false, 1));
    h.at(5 * MIN + 10 * SEC, Input::Crash);
    // A duplicate of an applied notification after the restart: the store drops it.
    h.notify(6 * MIN, note("n1", "acme", "s1", false, 1));
    h.run_until(DAY);
    assert_eq!(h.poll_times("p1"), vec![5 * MIN, 5 * MIN + 30 * SEC]);
    let users: Vec<(u64, i64, Option<bool>)> = h
        .syncs_of(SyncKind::Users)
        .iter()
        .map(|s| (s.id, s.start_real, s.ok))
        .collect();
    assert_eq!(
        users,
        vec![(1, MIN, None), (2, 5 * MIN + 10 * SEC, Some(true))]
    );
    let s1 = h.last("s1");
    assert_eq!(
        (s1.state, s1.outcome),
        (State::Settled, Some(Outcome::Failed))
    );
    assert_eq!(s1.settled_at, Some(ts(15 * MIN + 10 * SEC)));
    let p1 = h.last("p1");
    assert_eq!(
        (p1.state, p1.outcome),
        (State::Settled, Some(Outcome::Complete))
    );
    assert_eq!(p1.polls, 2);
    h.check_invariants();
}

#[test]
fn failed_status_records_apples_failures_and_syncs() {
    let mut h = harness();
    // Every notification lost: only Event Status tells.
    h.event(
        0,
        track_req("e1", "acme", EventType::Associate, Some(4)),
        AppleEvent::new(Truth::Failed, MIN, 4),
    );
    h.run_until(DAY);
    assert_eq!(h.poll_times("e1"), vec![5 * MIN]);
    let ch = h.changes("e1");
    let (_, c) = ch
        .iter()
        .find(|(_, c)| c.event.outcome.is_some())
        .expect("outcome");
    assert_eq!(c.event.state, State::Syncing);
    assert_eq!(c.event.outcome, Some(Outcome::Failed));
    assert_eq!((c.event.num_requested, c.event.num_completed), (Some(4), 3));
    assert_eq!(
        c.failures,
        vec![(FailureSource::Status, failure(9609, "u-failed"))]
    );
    assert_eq!(c.polls.last().map(|p| p.result.as_str()), Some("FAILED"));
    assert!(c.feed);
    let last = h.last("e1");
    assert_eq!(
        (last.state, last.outcome),
        (State::Settled, Some(Outcome::Failed))
    );
    assert_eq!(last.settled_at, Some(ts(6 * MIN)));
    h.check_invariants();
}

/// Sans-IO: the core's sources name no runtime, IO crate or clock.
#[test]
fn core_is_pure() {
    let sources = [
        ("mod.rs", include_str!("../mod.rs")),
        ("model.rs", include_str!("../model.rs")),
        ("backoff.rs", include_str!("../backoff.rs")),
    ];
    let forbidden = [
        "tokio",
        "reqwest",
        "rusqlite",
        "axum",
        "std::fs",
        "std::net",
        "std::thread",
        "SystemTime",
        "Instant",
        "::now()",
        "rand::",
    ];
    for (file, src) in sources {
        for word in forbidden {
            assert!(!src.contains(word), "src/core/{file} mentions {word}");
        }
    }
}

#[test]
fn failed_sync_without_waiters_is_retried_a_bounded_number_of_times() {
    use crate::core::{Action, Core, SyncKind, Timings, MAX_UNWAITED_SYNC_ATTEMPTS};
    use crate::time::Timestamp;
    let mut core = Core::new(Timings::default(), 1);
    let mut now = Timestamp(1_000_000);
    core.request_sync(now, "acme", SyncKind::Assets, true, "counts");
    let mut starts = Vec::new();
    for _ in 0..50 {
        let mut started = None;
        while let Some(a) = core.poll_action() {
            if let Action::StartSync { sync_id, .. } = a {
                started = Some(sync_id);
            }
        }
        if let Some(id) = started {
            starts.push(now);
            core.sync_finished(now, id, SyncOutcome::Transient("test".into()));
        }
        match core.poll_timeout() {
            Some(t) => {
                assert!(t > now, "no busy spin");
                now = t;
                core.timeout(now);
            }
            None => break,
        }
    }
    assert_eq!(starts.len() as u32, MAX_UNWAITED_SYNC_ATTEMPTS);
    // Backed off: each retry waits at least poll_min after the previous failure.
    for w in starts.windows(2) {
        assert!(w[1].since(w[0]) >= Timings::default().poll_min);
    }
}

#[test]
fn complete_without_notifications_or_count_still_syncs() {
    use crate::core::{
        Action, Core, EventRecord, EventType, State, StatusResult, Timings, TrackRequest,
    };
    use crate::time::Timestamp;
    let timings = Timings::default();
    let mut core = Core::new(timings.clone(), 1);
    let now = Timestamp(10_000_000);
    let rec = EventRecord::new_tracked(
        now,
        TrackRequest {
            event_id: "e".into(),
            token: "acme".into(),
            event_type: EventType::Create,
            submitted_at: None,
            num_requested: None,
            has_request: false,
            supersedes: None,
        },
        &timings,
    );
    core.track(now, rec, None);
    assert!(
        matches!(drain(&mut core)[..], [Action::Persist(_)]),
        "the insert"
    );
    let later = now.saturating_add(timings.notification_grace);
    core.timeout(later);
    let polled =
        std::iter::from_fn(|| core.poll_action()).any(|a| matches!(a, Action::Poll { .. }));
    assert!(polled);
    // Apple omits the counts: COMPLETE with 0/0 and no notification ever came.
    core.status_result(
        later,
        "e",
        StatusResult::Complete {
            num_requested: 0,
            num_completed: 0,
        },
    );
    assert_eq!(core.event("e").map(|e| e.state), Some(State::Syncing));
}

#[test]
fn apple_omitting_num_requested_keeps_the_bodys_count() {
    use crate::core::{
        Action, Core, EventRecord, EventType, NotificationInput, State, StatusResult, Timings,
        TrackRequest,
    };
    use crate::time::Timestamp;
    let timings = Timings::default();
    let mut core = Core::new(timings.clone(), 1);
    let now = Timestamp(10_000_000);
    let rec = EventRecord::new_tracked(
        now,
        TrackRequest {
            event_id: "e".into(),
            token: "acme".into(),
            event_type: EventType::Associate,
            submitted_at: None,
            num_requested: Some(4),
            has_request: true,
            supersedes: None,
        },
        &timings,
    );
    core.track(now, rec, None);
    assert!(
        matches!(drain(&mut core)[..], [Action::Persist(_)]),
        "the insert"
    );
    // Half the entities were notified; the other chunk was lost.
    core.notification(
        now,
        NotificationInput {
            notification_id: "n1".into(),
            token: "acme".into(),
            event_id: "e".into(),
            success: true,
            entities: 2,
            error: None,
        },
    );
    let later = now.saturating_add(timings.notification_grace);
    core.timeout(later);
    assert!(std::iter::from_fn(|| core.poll_action()).any(|a| matches!(a, Action::Poll { .. })));
    core.status_result(
        later,
        "e",
        StatusResult::Complete {
            num_requested: 0,
            num_completed: 0,
        },
    );
    let e = core.event("e").expect("not settled on a partial cover");
    assert_eq!(e.state, State::Syncing);
    assert_eq!(e.num_requested, Some(4));
}

/// A token whose lease is lost leaves the core whole: its events, timers and sync runs go,
/// answers still in flight for it are ignored, and the other tokens carry on.
#[test]
fn forgetting_a_token_drops_its_work_and_ignores_its_late_answers() {
    let mut core = Core::new(timings(), 1);
    let now = ts(0);
    for (id, token) in [("a1", "acme"), ("a2", "acme"), ("b1", "beta")] {
        let rec = EventRecord::new_tracked(
            now,
            track_req(id, token, EventType::Associate, Some(1)),
            &timings(),
        );
        assert!(matches!(
            core.track(now, rec, None),
            TrackDecision::Created(_)
        ));
    }
    drain(&mut core);
    core.request_sync(now, "acme", SyncKind::Users, false, "test");
    let started = drain(&mut core);
    assert!(started
        .iter()
        .any(|a| matches!(a, Action::StartSync { token, .. } if token == "acme")));
    // Polls fire for both tokens after the grace period.
    let later = ts(301_000);
    core.timeout(later);
    let polls: Vec<String> = drain(&mut core)
        .into_iter()
        .filter_map(|a| match a {
            Action::Poll { event_id, .. } => Some(event_id),
            _ => None,
        })
        .collect();
    assert_eq!(polls.len(), 3, "{polls:?}");

    assert_eq!(core.forget_token("acme"), 2);
    assert_eq!(core.len(), 1);
    assert!(core.event("a1").is_none());
    assert!(core.sync_state("acme", SyncKind::Users).is_none());
    // Late answers for the forgotten token change nothing.
    let complete = || StatusResult::Complete {
        num_requested: 1,
        num_completed: 1,
    };
    core.status_result(later, "a1", complete());
    core.sync_finished(later, 1, SyncOutcome::Ok);
    assert!(drain(&mut core).is_empty());
    // The other token still works.
    core.status_result(later, "b1", complete());
    assert!(!drain(&mut core).is_empty());
    assert_eq!(core.forget_token("nobody"), 0);
}

/// An insert not yet taken by the executor is dropped with its token: the executor asks
/// which, to tell their trackers (a tracker must never wait for a commit that will not come).
#[test]
fn uncommitted_inserts_are_those_forget_token_drops() {
    let mut core = Core::new(timings(), 1);
    let now = ts(0);
    let track = |id: &str, token: &str| {
        EventRecord::new_tracked(
            now,
            track_req(id, token, EventType::Associate, Some(1)),
            &timings(),
        )
    };
    for (id, token) in [("a1", "acme"), ("a2", "acme"), ("b1", "beta")] {
        let rec = track(id, token);
        assert!(matches!(
            core.track(now, rec, None),
            TrackDecision::Created(_)
        ));
    }
    assert_eq!(core.uncommitted_inserts("acme"), vec!["a1", "a2"]);
    assert_eq!(core.uncommitted_inserts("beta"), vec!["b1"]);
    // Taken by the executor (on their way to the store): not dropped, answered on commit.
    drain(&mut core);
    assert!(core.uncommitted_inserts("acme").is_empty());
    core.track(now, track("a3", "acme"), None);
    assert_eq!(core.uncommitted_inserts("acme"), vec!["a3"]);
    core.forget_token("acme");
    assert!(core.uncommitted_inserts("acme").is_empty());
    assert_eq!(core.uncommitted_inserts("beta"), Vec::<String>::new());
}
