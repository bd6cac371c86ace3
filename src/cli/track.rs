//! `track`: start tracking an event through the daemon's local API.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::{load_config, CliError, CliResult, TrackArgs};

pub fn run(config_path: &Path, args: TrackArgs) -> CliResult {
    let loaded = load_config(config_path)?;
    let config = loaded.config;
    // Validate locally first, so usage mistakes exit 2 without a round trip.
    crate::api::validate_event_id(&args.event_id).map_err(CliError::usage)?;
    let event_type: crate::core::EventType = args.event_type.parse().map_err(CliError::usage)?;
    let request: Option<Value> = match &args.request {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("--request {} cannot be read: {e}", path.display()))
            })?;
            Some(serde_json::from_str(&text).map_err(|e| {
                CliError::usage(format!("--request {} is not JSON: {e}", path.display()))
            })?)
        }
    };
    let mut body =
        json!({"token": args.token, "eventId": args.event_id, "type": event_type.as_str()});
    if let Some(r) = request {
        body["request"] = r;
    }
    let url = format!("http://{}/v1/events", config.daemon.api_listen);
    let (status, answer) = post_json(&url, &api_token(&config)?, &body)?;
    if args.json {
        println!("{answer}");
    }
    match status {
        200 | 201 => {
            if !args.json {
                let verb = if status == 201 {
                    "tracking"
                } else {
                    "already tracking"
                };
                println!(
                    "{verb} {} ({} for token {})",
                    args.event_id, event_type, args.token
                );
            }
            Ok(())
        }
        400 => Err(CliError::usage(error_text(&answer))),
        _ => Err(CliError::failed(error_text(&answer))),
    }
}

fn error_text(answer: &Value) -> String {
    answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("the daemon answered an error")
        .to_string()
}

/// The local API's token as the daemon uses it: `daemon.api_token_file`, else the `api-token`
/// the daemon created beside the database.
pub fn api_token(config: &crate::config::Config) -> Result<crate::secret::Secret, CliError> {
    crate::api::token_file::for_client(config).map_err(|e| CliError::failed(e.to_string()))
}

/// POSTs JSON to the local API with its bearer token; (status, body).
pub fn post_json(
    url: &str,
    token: &crate::secret::Secret,
    body: &Value,
) -> Result<(u16, Value), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build the HTTP client: {e}")))?;
        let req = client.post(url).json(body).bearer_auth(token.expose());
        let resp = req.send().await.map_err(|e| {
            CliError::failed(format!(
                "the daemon is not reachable at {url}: {}",
                e.without_url()
            ))
        })?;
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, value))
    })
}
