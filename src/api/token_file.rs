//! The local API's token file (README "Security"): `daemon.api_token_file` when configured, else
//! `api-token` in the directory of `daemon.database` (the state directory on both backends),
//! which the daemon creates at its first start and reuses afterwards. The CLI reads the same
//! file, so the commands that talk to the API need no extra setup.
//!
//! Creation is crash-safe and never clobbers ([`crate::files::create_private_file`]): the
//! token is written to a temporary file (mode 0600 whatever the umask), flushed to disk, then
//! hard-linked to its name, which fails if another process created it first (its token is
//! then used). A crash leaves either no `api-token` or a complete one, never a half-written
//! file.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;

use crate::config::Config;
use crate::secret::Secret;

/// The generated file's name, beside the database.
pub const GENERATED_NAME: &str = "api-token";

/// A token file larger than this is not a token.
const MAX_TOKEN_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    #[error("the API token file {} cannot be read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token file {} does not exist yet: the daemon creates it at its first start (or set daemon.api_token_file)", .path.display())]
    Missing { path: PathBuf },
    #[error("cannot create the API token file {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `why` never contains the file's content.
    #[error("the API token file {} {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
}

/// Where the generated token lives for a database path.
pub fn generated_path(database: &Path) -> PathBuf {
    match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(GENERATED_NAME),
        _ => PathBuf::from(GENERATED_NAME),
    }
}

/// The token the CLI sends: the configured one (read with the configuration), else the
/// generated file's, which must exist.
pub fn for_client(config: &Config) -> Result<Secret, ApiTokenError> {
    if let Some(t) = &config.daemon.api_token {
        return Ok(t.clone());
    }
    let path = generated_path(&config.daemon.database);
    match read(&path) {
        Err(ApiTokenError::Read { source, path })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(ApiTokenError::Missing { path })
        }
        r => r,
    }
}

/// The token the daemon requires: the configured one, else the generated file's, created now
/// when missing. `Ok((token, Some(path)))` when this call created the file.
pub fn for_daemon(config: &Config) -> Result<(Secret, Option<PathBuf>), ApiTokenError> {
    if let Some(t) = &config.daemon.api_token {
        return Ok((t.clone(), None));
    }
    let path = generated_path(&config.daemon.database);
    load_or_create(&path)
}

/// Reads `path`, or creates it with a new random token when it does not exist.
pub fn load_or_create(path: &Path) -> Result<(Secret, Option<PathBuf>), ApiTokenError> {
    match read(path) {
        Err(ApiTokenError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        r => return r.map(|t| (t, None)),
    }
    let token = new_token();
    match create(path, &token) {
        Ok(()) => Ok((token, Some(path.to_path_buf()))),
        // Someone else (a second instance, a concurrent start) made it first: theirs counts.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path).map(|t| (t, None)),
        Err(source) => Err(ApiTokenError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// 32 random bytes from the OS, URL-safe base64 behind a recognisable prefix (secret
/// scanners can spot a leaked one).
fn new_token() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(format!(
        "vppr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The token and a newline, published at 0600 without clobbering (see [`crate::files`]).
fn create(path: &Path, token: &Secret) -> std::io::Result<()> {
    let mut content = token.expose().as_bytes().to_vec();
    content.push(b'\n');
    crate::files::create_private_file(path, &content).map_err(|e| e.source)
}

/// Reads one token: printable ASCII without spaces, trailing newline allowed, at most
/// [`MAX_TOKEN_FILE`] bytes.
pub fn read(path: &Path) -> Result<Secret, ApiTokenError> {
    let read_err = |source| ApiTokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    f.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                ApiTokenError::Invalid {
                    path: path.to_path_buf(),
                    why: "is not text".into(),
                }
            } else {
                read_err(e)
            }
        })?;
    let invalid = |why: &str| ApiTokenError::Invalid {
        path: path.to_path_buf(),
        why: why.into(),
    };
    if text.len() as u64 > MAX_TOKEN_FILE {
        return Err(invalid("is larger than 4096 bytes"));
    }
    let t = text.trim();
    if t.is_empty() {
        return Err(invalid("is empty"));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "must hold one token of printable ASCII without spaces",
        ));
    }
    Ok(Secret::new(t))
}

/// Whether group or others may read the file (a warning: the token authorises writes).
pub fn readable_by_others(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_beside_the_database() {
        assert_eq!(
            generated_path(Path::new("/var/lib/vpp-reconciler/state.db")),
            Path::new("/var/lib/vpp-reconciler/api-token")
        );
        assert_eq!(
            generated_path(Path::new("state.db")),
            Path::new("api-token")
        );
    }

    #[test]
    fn created_once_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GENERATED_NAME);
        let (first, created) = load_or_create(&path).unwrap();
        assert_eq!(created.as_deref(), Some(path.as_path()));
        assert!(first.expose().starts_with("vppr_") && first.expose().len() > 40);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = load_or_create(&path).unwrap();
        assert_eq!((again, created), (first, None));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(new_token() != new_token());
    }

    #[test]
    fn bad_files_are_refused_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        for (content, why) in [("", "is empty"), ("two words-secretish", "printable ASCII")] {
            std::fs::write(&path, content).unwrap();
            let e = read(&path).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("secretish"), "{e}");
        }
        std::fs::write(&path, "x".repeat(5000)).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("larger"));
        std::fs::write(&path, "tok\n").unwrap();
        assert_eq!(read(&path).unwrap().expose(), "tok");
        let missing = dir.path().join("nope");
        assert!(matches!(read(&missing), Err(ApiTokenError::Read { .. })));
    }
}
