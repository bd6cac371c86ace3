//! `vpp-reconciler demo` end to end: the real binary, bounded in time. Checks that it
//! verifies (exit 0), that the report lists every event with a final outcome, that every
//! verification line says OK, that no secret from its work directory reaches the output, and
//! that a second run with the same seed reports the same counts.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;

const BIN: &str = env!("CARGO_BIN_EXE_vpp-reconciler");

/// Runs the binary with `args`, killing it after `limit`. Returns (exit code, stdout, stderr).
fn run_bounded(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vpp-reconciler");
    // Drain both pipes in threads so a full pipe never stalls the child.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let code = match status {
        Some(s) => s.code(),
        None => panic!("demo still running after {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
    };
    (code, stdout, stderr)
}

/// Every secret the demo wrote: whole sTokens, their inner tokens, notification auth tokens.
fn secrets(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read keep dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".vpptoken") {
            let stoken = std::fs::read_to_string(&path).unwrap().trim().to_string();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&stoken)
                .expect("sToken is base64");
            let v: serde_json::Value = serde_json::from_slice(&decoded).expect("sToken JSON");
            out.push(v["token"].as_str().expect("inner token").to_string());
            out.push(stoken);
        } else if name.ends_with(".notify") {
            out.push(std::fs::read_to_string(&path).unwrap().trim().to_string());
        }
    }
    out
}

/// The lines of the section that starts with `title` (up to the next blank line).
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(title))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

const DEMO_LIMIT: Duration = Duration::from_secs(180);

/// One run of `demo --seed 1 --keep DIR`, shared by the tests below so that at most two demos
/// run at once.
struct SeedOneRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The secrets found in the kept directory (removed once read).
    secrets: Vec<String>,
    kept_db_and_config: bool,
}

fn seed_one() -> &'static SeedOneRun {
    static RUN: OnceLock<SeedOneRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let keep = tmp.path().join("work");
        let keep_s = keep.to_str().unwrap();
        let (code, stdout, stderr) =
            run_bounded(&["demo", "--seed", "1", "--keep", keep_s], DEMO_LIMIT);
        let secrets = if keep.exists() {
            secrets(&keep)
        } else {
            Vec::new()
        };
        SeedOneRun {
            code,
            stdout,
            stderr,
            secrets,
            kept_db_and_config: keep.join("state.db").exists() && keep.join("config.toml").exists(),
        }
    })
}

/// What one seed must reproduce: the events table without its POLLS column (ids, outcomes,
/// error numbers, DONE/REQ, notifications received), the reproducible totals and the
/// verification (mirror figures included). Everything else in the report is timing-dependent.
fn reproducible(stdout: &str) -> Vec<String> {
    let mut out = Vec::new();
    let table = section(stdout, "events (");
    let header = table.first().copied().unwrap_or_default();
    let (from, to) = (header.find("POLLS"), header.find("NOTIFS"));
    for line in table.iter().take_while(|l| !l.starts_with("  EVENT:")) {
        let line = match (from, to) {
            (Some(a), Some(b)) if line.len() >= b => format!("{}{}", &line[..a], &line[b..]),
            _ => line.to_string(),
        };
        out.push(line);
    }
    out.push("--".into());
    out.extend(section(stdout, "totals (").into_iter().map(String::from));
    out.push("--".into());
    out.extend(
        section(stdout, "verification")
            .into_iter()
            .map(String::from),
    );
    out
}

#[test]
fn demo_seed_1_verifies_and_keeps_secrets_out_of_the_output() {
    let run = seed_one();
    let (code, stdout, stderr) = (run.code, &run.stdout, &run.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert_eq!(code, Some(0), "demo failed:\n{all}");

    // Progress lines, one a second.
    let progress = section(stdout, "progress");
    assert!(progress[0].starts_with("TIME "), "{stdout}");
    let ticks = progress.iter().filter(|l| l.starts_with('[')).count();
    assert!(ticks >= 3, "progress:\n{stdout}");
    // Besides the rows, only the note of what a stalled run waits for.
    assert!(
        progress[1..]
            .iter()
            .all(|l| l.starts_with('[') || l.trim_start().starts_with("waiting for ")),
        "{stdout}"
    );
    // Fits a 100-column terminal.
    for l in stdout.lines() {
        assert!(l.chars().count() <= 100, "over 100 columns: {l:?}");
    }

    // Every event is listed, settled, with a final outcome.
    let header = stdout
        .lines()
        .find(|l| l.starts_with("events ("))
        .expect("events section");
    let n: usize = header["events (".len()..]
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .expect("event count");
    assert!(n >= 48, "{header}");
    let rows: Vec<&str> = section(stdout, "events (")
        .into_iter()
        .skip(1)
        .take_while(|l| !l.starts_with("  EVENT:"))
        // A long REQUEST cell continues on the next line, under its column.
        .filter(|l| !l.starts_with("   "))
        .collect();
    assert_eq!(rows.len(), n, "one row per event:\n{stdout}");
    for r in &rows {
        let cols: Vec<&str> = r.split_whitespace().collect();
        assert!(cols.len() >= 8, "{r}");
        // RESULT: the final outcome (settled), then Apple's error numbers.
        assert!(
            ["complete", "failed", "timed_out", "not_found"].contains(&cols[3]),
            "{r}"
        );
    }
    // The planted failures and the resubmission are in the table.
    for planted in ["9709", "9609", "9716"] {
        assert!(
            rows.iter()
                .any(|r| r.contains(" failed ") && r.contains(planted)),
            "{planted} missing:\n{stdout}"
        );
    }
    let table = section(stdout, "events (").join("\n");
    assert!(table.contains("(replaces "), "{stdout}");
    assert!(stdout.contains("DONE/REQ"), "{stdout}");

    // Every verification line says OK, and the result too.
    let checks = section(stdout, "verification");
    assert!(checks.len() >= 8, "{stdout}");
    for c in &checks {
        assert!(
            c.trim_start().starts_with("OK "),
            "verification: {c}\n{stdout}"
        );
    }
    assert!(stdout.contains("\nresult: OK"), "{stdout}");
    assert!(
        stdout.contains("rate-limit violations 0, requests during Retry-After 0"),
        "{stdout}"
    );

    // No secret in the output, and the kept directory has what the report points to.
    assert_eq!(
        run.secrets.len(),
        6,
        "two tokens, each sToken + inner + notify"
    );
    for s in &run.secrets {
        assert!(s.len() > 16);
        assert!(!all.contains(s.as_str()), "a secret was printed:\n{all}");
    }
    assert!(run.kept_db_and_config);
}

#[test]
fn demo_with_the_same_seed_reports_the_same_counts() {
    // The second run goes alongside the shared one, so the two see different timing.
    let second = std::thread::spawn(|| run_bounded(&["demo", "--seed", "1"], DEMO_LIMIT));
    let first = seed_one();
    let (code, stdout, stderr) = second.join().expect("second demo run");
    assert_eq!(first.code, Some(0), "first run failed:\n{}", first.stdout);
    assert_eq!(code, Some(0), "second run failed:\n{stdout}\n{stderr}");

    let (a, b) = (reproducible(&first.stdout), reproducible(&stdout));
    assert!(a.len() > 60, "events, totals and verification: {a:#?}");
    assert!(a.iter().any(|l| l.contains("notifications sent")), "{a:#?}");
    assert!(a.iter().any(|l| l.contains("licences")), "{a:#?}");
    let differ: Vec<String> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("first:  {x}\nsecond: {y}"))
        .collect();
    assert!(
        differ.is_empty() && a.len() == b.len(),
        "same seed, different counts:\n{}\n\nfirst run:\n{}\n\nsecond run:\n{stdout}",
        differ.join("\n"),
        first.stdout
    );

    // The comparison sees a change in what must be reproduced, and ignores the polls.
    let text = &first.stdout;
    let lost = text.find(", lost ").expect("lost count") + ", lost ".len();
    let more_lost = format!("{}9{}", &text[..lost], &text[lost..]);
    assert_ne!(reproducible(text), reproducible(&more_lost));
    let failed = text.replacen(" failed 9709", " complete 9709", 1);
    assert_ne!(reproducible(text), reproducible(&failed));
    let syncs = text.replacen("  syncs        ", "  syncs        9", 1);
    assert_eq!(reproducible(text), reproducible(&syncs), "timing-dependent");
}

#[test]
fn demo_refuses_bad_options() {
    let (code, _, stderr) = run_bounded(&["demo", "--events", "3"], Duration::from_secs(30));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--events 3"), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("state.db"), "old").unwrap();
    let (code, _, stderr) = run_bounded(
        &["demo", "--keep", tmp.path().to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
}
