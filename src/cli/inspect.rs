//! Read-only inspection commands (`events`, `event`, `tokens`, `instances`, `syncs`). They
//! open the SQLite file read-only, so they work whether or not the daemon runs, and they load
//! the configuration without opening any secret file (README "Using it"): an operator needs only the
//! configuration and read access to the database.

use std::future::Future;
use std::path::Path;

use super::{
    load_public_config, store_error, CliError, CliResult, EventArgs, EventsArgs, InstancesArgs,
    SyncsArgs, TokensArgs,
};
use crate::api::ListQuery;
use crate::config::PublicConfig;
use crate::demo::done_req;
use crate::store::{Store, StoreError};
use crate::time::Timestamp;

/// The store opened read-only, with a small runtime to run its operations on.
pub(super) struct Db {
    pub store: Store,
    runtime: tokio::runtime::Runtime,
}

impl Db {
    /// Runs one of the store's operations to its end.
    pub fn get<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, CliError> {
        self.runtime
            .block_on(op)
            .map_err(|e| CliError::failed(e.to_string()))
    }
}

pub(super) fn open(config_path: &Path) -> Result<(PublicConfig, Db), CliError> {
    let loaded = load_public_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start a runtime: {e}")))?;
    let store = match &loaded.config.store {
        // PostgreSQL needs its password to read at all: the one secret file these commands
        // read, and only when this user may (else the server's own authentication decides).
        Some(s) => {
            let password = s
                .password_file
                .as_ref()
                .and_then(|f| std::fs::read_to_string(&f.resolved).ok())
                .map(|p| p.trim_end_matches(['\r', '\n']).to_string());
            runtime
                .block_on(Store::connect_postgres(&s.url, password.as_deref()))
                .map_err(store_error)?
        }
        None => {
            let db = &loaded.config.daemon.database;
            if !db.exists() {
                return Err(CliError::failed(format!(
                    "database {} does not exist yet (has the daemon run?)",
                    db.display()
                )));
            }
            Store::open_read_only(db).map_err(store_error)?
        }
    };
    Ok((loaded.config, Db { store, runtime }))
}

/// `--token NAME` must name a configured token or one the store knows (a token removed from
/// the configuration keeps its history); otherwise a usage error naming it.
fn check_token(config: &PublicConfig, db: &Db, name: Option<&str>) -> CliResult {
    let Some(name) = name else {
        return Ok(());
    };
    let mut known: Vec<String> = config.tokens.iter().map(|t| t.name.clone()).collect();
    if let Ok(stored) = db.get(db.store.list_tokens()) {
        known.extend(stored.into_iter().map(|t| t.name));
    }
    known.sort();
    known.dedup();
    if known.iter().any(|k| k == name) {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "--token {name:?} is not a configured token ({})",
        if known.is_empty() {
            "none are configured".to_string()
        } else {
            format!("tokens: {}", known.join(", "))
        }
    )))
}

/// Left-aligned columns sized to their widest cell (`right` lists right-aligned columns);
/// the last column is not padded.
fn print_table(rows: &[Vec<String>], right: &[usize]) {
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
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() && !right.contains(&i) {
                    c.clone()
                } else if right.contains(&i) {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
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
    let (config, db) = open(config_path)?;
    check_token(&config, &db, filter.token.as_deref())?;
    let (events, _) = db.get(db.store.list_events(filter))?;
    if args.json {
        return print_json(&serde_json::json!({ "events": events }));
    }
    if events.is_empty() {
        println!("(no events)");
        return Ok(());
    }
    let mut rows = vec![[
        "EVENT", "TOKEN", "TYPE", "STATE", "OUTCOME", "DONE/REQ", "POLLS", "TRACKED",
    ]
    .map(String::from)
    .to_vec()];
    for e in &events {
        rows.push(vec![
            e.event_id.clone(),
            e.token.clone(),
            e.event_type.as_str().to_string(),
            e.state.as_str().to_string(),
            e.outcome.map(|o| o.as_str()).unwrap_or("-").to_string(),
            done_req(e.num_completed, e.num_requested),
            e.polls.to_string(),
            e.tracked_at.to_string(),
        ]);
    }
    print_table(&rows, &[5, 6]);
    Ok(())
}

pub fn event(config_path: &Path, args: EventArgs) -> CliResult {
    let (_, db) = open(config_path)?;
    let detail = db
        .get(db.store.event_detail(&args.id))?
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
                "  {}  {} {} {}  {}",
                n.received_at,
                n.notification_type,
                n.result.as_deref().unwrap_or("-"),
                crate::time::count(n.entities.unwrap_or(0), "entity", "entities"),
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

/// `[store] lease_ttl`, else its default: what tells live instances apart.
fn lease_ttl(config: &PublicConfig) -> std::time::Duration {
    config
        .store
        .as_ref()
        .map_or(crate::cluster::DEFAULT_LEASE_TTL, |s| s.lease_ttl)
}

pub fn tokens(config_path: &Path, args: TokensArgs) -> CliResult {
    let (config, db) = open(config_path)?;
    let tokens = db.get(db.store.list_tokens())?;
    // The leases are extra: a database whose leases cannot be read (one from before the lease
    // tables, opened read-only so not migrated) still lists its tokens, without holders.
    let snapshot = match db.get(db.store.lease_snapshot(lease_ttl(&config))) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("vpp-reconciler: leases not shown: {}", e.message);
            None
        }
    };
    let holders = snapshot
        .as_ref()
        .map(crate::cluster::view::holders)
        .unwrap_or_default();
    if args.json {
        let tokens = crate::cluster::view::tokens_with_leases(&tokens, &holders);
        return print_json(&serde_json::json!({ "tokens": tokens }));
    }
    // The HOLDER column only where leases exist (several instances): one instance alone on
    // SQLite keeps no lease rows, and its table stays as it was.
    let show_holder = snapshot.as_ref().is_some_and(|s| !s.leases.is_empty());
    let mut header = vec![
        "TOKEN", "UID", "LOCATION", "EXPIRES", "HEALTH", "PENDING", "SYNCING",
    ];
    if show_holder {
        header.push("HOLDER");
    }
    header.push("LAST SYNCS");
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    // Reasons are long sentences: listed under the table, so the columns stay aligned.
    let mut notes = Vec::new();
    for t in &tokens {
        let syncs: Vec<String> = t
            .last_syncs
            .iter()
            .map(|s| format!("{} {} ({})", s.kind, s.result, s.started_at))
            .collect();
        let health = if t.mdm_conflict.is_some() && t.health == "healthy" {
            "conflict".to_string()
        } else {
            t.health.clone()
        };
        if let Some(r) = &t.health_reason {
            notes.push(format!("{}: {}: {r}", t.name, t.health));
        }
        if let Some(c) = &t.mdm_conflict {
            notes.push(format!(
                "{}: mdmConflict: {c} (README.md, \"mdmConflict\")",
                t.name
            ));
        }
        let mut row = vec![
            t.name.clone(),
            t.u_id.as_deref().unwrap_or("-").to_string(),
            t.location
                .as_deref()
                .or(t.org_name.as_deref())
                .unwrap_or("-")
                .to_string(),
            t.expires_at
                .map(|e| e.to_rfc3339()[..10].to_string())
                .unwrap_or("-".into()),
            health,
            t.pending.to_string(),
            t.syncing.to_string(),
        ];
        if show_holder {
            row.push(
                holders
                    .get(&t.name)
                    .map_or("-".to_string(), |l| l.holder.clone()),
            );
        }
        row.push(if syncs.is_empty() {
            "-".into()
        } else {
            syncs.join(", ")
        });
        rows.push(row);
    }
    print_table(&rows, &[5, 6]);
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
    Ok(())
}

/// `instances`: every instance with a heartbeat row or an unexpired lease, on the database's
/// clock. `me` is always `null` in the JSON (the command is no instance), so the document has
/// the shape of `GET /v1/instances`.
pub fn instances(config_path: &Path, args: InstancesArgs) -> CliResult {
    let (config, db) = open(config_path)?;
    let view = db.get(db.store.cluster_view(lease_ttl(&config)))?;
    if args.json {
        return print_json(&serde_json::json!({ "instances": view.instances, "me": null }));
    }
    if view.instances.is_empty() {
        println!("(no instances: no daemon keeps leases on this database)");
        return Ok(());
    }
    let mut rows = vec![["INSTANCE", "LAST SEEN", "LIVE", "TOKENS"]
        .map(String::from)
        .to_vec()];
    for i in &view.instances {
        rows.push(vec![
            i.id.clone(),
            opt_ts(i.last_seen),
            if i.live { "yes" } else { "no" }.to_string(),
            if i.tokens.is_empty() {
                "-".into()
            } else {
                i.tokens.join(", ")
            },
        ]);
    }
    print_table(&rows, &[]);
    Ok(())
}

pub fn syncs(config_path: &Path, args: SyncsArgs) -> CliResult {
    let (config, db) = open(config_path)?;
    check_token(&config, &db, args.token.as_deref())?;
    let syncs = db.get(db.store.list_syncs(args.token.clone(), args.limit))?;
    if args.json {
        return print_json(&serde_json::json!({ "syncs": syncs }));
    }
    let mut rows = vec![[
        "ID", "TOKEN", "KIND", "FULL", "RESULT", "PAGES", "RECORDS", "MS", "STARTED",
    ]
    .map(String::from)
    .to_vec()];
    for s in &syncs {
        rows.push(vec![
            s.id.to_string(),
            s.token.clone(),
            s.kind.to_string(),
            if s.full { "full" } else { "incr" }.to_string(),
            s.result.to_string(),
            s.pages.to_string(),
            s.records.to_string(),
            s.duration_ms.map(|d| d.to_string()).unwrap_or("-".into()),
            s.started_at.to_string(),
        ]);
    }
    print_table(&rows, &[0, 5, 6, 7]);
    Ok(())
}
