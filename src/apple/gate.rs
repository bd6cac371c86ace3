//! Per-token admission gate. Pure: no tokio, no clock reads; every method takes `now`.
//!
//! Invariants (what a caller gets by asking [`Gate::next_send_at`] before every request and
//! calling [`Gate::on_sent`] when it goes):
//! - **Rate**: at most `rps` *arrivals* at the server in any 1 s window. The server counts
//!   arrivals, not our send times, and a request can arrive late (a new connection, a stalled
//!   thread). So each of the last `rps` requests counts from its latest possible arrival: its
//!   response time once answered ([`Gate::on_completed`]; arrival ≤ response), else its send
//!   time plus a 50 ms margin. A send may go once the earliest of those is 1 s old. Over
//!   loopback this costs ~5% of throughput; over a real network about one round trip per
//!   window, the price of never showing `rps + 1` to a server that counts arrivals.
//! - **Retry-After**: after an answer carrying Retry-After, nothing is sent before it ends.
//! - **Backoff**: consecutive 429/9646 answers wait 1 s, 2 s, 4 s … up to 60 s (plus up to
//!   `jitter` of that, from a seeded generator), longer if Retry-After says so. A success
//!   resets the ladder.
//! - **Half-open**: when a Retry-After window or a 429 backoff ends, one request goes first
//!   and the rest wait for its answer, so a server that is still struggling sees one request,
//!   not `max_concurrent_requests`, and nothing lands inside a window that answer reopens.
//! - **Health**: after a token problem everything is refused until [`Gate::reset_health`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::core::backoff;
use crate::time::Timestamp;

use super::error::ApiError;

#[derive(Clone, Debug)]
pub struct GateConfig {
    pub rps: u32,
    pub margin_ms: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// Extra random fraction added to each backoff delay, 0.0..=1.0.
    pub jitter: f64,
    pub seed: u64,
}

impl GateConfig {
    pub fn new(rps: u32, seed: u64) -> GateConfig {
        GateConfig {
            rps,
            margin_ms: 50,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            jitter: 0.2,
            seed,
        }
    }
}

/// What came back from a request, as far as the gate cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that was not a rate-limit/availability/token problem.
    Success,
    /// 429 / 9646.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx / 9603 / 9729 / 9644.
    Unavailable { retry_after: Option<Duration> },
    /// The token is unusable until replaced.
    TokenProblem(ApiError),
    /// No answer (timeout, transport): says nothing about the server's state.
    NoAnswer,
}

impl Outcome {
    pub fn from_result<T>(r: &Result<T, ApiError>) -> Outcome {
        match r {
            Ok(_) => Outcome::Success,
            Err(e) if e.is_token_problem() => Outcome::TokenProblem(e.clone()),
            Err(ApiError::RateLimited { retry_after }) => Outcome::RateLimited {
                retry_after: *retry_after,
            },
            Err(ApiError::Unavailable { retry_after, .. }) => Outcome::Unavailable {
                retry_after: *retry_after,
            },
            Err(ApiError::Timeout | ApiError::Transport(_)) => Outcome::NoAnswer,
            Err(_) => Outcome::Success,
        }
    }
}

/// The gate refuses: the token is unhealthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: ApiError,
    pub since: Timestamp,
}

#[derive(Clone, Debug)]
pub struct Gate {
    cfg: GateConfig,
    /// The last `rps` requests in send order: (sent, latest possible arrival).
    sends: VecDeque<(Timestamp, Timestamp)>,
    paused_until: Timestamp,
    backoff_until: Timestamp,
    backoff_level: u32,
    unhealthy: Option<Refused>,
    rng: u64,
    probe: Probe,
    /// The answer being recorded is the probe's (between `on_completed` and `on_outcome`).
    probe_just_answered: bool,
}

/// The half-open state after a pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// No pause to recover from.
    Closed,
    /// A pause was set: the next request is a probe.
    Armed,
    /// The probe was sent at this time; others wait for its answer.
    Sent(Timestamp),
}

/// How often a request waiting behind a probe asks again.
const PROBE_POLL_MS: i64 = 25;
/// A probe with no answer this long (its caller went away) no longer holds the others.
const PROBE_TIMEOUT_MS: i64 = 120_000;

impl Gate {
    pub fn new(cfg: GateConfig) -> Gate {
        let rng = cfg.seed ^ backoff::GOLDEN_GAMMA;
        Gate {
            cfg,
            sends: VecDeque::new(),
            paused_until: Timestamp::ZERO,
            backoff_until: Timestamp::ZERO,
            backoff_level: 0,
            unhealthy: None,
            rng,
            probe: Probe::Closed,
            probe_just_answered: false,
        }
    }

    pub fn rps(&self) -> u32 {
        self.cfg.rps.max(1)
    }

    /// Changes the rate (Service Config or token reload). Past sends still count.
    pub fn set_rps(&mut self, rps: u32) {
        self.cfg.rps = rps.max(1);
        self.trim();
    }

    /// Earliest time the next request may be sent: `now` or later. Ask again at that time;
    /// it may have moved (another request went first, or a Retry-After arrived).
    pub fn next_send_at(&self, now: Timestamp) -> Result<Timestamp, Refused> {
        if let Some(r) = &self.unhealthy {
            return Err(r.clone());
        }
        let mut at = now.max(self.paused_until).max(self.backoff_until);
        if let Probe::Sent(sent) = self.probe {
            if now.0 < sent.0.saturating_add(PROBE_TIMEOUT_MS) {
                at = at.max(Timestamp(now.0.saturating_add(PROBE_POLL_MS)));
            }
        }
        if self.sends.len() >= self.rps() as usize {
            if let Some(earliest) = self.sends.iter().map(|(_, arrival)| *arrival).min() {
                at = at.max(Timestamp(earliest.0.saturating_add(1_000)));
            }
        }
        Ok(at)
    }

    /// Records a send at `now` (call only when `next_send_at(now) <= now`).
    /// Returns the send time recorded, to pass to [`Gate::on_completed`].
    pub fn on_sent(&mut self, now: Timestamp) -> Timestamp {
        // Time running backwards must not reorder the ring: record the later of the two.
        let t = self.sends.back().map_or(now, |&(last, _)| last.max(now));
        let arrival = Timestamp(t.0.saturating_add(self.cfg.margin_ms.max(0)));
        if self.probe == Probe::Armed {
            self.probe = Probe::Sent(t);
        }
        self.sends.push_back((t, arrival));
        self.trim();
        t
    }

    /// The answer to the request sent at `sent` came back at `now`: it arrived no later than
    /// that, which bounds its arrival better than the margin when the answer was slow.
    pub fn on_completed(&mut self, sent: Timestamp, now: Timestamp) {
        if self.probe == Probe::Sent(sent) {
            // Answered: the others may go, unless a pause is still ahead (another answer
            // set one meanwhile) or `on_outcome` arms a new probe.
            self.probe = if self.paused_until() > now {
                Probe::Armed
            } else {
                Probe::Closed
            };
            self.probe_just_answered = true;
        }
        if let Some(entry) = self.sends.iter_mut().find(|(s, _)| *s == sent) {
            // +1 ms: a server window closed at both ends must not see both requests.
            entry.1 = entry.1.max(Timestamp(now.0.saturating_add(1)));
        }
    }

    pub fn on_outcome(&mut self, now: Timestamp, outcome: &Outcome) {
        match outcome {
            Outcome::Success => self.backoff_level = 0,
            Outcome::RateLimited { retry_after } => {
                self.backoff_level = self.backoff_level.saturating_add(1);
                let delay = self.backoff_delay_ms();
                let mut until = Timestamp(now.0.saturating_add(delay));
                if let Some(ra) = retry_after {
                    until = until.max(now.saturating_add(*ra));
                }
                self.backoff_until = self.backoff_until.max(until);
                self.arm_probe();
            }
            Outcome::Unavailable { retry_after } => {
                if let Some(ra) = retry_after {
                    self.paused_until = self.paused_until.max(now.saturating_add(*ra));
                    self.arm_probe();
                }
            }
            Outcome::TokenProblem(reason) => {
                if self.unhealthy.is_none() {
                    self.unhealthy = Some(Refused {
                        reason: reason.clone(),
                        since: now,
                    });
                }
            }
            Outcome::NoAnswer => {
                // A probe without an answer told us nothing: the next request probes again.
                if self.probe_just_answered {
                    self.arm_probe();
                }
            }
        }
        self.probe_just_answered = false;
    }

    fn arm_probe(&mut self) {
        if !matches!(self.probe, Probe::Sent(_)) {
            self.probe = Probe::Armed;
        }
    }

    /// Clears `unhealthy` (the token was set again).
    pub fn reset_health(&mut self) {
        self.unhealthy = None;
    }

    pub fn unhealthy(&self) -> Option<&Refused> {
        self.unhealthy.as_ref()
    }

    /// Until when Apple's last Retry-After asked for no request (not the local backoff).
    pub fn retry_after_until(&self) -> Timestamp {
        self.paused_until
    }

    /// Honours a Retry-After another instance was given for this token.
    pub fn pause_until(&mut self, until: Timestamp) {
        self.paused_until = self.paused_until.max(until);
    }

    pub fn paused_until(&self) -> Timestamp {
        self.paused_until.max(self.backoff_until)
    }

    fn trim(&mut self) {
        while self.sends.len() > self.rps() as usize {
            self.sends.pop_front();
        }
    }

    fn backoff_delay_ms(&mut self) -> i64 {
        let base = backoff::exponential_ms(
            self.cfg.backoff_base_ms.max(0) as u64,
            self.backoff_level.saturating_sub(1),
            self.cfg.backoff_max_ms.max(0) as u64,
        );
        // No jitter: leave the generator where it is, so seeded sequences stay put.
        let jitter = self.cfg.jitter.clamp(0.0, 1.0);
        let ms = if jitter == 0.0 {
            base
        } else {
            backoff::add_jitter_fraction(base, jitter, self.next_rand())
        };
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

    /// The next output of a SplitMix64 stream: tiny, seedable, good enough for jitter.
    fn next_rand(&mut self) -> u64 {
        let out = backoff::splitmix64(self.rng);
        self.rng = self.rng.wrapping_add(backoff::GOLDEN_GAMMA);
        out
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_retry_after_given_to_another_instance_holds_here_too() {
        let mut g = Gate::new(GateConfig::new(5, 1));
        let t0 = Timestamp(1_000_000);
        assert_eq!(g.retry_after_until(), Timestamp::ZERO);
        g.pause_until(Timestamp(t0.0 + 4_000));
        g.pause_until(Timestamp(t0.0 + 1_000)); // an older one changes nothing
        assert_eq!(g.retry_after_until(), Timestamp(t0.0 + 4_000));
        assert_eq!(g.next_send_at(t0).unwrap(), Timestamp(t0.0 + 4_000));
    }

    #[test]
    fn a_slow_answer_pushes_the_window_to_its_arrival_bound() {
        let mut g = Gate::new(GateConfig::new(2, 1));
        let t0 = Timestamp(1_000_000);
        let a = g.on_sent(t0);
        let b = g.on_sent(Timestamp(t0.0 + 10));
        // No answers yet: the earliest counts from its send plus the margin.
        assert_eq!(g.next_send_at(t0).unwrap(), Timestamp(t0.0 + 1_050));
        // Both answers were slow; the requests may have arrived as late as that.
        g.on_completed(a, Timestamp(t0.0 + 600));
        g.on_completed(b, Timestamp(t0.0 + 700));
        assert_eq!(g.next_send_at(t0).unwrap(), Timestamp(t0.0 + 1_601));
        // A fast answer never moves the bound earlier than the margin.
        let mut g = Gate::new(GateConfig::new(1, 1));
        let c = g.on_sent(t0);
        g.on_completed(c, Timestamp(t0.0 + 2));
        assert_eq!(g.next_send_at(t0).unwrap(), Timestamp(t0.0 + 1_050));
    }

    use super::*;
    use proptest::prelude::*;

    fn exact(rps: u32) -> Gate {
        let mut c = GateConfig::new(rps, 7);
        c.jitter = 0.0;
        Gate::new(c)
    }

    /// Sends now if the gate allows; returns the send time.
    fn try_send(g: &mut Gate, now: i64) -> Option<Timestamp> {
        let at = g.next_send_at(Timestamp(now)).unwrap();
        (at <= Timestamp(now)).then(|| g.on_sent(Timestamp(now)))
    }

    #[test]
    fn after_retry_after_one_probe_goes_first_and_the_rest_wait_for_its_answer() {
        let mut g = exact(100);
        let s = g.on_sent(Timestamp(0));
        g.on_completed(s, Timestamp(10));
        g.on_outcome(
            Timestamp(10),
            &Outcome::Unavailable {
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        assert!(try_send(&mut g, 1_000).is_none(), "inside Retry-After");
        let probe = try_send(&mut g, 2_010).expect("the probe goes when the window ends");
        assert!(
            try_send(&mut g, 2_011).is_none(),
            "the rest wait for the probe"
        );
        assert!(try_send(&mut g, 2_500).is_none());
        // Still failing: a new window, and again one probe after it.
        g.on_completed(probe, Timestamp(2_600));
        g.on_outcome(
            Timestamp(2_600),
            &Outcome::Unavailable {
                retry_after: Some(Duration::from_secs(3)),
            },
        );
        assert!(
            try_send(&mut g, 3_000).is_none(),
            "inside the reopened window"
        );
        assert!(try_send(&mut g, 5_599).is_none());
        let probe = try_send(&mut g, 5_600).unwrap();
        assert!(try_send(&mut g, 5_601).is_none());
        // Healthy again: everyone may go.
        g.on_completed(probe, Timestamp(5_700));
        g.on_outcome(Timestamp(5_700), &Outcome::Success);
        assert!(try_send(&mut g, 5_700).is_some());
        assert!(try_send(&mut g, 5_700).is_some());
    }

    #[test]
    fn after_a_429_backoff_one_probe_goes_first_and_a_lost_probe_is_replaced() {
        let mut g = exact(100);
        let s = g.on_sent(Timestamp(0));
        g.on_completed(s, Timestamp(5));
        g.on_outcome(Timestamp(5), &Outcome::RateLimited { retry_after: None });
        assert!(try_send(&mut g, 500).is_none(), "backing off");
        let probe = try_send(&mut g, 1_005).unwrap();
        assert!(try_send(&mut g, 1_006).is_none());
        // The probe timed out: the next request probes again, alone.
        g.on_completed(probe, Timestamp(2_000));
        g.on_outcome(Timestamp(2_000), &Outcome::NoAnswer);
        let probe = try_send(&mut g, 2_000).unwrap();
        assert!(try_send(&mut g, 2_001).is_none());
        g.on_completed(probe, Timestamp(2_100));
        g.on_outcome(Timestamp(2_100), &Outcome::Success);
        assert!(try_send(&mut g, 2_100).is_some());
        assert!(try_send(&mut g, 2_100).is_some());
    }

    #[test]
    fn a_probe_whose_caller_vanished_stops_holding_the_others() {
        let mut g = exact(100);
        let s = g.on_sent(Timestamp(0));
        g.on_completed(s, Timestamp(5));
        g.on_outcome(
            Timestamp(5),
            &Outcome::Unavailable {
                retry_after: Some(Duration::from_secs(1)),
            },
        );
        assert!(try_send(&mut g, 1_005).is_some(), "probe, never answered");
        assert!(try_send(&mut g, 60_000).is_none());
        assert!(try_send(&mut g, 1_005 + PROBE_TIMEOUT_MS).is_some());
    }

    /// Sends one request that became ready at `ready`, stepping time to when the gate allows.
    fn send(g: &mut Gate, ready: i64) -> i64 {
        let mut now = Timestamp(ready);
        loop {
            let at = g.next_send_at(now).expect("healthy");
            if at <= now {
                g.on_sent(now);
                return now.0;
            }
            now = at;
        }
    }

    #[test]
    fn burst_then_wait_for_window() {
        let mut g = exact(3);
        let times: Vec<i64> = (0..7).map(|_| send(&mut g, 0)).collect();
        assert_eq!(times, vec![0, 0, 0, 1050, 1050, 1050, 2100]);
    }

    #[test]
    fn retry_after_is_respected() {
        let mut g = exact(15);
        send(&mut g, 0);
        g.on_outcome(
            Timestamp(100),
            &Outcome::Unavailable {
                retry_after: Some(Duration::from_secs(120)),
            },
        );
        assert_eq!(g.next_send_at(Timestamp(200)), Ok(Timestamp(120_100)));
        assert_eq!(send(&mut g, 5_000), 120_100);
        // A later, shorter Retry-After never shortens the pause.
        g.on_outcome(
            Timestamp(120_200),
            &Outcome::Unavailable {
                retry_after: Some(Duration::from_secs(1)),
            },
        );
        assert_eq!(g.next_send_at(Timestamp(120_300)), Ok(Timestamp(121_200)));
    }

    #[test]
    fn backoff_sequence_and_reset() {
        let mut g = exact(15);
        let mut delays = vec![];
        let mut now = 0;
        for _ in 0..8 {
            let sent = send(&mut g, now);
            delays.push(sent - now);
            // Each send after a backoff is its probe: answered before the next.
            g.on_completed(Timestamp(sent), Timestamp(sent));
            g.on_outcome(Timestamp(sent), &Outcome::RateLimited { retry_after: None });
            now = sent;
        }
        assert_eq!(
            delays,
            vec![0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000]
        );
        let sent = send(&mut g, now);
        g.on_outcome(Timestamp(sent), &Outcome::Success);
        g.on_outcome(Timestamp(sent), &Outcome::RateLimited { retry_after: None });
        assert_eq!(g.next_send_at(Timestamp(sent)), Ok(Timestamp(sent + 1_000)));
        // Retry-After longer than the ladder wins.
        g.on_outcome(
            Timestamp(sent),
            &Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            },
        );
        assert_eq!(
            g.next_send_at(Timestamp(sent)),
            Ok(Timestamp(sent + 30_000))
        );
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_seeded() {
        let run = |seed| {
            let mut g = Gate::new(GateConfig::new(15, seed));
            (0..6)
                .map(|_| {
                    g.on_outcome(Timestamp(0), &Outcome::RateLimited { retry_after: None });
                    let d = g.backoff_until.0;
                    g.backoff_until = Timestamp::ZERO;
                    d
                })
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        for (i, d) in a.iter().enumerate() {
            let base = (1_000i64 << i).min(60_000);
            assert!(*d >= base && *d <= base + base / 5, "{i}: {d}");
        }
    }

    #[test]
    fn unhealthy_refuses_until_reset() {
        let mut g = exact(15);
        g.on_outcome(
            Timestamp(10),
            &Outcome::TokenProblem(ApiError::TokenExpired),
        );
        let r = g.next_send_at(Timestamp(20)).unwrap_err();
        assert_eq!(r.reason, ApiError::TokenExpired);
        assert_eq!(r.since, Timestamp(10));
        assert!(g.next_send_at(Timestamp(1_000_000)).is_err());
        g.reset_health();
        assert_eq!(g.next_send_at(Timestamp(30)), Ok(Timestamp(30)));
    }

    #[test]
    fn lowering_rps_keeps_history() {
        let mut g = exact(5);
        for _ in 0..5 {
            send(&mut g, 0);
        }
        g.set_rps(2);
        assert_eq!(g.next_send_at(Timestamp(10)), Ok(Timestamp(1_050)));
    }

    proptest! {
        #[test]
        fn never_more_than_rps_in_any_second(
            gaps in proptest::collection::vec(0i64..400, 1..300),
            rps in 1u32..20,
        ) {
            let mut g = exact(rps);
            let mut ready = 0;
            let mut sent = vec![];
            for gap in gaps {
                ready += gap;
                sent.push(send(&mut g, ready));
            }
            // sent is non-decreasing; check every window [t, t + 1000] (closed).
            for (i, &t) in sent.iter().enumerate() {
                let n = sent[i..].iter().take_while(|&&s| s <= t + 1_000).count();
                prop_assert!(n <= rps as usize, "{} sends in the second from {}", n, t);
            }
        }
    }
}

#[cfg(test)]
mod purity {
    /// The gate is sans-IO: no runtime, no clock reads (time is an argument).
    #[test]
    fn no_runtime_or_clock_in_gate() {
        let src = include_str!("gate.rs");
        let code: Vec<&str> = src
            .split("#[cfg(test)]")
            .next()
            .unwrap_or(src)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for banned in [
            "tokio",
            "reqwest",
            "Instant::now",
            "SystemTime",
            "Timestamp::now",
        ] {
            assert!(
                !code.iter().any(|l| l.contains(banned)),
                "gate.rs uses {banned}"
            );
        }
    }
}
