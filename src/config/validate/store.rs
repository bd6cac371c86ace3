//! `[store]`: the PostgreSQL URL (no password in it, TLS settings libpq's way, shown only
//! redacted), its password file and the lease TTL.

use super::*;

impl Validator<'_> {
    /// `[store]`: a PostgreSQL URL without a password (that lives in a secret file). The
    /// URL is shown only redacted (`store::postgres::url::redact`), even in the errors
    /// about it.
    pub(super) fn store(&mut self, raw: super::raw::RawStore) -> Result<StoreConfig, ConfigError> {
        use crate::store::postgres::{tls, url as pg_url};
        let url = raw
            .url
            .ok_or_else(|| self.err("store.url", "is missing; [store] needs a postgres:// URL"))?;
        let shown = pg_url::redact(&url);
        if pg_url::has_password(&url) {
            return Err(self.err(
                "store.url",
                format!(
                    "must not contain a password ({} shows where; the value is not shown); \
                     put it in store.password_file",
                    q(&shown)
                ),
            ));
        }
        let parsed = reqwest::Url::parse(&url)
            .map_err(|_| self.err("store.url", format!("{} is not a URL", q(&shown))))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(self.err(
                "store.url",
                format!("{} must start with postgres://", q(&shown)),
            ));
        }
        if parsed.password().is_some() {
            return Err(self.err(
                "store.url",
                "must not contain a password (value not shown); put it in store.password_file",
            ));
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        if host.is_empty() {
            return Err(self.err("store.url", format!("{} names no host", q(&shown))));
        }
        // sslmode, sslrootcert and channel_binding (read when connecting).
        let (_, settings) =
            tls::TlsSettings::from_url(&url).map_err(|e| self.err("store.url", e.to_string()))?;
        if settings.weak() && !tls::is_local_host(&host) {
            self.warn(format!(
                "store.url: sslmode={} to {host}: the server's certificate is not checked, so \
                 anyone on the network between can pose as the database; use \
                 sslmode=verify-full with sslrootcert=/path/to/ca.pem",
                settings.mode
            ));
        }
        let password_file = match raw.password_file {
            Some(f) => Some(self.secret_file("store.password_file", f)?),
            None => None,
        };
        let lease_ttl = self.duration("store.lease_ttl", raw.lease_ttl, "15s")?;
        if lease_ttl < Duration::from_secs(3) {
            return Err(self.err(
                "store.lease_ttl",
                format!(
                    "{} is too short; a lease is renewed every third of it (at least \"3s\")",
                    crate::time::format_duration(lease_ttl)
                ),
            ));
        }
        Ok(StoreConfig {
            url,
            password_file,
            password: None,
            lease_ttl,
        })
    }
}
