//! Poll backoff as a pure value: exponential from `min` to `max`, with deterministic jitter
//! derived from a seed, so tests can assert exact schedules and replays are reproducible.

use std::time::Duration;

/// Delay before poll number `attempt + 1` after `attempt` PENDING answers.
///
/// The jitter only ever *adds* up to 25%, so the result is never below `min` (Apple's 30 s
/// floor between polls) and never above `max`.
pub fn delay(attempt: u32, min: Duration, max: Duration, seed: u64) -> Duration {
    let min_ms = min.as_millis().max(1) as u64;
    let max_ms = (max.as_millis() as u64).max(min_ms);
    let base = min_ms.saturating_mul(1u64 << attempt.min(30)).min(max_ms);
    let jitter_span = base / 4;
    let jitter = if jitter_span == 0 {
        0
    } else {
        splitmix64(seed ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            % (jitter_span + 1)
    };
    Duration::from_millis((base + jitter).clamp(min_ms, max_ms))
}

/// A 64-bit mixer (SplitMix64): turns a seed into well-spread bits without any RNG state.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
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
