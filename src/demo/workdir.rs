//! The work directory: config, secret files and database, removed on drop unless kept.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

pub(super) struct WorkDir {
    pub(super) path: PathBuf,
    pub(super) remove: bool,
}

impl WorkDir {
    pub(super) fn create(keep: Option<&Path>) -> Result<WorkDir, DemoError> {
        use std::os::unix::fs::DirBuilderExt;
        match keep {
            Some(dir) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| {
                        DemoError::Usage(format!("--keep {}: cannot create it: {e}", dir.display()))
                    })?;
                let used = std::fs::read_dir(dir)
                    .map_err(|e| {
                        DemoError::Usage(format!("--keep {}: cannot read it: {e}", dir.display()))
                    })?
                    .next()
                    .is_some();
                if used {
                    // A previous run's database would be recovered into this one.
                    return Err(DemoError::Usage(format!(
                        "--keep {} is not empty; give a new or empty directory",
                        dir.display()
                    )));
                }
                let path = std::fs::canonicalize(dir)
                    .map_err(|e| DemoError::Usage(format!("--keep {}: {e}", dir.display())))?;
                Ok(WorkDir {
                    path,
                    remove: false,
                })
            }
            None => {
                let path = std::env::temp_dir().join(format!(
                    "vpp-reconciler-demo-{}",
                    uuid::Uuid::new_v4().simple()
                ));
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
                Ok(WorkDir { path, remove: true })
            }
        }
    }

    pub(super) fn write_secret(&self, name: &str, content: &str) -> Result<(), DemoError> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| failed(format!("cannot write {}: {e}", p.display())))?;
        f.write_all(content.as_bytes())
            .map_err(|e| failed(format!("cannot write {}: {e}", p.display())))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
