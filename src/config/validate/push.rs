//! `[push]`: the MDM's URL (https unless loopback), the Standard Webhooks secret file, batch
//! size, timeout and `dead_after`.

use super::values::is_loopback_host;
use super::*;

impl Validator<'_> {
    pub(super) fn push(&mut self, raw: RawPush) -> Result<PushConfig, ConfigError> {
        let url = raw
            .url
            .ok_or_else(|| self.err("push.url", "is missing; [push] needs the MDM's URL"))?;
        let parsed = reqwest::Url::parse(url.trim())
            .map_err(|_| self.err("push.url", format!("{} is not a URL", q(&url))))?;
        self.no_userinfo("push.url", &parsed)?;
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback_host(&parsed) => {}
            "http" => self.warn(format!(
                "push.url {} is plain http: changes and their signatures travel unencrypted",
                q(&url)
            )),
            other => {
                return Err(self.err(
                    "push.url",
                    format!("{} has the scheme {}; use https", q(&url), q(other)),
                ))
            }
        }
        let file = raw.secret_file.ok_or_else(|| {
            self.err(
                "push.secret_file",
                "is missing; [push] needs a Standard Webhooks secret (\"whsec_\" + base64)",
            )
        })?;
        let file = self.secret_file("push.secret_file", file)?;
        let text = self.read_secret_file("push.secret_file", &file)?;
        let shown = file.shown();
        let secret_file = file.resolved;
        if let Err(e) = crate::push::SigningKey::parse(&text) {
            return Err(self.err("push.secret_file", format!("{shown}: {e}")));
        }
        let max_batch = self.positive_u32("push.max_batch", raw.max_batch.unwrap_or(100))?;
        if max_batch > 10_000 {
            return Err(self.err(
                "push.max_batch",
                format!("{max_batch} is more than 10000 changes per request"),
            ));
        }
        let timeout = self.duration("push.timeout", raw.timeout, "10s")?;
        self.nonzero("push.timeout", timeout)?;
        let dead_after = self.duration("push.dead_after", raw.dead_after, "3d")?;
        self.nonzero("push.dead_after", dead_after)?;
        Ok(PushConfig {
            url: parsed.to_string(),
            secret_file,
            secret: Secret::new(text.trim()),
            max_batch,
            timeout,
            dead_after,
        })
    }
}
