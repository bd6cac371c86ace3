//! Who may use the local API, decided from the request line and headers alone (README "Security"):
//! pure rules, no IO, so every refusal is unit-tested here and the middleware in [`super::auth`]
//! only applies them.
//!
//! The order gives sensible answers: a `Host` that is neither loopback nor in
//! `daemon.api_hosts` is refused first (421: a DNS-rebinding page must learn nothing, not even
//! that a token is needed), then the credentials (401), then what a browser could forge on a
//! write (a cross-site `Origin` or `Sec-Fetch-Site`: 403; the read-only token: 403), then the
//! body's type (415: only `application/json`, which a page cannot send cross-site without a
//! CORS preflight the API never answers).

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use base64::Engine;

use crate::secret::Secret;

pub use crate::authority::Authority;

/// The `Host` values the API answers: loopback names and addresses on any port, and
/// `daemon.api_hosts` (an entry without a port matches every port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    pub extra: Vec<Authority>,
}

impl AllowedHosts {
    pub fn allows(&self, a: &Authority) -> bool {
        a.is_loopback()
            || self
                .extra
                .iter()
                .any(|e| e.host == a.host && (e.port.is_none() || e.port == a.port))
    }
}

/// The API's tokens: the one that may do everything, and an optional read-only one.
#[derive(Debug, Clone)]
pub struct ApiTokens {
    pub full: Secret,
    pub read: Option<Secret>,
}

/// What a guarded route is: the status page also takes HTTP Basic (a browser prompts for
/// it), `/v1` only the bearer (a browser would replay Basic on cross-site requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    Api,
    StatusPage,
}

/// What the credentials allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Full,
    ReadOnly,
}

/// Why a request is refused; each names the offending value where it is not a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Host {0} is not a loopback name or address nor listed in daemon.api_hosts")]
    Host(String),
    #[error("the request has no Host header")]
    NoHost,
    #[error(
        "the local API needs its bearer token, Authorization: Bearer <api token> (the file \
         daemon.api_token_file, else api-token beside the database)"
    )]
    NoCredentials,
    #[error("wrong bearer token for the local API")]
    WrongCredentials,
    #[error("HTTP Basic is accepted only by the status page; send Authorization: Bearer")]
    BasicNotHere,
    #[error("a write from another origin ({0}) is refused")]
    CrossSite(String),
    #[error("the read-only API token cannot write")]
    ReadOnly,
    #[error("a write needs Content-Type: application/json, not {0}")]
    ContentType(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Host(_) | Refusal::NoHost => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NoCredentials | Refusal::WrongCredentials | Refusal::BasicNotHere => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::CrossSite(_) | Refusal::ReadOnly => StatusCode::FORBIDDEN,
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The machine code of the JSON error.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Host(_) | Refusal::NoHost => "misdirected_request",
            Refusal::NoCredentials | Refusal::WrongCredentials | Refusal::BasicNotHere => {
                "unauthorized"
            }
            Refusal::CrossSite(_) => "cross_site",
            Refusal::ReadOnly => "read_only",
            Refusal::ContentType(_) => "unsupported_media_type",
        }
    }
}

/// A header value shown in a message: quoted, escaped, cut short.
fn shown(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    let cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Safe methods (RFC 9110) change nothing; everything else is a write.
pub fn is_write(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The request's authority: the `Host` header, and an absolute-form target's authority,
/// which must agree with it when both are there.
pub fn request_authority(headers: &HeaderMap, uri: &Uri) -> Result<Authority, Refusal> {
    let from_header = match headers.get(header::HOST) {
        Some(v) => {
            let s = v.to_str().map_err(|_| Refusal::Host(shown(v.as_bytes())))?;
            Some(Authority::parse(s).ok_or_else(|| Refusal::Host(shown(s.as_bytes())))?)
        }
        None => None,
    };
    let from_uri = match uri.authority() {
        Some(a) => Some(
            Authority::parse(a.as_str())
                .ok_or_else(|| Refusal::Host(shown(a.as_str().as_bytes())))?,
        ),
        None => None,
    };
    match (from_header, from_uri) {
        (Some(h), Some(u)) if h != u => Err(Refusal::Host(shown(u.to_string().as_bytes()))),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Err(Refusal::NoHost),
    }
}

/// 421 unless the request names a host this API answers for.
pub fn check_host(
    headers: &HeaderMap,
    uri: &Uri,
    allowed: &AllowedHosts,
) -> Result<Authority, Refusal> {
    let a = request_authority(headers, uri)?;
    if allowed.allows(&a) {
        Ok(a)
    } else {
        Err(Refusal::Host(shown(a.to_string().as_bytes())))
    }
}

/// The credentials of a request to a guarded route, then (for writes) its origin and body
/// type. `host` is the authority [`check_host`] accepted.
pub fn check_request(
    method: &Method,
    headers: &HeaderMap,
    host: &Authority,
    route: Guarded,
    tokens: &ApiTokens,
) -> Result<Role, Refusal> {
    let role = credentials(headers, route, tokens)?;
    if !is_write(method) {
        return Ok(role);
    }
    same_origin(headers, host)?;
    if role == Role::ReadOnly {
        return Err(Refusal::ReadOnly);
    }
    json_body(headers)?;
    Ok(role)
}

/// Bearer everywhere; Basic (any user name, the token as password) on the status page only.
fn credentials(headers: &HeaderMap, route: Guarded, tokens: &ApiTokens) -> Result<Role, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Refusal::NoCredentials);
    };
    let value = value.to_str().map_err(|_| Refusal::WrongCredentials)?;
    let given: Vec<u8> = if let Some(b) = crate::secret::bearer(value) {
        b.as_bytes().to_vec()
    } else if let Some(b) = basic(value) {
        if route != Guarded::StatusPage {
            return Err(Refusal::BasicNotHere);
        }
        b
    } else {
        return Err(Refusal::WrongCredentials);
    };
    if tokens.full.matches(&given) {
        Ok(Role::Full)
    } else if tokens.read.as_ref().is_some_and(|r| r.matches(&given)) {
        Ok(Role::ReadOnly)
    } else {
        Err(Refusal::WrongCredentials)
    }
}

/// The password of an `Authorization: Basic …` value (RFC 7617), whatever the user name.
fn basic(value: &str) -> Option<Vec<u8>> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let rest = rest.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest))
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// A write from a browser carries `Origin` (and `Sec-Fetch-Site`): it must be the API's own
/// origin, i.e. an http(s) origin naming the very host and port the request was sent to.
/// `Origin: null` (sandboxed frames, file pages, some redirects) is cross-site. No `Origin`
/// at all is not a browser write (curl, the CLI, the MDM).
fn same_origin(headers: &HeaderMap, host: &Authority) -> Result<(), Refusal> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        if !(site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none")) {
            return Err(Refusal::CrossSite(format!(
                "Sec-Fetch-Site {}",
                shown(site)
            )));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let refuse = || Refusal::CrossSite(format!("Origin {}", shown(origin.as_bytes())));
    let text = origin.to_str().map_err(|_| refuse())?;
    let url = reqwest::Url::parse(text).map_err(|_| refuse())?;
    let default_port = match url.scheme() {
        "http" => 80,
        "https" => 443,
        _ => return Err(refuse()),
    };
    let same = url.host_str() == Some(host.host.as_str())
        && url.port_or_known_default() == Some(host.port.unwrap_or(default_port))
        && url.username().is_empty()
        && url.path() == "/"
        && url.query().is_none();
    if same {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// `Content-Type: application/json`, parameters (`; charset=utf-8`) allowed.
fn json_body(headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err(Refusal::ContentType("none".into()));
    };
    let essence = v
        .to_str()
        .ok()
        .and_then(|s| s.split(';').next())
        .map(str::trim);
    match essence {
        Some(e) if e.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(Refusal::ContentType(shown(v.as_bytes()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn a(s: &str) -> Authority {
        Authority::parse(s).unwrap_or_else(|| panic!("{s:?} parses"))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn tokens() -> ApiTokens {
        ApiTokens {
            full: Secret::new("full-token"),
            read: Some(Secret::new("read-token")),
        }
    }

    fn basic_of(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn api_hosts_match_with_or_without_port() {
        let allowed = AllowedHosts {
            extra: vec![a("vppr.internal"), a("10.0.0.5:8787")],
        };
        assert!(allowed.allows(&a("vppr.internal:1234")));
        assert!(allowed.allows(&a("VPPR.internal")));
        assert!(allowed.allows(&a("10.0.0.5:8787")));
        assert!(!allowed.allows(&a("10.0.0.5:8788")));
        assert!(!allowed.allows(&a("10.0.0.5")));
        assert!(!allowed.allows(&a("rebind.evil.example")));
    }

    #[test]
    fn host_header_is_checked_first_and_named() {
        let allowed = AllowedHosts::default();
        let uri: Uri = "/v1/tokens".parse().unwrap();
        let e = check_host(&headers(&[("host", "attacker.example")]), &uri, &allowed).unwrap_err();
        assert_eq!(e.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(e.to_string().contains("\"attacker.example\""), "{e}");
        assert_eq!(
            check_host(&HeaderMap::new(), &uri, &allowed),
            Err(Refusal::NoHost)
        );
        assert!(check_host(&headers(&[("host", "127.0.0.1:8787")]), &uri, &allowed).is_ok());
        // An absolute-form target must agree with Host.
        let abs: Uri = "http://attacker.example/v1/tokens".parse().unwrap();
        assert!(check_host(&headers(&[("host", "127.0.0.1")]), &abs, &allowed).is_err());
    }

    fn check(method: Method, pairs: &[(&str, &str)], route: Guarded) -> Result<Role, Refusal> {
        check_request(
            &method,
            &headers(pairs),
            &a("127.0.0.1:8787"),
            route,
            &tokens(),
        )
    }

    #[test]
    fn credentials_bearer_basic_and_read_only() {
        use Guarded::*;
        assert_eq!(check(Method::GET, &[], Api), Err(Refusal::NoCredentials));
        assert_eq!(
            check(Method::GET, &[("authorization", "Bearer nope")], Api),
            Err(Refusal::WrongCredentials)
        );
        assert_eq!(
            check(Method::GET, &[("authorization", "Bearer full-token")], Api),
            Ok(Role::Full)
        );
        assert_eq!(
            check(Method::GET, &[("authorization", "bearer read-token")], Api),
            Ok(Role::ReadOnly)
        );
        let basic = basic_of("anyone", "full-token");
        assert_eq!(
            check(Method::GET, &[("authorization", &basic)], Api),
            Err(Refusal::BasicNotHere)
        );
        assert_eq!(
            check(Method::GET, &[("authorization", &basic)], StatusPage),
            Ok(Role::Full)
        );
        let read = basic_of("", "read-token");
        assert_eq!(
            check(Method::GET, &[("authorization", &read)], StatusPage),
            Ok(Role::ReadOnly)
        );
        let wrong = basic_of("full-token", "x");
        assert_eq!(
            check(Method::GET, &[("authorization", &wrong)], StatusPage),
            Err(Refusal::WrongCredentials)
        );
        assert_eq!(
            check(Method::GET, &[("authorization", "Digest x")], StatusPage),
            Err(Refusal::WrongCredentials)
        );
        for r in [
            Refusal::NoCredentials,
            Refusal::WrongCredentials,
            Refusal::BasicNotHere,
        ] {
            assert!(!r.to_string().contains("full-token"));
        }
    }

    #[test]
    fn writes_need_the_same_origin_the_full_token_and_json() {
        use Guarded::Api;
        let bearer = ("authorization", "Bearer full-token");
        let json = ("content-type", "application/json");
        assert_eq!(check(Method::POST, &[bearer, json], Api), Ok(Role::Full));
        assert_eq!(
            check(
                Method::POST,
                &[bearer, ("content-type", "Application/JSON; charset=utf-8")],
                Api
            ),
            Ok(Role::Full)
        );
        assert_eq!(
            check(
                Method::POST,
                &[bearer, json, ("origin", "http://127.0.0.1:8787")],
                Api
            ),
            Ok(Role::Full)
        );
        assert_eq!(
            check(
                Method::POST,
                &[bearer, json, ("sec-fetch-site", "same-origin")],
                Api
            ),
            Ok(Role::Full)
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:8788",
            "http://127.0.0.2:8787",
            "http://localhost:8787",
            "https://127.0.0.1",
            "file://",
            "not a url",
        ] {
            let e = check(Method::POST, &[bearer, json, ("origin", origin)], Api).unwrap_err();
            assert_eq!(e.status(), StatusCode::FORBIDDEN, "{origin}");
        }
        for site in ["cross-site", "same-site"] {
            let e =
                check(Method::POST, &[bearer, json, ("sec-fetch-site", site)], Api).unwrap_err();
            assert_eq!(e.code(), "cross_site", "{site}");
        }
        // Reads may come from anywhere (the browser keeps the answer from a foreign page).
        assert_eq!(
            check(Method::GET, &[bearer, ("origin", "null")], Api),
            Ok(Role::Full)
        );
        let read = ("authorization", "Bearer read-token");
        assert_eq!(
            check(Method::POST, &[read, json], Api),
            Err(Refusal::ReadOnly)
        );
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            let e = check(Method::POST, &[bearer, ("content-type", ct)], Api).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
            assert!(e.to_string().contains(ct.split(';').next().unwrap()), "{e}");
        }
        assert_eq!(
            check(Method::PUT, &[bearer], Api),
            Err(Refusal::ContentType("none".into()))
        );
        // Credentials come before the origin and the body type.
        assert_eq!(
            check(
                Method::POST,
                &[("origin", "null"), ("content-type", "text/plain")],
                Api
            ),
            Err(Refusal::NoCredentials)
        );
    }

    #[test]
    fn a_host_port_default_matches_the_origin_scheme() {
        let t = tokens();
        let h = headers(&[
            ("authorization", "Bearer full-token"),
            ("content-type", "application/json"),
            ("origin", "https://vppr.example.com"),
        ]);
        assert!(check_request(&Method::POST, &h, &a("vppr.example.com"), Guarded::Api, &t).is_ok());
        assert!(check_request(
            &Method::POST,
            &h,
            &a("vppr.example.com:443"),
            Guarded::Api,
            &t
        )
        .is_ok());
        assert!(check_request(
            &Method::POST,
            &h,
            &a("vppr.example.com:8787"),
            Guarded::Api,
            &t
        )
        .is_err());
    }
}
