//! The raw serde view of the file: `deny_unknown_fields`, every key optional, no defaults,
//! so validation can name the key path and the offending value.

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) daemon: RawDaemon,
    pub(super) apple: RawApple,
    pub(super) webhook: RawWebhook,
    pub(super) reconcile: RawReconcile,
    pub(super) tokens: Vec<RawToken>,
    pub(super) push: Option<RawPush>,
    pub(super) store: Option<RawStore>,
}

#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) url: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) lease_ttl: Option<String>,
}

#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawPush {
    pub url: Option<String>,
    pub(super) secret_file: Option<String>,
    pub(super) max_batch: Option<i64>,
    pub(super) timeout: Option<String>,
    pub(super) dead_after: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDaemon {
    pub(super) database: Option<String>,
    pub(super) api_listen: Option<String>,
    pub(super) api_token_file: Option<String>,
    pub(super) api_read_token_file: Option<String>,
    pub(super) api_hosts: Option<Vec<String>>,
    pub(super) log_format: Option<String>,
    pub(super) log_level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApple {
    pub(super) base_url: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) max_requests_per_second: Option<i64>,
    pub(super) max_concurrent_requests: Option<i64>,
    pub(super) service_config_refresh: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWebhook {
    pub(super) listen: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) max_body_bytes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReconcile {
    pub(super) notification_grace: Option<String>,
    pub(super) poll_min: Option<String>,
    pub(super) poll_max: Option<String>,
    pub(super) resubmit_after: Option<String>,
    pub(super) give_up_after: Option<String>,
    pub(super) full_sync_schedule: Option<String>,
    pub(super) retention: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawToken {
    pub(super) name: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) notification_auth_token_file: Option<String>,
    pub(super) notification_url: Option<String>,
    pub(super) max_requests_per_second: Option<i64>,
    pub(super) mdm_id: Option<String>,
    pub(super) claim_location: Option<bool>,
}
