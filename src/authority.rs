//! A `host[:port]` authority, as a `Host` header or a `daemon.api_hosts` entry writes it:
//! parsing, normalising and the loopback test. A leaf, so the configuration (which parses
//! `daemon.api_hosts`) and the local API (which checks `Host` against them) share it without
//! the configuration depending on the API.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A `host[:port]` as a `Host` header or a `daemon.api_hosts` entry writes it: the host in
/// the URL standard's form (lower case, IPv6 in brackets), the port only when written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: Option<u16>,
}

/// Longest `Host` value looked at (a DNS name is at most 253 characters).
const MAX_AUTHORITY: usize = 300;

impl Authority {
    /// Parses `host[:port]`; `None` unless it is a DNS name, an IPv4 address or a bracketed
    /// IPv6 address, with an optional port from 1 to 65535. Userinfo, paths and anything but
    /// letters, digits, `.`, `-`, `:` and brackets are refused, so the URL parser below sees a
    /// bare authority.
    pub fn parse(s: &str) -> Option<Authority> {
        if s.is_empty()
            || s.len() > MAX_AUTHORITY
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return None;
        }
        let (host, port) = if s.starts_with('[') {
            let end = s.find(']')?;
            let (h, rest) = s.split_at(end + 1);
            match rest {
                "" => (h, None),
                r => (h, Some(r.strip_prefix(':')?)),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().ok().filter(|&n| n != 0)?)
            }
            Some(_) => return None,
        };
        // `localhost.` is `localhost`: the root label changes nothing in DNS.
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.contains(':') && !host.starts_with('[') {
            return None;
        }
        let url = reqwest::Url::parse(&format!("http://{host}/")).ok()?;
        let normal = url.host_str()?.to_string();
        Some(Authority { host: normal, port })
    }

    /// `localhost`, 127.0.0.0/8, `[::1]` (and `[::ffff:127.x.y.z]`).
    pub fn is_loopback(&self) -> bool {
        if self.host == "localhost" {
            return true;
        }
        if let Some(v6) = self
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
        {
            return v6.parse::<Ipv6Addr>().is_ok_and(|ip| {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            });
        }
        self.host
            .parse::<Ipv4Addr>()
            .is_ok_and(|ip| IpAddr::V4(ip).is_loopback())
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Authority {
        Authority::parse(s).unwrap_or_else(|| panic!("{s:?} parses"))
    }

    #[test]
    fn authorities_parse_and_normalise() {
        assert_eq!(
            a("LocalHost:8787"),
            Authority {
                host: "localhost".into(),
                port: Some(8787)
            }
        );
        assert_eq!(
            a("localhost."),
            Authority {
                host: "localhost".into(),
                port: None
            }
        );
        assert_eq!(a("[::1]:80").host, "[::1]");
        assert_eq!(a("[0:0:0:0:0:0:0:1]").host, "[::1]");
        assert_eq!(
            a("127.1").host,
            "127.0.0.1",
            "the URL standard's IPv4 forms"
        );
        for bad in [
            "",
            ":80",
            "a b",
            "evil@127.0.0.1",
            "127.0.0.1/x",
            "h:0",
            "h:65536",
            "h:x",
            "[::1",
            "::1",
            "[::1]x",
            "h:",
            "%31.0.0.1",
            "a_b.example",
        ] {
            assert_eq!(Authority::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:1",
            "127.0.0.1:8787",
            "127.9.9.9",
            "[::1]:8787",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(a(ok).is_loopback(), "{ok}");
        }
        for no in [
            "attacker.example",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
            "0.0.0.0",
            "127.0.0.1.nip.io",
        ] {
            assert!(!a(no).is_loopback(), "{no}");
        }
    }
}
