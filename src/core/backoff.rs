//! Backoff as pure values: exponential from a base to a cap, with deterministic jitter derived
//! from a seed, so tests can assert exact schedules and replays are reproducible. The one home
//! of backoff and of the SplitMix64 mixer: the event poller here, the Apple gate's 429 ladder
//! and the client's read retries all use it. No IO and no clock.

use std::time::Duration;

/// Delay before poll number `attempt + 1` after `attempt` PENDING answers.
///
/// The jitter only ever *adds* up to 25%, so the result is never below `min` (Apple's 30 s
/// floor between polls) and never above `max`.
pub fn delay(attempt: u32, min: Duration, max: Duration, seed: u64) -> Duration {
    let min_ms = min.as_millis().max(1) as u64;
    let max_ms = (max.as_millis() as u64).max(min_ms);
    let base = exponential_ms(min_ms, attempt, max_ms);
    let jitter_span = base / 4;
    let jitter = if jitter_span == 0 {
        0
    } else {
        splitmix64(seed ^ u64::from(attempt).wrapping_mul(GOLDEN_GAMMA)) % (jitter_span + 1)
    };
    Duration::from_millis((base + jitter).clamp(min_ms, max_ms))
}

/// `base_ms · 2^step`, capped at `max_ms`. Steps past 30 count as 30: any sane cap is reached
/// long before, and the shift must not overflow.
pub fn exponential_ms(base_ms: u64, step: u32, max_ms: u64) -> u64 {
    base_ms.saturating_mul(1u64 << step.min(30)).min(max_ms)
}

/// `base_ms` plus up to `fraction` (clamped to 0..=1) of it; `bits` (e.g. from [`splitmix64`])
/// pick where in that range.
pub fn add_jitter_fraction(base_ms: u64, fraction: f64, bits: u64) -> u64 {
    let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
    base_ms.saturating_add((base_ms as f64 * fraction.clamp(0.0, 1.0) * unit) as u64)
}

/// SplitMix64's increment (2^64 / φ). Adding it to a state and mixing gives the next output.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A 64-bit mixer (SplitMix64): turns a seed into well-spread bits without any RNG state.
/// For a stream, keep a state and call `splitmix64(state)` then add [`GOLDEN_GAMMA`] to it.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(GOLDEN_GAMMA);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Stable per-key seed (FNV-1a), so one event's jitter does not depend on map order.
pub fn seed_for(global: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h ^ global)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_then_caps() {
        let min = 30 * S;
        let max = 600 * S;
        // Without jitter span influence, the bases are 30, 60, 120, 240, 480, 600, 600.
        let bases: Vec<u64> = (0..7).map(|a| delay(a, min, max, 0).as_secs()).collect();
        for (got, base) in bases.iter().zip([30u64, 60, 120, 240, 480, 600, 600]) {
            assert!(
                *got >= base && *got <= (base + base / 4).min(600),
                "{got} vs {base}"
            );
        }
    }

    #[test]
    fn splitmix64_matches_the_reference() {
        // First two outputs of the reference SplitMix64 seeded with 0.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(GOLDEN_GAMMA), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn exponential_doubles_and_caps_without_overflow() {
        let got: Vec<u64> = (0..6).map(|s| exponential_ms(200, s, 5_000)).collect();
        assert_eq!(got, vec![200, 400, 800, 1_600, 3_200, 5_000]);
        assert_eq!(exponential_ms(u64::MAX, 40, 7), 7);
    }

    #[test]
    fn jitter_fraction_stays_in_range() {
        assert_eq!(add_jitter_fraction(1_000, 0.2, 0), 1_000);
        assert_eq!(add_jitter_fraction(1_000, 0.2, u64::MAX), 1_199);
        assert_eq!(add_jitter_fraction(1_000, 5.0, u64::MAX), 1_999);
    }

    #[test]
    fn deterministic() {
        assert_eq!(delay(3, 30 * S, 600 * S, 42), delay(3, 30 * S, 600 * S, 42));
    }

    proptest! {
        #[test]
        fn always_within_floor_and_cap(attempt in 0u32..100, seed: u64, min_s in 1u64..120, extra in 0u64..3600) {
            let min = Duration::from_secs(min_s);
            let max = Duration::from_secs(min_s + extra);
            let d = delay(attempt, min, max, seed);
            prop_assert!(d >= min);
            prop_assert!(d <= max);
        }
    }
}
