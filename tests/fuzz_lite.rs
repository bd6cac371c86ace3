//! A bounded, deterministic fuzz run for CI: every decoder that reads external input
//! (`vpp_reconciler::fuzzing`, the same entry points as the cargo-fuzz targets in fuzz/) gets
//! 100,000 generated inputs (`FUZZ_LITE_CASES` raises it) and must not panic. Errors are fine.
//!
//! proptest drives the run from a fixed seed with no failure persistence, so every run sees
//! the same inputs. Each case draws one `u64` from proptest and expands it with a tiny PRNG
//! (cheap in a debug build) into one of:
//! - raw bytes, biased towards JSON/TOML punctuation;
//! - a seed body from `fuzz/corpus/<target>/` mutated: truncated, bytes flipped, inserted,
//!   deleted, duplicated, spliced with another seed;
//! - a seed body with one JSON value swapped for a value of another type (string ↔ number ↔
//!   null ↔ bool ↔ array ↔ object, edge numbers, odd strings);
//! - a structured document: a JSON object (or TOML file, Retry-After value, `.vpptoken`) built
//!   from the target's own field names with random values.
//!
//! A panic fails the test with the offending input; add it as a regression test beside the
//! decoder and fix the decoder.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Map, Value};

use vpp_reconciler::fuzzing;

const DEFAULT_CASES: u32 = 100_000;

fn cases() -> u32 {
    std::env::var("FUZZ_LITE_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_CASES)
}

/// SplitMix64: one `u64` from proptest expands into a whole input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A JSON body; `prefix` leading bytes are not JSON (error_classify's status bytes,
    /// retry_after's clock).
    Json {
        prefix: usize,
    },
    RetryAfter,
    VppToken,
    Toml,
}

struct Target {
    name: &'static str,
    run: fuzzing::Target,
    kind: Kind,
    seeds: Vec<Vec<u8>>,
    /// Seeds parsed as JSON (after the prefix), for type swaps.
    json: Vec<(Vec<u8>, Value)>,
    /// Every object key seen in the seeds, for structured documents.
    keys: Vec<String>,
}

fn target(name: &'static str) -> Target {
    let run = fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("a fuzzing entry point");
    let kind = match name {
        "error_classify" => Kind::Json { prefix: 3 },
        "retry_after" => Kind::RetryAfter,
        "vpptoken" => Kind::VppToken,
        "config" => Kind::Toml,
        _ => Kind::Json { prefix: 0 },
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    if kind == Kind::Toml {
        // Comments cost parse time and reach no validation.
        for s in &mut seeds {
            let text = String::from_utf8_lossy(s).into_owned();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .collect();
            *s = kept.join("\n").into_bytes();
        }
    }
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    let mut json = Vec::new();
    let mut keys = Vec::new();
    for s in &seeds {
        let (prefix, body) = match kind {
            Kind::Json { prefix } if s.len() >= prefix => (s[..prefix].to_vec(), &s[prefix..]),
            Kind::VppToken => {
                let text: String = String::from_utf8_lossy(s)
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(text.trim_end_matches('='))
                    .unwrap_or_default();
                if let Ok(v) = serde_json::from_slice::<Value>(&decoded) {
                    collect_keys(&v, &mut keys);
                    json.push((Vec::new(), v));
                }
                continue;
            }
            _ => continue,
        };
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            collect_keys(&v, &mut keys);
            json.push((prefix, v));
        }
    }
    keys.sort();
    keys.dedup();
    Target {
        name,
        run,
        kind,
        seeds,
        json,
        keys,
    }
}

fn collect_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push(k.clone());
                collect_keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_keys(v, out)),
        _ => {}
    }
}

const PUNCT: &[u8] = b"{}[]\":,.-+eE0123456789 \n\t\\/=#'truefalsn";

fn raw_bytes(r: &mut Rng) -> Vec<u8> {
    let n = r.below(96);
    let biased = r.chance(2);
    (0..n)
        .map(|_| {
            if biased && !r.chance(8) {
                *r.pick(PUNCT)
            } else {
                r.next() as u8
            }
        })
        .collect()
}

/// 1–4 byte-level mutations of a seed.
fn mutate(r: &mut Rng, t: &Target) -> Vec<u8> {
    let mut b = r.pick(&t.seeds).clone();
    for _ in 0..=r.below(4) {
        let len = b.len();
        match r.below(7) {
            0 => b.truncate(r.below(len + 1)),
            1 if len > 0 => {
                let i = r.below(len);
                b[i] ^= 1 << r.below(8);
            }
            2 if len > 0 => {
                let i = r.below(len);
                b[i] = *r.pick(PUNCT);
            }
            3 => {
                let i = r.below(len + 1);
                let c = if r.chance(2) {
                    *r.pick(PUNCT)
                } else {
                    r.next() as u8
                };
                b.insert(i, c);
            }
            4 if len > 0 => {
                let i = r.below(len);
                let j = (i + 1 + r.below(16)).min(len);
                b.drain(i..j);
            }
            5 if len > 0 => {
                let i = r.below(len);
                let j = (i + 1 + r.below(32)).min(len);
                let piece = b[i..j].to_vec();
                let at = r.below(len + 1);
                b.splice(at..at, piece);
            }
            _ => {
                // Splice: our head, another seed's tail.
                let other = r.pick(&t.seeds);
                let cut = r.below(len + 1);
                let from = r.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
        }
    }
    b
}

const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "9223372036854775808",
    "2147483647",
    "1e400",
    "NaN",
    "null",
    "STDQ",
    "ASSET_MANAGEMENT",
    "TEST_NOTIFICATION",
    "Associated",
    "FAILED",
    "2030-11-08T22:33:22+0000",
    "2030-11-08T22:33:22.123456789Z",
    "+262143-12-31T23:59:59+0000",
    "-262144-01-01T00:00:00+0000",
    "9999-99-99T99:99:99+9999",
    "\u{0}",
    "é",
    "🦀🦀",
    "\u{202e}",
    "a\"b\\c",
];

fn odd_number(r: &mut Rng) -> Value {
    match r.below(10) {
        0 => Value::from(i64::MAX),
        1 => Value::from(i64::MIN),
        2 => Value::from(u64::MAX),
        3 => Value::from(i64::from(i32::MAX) + r.below(3) as i64 - 1),
        4 => Value::from(i64::from(i32::MIN)),
        5 => serde_json::Number::from_f64(1e300 * (r.next() as f64 / u64::MAX as f64 - 0.5))
            .map_or(Value::Null, Value::Number),
        6 => Value::from(-0.5),
        7 => Value::from(r.below(10_000) as i64 - 5_000),
        _ => Value::from(r.next() as i64),
    }
}

fn random_value(r: &mut Rng, t: &Target, depth: usize) -> Value {
    let scalar_only = depth >= 3;
    match r.below(if scalar_only { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(r.chance(2)),
        2 => odd_number(r),
        3 => Value::String(r.pick(ODD_STRINGS).to_string()),
        4 => {
            let n = r.below(12);
            Value::String((0..n).map(|_| (b'a' + r.below(26) as u8) as char).collect())
        }
        5 => Value::Array(
            (0..r.below(4))
                .map(|_| random_value(r, t, depth + 1))
                .collect(),
        ),
        _ => Value::Object(random_object(r, t, depth + 1)),
    }
}

fn random_object(r: &mut Rng, t: &Target, depth: usize) -> Map<String, Value> {
    let mut m = Map::new();
    for _ in 0..r.below(6) {
        let key = if t.keys.is_empty() || r.chance(8) {
            "x".to_string()
        } else {
            r.pick(&t.keys).clone()
        };
        m.insert(key, random_value(r, t, depth));
    }
    m
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(m) => m.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Replaces the `k`-th node (pre-order) of `v`; returns `true` once done.
fn replace_nth(v: &mut Value, k: &mut usize, with: &mut Option<Value>) -> bool {
    if *k == 0 {
        if let Some(w) = with.take() {
            *v = w;
        }
        return true;
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|c| replace_nth(c, k, with)),
        Value::Object(m) => m.values_mut().any(|c| replace_nth(c, k, with)),
        _ => false,
    }
}

/// A seed with one value swapped for a value of (usually) another type.
fn type_swap(r: &mut Rng, t: &Target) -> Option<(Vec<u8>, Value)> {
    if t.json.is_empty() {
        return None;
    }
    let (prefix, seed) = r.pick(&t.json);
    let mut v = seed.clone();
    for _ in 0..=r.below(3) {
        let mut k = r.below(count_nodes(&v));
        let mut with = Some(random_value(r, t, 1));
        replace_nth(&mut v, &mut k, &mut with);
    }
    Some((prefix.clone(), v))
}

fn encode_json(r: &mut Rng, prefix: Vec<u8>, v: &Value) -> Vec<u8> {
    let mut out = prefix;
    if r.chance(4) {
        out.extend(serde_json::to_vec_pretty(v).unwrap_or_default());
    } else {
        out.extend(serde_json::to_vec(v).unwrap_or_default());
    }
    out
}

const STATUSES: &[u16] = &[
    0, 200, 201, 204, 299, 300, 400, 401, 403, 404, 429, 500, 503, 599, 65535,
];

fn structured(r: &mut Rng, t: &Target) -> Vec<u8> {
    match t.kind {
        Kind::Json { prefix } => {
            let mut head = Vec::new();
            if prefix == 3 {
                head.extend(r.pick(STATUSES).to_be_bytes());
                head.push(r.next() as u8);
            } else {
                head.extend((0..prefix).map(|_| r.next() as u8));
            }
            let v = Value::Object(random_object(r, t, 0));
            encode_json(r, head, &v)
        }
        Kind::RetryAfter => {
            let mut out = (r.next() as u32).to_be_bytes().to_vec();
            let value = match r.below(6) {
                0 => r.next().to_string(),
                1 => format!("{}.{}", r.below(100_000), r.next()),
                2 => r.pick(ODD_STRINGS).to_string(),
                3 => r
                    .pick(&[
                        "1e308", "-0", "inf", "-inf", "+5", " 7 ", "0x10", "1_000", "1e-320",
                    ])
                    .to_string(),
                _ => {
                    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Xyz"];
                    let months = ["Jan", "Feb", "Dec", "Foo"];
                    format!(
                        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
                        r.pick(&days),
                        r.below(40),
                        r.pick(&months),
                        r.below(12_000),
                        r.below(30),
                        r.below(70),
                        r.below(70)
                    )
                }
            };
            out.extend(value.into_bytes());
            out
        }
        Kind::VppToken => {
            let mut m = Map::new();
            for key in ["token", "expDate", "orgName"] {
                if !r.chance(6) {
                    let v = if r.chance(2) {
                        Value::String(r.pick(ODD_STRINGS).to_string())
                    } else {
                        random_value(r, t, 2)
                    };
                    m.insert(key.to_string(), v);
                }
            }
            vpptoken_text(r, &Value::Object(m))
        }
        Kind::Toml => random_toml(r),
    }
}

fn vpptoken_text(r: &mut Rng, v: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(v).unwrap_or_default();
    let mut s = base64::engine::general_purpose::STANDARD.encode(json);
    if r.chance(3) {
        s = s.trim_end_matches('=').to_string();
    }
    if r.chance(3) {
        let w = 1 + r.below(80);
        let wrapped: Vec<String> = s
            .as_bytes()
            .chunks(w)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        s = wrapped.join(if r.chance(2) { "\n" } else { "\r\n " });
    }
    s.into_bytes()
}

const TOML_TABLES: &[(&str, &[&str])] = &[
    (
        "daemon",
        &[
            "database",
            "api_listen",
            "api_token_file",
            "log_format",
            "log_level",
        ],
    ),
    (
        "apple",
        &[
            "base_url",
            "request_timeout",
            "max_requests_per_second",
            "max_concurrent_requests",
            "service_config_refresh",
        ],
    ),
    ("webhook", &["listen", "path_prefix", "max_body_bytes"]),
    (
        "reconcile",
        &[
            "notification_grace",
            "poll_min",
            "poll_max",
            "resubmit_after",
            "give_up_after",
            "full_sync_schedule",
            "retention",
        ],
    ),
    (
        "[tokens]",
        &[
            "name",
            "token_file",
            "notification_auth_token_file",
            "notification_url",
            "max_requests_per_second",
        ],
    ),
];

const TOML_VALUES: &[&str] = &[
    "\"30s\"",
    "\"0s\"",
    "\"18446744073709551615s\"",
    "\"99999999999999y\"",
    "\"584942417355y\"",
    "\"1h 30m\"",
    "\"0 0 3 * * *\"",
    "\"0 0 0 31 2 *\"",
    "\"* * * * * * *\"",
    "\"59-0 0 0 L * 5#5\"",
    "\"0 0 0 ? * MON-SUN/0\"",
    "\"*/0 * * * * *\"",
    "\"0 0 25 * * *\"",
    "\"127.0.0.1:8410\"",
    "\"[::1]:0\"",
    "\"localhost:80\"",
    "\"https://mdm.example.com/apple/notify/acme\"",
    "\"http://127.0.0.1/x\"",
    "\"https://user:pw@example.com/\"",
    "\"http://[::1]:9000/mdm/v2/\"",
    "\"ftp://example.com\"",
    "\"info\"",
    "\"info,vpp_reconciler[span{a=1}]=debug\"",
    "\"[{x=/(a+)+/}]=trace\"",
    "\"json\"",
    "\"/apple/notify\"",
    "\"/\"",
    "\"\"",
    "\"acme\"",
    "\"ACME\"",
    "\"credentials/acme.vpptoken\"",
    "\"/abs/path\"",
    "0",
    "-1",
    "1",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967296",
    "1.5",
    "true",
    "[]",
    "{}",
    "1979-05-27T07:32:00Z",
];

fn random_toml(r: &mut Rng) -> Vec<u8> {
    let mut s = String::new();
    for _ in 0..r.below(6) {
        let (table, keys) = r.pick(TOML_TABLES);
        // `[[tokens]]` always; a table header is sometimes left out (keys land elsewhere).
        if table.starts_with('[') || !r.chance(8) {
            s.push_str(&format!("[{table}]\n"));
        }
        for _ in 0..r.below(5) {
            let key = if r.chance(10) { "bogus" } else { r.pick(keys) };
            s.push_str(&format!("{key} = {}\n", r.pick(TOML_VALUES)));
        }
    }
    s.into_bytes()
}

/// A seed TOML file with one `key = value` line's value replaced.
fn toml_swap(r: &mut Rng, t: &Target) -> Vec<u8> {
    let seed: &Vec<u8> = r.pick(&t.seeds);
    let text = String::from_utf8_lossy(seed).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let target_line = r.below(lines.len().max(1));
    for (i, l) in lines.iter().enumerate() {
        match l.split_once('=') {
            Some((k, _)) if i == target_line || r.chance(12) => {
                out.push_str(&format!("{k}= {}\n", r.pick(TOML_VALUES)));
            }
            _ => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out.into_bytes()
}

fn generate(seed: u64, t: &Target) -> Vec<u8> {
    let mut r = Rng(seed);
    match r.below(20) {
        0..=4 => raw_bytes(&mut r),
        5..=11 => mutate(&mut r, t),
        12..=16 => match t.kind {
            Kind::Toml => toml_swap(&mut r, t),
            Kind::VppToken => match type_swap(&mut r, t) {
                Some((_, v)) => vpptoken_text(&mut r, &v),
                None => structured(&mut r, t),
            },
            _ => match type_swap(&mut r, t) {
                Some((prefix, v)) => encode_json(&mut r, prefix, &v),
                None => structured(&mut r, t),
            },
        },
        _ => structured(&mut r, t),
    }
}

fn run(name: &'static str) {
    let t = target(name);
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        // XorShift: ChaCha's per-case reseeding costs more than a case in a debug build.
        rng_algorithm: RngAlgorithm::XorShift,
        // A seed does not shrink into a smaller input; report the first failure as it is.
        max_shrink_iters: 0,
        ..Config::default()
    };
    let mut seed = [0x5au8; 16];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 16] ^= b;
    }
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::XorShift, &seed));
    let result = runner.run(&any::<u64>(), |s| {
        let input = generate(s, &t);
        catch_unwind(AssertUnwindSafe(|| (t.run)(&input))).map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TestCaseError::fail(format!(
                "{} panicked ({why}) on input {:?}",
                t.name,
                String::from_utf8_lossy(&input)
            ))
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn every_entry_point_has_a_fuzz_target_and_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs"
        );
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}");
        assert!(!target(name).seeds.is_empty());
    }
}

macro_rules! fuzz_lite {
    ($($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )+
    };
}

fuzz_lite!(
    webhook,
    service_config,
    client_config,
    assets_page,
    assignments_page,
    users_page,
    event_status,
    write_answer,
    error_classify,
    retry_after,
    vpptoken,
    config,
);
