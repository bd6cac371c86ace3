//! `check-config`: validate the configuration and every secret file it references, then print
//! a summary in which secrets appear only as file paths.
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path};
use std::time::Duration;

use super::{CliError, CliResult};
use crate::config::{
    self, display_duration, Config, LoadEnv, SecretFile, TokenConfig, CREDENTIALS_SUBDIR,
};
use crate::time::Timestamp;

pub fn run(config: &Path) -> CliResult {
    let loaded = config::load(config).map_err(|e| CliError::usage(e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    // The secret files loaded above; their permissions as the service will meet them.
    let env = LoadEnv::from_process();
    if env.credentials_directory.is_none() {
        let public = config::load_public(config).map_err(|e| CliError::usage(e.to_string()))?;
        for f in public.config.secret_files() {
            if let Some(w) = permission_warning(f) {
                eprintln!("warning: {w}");
            }
        }
    }
    print!("{}", summary(&loaded.config, Timestamp::now()));
    if let Some(s) = &loaded.config.store {
        println!("{}", probe_store(s)?);
    }
    Ok(())
}

/// Connects to the `[store]` database, says whether the connection is encrypted and what
/// `sslmode` checks, and compares its schema with this binary's.
fn probe_store(s: &config::StoreConfig) -> Result<String, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start a runtime: {e}")))?;
    let password = s.password.as_ref().map(|p| p.expose().to_string());
    let probe = runtime
        .block_on(crate::store::postgres::probe(
            &s.url,
            password.as_deref(),
            s.lease_ttl,
        ))
        .map_err(|e| CliError::failed(format!("store.url: {e}")))?;
    let supported = crate::store::SCHEMA_VERSION;
    let schema = match probe.schema_version {
        0 => format!(
            "store: connected; the database is empty (the daemon creates schema version \
             {supported} at start)"
        ),
        v if v < supported => format!(
            "store: connected; schema version {v}, migrated to {supported} at the daemon's start"
        ),
        v if v == supported => format!("store: connected; schema version {v} (current)"),
        v => {
            return Err(CliError::failed(format!(
                "store.url: the database has schema version {v}, newer than this binary's \
                 {supported}: it was written by a newer vpp-reconciler; run that version"
            )))
        }
    };
    let tls = match &probe.tls {
        Some(version) => format!("store: TLS ({version}); {}", probe.tls_settings),
        None => format!("store: no TLS; {}", probe.tls_settings),
    };
    Ok(format!("{schema}\n{tls}\nstore: {}", probe.limits))
}

/// Where the shipped unit's `LoadCredential=credentials:...` reads from.
const UNIT_CREDENTIALS_DIR: &str = "/etc/vpp-reconciler/credentials";

/// A secret file that others can read, or that the service (systemd's dynamic user, outside
/// `$CREDENTIALS_DIRECTORY`) could not read. Called only when `$CREDENTIALS_DIRECTORY` is not
/// set: inside it systemd owns the files.
fn permission_warning(f: &SecretFile) -> Option<String> {
    let meta = std::fs::metadata(&f.resolved).ok()?;
    let mode = meta.mode() & 0o7777;
    let shown = f.shown();
    if mode & 0o044 != 0 {
        return Some(format!(
            "{} {shown} is readable by its group or by others (mode {mode:04o}); make it \
             readable by its owner only: chmod 600 {}",
            f.key,
            f.resolved.display()
        ));
    }
    if mode & 0o004 != 0 {
        return None;
    }
    let owner = match meta.uid() {
        0 => "root".to_string(),
        uid => format!("uid {uid}"),
    };
    let configured = Path::new(&f.configured);
    let handed_over = configured.is_relative()
        && configured
            .components()
            .find(|c| !matches!(c, Component::CurDir))
            .is_some_and(|c| c.as_os_str() == CREDENTIALS_SUBDIR);
    if handed_over {
        return None;
    }
    let file_name = configured
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| f.configured.clone());
    let how = format!(
        "the shipped unit hands the service only the files in {UNIT_CREDENTIALS_DIR}/ \
         (LoadCredential=credentials:{UNIT_CREDENTIALS_DIR}): move the file there and write \
         \"{CREDENTIALS_SUBDIR}/{file_name}\" in the configuration (README.md, \"Running under \
         systemd\")"
    );
    Some(if configured.is_absolute() {
        format!(
            "{} {shown} can be read only by {owner} (mode {mode:04o}), and the service runs as \
             systemd's dynamic user, which reads an absolute path directly and so cannot read \
             it; {how}",
            f.key
        )
    } else {
        format!(
            "{} {shown} can be read only by {owner} (mode {mode:04o}), and the service runs as \
             systemd's dynamic user, which will not be able to read it unless systemd hands it \
             over with LoadCredential=; {how}",
            f.key
        )
    })
}

/// The redacted summary. Built from paths, numbers and non-secret fields only.
pub(crate) fn summary(c: &Config, now: Timestamp) -> String {
    let mut s = String::new();
    let d = display_duration;
    // Writing to a String cannot fail.
    let _ = writeln!(s, "config: {} (valid)", c.path.display());
    let _ = writeln!(s, "daemon:");
    match &c.store {
        Some(st) => {
            let _ = writeln!(
                s,
                "  store:          {} (PostgreSQL)",
                crate::store::postgres::url::redact(&st.url)
            );
            let _ = writeln!(
                s,
                "  password_file:  {}",
                st.password_file
                    .as_ref()
                    .map_or("(none)".to_string(), SecretFile::shown)
            );
            let _ = writeln!(s, "  lease_ttl:      {}", d(st.lease_ttl));
        }
        None => {
            let _ = writeln!(s, "  database:       {}", c.daemon.database.display());
        }
    }
    let _ = writeln!(s, "  api_listen:     {}", c.daemon.api_listen);
    let _ = writeln!(
        s,
        "  api_token_file: {}",
        c.daemon.api_token_file.as_ref().map_or_else(
            || {
                format!(
                    "(none) the daemon's own token, {} (created at its first start, mode 0600)",
                    crate::api::token_file::generated_path(&c.daemon.database).display()
                )
            },
            |p| p.display().to_string()
        )
    );
    if let Some(p) = &c.daemon.api_read_token_file {
        let _ = writeln!(s, "  api_read_token_file: {} (read-only)", p.display());
    }
    let _ = writeln!(
        s,
        "  api_hosts:      {}",
        if c.daemon.api_hosts.is_empty() {
            "(loopback names and addresses only)".to_string()
        } else {
            let hosts: Vec<String> = c.daemon.api_hosts.iter().map(|h| h.to_string()).collect();
            format!("{} and loopback", hosts.join(", "))
        }
    );
    let _ = writeln!(
        s,
        "  log:            {}, level {:?}",
        c.daemon.log_format.map_or_else(
            || "json (journald when stderr is the journal)".to_string(),
            |f| f.to_string()
        ),
        c.daemon.log_level
    );
    let _ = writeln!(s, "apple:");
    let _ = writeln!(s, "  base_url:       {}", c.apple.base_url);
    let _ = writeln!(s, "  request_timeout: {}", d(c.apple.request_timeout));
    let _ = writeln!(
        s,
        "  limits:         {} requests/s, {} concurrent per token",
        c.apple.max_requests_per_second, c.apple.max_concurrent_requests
    );
    let _ = writeln!(
        s,
        "  service_config_refresh: {}",
        d(c.apple.service_config_refresh)
    );
    let _ = writeln!(s, "webhook:");
    let _ = writeln!(s, "  listen:         {}", c.webhook.listen);
    let _ = writeln!(
        s,
        "  path_prefix:    {} (routes {}/{{token}})",
        c.webhook.path_prefix, c.webhook.path_prefix
    );
    let _ = writeln!(s, "  max_body_bytes: {}", c.webhook.max_body_bytes);
    let r = &c.reconcile;
    let _ = writeln!(s, "reconcile:");
    let _ = writeln!(s, "  notification_grace: {}", d(r.notification_grace));
    let _ = writeln!(
        s,
        "  poll:           {} .. {} (exponential backoff)",
        d(r.poll_min),
        d(r.poll_max)
    );
    let _ = writeln!(s, "  resubmit_after: {}", d(r.resubmit_after));
    let _ = writeln!(s, "  give_up_after:  {}", d(r.give_up_after));
    let _ = writeln!(s, "  full_sync_schedule: {:?}", r.full_sync_schedule);
    let _ = writeln!(s, "  retention:      {}", d(r.retention));
    let _ = writeln!(s, "tokens: {}", c.tokens.len());
    for t in &c.tokens {
        token_summary(&mut s, c, t, now);
    }
    s
}

fn token_summary(s: &mut String, c: &Config, t: &TokenConfig, now: Timestamp) {
    let ct = &t.content_token;
    let _ = writeln!(s, "  - name:         {}", t.name);
    let _ = writeln!(s, "    orgName:      {}", printable(&ct.org_name));
    let _ = writeln!(
        s,
        "    expires:      {} ({})",
        ct.exp_date.to_datetime().format("%Y-%m-%d %H:%M:%S UTC"),
        expiry_note(ct.exp_date, now)
    );
    let _ = writeln!(s, "    token_file:   {}", t.token_file.display());
    let _ = writeln!(
        s,
        "    notification_auth_token_file: {}",
        t.notification_auth_token_file.display()
    );
    let _ = writeln!(s, "    webhook route: {}", c.webhook.route_for(&t.name));
    if let Some(url) = &t.notification_url {
        let _ = writeln!(s, "    notification_url: {url}");
    }
    let _ = writeln!(
        s,
        "    mdm_id:       {}",
        t.mdm_id.as_deref().map_or("(none)".to_string(), printable)
    );
    if t.claim_location {
        let _ = writeln!(
            s,
            "    claim_location: yes (a location without mdmInfo is claimed)"
        );
    }
    let _ = writeln!(
        s,
        "    max_requests_per_second: {}",
        c.max_requests_per_second(t)
    );
}

fn expiry_note(exp: Timestamp, now: Timestamp) -> String {
    if exp <= now {
        return "expired".to_string();
    }
    let left = exp.since(now);
    let days = left.as_secs() / 86_400;
    match days {
        0 => format!(
            "expires in {}",
            display_duration(Duration::from_secs(left.as_secs() / 60 * 60))
        ),
        1 => "expires in 1 day".to_string(),
        n => format!("expires in {n} days"),
    }
}

/// orgName comes from a file: keep terminal control characters out of the output.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_notes() {
        let now = Timestamp(1_000_000_000_000);
        assert_eq!(expiry_note(Timestamp(now.0 - 1), now), "expired");
        assert_eq!(
            expiry_note(now.saturating_add(Duration::from_secs(3 * 86_400 + 5)), now),
            "expires in 3 days"
        );
        assert_eq!(
            expiry_note(now.saturating_add(Duration::from_secs(7200)), now),
            "expires in 2h"
        );
    }
}
