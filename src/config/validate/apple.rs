//! `[apple]`: Apple's base URL, the request timeout, rate and concurrency limits, and how often
//! Service Config is read again.

use super::values::is_loopback_host;
use super::*;

impl Validator<'_> {
    pub(super) fn apple(&mut self, raw: RawApple) -> Result<AppleConfig, ConfigError> {
        let base_url = self.base_url(
            raw.base_url
                .unwrap_or_else(|| "https://vpp.itunes.apple.com/mdm/v2/".to_string()),
        )?;
        let request_timeout = self.duration("apple.request_timeout", raw.request_timeout, "30s")?;
        self.nonzero("apple.request_timeout", request_timeout)?;
        let max_requests_per_second = self.positive_u32(
            "apple.max_requests_per_second",
            raw.max_requests_per_second.unwrap_or(15),
        )?;
        let max_concurrent_requests = self.positive_u32(
            "apple.max_concurrent_requests",
            raw.max_concurrent_requests.unwrap_or(5),
        )? as usize;
        if max_concurrent_requests > APPLE_MAX_CONCURRENT {
            self.warn(format!(
                "apple.max_concurrent_requests {max_concurrent_requests} is above Apple's limit of \
                 {APPLE_MAX_CONCURRENT} parallel requests per token"
            ));
        }
        let service_config_refresh = self.duration(
            "apple.service_config_refresh",
            raw.service_config_refresh,
            "5m",
        )?;
        self.nonzero("apple.service_config_refresh", service_config_refresh)?;
        if service_config_refresh > Duration::from_secs(300) {
            self.warn(format!(
                "apple.service_config_refresh {} is longer than the 5m Apple recommends",
                q(&display_duration(service_config_refresh))
            ));
        }
        Ok(AppleConfig {
            base_url,
            request_timeout,
            max_requests_per_second,
            max_concurrent_requests,
            service_config_refresh,
        })
    }

    pub(super) fn base_url(&mut self, s: String) -> Result<String, ConfigError> {
        const KEY: &str = "apple.base_url";
        let url = reqwest::Url::parse(s.trim())
            .map_err(|e| self.err(KEY, format!("{} is not a URL: {e}", q(&s))))?;
        self.no_userinfo(KEY, &url)?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.err(KEY, format!("{} must be an http:// or https:// URL", q(&s))));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(KEY, format!("{} must not have a query or fragment", q(&s))));
        }
        if url.scheme() == "http" && !is_loopback_host(&url) {
            self.warn(format!(
                "apple.base_url {} is plain http to a non-loopback host; content tokens would be \
                 sent unencrypted",
                q(&s)
            ));
        }
        let mut out = url.to_string();
        if !out.ends_with('/') {
            out.push('/');
        }
        Ok(out)
    }
}
