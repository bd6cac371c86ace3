//! The final report: per-token tables, API answer counts, and the verdict of every check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use super::checks::{check, issued_check, mirror_check, outcome_check, planted_check};
use super::http::{api_answers, s};
use super::run::{count_by, total_calls, SubmitLog, World};
use super::workload::Request;
use super::*;

pub(super) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

pub(super) fn failures_of(e: &Value) -> BTreeSet<i64> {
    e["failures"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["errorNumber"].as_i64()).collect())
        .unwrap_or_default()
}

/// A table line of at most `max` columns: a longer last cell (starting at column `col`)
/// continues on lines indented to `col`, broken at spaces.
pub(super) fn wrap_at(line: &str, col: usize, max: usize) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= max || col == 0 || col + 10 > max {
        return vec![line.to_string()];
    }
    let mut out = Vec::new();
    let mut head: String = chars[..col].iter().collect();
    let mut rest: String = chars[col..].iter().collect();
    let width = max - col;
    while rest.chars().count() > width {
        let cut: String = rest.chars().take(width + 1).collect();
        let at = cut.rfind(' ').filter(|&i| i > 0).unwrap_or(width);
        let (now, later) = rest.split_at(at);
        out.push(format!("{head}{now}").trim_end().to_string());
        rest = later.trim_start().to_string();
        head = " ".repeat(col);
    }
    out.push(format!("{head}{rest}"));
    out
}

pub(super) fn table(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            format!("  {}", cells.join("  ").trim_end())
        })
        .collect()
}

pub(super) async fn report(
    w: &World,
    requests: &[Request],
    log: &SubmitLog,
    elapsed: Duration,
    timed_out: bool,
) -> Result<bool, DemoError> {
    let events = w
        .api_http
        .all(&w.api_url("/v1/events"), "events")
        .await
        .map_err(|e| failed(format!("cannot read the events from the daemon: {e}")))?;
    let stats = w
        .http
        .get(&w.sim_url("/_sim/stats"))
        .await
        .map_err(|e| failed(format!("cannot read the simulator's stats: {e}")))?;
    let mut truths: HashMap<&str, Value> = HashMap::new();
    for t in &w.tokens {
        let v = w
            .http
            .get(&w.sim_url(&format!("/_sim/truth/{}", t.uid)))
            .await
            .map_err(|e| failed(format!("cannot read the simulator's truth: {e}")))?;
        truths.insert(t.name, v);
    }
    let by_id: HashMap<&str, &Value> = events.iter().map(|e| (s(&e["eventId"]), e)).collect();
    // How many notifications the daemon recorded per event (duplicates count once).
    let mut notes: HashMap<String, usize> = HashMap::new();
    // What Event Status answered, over all polls.
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let id = s(&e["eventId"]);
        if let Ok(d) = w
            .api_http
            .get(&w.api_url(&format!("/v1/events/{id}")))
            .await
        {
            notes.insert(
                id.to_string(),
                d["notifications"].as_array().map_or(0, Vec::len),
            );
            for p in d["pollLog"].as_array().into_iter().flatten() {
                *answers.entry(s(&p["result"]).to_string()).or_default() += 1;
            }
        }
    }

    // Rows in submission order; a resubmission right after the event it replaces.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut results = log.results.clone();
    results.sort_by_key(|(i, _)| *i);
    for (i, res) in &results {
        if let Ok(ids) = res {
            for id in ids {
                let mut next = Some(id.clone());
                let mut what = requests.get(*i).map(|r| r.what.clone()).unwrap_or_default();
                while let Some(id) = next.take() {
                    if !placed.insert(id.clone()) {
                        break;
                    }
                    next = by_id
                        .get(id.as_str())
                        .and_then(|e| e["supersededBy"].as_str())
                        .map(String::from);
                    order.push((id, what.clone()));
                    what = "resubmitted by the daemon".into();
                }
            }
        }
    }
    for e in &events {
        let id = s(&e["eventId"]).to_string();
        if placed.insert(id.clone()) {
            order.push((id, "(not submitted by the demo)".into()));
        }
    }

    say!("\nevents ({} tracked, in submission order)", events.len());
    let mut rows = vec![[
        "TOKEN", "EVENT", "TYPE", "RESULT", "DONE/REQ", "POLLS", "NOTIFS", "REQUEST",
    ]
    .map(String::from)
    .to_vec()];
    for (id, what) in &order {
        let Some(e) = by_id.get(id.as_str()) else {
            let mut row = vec!["?".to_string(), short(id).to_string(), "?".into()];
            row.extend(["untracked", "-", "-", "-"].map(String::from));
            row.push(what.clone());
            rows.push(row);
            continue;
        };
        let errors: Vec<String> = failures_of(e).iter().map(i64::to_string).collect();
        let outcome = e["outcome"].as_str().unwrap_or("-");
        let mut result = if e["state"] == "settled" {
            outcome.to_string()
        } else {
            format!("{} ({outcome})", s(&e["state"]))
        };
        if !errors.is_empty() {
            result = format!("{result} {}", errors.join(","));
        }
        let request = match (e["supersedes"].as_str(), e["supersededBy"].as_str()) {
            (Some(old), _) => format!("{what} (replaces {})", short(old)),
            (None, Some(new)) => format!("{what} (resubmitted as {})", short(new)),
            (None, None) => what.clone(),
        };
        rows.push(vec![
            s(&e["token"]).to_string(),
            short(id).to_string(),
            s(&e["type"]).to_string(),
            result,
            done_req(
                u32::try_from(e["numCompleted"].as_i64().unwrap_or(0)).unwrap_or(0),
                e["numRequested"]
                    .as_i64()
                    .and_then(|n| u32::try_from(n).ok()),
            ),
            e["polls"].as_i64().unwrap_or(0).to_string(),
            notes.get(id).map_or("?".into(), usize::to_string),
            request,
        ]);
    }
    let lines = table(&rows);
    let request_col = lines.first().and_then(|h| h.find("REQUEST")).unwrap_or(0);
    for line in &lines {
        for part in wrap_at(line, request_col, 100) {
            say!("{part}");
        }
    }
    say!("  EVENT: the eventId's first 8 characters. RESULT: outcome and Apple error numbers.");
    say!("  DONE/REQ: entities completed/requested as the daemon learned them (a lost SUCCESS");
    say!("  chunk of a failed event leaves DONE short; its outcome and the mirror still come");
    say!("  from Apple). POLLS: Event Status calls (timing-dependent). NOTIFS: distinct");
    say!("  notifications received.");

    // Totals: first what one seed reproduces, then what depends on timing.
    say!("\ntotals (the same in every run with this seed)");
    let outcomes = count_by(&events, "outcome");
    let outcome_list: Vec<String> = ["complete", "failed", "timed_out", "not_found", "-"]
        .iter()
        .filter_map(|k| {
            outcomes.get(k).map(|n| {
                let label = if *k == "-" { "unknown" } else { k };
                format!("{label} {n}")
            })
        })
        .collect();
    say!(
        "  outcomes     {} events: {}",
        events.len(),
        outcome_list.join(", ")
    );
    let mut by_error: BTreeMap<i64, usize> = BTreeMap::new();
    for e in &events {
        for n in failures_of(e) {
            *by_error.entry(n).or_default() += 1;
        }
    }
    if !by_error.is_empty() {
        let list: Vec<String> = by_error
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} on {}",
                    crate::time::count(*v as u64, "event", "events")
                )
            })
            .collect();
        say!("  failures     {}", list.join(", "));
    }
    let resubmitted = events
        .iter()
        .filter(|e| e["supersedes"].is_string())
        .count();
    say!("  resubmitted  {resubmitted} (pending longer than {RESUBMIT_AFTER})");
    let n = &stats["notifications"];
    say!(
        "  notifications sent {}, lost {}, duplicated {}",
        n["sent"].as_i64().unwrap_or(0),
        n["dropped"].as_i64().unwrap_or(0),
        n["duplicated"].as_i64().unwrap_or(0)
    );
    let retry_list: Vec<String> = log
        .retry_errors
        .iter()
        .map(|(k, v)| format!("{v}x {k}"))
        .collect();
    // The daemon's client already resends a write that Apple answered 5xx with an error body
    // (so provably not processed); the demo resends only what still came back refused.
    say!(
        "  submissions  {} requests; {} resent by the demo after the daemon reported a 5xx{}",
        requests.len(),
        log.retries,
        if retry_list.is_empty() {
            String::new()
        } else {
            format!(" ({})", retry_list.join(", "))
        }
    );
    for (i, t) in w.tokens.iter().enumerate() {
        let list: Vec<String> = truths
            .get(t.name)
            .and_then(|v| v["assets"].as_array())
            .into_iter()
            .flatten()
            .map(|a| {
                format!(
                    "{} {}/{}",
                    s(&a["adamId"]),
                    a["assignedCount"].as_i64().unwrap_or(0),
                    a["totalCount"].as_i64().unwrap_or(0)
                )
            })
            .collect();
        say!(
            "  {:<12} {:<5} {}",
            if i == 0 { "licences" } else { "" },
            t.name,
            list.join(", ")
        );
    }

    say!("\ntiming-dependent (vary from run to run: when polls, syncs and retries happen)");
    let polled = events
        .iter()
        .filter(|e| e["polls"].as_i64().unwrap_or(0) > 0)
        .count();
    let polls: i64 = events.iter().filter_map(|e| e["polls"].as_i64()).sum();
    let answer_list: Vec<String> = answers.iter().map(|(k, v)| format!("{k} {v}")).collect();
    say!(
        "  learned      {} from notifications alone, {polled} needed Event Status",
        events.len() - polled
    );
    if !answer_list.is_empty() {
        say!(
            "               {polls} polls answered {}",
            answer_list.join(", ")
        );
    }
    match w.api_http.all(&w.api_url("/v1/syncs"), "syncs").await {
        Ok(syncs) => {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for x in &syncs {
                let how = if x["full"] == true {
                    "full"
                } else {
                    "incremental"
                };
                *kinds.entry(format!("{} {how}", s(&x["kind"]))).or_default() += 1;
            }
            let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let results = count_by(&syncs, "result");
            let results: Vec<String> = results.iter().map(|(k, v)| format!("{k} {v}")).collect();
            say!(
                "  syncs        {}, results: {}",
                syncs.len(),
                results.join(", ")
            );
            say!("               {}", kinds.join(", "));
        }
        Err(e) => say!("  syncs        cannot list them: {e}"),
    }
    // Shown only when the daemon's counters are filled in.
    if let Ok(text) = w.http.text(&w.api_url("/metrics")).await {
        let statuses = api_answers(&text);
        if !statuses.is_empty() {
            // The metric's status is "ok", Apple's error number, or a word such as "timeout".
            let list: Vec<String> = statuses
                .iter()
                .map(|(k, v)| match k.parse::<u32>() {
                    Ok(_) => format!("error {k} {v}"),
                    Err(_) => format!("{k} {v}"),
                })
                .collect();
            say!(
                "  answers      to the daemon's Apple calls: {}",
                list.join(", ")
            );
        }
    }
    say!("  elapsed      {:.1}s", elapsed.as_secs_f64());

    // Apple calls by endpoint and token.
    say!("\nApple API calls (counted by the simulator; timing-dependent)");
    let mut endpoints: BTreeSet<String> = BTreeSet::new();
    for t in &w.tokens {
        if let Some(m) = stats["tokens"][&t.uid]["requests"].as_object() {
            endpoints.extend(m.keys().cloned());
        }
    }
    let mut rows = vec![{
        let mut h = vec!["ENDPOINT".to_string()];
        h.extend(w.tokens.iter().map(|t| t.name.to_string()));
        h.push("TOTAL".into());
        h
    }];
    let calls = |uid: &str, ep: &str| stats["tokens"][uid]["requests"][ep].as_i64().unwrap_or(0);
    for ep in &endpoints {
        let mut r = vec![ep.clone()];
        let mut sum = 0;
        for t in &w.tokens {
            let c = calls(&t.uid, ep);
            sum += c;
            r.push(c.to_string());
        }
        r.push(sum.to_string());
        rows.push(r);
    }
    let mut totals = vec!["total".to_string()];
    let mut grand = 0;
    for t in &w.tokens {
        let c = total_calls(&stats, &t.uid);
        grand += c;
        totals.push(c.to_string());
    }
    totals.push(grand.to_string());
    rows.push(totals);
    for line in table(&rows) {
        say!("{line}");
    }
    let per_event = if events.is_empty() {
        0.0
    } else {
        grand as f64 / events.len() as f64
    };
    say!(
        "  calls per event: {per_event:.1} ({grand} calls for {} events, syncs included)",
        events.len()
    );
    let mut violations = 0;
    let mut during = 0;
    for t in &w.tokens {
        let ts = &stats["tokens"][&t.uid];
        let v = ts["rateLimitViolations"].as_i64().unwrap_or(-1);
        let d = ts["requestsDuringRetryAfter"].as_i64().unwrap_or(-1);
        say!(
            "  {}: rate-limit violations {v}, requests during Retry-After {d}",
            t.name
        );
        violations += if v == 0 { 0 } else { 1 };
        during += if d == 0 { 0 } else { 1 };
    }

    // Verification.
    let mut checks = Vec::new();
    let unsettled: Vec<String> = events
        .iter()
        .filter(|e| e["state"] != "settled")
        .map(|e| {
            format!(
                "{} {} {} is {} (outcome {}, polls {}, next check {})",
                s(&e["token"]),
                s(&e["eventId"]),
                s(&e["type"]),
                s(&e["state"]),
                e["outcome"].as_str().unwrap_or("unknown"),
                e["polls"].as_i64().unwrap_or(0),
                e["nextCheckAt"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    let mut why = unsettled;
    if timed_out {
        why.insert(
            0,
            format!("not all settled within {:.0}s", elapsed.as_secs_f64()),
        );
    }
    checks.push(check(
        format!("every event settled ({} events)", events.len()),
        why,
    ));
    let not_submitted: Vec<String> = log
        .results
        .iter()
        .filter_map(|(i, r)| {
            r.as_ref().err().map(|e| {
                format!(
                    "request {} ({}): {e}",
                    i + 1,
                    requests.get(*i).map_or("?", |r| r.what.as_str())
                )
            })
        })
        .chain((log.results.len() < requests.len()).then(|| {
            format!(
                "requests {} to {} were never sent (the demo stopped waiting)",
                log.results.len() + 1,
                requests.len()
            )
        }))
        .collect();
    checks.push(check(
        format!(
            "every request accepted by Apple ({} of {})",
            log.results.iter().filter(|(_, r)| r.is_ok()).count(),
            requests.len()
        ),
        not_submitted,
    ));
    checks.push(outcome_check(w, &events, &truths));
    checks.push(issued_check(w, &events, &truths));
    checks.push(planted_check(requests, log, &by_id));
    for t in &w.tokens {
        checks.push(mirror_check(w, t).await);
    }
    checks.push(check(
        "rate limit and Retry-After respected (0 violations, 0 requests during Retry-After)",
        if violations + during == 0 {
            vec![]
        } else {
            vec!["see the counts above".into()]
        },
    ));

    say!("\nverification");
    let mut all_ok = true;
    for c in &checks {
        all_ok &= c.ok;
        say!("  {:<6} {}", if c.ok { "OK" } else { "FAILED" }, c.what);
        for d in c.details.iter().take(12) {
            say!("           {d}");
        }
        if c.details.len() > 12 {
            say!("           ... and {} more", c.details.len() - 12);
        }
    }
    say!(
        "\nresult: {}",
        if all_ok {
            "OK: every event has its final outcome, equal to Apple's, and the mirror equals Apple's data"
        } else {
            "FAILED (see verification above)"
        }
    );
    Ok(all_ok)
}

/// Entities completed/requested, as the demo's report and the `events` command show them
/// (`?` while unknown). Here, below the CLI, so the demo does not depend on the CLI.
pub fn done_req(done: u32, requested: Option<u32>) -> String {
    format!(
        "{done}/{}",
        requested.map_or("?".to_string(), |n| n.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_last_cells_wrap_under_their_column() {
        let line = format!(
            "{:<20}{}",
            "  acme  x", "app 1 -> u03 and unknown ghost-123 (resubmitted as abcd1234)"
        );
        let parts = wrap_at(&line, 20, 50);
        assert!(parts.iter().all(|p| p.chars().count() <= 50), "{parts:?}");
        assert!(parts[1].starts_with(&" ".repeat(20)), "{parts:?}");
        let joined: Vec<&str> = parts.iter().map(|p| p.trim()).collect();
        assert!(joined.join(" ").ends_with("(resubmitted as abcd1234)"));
        assert_eq!(wrap_at("short", 2, 50), vec!["short".to_string()]);
    }
}
