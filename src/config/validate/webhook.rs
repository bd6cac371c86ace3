//! `[webhook]`: where Apple's notifications are received (the listen address, warned about
//! off loopback, and the path prefix) and the largest body accepted.

use super::*;

impl Validator<'_> {
    pub(super) fn webhook(&mut self, raw: RawWebhook) -> Result<WebhookConfig, ConfigError> {
        let listen = self.socket_addr("webhook.listen", raw.listen, "127.0.0.1:8788")?;
        if !listen.ip().is_loopback() {
            self.warn(format!(
                "webhook.listen {} is not a loopback address: the webhook speaks plain HTTP, so \
                 notifications and their auth token would cross the network unencrypted (and \
                 Apple delivers only to https:// URLs); bind it to 127.0.0.1 and put a \
                 TLS-terminating proxy in front (README.md, \"Exposing the webhook\")",
                q(&listen.to_string())
            ));
        }
        let path_prefix = raw
            .path_prefix
            .unwrap_or_else(|| "/apple/notifications".to_string());
        let ok = path_prefix.len() > 1
            && path_prefix.starts_with('/')
            && !path_prefix.ends_with('/')
            && !path_prefix.contains("//")
            && path_prefix
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#' | '{' | '}' | '*' | ':'));
        if !ok {
            return Err(self.err(
                "webhook.path_prefix",
                format!(
                    "{} must be a URL path that starts with '/' and does not end with '/' \
                     (e.g. \"/apple/notifications\")",
                    q(&path_prefix)
                ),
            ));
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(1_048_576);
        if max_body_bytes < 1 {
            return Err(self.err(
                "webhook.max_body_bytes",
                format!("{max_body_bytes} must be at least 1"),
            ));
        }
        let max_body_bytes = usize::try_from(max_body_bytes).map_err(|_| {
            self.err(
                "webhook.max_body_bytes",
                format!("{max_body_bytes} is too large"),
            )
        })?;
        if max_body_bytes < 64 * 1024 {
            self.warn(format!(
                "webhook.max_body_bytes {max_body_bytes} is small; a notification of 100 entities \
                 can exceed it and would be refused"
            ));
        }
        Ok(WebhookConfig {
            listen,
            path_prefix,
            max_body_bytes,
        })
    }
}
