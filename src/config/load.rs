//! Reading the file and its secret files: TOML parse errors with line and key path, and secret
//! paths resolved against `$CREDENTIALS_DIRECTORY` or the config file's directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::time::Timestamp;

use super::raw::RawConfig;
use super::validate::Validator;
use super::{io_reason, ConfigError, Loaded, PublicLoaded, SecretFile};

/// Secret files are small; a cap keeps a mistaken path (a log, `/dev/zero`) from hanging load.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// What loading depends on besides the file, so tests need not touch the process environment.
#[derive(Debug, Clone)]
pub struct LoadEnv {
    pub now: Timestamp,
    /// systemd's `$CREDENTIALS_DIRECTORY`; relative secret paths resolve against it.
    pub credentials_directory: Option<PathBuf>,
}

impl LoadEnv {
    /// The real clock and the process environment.
    pub fn from_process() -> LoadEnv {
        LoadEnv {
            now: Timestamp::now(),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// Loads and validates the configuration at `path`, reading every secret file it names.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_with(path, &LoadEnv::from_process())
}

/// [`load`] with an explicit clock and credentials directory.
pub fn load_with(path: &Path, env: &LoadEnv) -> Result<Loaded, ConfigError> {
    let raw = read_raw(path)?;
    let mut v = Validator::new(path, env);
    let config = v.config(raw)?;
    Ok(Loaded {
        config,
        warnings: v.warnings,
    })
}

/// Loads and validates the configuration at `path` without opening any secret file: what the
/// read-only commands (`events`, `event`, `tokens`, `syncs`, `backup`) use, so that an operator
/// can run them with only the configuration file and read access to the database.
pub fn load_public(path: &Path) -> Result<PublicLoaded, ConfigError> {
    load_public_with(path, &LoadEnv::from_process())
}

/// [`load_public`] with an explicit clock and credentials directory.
pub fn load_public_with(path: &Path, env: &LoadEnv) -> Result<PublicLoaded, ConfigError> {
    let raw = read_raw(path)?;
    let mut v = Validator::new(path, env);
    let config = v.public(raw)?;
    Ok(PublicLoaded {
        config,
        warnings: v.warnings,
    })
}

/// [`load_public_with`] on the file's bytes instead of the file: the pure parse-and-validate
/// step (no file is opened; `path` only names the file in errors and anchors relative secret
/// paths). The fuzz targets and `tests/fuzz_lite.rs` drive the loader through this.
pub fn parse_public(path: &Path, bytes: &[u8], env: &LoadEnv) -> Result<PublicLoaded, ConfigError> {
    let raw = parse_raw(path, bytes.to_vec())?;
    let mut v = Validator::new(path, env);
    let config = v.public(raw)?;
    Ok(PublicLoaded {
        config,
        warnings: v.warnings,
    })
}

fn read_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_raw(path, bytes)
}

fn parse_raw(path: &Path, bytes: Vec<u8>) -> Result<RawConfig, ConfigError> {
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ConfigError::Parse {
            path: path.to_path_buf(),
            line: 1 + valid.iter().filter(|b| **b == b'\n').count(),
            message: "the file is not valid UTF-8".to_string(),
        }
    })?;
    toml::from_str(&text).map_err(|e| parse_error(path, &text, &e))
}

/// The directory relative paths in the config resolve against.
impl<'a> Validator<'a> {
    /// A validator for the file at `path`: relative paths resolve against its directory.
    fn new(path: &'a Path, env: &'a LoadEnv) -> Validator<'a> {
        Validator {
            path,
            dir: config_dir(path),
            env,
            warnings: Vec::new(),
        }
    }
}

fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start.min(text.len()));
    let line = 1 + text.as_bytes()[..offset]
        .iter()
        .filter(|b| **b == b'\n')
        .count();
    // toml quotes names with backticks and may wrap; one sentence with "quotes" reads better.
    let mut message = e
        .message()
        .trim()
        .replace('`', "\"")
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(key) = key_at(text, offset) {
        if !message.contains("unknown field") {
            message = format!("{key}: {message}");
        }
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Best-effort key path (`tokens[1].name`) for a position in the file, so shape errors from
/// serde (which carry only a span) name the key. `None` where the line is not `key = value`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let mut table = String::new();
    let mut token_index: Option<usize> = None;
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim();
            if name == "tokens" {
                token_index = Some(token_index.map_or(0, |i| i + 1));
                table = format!("tokens[{}]", token_index.unwrap_or(0));
            } else {
                table = name.to_string();
            }
        } else if let Some(rest) = l.strip_prefix('[') {
            table = rest.split(']').next().unwrap_or("").trim().to_string();
        }
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

impl Validator<'_> {
    /// An absolute secret path as is; a relative one against `$CREDENTIALS_DIRECTORY` when set,
    /// else against the config file's directory. Inside `$CREDENTIALS_DIRECTORY` a `/` in the
    /// relative path reads as `_`: systemd names a credential loaded from a directory
    /// (`LoadCredential=credentials:/etc/vpp-reconciler/credentials`) `credentials_FILE`, so
    /// `credentials/acme.vpptoken` names the same file on the host and under systemd.
    pub(super) fn resolve_secret(&self, configured: &str) -> PathBuf {
        let p = Path::new(configured);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match &self.env.credentials_directory {
            Some(dir) => dir.join(credential_name(configured)),
            None => self.dir.join(p),
        }
    }

    /// Reads a secret file (capped) as UTF-8. Errors name the path, never the content.
    pub(super) fn read_secret_file(
        &self,
        key: &str,
        file: &SecretFile,
    ) -> Result<String, ConfigError> {
        let shown = file.shown();
        let resolved = &file.resolved;
        let cannot =
            |e: std::io::Error| self.err(key, format!("{shown} cannot be read: {}", io_reason(&e)));
        let f = std::fs::File::open(resolved).map_err(cannot)?;
        if f.metadata().map_err(cannot)?.is_dir() {
            return Err(self.err(key, format!("{shown} is a directory, not a file")));
        }
        let mut bytes = Vec::new();
        f.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(self.err(
                key,
                format!(
                    "{shown} is larger than {MAX_SECRET_FILE_BYTES} bytes; is it the right file?"
                ),
            ));
        }
        String::from_utf8(bytes)
            .map_err(|_| self.err(key, format!("{shown} is not text (not valid UTF-8)")))
    }
}

/// The credential name systemd gives a relative secret path (`credentials/acme.vpptoken` →
/// `credentials_acme.vpptoken`; a plain file name stays as it is).
pub fn credential_name(configured: &str) -> String {
    configured
        .trim_start_matches("./")
        .trim_matches('/')
        .replace('/', "_")
}
