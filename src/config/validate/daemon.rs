//! `[daemon]`: the database, the local API's address, token files and `api_hosts`, logging.

use super::*;

impl Validator<'_> {
    #[allow(clippy::type_complexity)]
    pub(super) fn daemon(
        &mut self,
        raw: RawDaemon,
    ) -> Result<(DaemonConfig, Option<SecretFile>, Option<SecretFile>), ConfigError> {
        let database = match raw.database {
            Some(s) if s.trim().is_empty() => {
                return Err(self.err("daemon.database", "\"\" must be a file path"))
            }
            Some(s) => self.dir.join(s),
            None => PathBuf::from(DEFAULT_DATABASE),
        };
        let api_listen = self.socket_addr("daemon.api_listen", raw.api_listen, "127.0.0.1:8787")?;
        let api_token_file = match raw.api_token_file {
            Some(f) => Some(self.secret_file("daemon.api_token_file", f)?),
            None => None,
        };
        let api_read_token_file = match raw.api_read_token_file {
            Some(f) => Some(self.secret_file("daemon.api_read_token_file", f)?),
            None => None,
        };
        let api_hosts = self.api_hosts(raw.api_hosts.unwrap_or_default())?;
        if !api_listen.ip().is_loopback() {
            self.warn(format!(
                "daemon.api_listen {} is not a loopback address; keep the local API on loopback \
                 (requests that name it must use a Host listed in daemon.api_hosts)",
                q(&api_listen.to_string())
            ));
        }
        let log_format = match raw.log_format {
            None => None,
            Some(s) => Some(s.parse().map_err(|()| {
                self.err(
                    "daemon.log_format",
                    format!("{} must be \"json\", \"text\" or \"journald\"", q(&s)),
                )
            })?),
        };
        let log_level = raw.log_level.unwrap_or_else(|| "info".to_string());
        validate_log_filter(&log_level).map_err(|why| {
            self.err(
                "daemon.log_level",
                format!(
                    "{} is not a log level or tracing filter: {why}",
                    q(&log_level)
                ),
            )
        })?;
        Ok((
            DaemonConfig {
                database,
                api_listen,
                api_token_file: api_token_file.as_ref().map(|f| f.resolved.clone()),
                api_token: None,
                api_read_token_file: api_read_token_file.as_ref().map(|f| f.resolved.clone()),
                api_read_token: None,
                api_hosts,
                log_format,
                log_level,
            },
            api_token_file,
            api_read_token_file,
        ))
    }

    /// `daemon.api_hosts`: host names or addresses, each with an optional port.
    pub(super) fn api_hosts(
        &self,
        raw: Vec<String>,
    ) -> Result<Vec<crate::authority::Authority>, ConfigError> {
        const MAX_API_HOSTS: usize = 64;
        if raw.len() > MAX_API_HOSTS {
            return Err(self.err(
                "daemon.api_hosts",
                format!("lists {} hosts; at most {MAX_API_HOSTS}", raw.len()),
            ));
        }
        raw.iter()
            .enumerate()
            .map(|(i, h)| {
                crate::authority::Authority::parse(h.trim()).ok_or_else(|| {
                    self.err(
                        &format!("daemon.api_hosts[{i}]"),
                        format!(
                            "{} is not a host name or IP address with an optional port \
                             (e.g. \"vppr.example.com\", \"10.0.0.5:8787\", \"[fd00::5]\")",
                            q(h)
                        ),
                    )
                })
            })
            .collect()
    }
}

/// Accepts a bare level (`info`) or an `EnvFilter` directive list (`info,vpp_reconciler=debug`).
/// A bare word that is not a level is refused: `EnvFilter` would read it as a target name and
/// silently log nothing useful.
fn validate_log_filter(s: &str) -> Result<(), String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("it is empty".to_string());
    }
    let levels = ["trace", "debug", "info", "warn", "error", "off"];
    if !t.contains(['=', ',', '[']) {
        return if levels.iter().any(|l| l.eq_ignore_ascii_case(t)) {
            Ok(())
        } else {
            Err("expected trace, debug, info, warn, error or off".to_string())
        };
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(t)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
