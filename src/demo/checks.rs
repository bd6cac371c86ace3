//! Verification against the simulator's ground truth: outcomes, issued events, planted
//! failures and each token's mirror.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::http::s;
use super::report::failures_of;
use super::run::{SubmitLog, TokenInfo, World};
use super::workload::Request;

/// One verification line: what was checked, whether it held, and the details if not.
pub(super) struct Check {
    pub(super) what: String,
    pub(super) ok: bool,
    pub(super) details: Vec<String>,
}

pub(super) fn check(what: impl Into<String>, details: Vec<String>) -> Check {
    Check {
        what: what.into(),
        ok: details.is_empty(),
        details,
    }
}

/// Each daemon outcome equals the simulator's: eventStatus, and every error number it recorded.
pub(super) fn outcome_check(w: &World, events: &[Value], truths: &HashMap<&str, Value>) -> Check {
    let mut bad = Vec::new();
    let mut n = 0;
    for e in events {
        let id = s(&e["eventId"]);
        let token = s(&e["token"]);
        let outcome = e["outcome"].as_str().unwrap_or("unknown");
        let Some(truth) = w
            .tokens
            .iter()
            .find(|t| t.name == token)
            .and_then(|t| truths.get(t.name))
        else {
            bad.push(format!("{id}: unknown token {token:?}"));
            continue;
        };
        n += 1;
        let te = truth["events"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["eventId"] == id));
        let Some(te) = te else {
            if outcome != "not_found" {
                bad.push(format!(
                    "{id}: Apple never issued it, yet the outcome is {outcome}"
                ));
            }
            continue;
        };
        let want = match s(&te["eventStatus"]) {
            "COMPLETE" => "complete",
            "FAILED" => "failed",
            // Still PENDING at Apple: only giving up is right.
            _ => "timed_out",
        };
        if outcome != want {
            bad.push(format!(
                "{token} {id}: daemon says {outcome}, Apple says {}",
                s(&te["eventStatus"])
            ));
            continue;
        }
        let got = failures_of(e);
        let missing: Vec<String> = failures_of(te)
            .difference(&got)
            .map(i64::to_string)
            .collect();
        if !missing.is_empty() {
            bad.push(format!(
                "{token} {id}: errors {} not recorded",
                missing.join(",")
            ));
        }
    }
    check(
        format!("each outcome equals the simulator's truth ({n} events, error numbers included)"),
        bad,
    )
}

/// Every event Apple issued for the demo's locations is tracked (nothing slipped through).
pub(super) fn issued_check(w: &World, events: &[Value], truths: &HashMap<&str, Value>) -> Check {
    let tracked: BTreeSet<&str> = events.iter().map(|e| s(&e["eventId"])).collect();
    let mut bad = Vec::new();
    let mut issued = 0;
    for t in &w.tokens {
        for te in truths
            .get(t.name)
            .and_then(|v| v["events"].as_array())
            .into_iter()
            .flatten()
        {
            issued += 1;
            if !tracked.contains(s(&te["eventId"])) {
                bad.push(format!(
                    "{} {} {} is not tracked",
                    t.name,
                    s(&te["eventId"]),
                    s(&te["eventType"])
                ));
            }
        }
    }
    check(
        format!("every event Apple issued is tracked ({issued} issued)"),
        bad,
    )
}

/// The planted failures happened and were recorded with their error numbers.
pub(super) fn planted_check(
    requests: &[Request],
    log: &SubmitLog,
    by_id: &HashMap<&str, &Value>,
) -> Check {
    let mut bad = Vec::new();
    let mut planted = BTreeSet::new();
    for (i, res) in &log.results {
        let Some(r) = requests.get(*i) else { continue };
        let Some(want) = r.expect_error else { continue };
        planted.insert(want);
        let Ok(ids) = res else { continue };
        let seen = ids.iter().any(|id| {
            by_id
                .get(id.as_str())
                .is_some_and(|e| failures_of(e).contains(&want))
        });
        if !seen {
            bad.push(format!("{}: error {want} not recorded", r.what));
        }
    }
    let list: Vec<String> = planted.iter().map(i64::to_string).collect();
    check(
        format!("planted failures recorded ({})", list.join(", ")),
        bad,
    )
}

pub(super) type AssignKey = (String, String, String, String);

pub(super) fn assignment_set(list: &[Value]) -> BTreeSet<AssignKey> {
    list.iter()
        .map(|a| {
            (
                s(&a["adamId"]).to_string(),
                s(&a["pricingParam"]).to_string(),
                s(&a["clientUserId"]).to_string(),
                s(&a["serialNumber"]).to_string(),
            )
        })
        .collect()
}

pub(super) fn user_set(list: &[Value]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|u| {
            (
                s(&u["clientUserId"]).to_string(),
                s(&u["status"]).to_string(),
            )
        })
        .collect()
}

pub(super) fn asset_set(list: &[Value]) -> BTreeSet<(String, String, i64, i64, i64)> {
    list.iter()
        .map(|a| {
            (
                s(&a["adamId"]).to_string(),
                s(&a["pricingParam"]).to_string(),
                a["assignedCount"].as_i64().unwrap_or(-1),
                a["availableCount"].as_i64().unwrap_or(-1),
                a["totalCount"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

pub(super) fn diff<T: Ord + std::fmt::Debug>(
    what: &str,
    mirror: &BTreeSet<T>,
    truth: &BTreeSet<T>,
) -> Vec<String> {
    let mut out = Vec::new();
    for x in truth.difference(mirror).take(5) {
        out.push(format!("{what}: missing from the mirror: {x:?}"));
    }
    for x in mirror.difference(truth).take(5) {
        out.push(format!("{what}: in the mirror but not at Apple: {x:?}"));
    }
    out
}

/// The daemon's mirror (read through its API) equals the simulator's data.
pub(super) async fn mirror_check(w: &World, t: &TokenInfo) -> Check {
    let mut last = Vec::new();
    let mut what = format!("mirror of {} equals Apple's data", t.name);
    // A late duplicate notification or a sync finishing may still be landing: look again
    // briefly (truth and mirror both re-read) before calling a difference real.
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let base = w.api_url(&format!("/v1/tokens/{}", t.name));
        let read = async {
            Ok::<_, String>((
                w.http
                    .get(&w.sim_url(&format!("/_sim/truth/{}", t.uid)))
                    .await?,
                w.api_http
                    .all(&format!("{base}/assignments"), "assignments")
                    .await?,
                w.api_http.all(&format!("{base}/users"), "users").await?,
                w.api_http.all(&format!("{base}/assets"), "assets").await?,
            ))
        };
        last = match read.await {
            Ok((truth, a, u, s)) => {
                let empty = Vec::new();
                let want_assign = assignment_set(truth["assignments"].as_array().unwrap_or(&empty));
                let want_users = user_set(truth["users"].as_array().unwrap_or(&empty));
                let want_assets = asset_set(truth["assets"].as_array().unwrap_or(&empty));
                what = format!(
                    "mirror of {} equals Apple's data ({} assignments, {} users, {} assets with counts)",
                    t.name,
                    want_assign.len(),
                    want_users.len(),
                    want_assets.len()
                );
                let mut d = diff("assignment", &assignment_set(&a), &want_assign);
                d.extend(diff("user", &user_set(&u), &want_users));
                d.extend(diff("asset", &asset_set(&s), &want_assets));
                d
            }
            Err(e) => vec![e],
        };
        if last.is_empty() {
            break;
        }
    }
    check(what, last)
}
