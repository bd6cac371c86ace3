//! Secrets (content tokens, notification auth tokens, the local API token) are wrapped so that
//! `Debug` and `Display` never show them. The only way to the value is [`Secret::expose`],
//! which makes every use greppable.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send it (an HTTP header, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, for authenticating callers.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let ours = self.0.as_bytes();
        // Length leaks nothing useful: Apple's auth tokens have a fixed configured length.
        ours.len() == candidate.len() && bool::from(ours.ct_eq(candidate))
    }
}

/// The credentials of an `Authorization: Bearer …` header value; the scheme name is
/// case-insensitive (RFC 7235).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start())
}

/// Keeps secrets in memory out of core files and away from other processes of the same user:
/// the core file size limit goes to 0 (soft and hard, so a child cannot raise it again) and,
/// on Linux, the process becomes non-dumpable (no core even if a limit is raised from
/// outside, and no `ptrace` attach or `/proc/PID/mem` read by non-root processes; it also
/// makes `/proc/self`'s files owned by root, which nothing in the daemon reads). Called
/// first thing by every command (`cli::main`): all of them may read or generate a secret.
pub fn disable_core_dumps() -> std::io::Result<()> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!format!("{:#?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    /// Changes this test process for good (no core files, not dumpable), which no other test
    /// minds.
    #[test]
    fn core_dumps_are_off() {
        disable_core_dumps().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: getrlimit writes only the struct we pass; PR_GET_DUMPABLE reads nothing.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
        assert_eq!((lim.rlim_cur, lim.rlim_max), (0, 0));
        #[cfg(target_os = "linux")]
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        // Harmless to repeat (every command calls it).
        disable_core_dumps().unwrap();
    }

    #[test]
    fn constant_time_match() {
        let s = Secret::new("abc");
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"abd"));
        assert!(!s.matches(b"ab"));
    }
}
