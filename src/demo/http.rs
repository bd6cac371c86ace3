//! HTTP helpers for talking to the daemon and the simulator: every answer is checked,
//! nothing unwraps.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone)]
pub(super) struct Http {
    pub(super) c: reqwest::Client,
}

impl Http {
    /// A client for the daemon's local API: every request carries its bearer token.
    pub(super) fn for_api(token: &crate::secret::Secret) -> Result<Http, String> {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| "the API token is not a valid header value".to_string())?;
        value.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        let c = reqwest::Client::builder()
            .no_proxy()
            // The submit route may wait on the daemon's rate limiter and a Retry-After.
            .timeout(std::time::Duration::from_secs(60))
            .default_headers(headers)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Http { c })
    }

    pub(super) async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(u16, Value), String> {
        let r = rb.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await.map_err(|e| format!("{what}: {e}"))?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{what}: answer is not JSON ({e})"))?
        };
        Ok((status, v))
    }

    pub(super) async fn ok(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Value, String> {
        let (status, v) = self.send(rb, what).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(format!("{what}: HTTP {status}: {}", brief(&v)))
        }
    }

    pub(super) async fn get(&self, url: &str) -> Result<Value, String> {
        self.ok(self.c.get(url), &format!("GET {}", path_of(url)))
            .await
    }

    pub(super) async fn put(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.ok(self.c.put(url).json(body), &format!("PUT {}", path_of(url)))
            .await
    }

    pub(super) async fn post(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.ok(
            self.c.post(url).json(body),
            &format!("POST {}", path_of(url)),
        )
        .await
    }

    pub(super) async fn text(&self, url: &str) -> Result<String, String> {
        let r = self
            .c
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", path_of(url)))?;
        r.text()
            .await
            .map_err(|e| format!("GET {}: {e}", path_of(url)))
    }

    /// All items of a paged list route (`{key: [...], nextCursor?}`).
    pub(super) async fn all(&self, url: &str, key: &str) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if url.contains('?') { '&' } else { '?' };
        for _ in 0..1000 {
            let page_url = match &cursor {
                None => format!("{url}{sep}limit=1000"),
                Some(c) => format!("{url}{sep}limit=1000&cursor={c}"),
            };
            let v = self.get(&page_url).await?;
            let Some(page) = v[key].as_array() else {
                return Err(format!(
                    "GET {}: no {key:?} list in {}",
                    path_of(url),
                    brief(&v)
                ));
            };
            items.extend(page.iter().cloned());
            match v["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(items),
            }
        }
        Err(format!("GET {}: more than 1000 pages", path_of(url)))
    }
}

/// Calls to Apple by HTTP status (all tokens), from the daemon's Prometheus text.
pub(super) fn api_answers(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("vppr_api_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let status = labels
            .split(',')
            .find_map(|l| l.strip_prefix("status=\""))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_else(|| "?".into());
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry(status).or_default() += n;
    }
    out
}

pub(super) fn path_of(url: &str) -> &str {
    url.find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
        .unwrap_or(url)
}

/// A short, single-line rendering of an answer for error messages.
pub(super) fn brief(v: &Value) -> String {
    let s = match v.get("error") {
        Some(e) => e
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string()),
        None => v.to_string(),
    };
    s.chars().take(300).collect()
}

pub(super) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_sums_by_status() {
        let text = "# TYPE vppr_api_requests_total counter\n\
            vppr_api_requests_total{token=\"acme\",endpoint=\"assets\",status=\"200\"} 3\n\
            vppr_api_requests_total{token=\"beta\",endpoint=\"status\",status=\"200\"} 2\n\
            vppr_api_requests_total{token=\"beta\",endpoint=\"status\",status=\"503\"} 1\n";
        let m = api_answers(text);
        assert_eq!(m.get("200"), Some(&5));
        assert_eq!(m.get("503"), Some(&1));
    }

    #[test]
    fn path_of_strips_scheme_and_host() {
        assert_eq!(
            path_of("http://127.0.0.1:1/v1/events?x=1"),
            "/v1/events?x=1"
        );
    }
}
