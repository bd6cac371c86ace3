//! `[[token]]`: each content token's name, files, notification URL and limits, and, with the
//! secrets, its `.vpptoken` and notification auth token.

use super::values::is_loopback_host;
use super::*;

impl Validator<'_> {
    pub(super) fn token(
        &mut self,
        i: usize,
        raw: RawToken,
        apple: &AppleConfig,
    ) -> Result<PublicToken, ConfigError> {
        let key = |k: &str| format!("tokens[{i}].{k}");
        let name = raw
            .name
            .ok_or_else(|| self.err(&key("name"), "is missing"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(self.err(&key("name"), format!("{} must match [a-z0-9-]+", q(&name))));
        }

        let token_file = raw
            .token_file
            .ok_or_else(|| self.err(&key("token_file"), "is missing"))?;
        let token_file = self.secret_file(&key("token_file"), token_file)?;
        let notify = raw
            .notification_auth_token_file
            .ok_or_else(|| self.err(&key("notification_auth_token_file"), "is missing"))?;
        let notification_auth_token_file =
            self.secret_file(&key("notification_auth_token_file"), notify)?;

        let notification_url = match raw.notification_url {
            None => None,
            Some(u) => Some(self.notification_url(&key("notification_url"), u)?),
        };
        let max_requests_per_second = match raw.max_requests_per_second {
            None => None,
            Some(n) => {
                let n = self.positive_u32(&key("max_requests_per_second"), n)?;
                if n > apple.max_requests_per_second {
                    self.warn(format!(
                        "tokens[{i}].max_requests_per_second {n} is above \
                         apple.max_requests_per_second {}; the lower value applies",
                        apple.max_requests_per_second
                    ));
                }
                Some(n)
            }
        };
        let mdm_id = match raw.mdm_id {
            None => None,
            Some(id) => {
                if id.trim().is_empty() || id.chars().any(char::is_control) || id.len() > 255 {
                    return Err(self.err(
                        &key("mdm_id"),
                        format!(
                            "{} must be a non-empty mdmInfo id of at most 255 characters, \
                             without control characters",
                            q(&id)
                        ),
                    ));
                }
                Some(id)
            }
        };
        let claim_location = raw.claim_location.unwrap_or(false);
        if notification_url.is_none() && claim_location {
            self.warn(format!(
                "tokens[{i}] {}: claim_location has no effect without notification_url \
                 (the daemon never writes Client Config then)",
                q(&name)
            ));
        } else if notification_url.is_some() && mdm_id.is_none() && !claim_location {
            self.warn(format!(
                "tokens[{i}] {}: notification_url is set but mdm_id is not: Client Config is \
                 changed only on a location whose mdmInfo.id equals mdm_id (or, with \
                 claim_location = true, one without mdmInfo)",
                q(&name)
            ));
        }
        Ok(PublicToken {
            name,
            token_file,
            notification_auth_token_file,
            notification_url,
            max_requests_per_second,
            mdm_id,
            claim_location,
        })
    }

    /// Reads one token's `.vpptoken` and notification auth token.
    pub(super) fn token_secrets(
        &mut self,
        i: usize,
        t: PublicToken,
    ) -> Result<TokenConfig, ConfigError> {
        let PublicToken {
            name,
            token_file,
            notification_auth_token_file,
            notification_url,
            max_requests_per_second,
            mdm_id,
            claim_location,
        } = t;
        let text = self.read_secret_file(&token_file.key, &token_file)?;
        let content_token = parse_content_token(&text).map_err(|why| {
            self.err(
                &token_file.key,
                format!("{} is not a content token: {why}", token_file.shown()),
            )
        })?;
        let now = self.env.now;
        if content_token.is_expired(now) {
            self.warn(format!(
                "tokens[{i}] {}: the content token expired on {}; Apple will refuse it (9621) \
                 until a new one is downloaded from Apple Business/School Manager",
                q(&name),
                content_token.exp_date.to_datetime().format("%Y-%m-%d")
            ));
        } else if content_token.exp_date.since(now) < Duration::from_secs(15 * 86400) {
            self.warn(format!(
                "tokens[{i}] {}: the content token expires on {}",
                q(&name),
                content_token.exp_date.to_datetime().format("%Y-%m-%d")
            ));
        }
        let text = self.read_secret_file(
            &notification_auth_token_file.key,
            &notification_auth_token_file,
        )?;
        let notification_auth_token = self.auth_token(
            &notification_auth_token_file.key,
            &notification_auth_token_file,
            &text,
        )?;
        Ok(TokenConfig {
            name,
            token_file: token_file.resolved,
            content_token,
            notification_auth_token_file: notification_auth_token_file.resolved,
            notification_auth_token,
            notification_url,
            max_requests_per_second,
            mdm_id,
            claim_location,
        })
    }

    pub(super) fn notification_url(&mut self, key: &str, s: String) -> Result<String, ConfigError> {
        let url = reqwest::Url::parse(&s)
            .map_err(|e| self.err(key, format!("{} is not a URL: {e}", q(&s))))?;
        self.no_userinfo(key, &url)?;
        if url.host_str().is_none() || url.fragment().is_some() {
            return Err(self.err(key, format!("{} must be an https:// URL to a host", q(&s))));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&url) => self.warn(format!(
                "{key} {} is plain http; Apple only delivers to https:// (fine for local tests)",
                q(&s)
            )),
            _ => {
                return Err(self.err(key, format!("{} must be an https:// URL", q(&s))));
            }
        }
        if s.len() > MAX_NOTIFICATION_LENGTH {
            return Err(self.err(
                key,
                format!(
                    "{} is {} characters long; Apple accepts at most {MAX_NOTIFICATION_LENGTH}",
                    q(&s),
                    s.len()
                ),
            ));
        }
        Ok(s)
    }
}
