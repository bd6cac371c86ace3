//! Checks of single values that several sections share: secret file paths and tokens read
//! from them, URLs without credentials, socket addresses, durations and positive numbers.

use super::*;

impl Validator<'_> {
    /// A secret file's key and path, validated and resolved but not opened.
    pub(super) fn secret_file(
        &self,
        key: &str,
        configured: String,
    ) -> Result<SecretFile, ConfigError> {
        if configured.trim().is_empty() {
            return Err(self.err(key, "\"\" must be a file path"));
        }
        let resolved = self.resolve_secret(&configured);
        Ok(SecretFile {
            key: key.to_string(),
            configured,
            resolved,
        })
    }

    /// Credentials in a URL would be printed and logged with it; refuse them, and do not
    /// echo the URL.
    pub(super) fn no_userinfo(&self, key: &str, url: &reqwest::Url) -> Result<(), ConfigError> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                key,
                "must not contain a user name or password (value not shown)",
            ));
        }
        Ok(())
    }

    /// enough for Apple's `maxNotificationLength`.
    pub(super) fn auth_token(
        &self,
        key: &str,
        file: &SecretFile,
        text: &str,
    ) -> Result<Secret, ConfigError> {
        let shown = file.shown();
        let t = text.trim();
        if t.is_empty() {
            return Err(self.err(key, format!("{shown} is empty")));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.err(
                key,
                format!("{shown} must hold one token of printable ASCII without spaces"),
            ));
        }
        if t.len() > MAX_NOTIFICATION_LENGTH {
            return Err(self.err(
                key,
                format!(
                    "{shown} holds {} characters; Apple accepts at most {MAX_NOTIFICATION_LENGTH}",
                    t.len()
                ),
            ));
        }
        Ok(Secret::new(t))
    }

    pub(super) fn socket_addr(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let s = value.unwrap_or_else(|| default.to_string());
        s.trim().parse().map_err(|_| {
            self.err(
                key,
                format!(
                    "{} is not an IP address and port (e.g. {})",
                    q(&s),
                    q(default)
                ),
            )
        })
    }

    pub(super) fn duration(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let s = value.unwrap_or_else(|| default.to_string());
        parse_duration(&s).map_err(|_| {
            self.err(
                key,
                format!(
                    "{} is not a duration (expected e.g. \"30s\", \"5m\")",
                    q(&s)
                ),
            )
        })
    }

    pub(super) fn nonzero(&self, key: &str, d: Duration) -> Result<(), ConfigError> {
        if d.is_zero() {
            return Err(self.err(key, "\"0s\" must be longer than zero"));
        }
        Ok(())
    }

    pub(super) fn positive_u32(&self, key: &str, n: i64) -> Result<u32, ConfigError> {
        if n < 1 {
            return Err(self.err(key, format!("{n} must be at least 1")));
        }
        u32::try_from(n).map_err(|_| self.err(key, format!("{n} is too large")))
    }
}

pub(super) fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
