//! What of a `[store] url` may be shown, and whether it holds a password. The password lives
//! in `password_file` only: a URL with one (`postgres://user:pw@host/db`, `?password=pw`, or
//! `password=pw` in libpq's `key=value` form) is refused, and every URL that is printed or
//! logged (check-config, errors, the log, the CLI) goes through [`redact`] first, so that
//! even a refused one is never shown with its password.

/// `url` with any password replaced by `(not shown)`: in the userinfo
/// (`postgres://u:pw@h` → `postgres://u:(not shown)@h`), as a query parameter, or as a
/// `key=value` pair.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => redact_url(scheme, rest),
        None => redact_key_values(url),
    }
}

/// Whether `url` carries a password (see the module's documentation).
pub fn has_password(url: &str) -> bool {
    redact(url) != url
}

const HIDDEN: &str = "(not shown)";

fn redact_url(scheme: &str, rest: &str) -> String {
    // The userinfo is what comes before the last '@', if it has a ':' (a password may hold
    // '@', '/' or '?' unencoded: hide too much rather than a part of it).
    let (userinfo, tail) = match rest.rfind('@') {
        Some(at) if rest[..at].contains(':') => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            (format!("{user}:{HIDDEN}@"), &rest[at + 1..])
        }
        _ => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| {
                    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                    if is_password_key(
                        &percent_encoding::percent_decode_str(key).decode_utf8_lossy(),
                    ) {
                        format!("{key}={HIDDEN}")
                    } else {
                        pair.to_string()
                    }
                })
                .collect();
            let mut t = format!("{path}?{}", pairs.join("&"));
            if let Some(f) = fragment {
                t.push('#');
                t.push_str(f);
            }
            t
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{userinfo}{tail}")
}

fn is_password_key(key: &str) -> bool {
    key.trim().eq_ignore_ascii_case("password")
}

/// libpq's `key=value key='quoted value'` form: each password value hidden.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        // Copy whitespace, then one `key = value`.
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        let Some(eq) = rest.find('=') else {
            out.push_str(rest);
            break;
        };
        let key = &rest[..eq];
        out.push_str(key);
        out.push('=');
        rest = &rest[eq + 1..];
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        let value_len = value_length(rest);
        if is_password_key(key) {
            out.push_str(HIDDEN);
        } else {
            out.push_str(&rest[..value_len]);
        }
        rest = &rest[value_len..];
    }
    out
}

/// The length of one value at the start of `s`: quoted (`'...'`, with `\'` and `\\`) or up
/// to the next whitespace.
fn value_length(s: &str) -> usize {
    let mut chars = s.char_indices();
    if s.starts_with('\'') {
        chars.next();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\'' => return i + 1,
                _ => {}
            }
        }
        return s.len();
    }
    s.find(char::is_whitespace).unwrap_or(s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_wherever_they_are() {
        let cases = [
            (
                "postgres://vppr:hunter2@db:5432/vppr",
                "postgres://vppr:(not shown)@db:5432/vppr",
            ),
            (
                "postgres://vppr@db/vppr?sslmode=require&password=hunter2",
                "postgres://vppr@db/vppr?sslmode=require&password=(not shown)",
            ),
            (
                "postgresql://db/v?pass%77ord=hunter2#x",
                "postgresql://db/v?pass%77ord=(not shown)#x",
            ),
            // '@', '/' and '?' in the password.
            (
                "postgres://u:hun@ter/2@db/v",
                "postgres://u:(not shown)@db/v",
            ),
            ("postgres://u:pw?x@db", "postgres://u:(not shown)@db"),
            (
                "host=db password='hunter 2' user=vppr",
                "host=db password=(not shown) user=vppr",
            ),
            (
                "host=db password = hunter2",
                "host=db password = (not shown)",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
            assert!(has_password(url), "{url}");
        }
    }

    #[test]
    fn a_url_without_a_password_is_shown_as_it_is() {
        for url in [
            "postgres://vppr@db:5432/vppr",
            "postgres://vppr@db/vppr?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
            "postgres://db",
            "host=db user=vppr sslmode=require",
            "not a url",
            "",
        ] {
            assert_eq!(redact(url), url);
            assert!(!has_password(url), "{url}");
        }
    }
}
