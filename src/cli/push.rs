//! `report licences` (read-only: the store only) and `push` (the outbox, read from the store;
//! `push replay` changes state, so it goes through the local API).

use std::path::Path;

use serde_json::{json, Value};

use super::inspect::{open, print_json};
use super::track::{api_token, post_json};
use super::{load_config, CliError, CliResult, PushAction, PushArgs, ReportArgs, ReportWhat};
use crate::store::AssetLicences;

pub fn report(config_path: &Path, args: ReportArgs) -> CliResult {
    let ReportWhat::Licences(a) = args.what;
    if a.json && a.csv {
        return Err(CliError::usage("give one of --json and --csv"));
    }
    let (config, db) = open(config_path)?;
    if let Some(t) = &a.token {
        // Configured, or known to the store (a token removed from the configuration keeps
        // its data): otherwise a usage error naming it, as `events --token` does.
        let stored = db.get(db.store.list_tokens())?;
        let known =
            config.tokens.iter().any(|c| &c.name == t) || stored.iter().any(|s| &s.name == t);
        if !known {
            let mut names: Vec<String> = config.tokens.iter().map(|c| c.name.clone()).collect();
            names.extend(stored.into_iter().map(|s| s.name));
            names.sort();
            names.dedup();
            return Err(CliError::usage(format!(
                "--token {t:?} is not a configured token (tokens: {})",
                names.join(", ")
            )));
        }
    }
    let rows = db.get(db.store.licence_report(a.token.clone()))?;
    if a.json {
        return print_json(&json!({ "assets": rows }));
    }
    if a.csv {
        print!("{}", licences_csv(&rows));
        return Ok(());
    }
    println!(
        "{:<12} {:<12} {:<6} {:<8} {:>6} {:>8} {:>9} {:>7} {:>7}  UNKNOWN ORIGIN",
        "TOKEN", "ADAMID", "PRICE", "TYPE", "TOTAL", "ASSIGNED", "AVAILABLE", "TRACKED", "UNKNOWN"
    );
    let n = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    for r in &rows {
        let unknown: Vec<String> = r
            .unknown_origin_assignments
            .iter()
            .map(|x| match (&x.serial_number, &x.client_user_id) {
                (Some(s), _) => format!("serial {s}"),
                (None, Some(u)) => format!("user {u}"),
                (None, None) => "?".into(),
            })
            .collect();
        println!(
            "{:<12} {:<12} {:<6} {:<8} {:>6} {:>8} {:>9} {:>7} {:>7}  {}",
            r.token,
            r.adam_id,
            r.pricing_param,
            r.product_type.as_deref().unwrap_or("-"),
            n(r.total),
            n(r.assigned),
            n(r.available),
            r.tracked,
            r.unknown_origin,
            if unknown.is_empty() {
                "-".into()
            } else {
                unknown.join(", ")
            }
        );
    }
    if rows.is_empty() {
        println!("(no assets mirrored yet)");
    }
    Ok(())
}

/// RFC 4180 field: quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One line per asset; the unknown-origin serial numbers and clientUserIds as `;`-separated
/// lists.
pub fn licences_csv(rows: &[AssetLicences]) -> String {
    let mut out = String::from(
        "token,adamId,pricingParam,productType,total,assigned,available,tracked,unknownOrigin,unknownOriginSerialNumbers,unknownOriginClientUserIds\r\n",
    );
    let n = |v: Option<i64>| v.map_or(String::new(), |v| v.to_string());
    for r in rows {
        let serials: Vec<&str> = r
            .unknown_origin_assignments
            .iter()
            .filter_map(|a| a.serial_number.as_deref())
            .collect();
        let users: Vec<&str> = r
            .unknown_origin_assignments
            .iter()
            .filter_map(|a| a.client_user_id.as_deref())
            .collect();
        let fields = [
            r.token.clone(),
            r.adam_id.clone(),
            r.pricing_param.clone(),
            r.product_type.clone().unwrap_or_default(),
            n(r.total),
            n(r.assigned),
            n(r.available),
            r.tracked.to_string(),
            r.unknown_origin.to_string(),
            serials.join(";"),
            users.join(";"),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

pub fn push(config_path: &Path, args: PushArgs) -> CliResult {
    match args.action {
        Some(PushAction::Replay { after, json, .. }) => replay(config_path, after, json),
        None => status(config_path, args.json),
    }
}

/// Read-only, like `events`: the configuration and the database, no secret file.
fn status(config_path: &Path, as_json: bool) -> CliResult {
    let (config, db) = open(config_path)?;
    let s = db.get(db.store.push_status())?;
    let endpoint = config.push.as_ref().and_then(|p| p.url.clone());
    if as_json {
        let mut v = serde_json::to_value(&s)
            .map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))?;
        v["endpoint"] = json!(endpoint);
        return print_json(&v);
    }
    let ts = |t: Option<crate::time::Timestamp>| t.map_or("-".to_string(), |t| t.to_rfc3339());
    println!(
        "endpoint            {}",
        endpoint.as_deref().unwrap_or("(push is not configured)")
    );
    println!("last delivered seq  {}", s.last_delivered_seq);
    println!(
        "backlog             {} change(s), up to seq {}",
        s.backlog, s.last_seq
    );
    match &s.in_flight {
        Some(b) => println!(
            "in flight           seq {}..{}, {} failed attempt(s), next {}",
            b.first_seq,
            b.last_seq,
            b.attempts,
            ts(b.next_attempt_at)
        ),
        None => println!("in flight           -"),
    }
    println!("last success        {}", ts(s.last_success_at));
    println!(
        "last error          {}",
        match (&s.last_error, s.last_error_at) {
            (Some(e), Some(at)) => format!("{e} (at {at})"),
            (Some(e), None) => e.clone(),
            _ => "-".into(),
        }
    );
    println!("parked              {}", s.parked);
    for p in &s.recent_parked {
        println!(
            "  seq {:<8} {} parked {} after {} attempt(s): {}",
            p.seq,
            p.change["kind"].as_str().unwrap_or("?"),
            p.parked_at,
            p.attempts,
            p.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn replay(config_path: &Path, after: i64, as_json: bool) -> CliResult {
    if after < 0 {
        return Err(CliError::usage(format!(
            "--after {after} must be 0 or more"
        )));
    }
    let config = load_config(config_path)?.config;
    let url = format!("http://{}/v1/push/replay", config.daemon.api_listen);
    let (status, answer) = post_json(&url, &api_token(&config)?, &json!({"after": after}))?;
    if as_json {
        println!("{answer}");
    }
    match status {
        200..=299 => {
            if !as_json {
                println!("changes after seq {after} are queued for delivery again");
            }
            Ok(())
        }
        400 => Err(CliError::usage(error_text(&answer, status))),
        _ => Err(CliError::failed(error_text(&answer, status))),
    }
}

fn error_text(answer: &Value, status: u16) -> String {
    answer
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("the daemon answered HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AssignmentRef;

    #[test]
    fn csv_lists_unknown_origin_assignments() {
        let rows = vec![AssetLicences {
            token: "acme".into(),
            adam_id: "1".into(),
            pricing_param: "STDQ".into(),
            product_type: Some("App".into()),
            total: Some(3),
            assigned: Some(2),
            available: Some(1),
            tracked: 0,
            unknown_origin: 2,
            unknown_origin_assignments: vec![
                AssignmentRef {
                    serial_number: Some("S,1".into()),
                    client_user_id: None,
                },
                AssignmentRef {
                    serial_number: None,
                    client_user_id: Some("u1".into()),
                },
            ],
        }];
        let csv = licences_csv(&rows);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[1], "acme,1,STDQ,App,3,2,1,0,2,\"S,1\",u1");
    }
}
