//! `sync`: ask the daemon for a sync now, through the local API.

use std::path::Path;

use serde_json::{json, Value};

use super::track::{api_token, post_json};
use super::{load_config, CliError, CliResult, SyncArgs};
use crate::core::SyncKind;

pub fn run(config_path: &Path, args: SyncArgs) -> CliResult {
    // Validate locally first, so usage mistakes exit 2 without a round trip.
    let kind: SyncKind = args.kind.parse().map_err(CliError::usage)?;
    let config = load_config(config_path)?.config;
    let url = sync_url(&config.daemon.api_listen.to_string(), &args.token)?;
    let body = json!({"kind": kind.as_str(), "full": args.full});
    let (status, answer) = post_json(&url, &api_token(&config)?, &body)?;
    if args.json {
        println!("{answer}");
    }
    match status {
        200..=299 => {
            if !args.json {
                println!("{}", describe(&answer, &args.token, kind, args.full));
            }
            Ok(())
        }
        400 => Err(CliError::usage(error_text(&answer, status))),
        _ => Err(CliError::failed(error_text(&answer, status))),
    }
}

/// `/v1/tokens/{token}/sync`, with the name percent-encoded as one path segment (a mistyped
/// name must reach the daemon as itself and come back as 404, not as another route).
fn sync_url(api_listen: &str, token: &str) -> Result<String, CliError> {
    let mut url = reqwest::Url::parse(&format!("http://{api_listen}/")).map_err(|e| {
        CliError::usage(format!(
            "daemon.api_listen {api_listen:?} is not usable: {e}"
        ))
    })?;
    url.path_segments_mut()
        .map_err(|_| CliError::usage(format!("daemon.api_listen {api_listen:?} is not usable")))?
        .pop_if_empty()
        .extend(["v1", "tokens", token, "sync"]);
    Ok(url.to_string())
}

/// One line for the ticket `{"syncId", "queued", "startsAt"?}`: which run serves the
/// request, and when a queued run may start.
fn describe(ticket: &Value, token: &str, kind: SyncKind, full: bool) -> String {
    let mode = if full { "full" } else { "incremental" };
    let id = ticket.get("syncId").and_then(Value::as_u64);
    let queued = ticket
        .get("queued")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let starts = ticket
        .get("startsAt")
        .and_then(Value::as_str)
        .map(|t| format!("; it starts at {t}"))
        .unwrap_or_default();
    match (id, queued) {
        (Some(n), false) => format!("sync {n} started for {token} ({kind}, {mode})"),
        (Some(n), true) => format!("queued after sync {n} for {token} ({kind}, {mode}){starts}"),
        (None, true) if !starts.is_empty() => format!(
            "sync queued for {token} ({kind}, {mode}): runs of one kind start at least poll_min apart{starts}"
        ),
        (None, _) => format!(
            "sync requested for {token} ({kind}, {mode}); it will start when the token allows"
        ),
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

    #[test]
    fn token_is_one_path_segment() {
        assert_eq!(
            sync_url("127.0.0.1:8787", "acme").unwrap(),
            "http://127.0.0.1:8787/v1/tokens/acme/sync"
        );
        assert_eq!(
            sync_url("127.0.0.1:8787", "a/b?c").unwrap(),
            "http://127.0.0.1:8787/v1/tokens/a%2Fb%3Fc/sync"
        );
    }

    #[test]
    fn describes_tickets() {
        let k = SyncKind::Assignments;
        assert_eq!(
            describe(&json!({"syncId": 7, "queued": false}), "acme", k, true),
            "sync 7 started for acme (assignments, full)"
        );
        assert_eq!(
            describe(&json!({"syncId": 7, "queued": true}), "acme", k, false),
            "queued after sync 7 for acme (assignments, incremental)"
        );
        assert!(
            describe(&json!({"syncId": null, "queued": false}), "acme", k, false)
                .starts_with("sync requested for acme")
        );
        let t = "2026-01-01T00:00:30.000Z";
        assert_eq!(
            describe(&json!({"syncId": null, "queued": true, "startsAt": t}), "acme", k, false),
            format!("sync queued for acme (assignments, incremental): runs of one kind start at least poll_min apart; it starts at {t}")
        );
        assert_eq!(
            describe(
                &json!({"syncId": 7, "queued": true, "queuedBehind": 7, "startsAt": t}),
                "acme",
                k,
                true
            ),
            format!("queued after sync 7 for acme (assignments, full); it starts at {t}")
        );
    }
}
