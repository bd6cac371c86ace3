//! Property tests over random worlds: events with and without counts and bodies, chunked
//! notifications that are delivered, lost, duplicated, reordered or early, Event Status
//! answers with 5xx / Retry-After, failing syncs, resubmissions, a clock that jumps back and
//! forth, and a kill -9 with restart.
//! Each case runs three simulated days, then checks the invariants of the core's module docs
//! (see [`Harness::check_invariants`]) and that every event settled with Apple's truth.

use proptest::prelude::*;

use super::harness::*;
use crate::core::{EventType, Outcome, State, SyncKind};

#[derive(Clone, Debug)]
enum Delivery {
    Lost,
    Once(i64),
    Twice(i64, i64),
}

#[derive(Clone, Debug)]
struct EvSpec {
    token: usize,
    ty: EventType,
    truth: Truth,
    submit_at: i64,
    track_delay: i64,
    final_delay: i64,
    submitted_known: bool,
    num: u32,
    count_known: bool,
    has_request: bool,
    chunks: Vec<Delivery>,
    failing_chunk: usize,
    script: Vec<Option<i64>>,
    resubmit: (Truth, i64, bool),
}

#[derive(Clone, Debug)]
struct World {
    events: Vec<EvSpec>,
    sync_results: Vec<bool>,
    sync_duration: i64,
    poll_latency: i64,
    resubmit_latency: i64,
    cap: usize,
    skews: Vec<(i64, i64)>,
    external_syncs: Vec<(i64, usize, SyncKind, bool)>,
    /// kill -9 and restart at this time.
    crash_at: Option<i64>,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        1 => Just(Delivery::Lost),
        3 => prop_oneof![0..2 * MIN, 0..30 * MIN].prop_map(Delivery::Once),
        1 => (0..30 * MIN, 0..30 * MIN).prop_map(|(a, b)| Delivery::Twice(a, b)),
    ]
}

fn truth() -> impl Strategy<Value = Truth> {
    prop_oneof![
        4 => Just(Truth::Complete),
        3 => Just(Truth::Failed),
        2 => Just(Truth::Never),
        1 => Just(Truth::Unknown),
    ]
}

fn ev_spec() -> impl Strategy<Value = EvSpec> {
    (
        (0usize..2, 0usize..6, truth()),
        (
            // Whole minutes, so polls, answers and syncs of different events coincide.
            (0..120i64).prop_map(|m| m * MIN),
            prop_oneof![Just(0i64), (0..30i64).prop_map(|h| h * 30 * SEC)],
            prop_oneof![0..10 * MIN, 0..6 * HOUR],
            any::<bool>(),
        ),
        (1u32..350, any::<bool>(), any::<bool>()),
        (prop::collection::vec(delivery(), 4), 0usize..4),
        prop::collection::vec(prop::option::of(0..HOUR), 0..3),
        (
            prop_oneof![Just(Truth::Complete), Just(Truth::Failed)],
            0..2 * HOUR,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (token, ty, truth),
                (submit_at, track_delay, final_delay, submitted_known),
                (num, count_known, has_request),
                (chunks, failing_chunk),
                script,
                resubmit,
            )| EvSpec {
                token,
                ty: EventType::ALL[ty],
                truth,
                submit_at,
                track_delay,
                final_delay,
                submitted_known,
                num,
                count_known,
                has_request,
                chunks,
                failing_chunk,
                script,
                resubmit,
            },
        )
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(ev_spec(), 1..12),
        prop::collection::vec(prop::bool::weighted(0.6), 0..6),
        SEC..20 * MIN,
        (0..5 * SEC, prop_oneof![Just(SEC), 0..5 * MIN]),
        1usize..4,
        prop::collection::vec((0..3 * HOUR, -2 * HOUR..=2 * HOUR), 0..3),
        prop::collection::vec(
            (
                0..3 * HOUR,
                0usize..2,
                prop::sample::select(SyncKind::ALL.to_vec()),
                any::<bool>(),
            ),
            0..3,
        ),
        prop::option::of(0..4 * HOUR),
    )
        .prop_map(
            |(
                events,
                sync_results,
                sync_duration,
                (poll_latency, resubmit_latency),
                cap,
                skews,
                external_syncs,
                crash_at,
            )| {
                World {
                    events,
                    sync_results,
                    sync_duration,
                    poll_latency,
                    resubmit_latency,
                    cap,
                    skews,
                    external_syncs,
                    crash_at,
                }
            },
        )
}

/// Chunk sizes of at most 100 entities covering `num`.
fn chunk_sizes(num: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut left = num;
    while left > 0 {
        out.push(left.min(100));
        left -= left.min(100);
    }
    out
}

fn build(w: &World) -> Harness {
    let mut t = timings();
    t.max_in_flight_per_token = w.cap;
    let mut h = Harness::new(t);
    h.sync_results = w.sync_results.iter().copied().collect();
    h.sync_duration = w.sync_duration;
    h.poll_latency = w.poll_latency;
    h.resubmit_latency = w.resubmit_latency;
    for (at, skew) in &w.skews {
        h.at(*at, Input::Skew(*skew));
    }
    if let Some(at) = w.crash_at {
        h.at(at, Input::Crash);
    }
    for (at, tok, kind, full) in &w.external_syncs {
        h.at(*at, Input::RequestSync(format!("t{tok}"), *kind, *full));
    }
    for (i, e) in w.events.iter().enumerate() {
        let id = format!("e{i}");
        let token = format!("t{}", e.token);
        let final_at = e.submit_at + e.final_delay;
        let mut apple = AppleEvent::new(e.truth, final_at, e.num);
        apple.script = e.script.iter().map(|d| Scripted::Retry(*d)).collect();
        let sizes = chunk_sizes(e.num);
        let failing = e.failing_chunk % sizes.len();
        if matches!(e.truth, Truth::Complete | Truth::Failed) {
            for (c, size) in sizes.iter().enumerate() {
                let success = !(e.truth == Truth::Failed && c == failing);
                let n = note(&format!("{id}-n{c}"), &token, &id, success, *size);
                match e.chunks[c % e.chunks.len()] {
                    Delivery::Lost => {}
                    Delivery::Once(d) => h.notify(final_at + d, n),
                    Delivery::Twice(a, b) => {
                        h.notify(final_at + a, n.clone());
                        h.notify(final_at + b, n);
                    }
                }
            }
        }
        let mut req = track_req(&id, &token, e.ty, e.count_known.then_some(e.num));
        req.has_request = e.has_request;
        // The wall clock may be skewed at submission; an approximation is all a tracker has.
        req.submitted_at = e.submitted_known.then(|| ts(e.submit_at));
        h.apple.insert(id.clone(), apple);
        h.at(e.submit_at + e.track_delay, Input::Track(req));
        if e.has_request {
            let (truth, final_delay, deliver) = e.resubmit;
            let notes = if deliver {
                sizes
                    .iter()
                    .enumerate()
                    .map(|(c, s)| (MIN, !(truth == Truth::Failed && c == failing), *s))
                    .collect()
            } else {
                vec![]
            };
            h.resubmit_plans.insert(
                id.clone(),
                ResubmitPlan {
                    new_id: format!("{id}r"),
                    apple: AppleEvent::new(truth, final_delay, e.num),
                    notes,
                },
            );
        }
    }
    h
}

fn check_world(w: &World) -> Result<(), TestCaseError> {
    let mut h = build(w);
    h.run_until(3 * DAY);
    h.check_invariants();
    if std::env::var("CORE_STATS").is_ok() {
        let mut outcomes = std::collections::BTreeMap::new();
        for id in h.initial.keys() {
            *outcomes
                .entry(format!("{:?}", h.last(id).outcome))
                .or_insert(0) += 1;
        }
        let held_applied = h
            .steps
            .iter()
            .filter(|s| matches!(s.input, Input::Track(_)) && s.fed > 0)
            .count();
        eprintln!(
            "events {} polls {} syncs {} failed_syncs {} resubmits {} steps {} held-batches {} crashes {} lost {} {:?}",
            h.initial.len(), h.polls.len(), h.syncs.len(),
            h.syncs.iter().filter(|s| s.ok == Some(false)).count(),
            h.resubmits().len(), h.steps.len(), held_applied, h.crashes, h.lost_in_crash.len(), outcomes
        );
    }

    // (a) every event Apple knows of (and every resubmission) ends settled with the truth.
    prop_assert!(h.core.is_empty(), "unsettled: {} events", h.core.len());
    // Apple's events: the tracked ones plus every resubmission Apple accepted.
    let mut ids: Vec<&String> = h.apple.keys().collect();
    ids.sort();
    for id in ids {
        prop_assert!(
            h.initial.contains_key(id),
            "{} exists at Apple but was never tracked",
            id
        );
        let last = h.last(id);
        let truth = h.apple.get(id).map(|a| a.truth).unwrap_or(Truth::Unknown);
        prop_assert_eq!(last.state, State::Settled, "{}", id);
        prop_assert_eq!(last.outcome, Some(truth.outcome()), "{}: {:?}", id, last);
        if last.outcome == Some(Outcome::Failed) {
            let failures: usize = h.changes(id).iter().map(|(_, c)| c.failures.len()).sum();
            prop_assert!(failures > 0, "{}: failed without a recorded failure", id);
        }
        // Resubmitted at most once, only with the body, and only past resubmit_after.
        let resubmits: Vec<i64> = h
            .resubmits()
            .into_iter()
            .filter(|(_, e)| e == id)
            .map(|(at, _)| at)
            .collect();
        prop_assert!(resubmits.len() <= 1, "{}: {:?}", id, resubmits);
        if let Some(at) = resubmits.first() {
            let first = &h.initial[id];
            prop_assert!(first.has_request && first.supersedes.is_none(), "{}", id);
            prop_assert!(*at >= rel(first.submitted_at) + 10 * MIN, "{}", id);
        }
    }
    for tok in ["t0", "t1"] {
        for kind in SyncKind::ALL {
            if let Some(st) = h.core.sync_state(tok, kind) {
                prop_assert_eq!((st.running, st.queued, st.waiting), (None, false, 0));
            }
        }
    }
    prop_assert!(
        h.steps.len() < 40_000,
        "{} steps for {} events",
        h.steps.len(),
        w.events.len()
    );
    Ok(())
}

proptest! {
    // 96 cases by default (under a second in debug); PROPTEST_CASES=5000 for a deep run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_event_settles_with_the_truth_and_invariants_hold(w in world()) {
        check_world(&w)?;
    }
}

/// A fixed busy world (many events on one token, everything going wrong at once).
#[test]
fn busy_world() {
    let mut events = Vec::new();
    for i in 0..40 {
        events.push(EvSpec {
            token: i % 2,
            ty: EventType::ALL[i % 6],
            truth: [Truth::Complete, Truth::Failed, Truth::Never, Truth::Unknown][i % 4],
            submit_at: (i as i64) * 7 * SEC,
            track_delay: (i as i64 % 3) * 4 * MIN,
            final_delay: (i as i64 % 5) * 3 * MIN,
            submitted_known: i % 2 == 0,
            num: 1 + (i as u32 * 37) % 300,
            count_known: i % 3 != 0,
            has_request: i % 4 == 1,
            chunks: vec![
                Delivery::Once(0),
                Delivery::Lost,
                Delivery::Twice(MIN, 0),
                Delivery::Once(10 * MIN),
            ],
            failing_chunk: i,
            script: vec![Some(20 * MIN), None],
            resubmit: (Truth::Complete, 30 * MIN, i % 8 == 1),
        });
    }
    let w = World {
        events,
        sync_results: vec![false, true, false, false, true],
        sync_duration: 3 * MIN,
        poll_latency: 2 * SEC,
        resubmit_latency: 90 * SEC,
        cap: 2,
        skews: vec![(20 * MIN, -HOUR), (90 * MIN, 0)],
        external_syncs: vec![(0, 0, SyncKind::Assignments, false)],
        crash_at: Some(11 * MIN),
    };
    check_world(&w).unwrap();
}

/// The core's outputs depend only on its inputs and seed: the same world run twice emits the
/// same actions in the same order (so a failing case replays exactly).
#[test]
fn the_same_inputs_replay_the_same_actions() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for _ in 0..16 {
        let w = world().new_tree(&mut runner).unwrap().current();
        let log = |w: &World| {
            let mut h = build(w);
            h.run_until(3 * DAY);
            h.steps
                .iter()
                .map(|s| format!("{:?} {:?} -> {:?}", s.wall, s.input, s.actions))
                .collect::<Vec<_>>()
        };
        let (a, b) = (log(&w), log(&w));
        assert!(!a.is_empty());
        assert_eq!(a, b, "two runs of one world diverged");
    }
}
