//! Read-only inspection commands (`events`, `event`, `tokens`, `syncs`). They open the SQLite
//! file read-only, so they work whether or not the daemon runs.

use std::path::Path;

use rusqlite::Connection;

use super::{load_config, CliError, CliResult, EventArgs, EventsArgs, JsonArg, SyncsArgs};
use crate::api::ListQuery;
use crate::store::{self, queries};
use crate::time::Timestamp;

pub(super) fn open(config_path: &Path) -> Result<Connection, CliError> {
    let loaded = load_config(config_path)?;
    let db = &loaded.config.daemon.database;
    if !db.exists() {
        return Err(CliError::failed(format!(
            "database {} does not exist yet (has the daemon run?)",
            db.display()
        )));
    }
    store::open_read_only(db).map_err(|e| CliError::failed(e.to_string()))
}

pub(super) fn print_json<T: serde::Serialize>(value: &T) -> CliResult {
    let s = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

fn opt_ts(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
}

pub fn events(config_path: &Path, args: EventsArgs) -> CliResult {
    let q = ListQuery {
        state: args.state,
        outcome: args.outcome,
        token: args.token,
        event_type: args.event_type,
        limit: Some(args.limit),
        cursor: None,
    };
    let filter = q.to_filter().map_err(CliError::usage)?;
    let conn = open(config_path)?;
    let (events, _) =
        queries::list_events(&conn, &filter).map_err(|e| CliError::failed(e.to_string()))?;
    if args.json {
        return print_json(&serde_json::json!({ "events": events }));
    }
    println!(
        "{:<38} {:<10} {:<13} {:<8} {:<10} {:>9} {:>5}  TRACKED",
        "EVENT", "TOKEN", "TYPE", "STATE", "OUTCOME", "DONE/REQ", "POLLS"
    );
    for e in &events {
        println!(
            "{:<38} {:<10} {:<13} {:<8} {:<10} {:>9} {:>5}  {}",
            e.event_id,
            e.token,
            e.event_type.as_str(),
            e.state.as_str(),
            e.outcome.map(|o| o.as_str()).unwrap_or("-"),
            format!(
                "{}/{}",
                e.num_completed,
                e.num_requested.map(|n| n.to_string()).unwrap_or("?".into())
            ),
            e.polls,
            e.tracked_at
        );
    }
    if events.is_empty() {
        println!("(no events)");
    }
    Ok(())
}

pub fn event(config_path: &Path, args: EventArgs) -> CliResult {
    let conn = open(config_path)?;
    let detail = queries::event_detail(&conn, &args.id)
        .map_err(|e| CliError::failed(e.to_string()))?
        .ok_or_else(|| CliError::failed(format!("event {:?} is not tracked", args.id)))?;
    if args.json {
        return print_json(&detail);
    }
    let e = &detail.event;
    println!("event       {}", e.event_id);
    println!("token       {}", e.token);
    println!("type        {}", e.event_type);
    println!("state       {}", e.state);
    println!(
        "outcome     {}",
        e.outcome.map(|o| o.as_str()).unwrap_or("-")
    );
    println!("submitted   {}", detail.submitted_at);
    println!("tracked     {}", e.tracked_at);
    println!("settled     {}", opt_ts(e.settled_at));
    println!(
        "entities    {} of {} completed",
        e.num_completed,
        e.num_requested.map(|n| n.to_string()).unwrap_or("?".into())
    );
    println!("polls       {}", e.polls);
    println!("next check  {}", opt_ts(e.next_check_at));
    if let Some(s) = &e.supersedes {
        println!("supersedes  {s}");
    }
    if let Some(s) = &e.superseded_by {
        println!("superseded  by {s}");
    }
    println!("\nhistory:");
    for h in &detail.history {
        println!(
            "  {}  {} -> {}{}  {}",
            h.at,
            h.from.map(|s| s.as_str()).unwrap_or("-"),
            h.to,
            h.outcome.map(|o| format!(" ({o})")).unwrap_or_default(),
            h.cause
        );
    }
    if !detail.notifications.is_empty() {
        println!("\nnotifications:");
        for n in &detail.notifications {
            println!(
                "  {}  {} {} {} entities  {}",
                n.received_at,
                n.notification_type,
                n.result.as_deref().unwrap_or("-"),
                n.entities.unwrap_or(0),
                n.notification_id
            );
        }
    }
    if !detail.poll_log.is_empty() {
        println!("\npolls:");
        for p in &detail.poll_log {
            println!(
                "  {}  {}{}",
                p.at,
                p.result,
                p.detail
                    .as_ref()
                    .map(|d| format!("  {d}"))
                    .unwrap_or_default()
            );
        }
    }
    if !e.failures.is_empty() {
        println!("\nfailures:");
        for f in &e.failures {
            println!(
                "  {}  {}{}",
                f.error_number,
                f.error_message,
                f.error_info
                    .as_ref()
                    .map(|i| format!("  {i}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn tokens(config_path: &Path, args: JsonArg) -> CliResult {
    let conn = open(config_path)?;
    let tokens = queries::list_tokens(&conn).map_err(|e| CliError::failed(e.to_string()))?;
    if args.json {
        return print_json(&serde_json::json!({ "tokens": tokens }));
    }
    println!(
        "{:<14} {:<18} {:<20} {:<12} {:<10} {:>7} {:>7}  LAST SYNCS",
        "TOKEN", "UID", "LOCATION", "EXPIRES", "HEALTH", "PENDING", "SYNCING"
    );
    for t in &tokens {
        let syncs: Vec<String> = t
            .last_syncs
            .iter()
            .map(|s| format!("{} {} ({})", s.kind, s.result, s.started_at))
            .collect();
        println!(
            "{:<14} {:<18} {:<20} {:<12} {:<10} {:>7} {:>7}  {}",
            t.name,
            t.u_id.as_deref().unwrap_or("-"),
            t.location
                .as_deref()
                .or(t.org_name.as_deref())
                .unwrap_or("-"),
            t.expires_at
                .map(|e| e.to_rfc3339()[..10].to_string())
                .unwrap_or("-".into()),
            match &t.health_reason {
                Some(r) => format!("{} ({r})", t.health),
                None => t.health.clone(),
            },
            t.pending,
            t.syncing,
            if syncs.is_empty() {
                "-".into()
            } else {
                syncs.join(", ")
            }
        );
    }
    Ok(())
}

pub fn syncs(config_path: &Path, args: SyncsArgs) -> CliResult {
    let conn = open(config_path)?;
    let syncs = queries::list_syncs(&conn, args.token.as_deref(), args.limit)
        .map_err(|e| CliError::failed(e.to_string()))?;
    if args.json {
        return print_json(&serde_json::json!({ "syncs": syncs }));
    }
    println!(
        "{:>5} {:<14} {:<12} {:<5} {:<9} {:>6} {:>8} {:>9}  STARTED",
        "ID", "TOKEN", "KIND", "FULL", "RESULT", "PAGES", "RECORDS", "MS"
    );
    for s in &syncs {
        println!(
            "{:>5} {:<14} {:<12} {:<5} {:<9} {:>6} {:>8} {:>9}  {}",
            s.id,
            s.token,
            s.kind,
            if s.full { "full" } else { "incr" },
            s.result,
            s.pages,
            s.records,
            s.duration_ms.map(|d| d.to_string()).unwrap_or("-".into()),
            s.started_at
        );
    }
    Ok(())
}
