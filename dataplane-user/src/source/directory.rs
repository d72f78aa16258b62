//! A directory of manifests (`*.yaml`, `*.yml`, recursive; hidden entries skipped, as
//! editors' temporary files and Kubernetes `ConfigMap` volumes' `..data` links are).

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;

use super::Source;
use crate::manifest::{self, LoadError, Loaded};

/// Follows a directory: its version is a fingerprint of every manifest's path, size and
/// modification time, so a file added, changed, removed or renamed changes it.
#[derive(Debug)]
pub struct Directory {
    path: PathBuf,
}

impl Directory {
    /// A source reading `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Source for Directory {
    fn version(&mut self) -> anyhow::Result<u64> {
        let mut files = BTreeSet::new();
        list_manifests(&self.path, &mut files)
            .with_context(|| format!("reading manifests directory {}", self.path.display()))?;
        let mut hasher = DefaultHasher::new();
        files.hash(&mut hasher);
        Ok(hasher.finish())
    }

    fn load(&mut self) -> Result<Loaded, LoadError> {
        manifest::load_dir(&self.path)
    }

    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }
}

/// The fingerprint of every manifest file: path, size, modification time.
fn list_manifests(
    dir: &Path,
    out: &mut BTreeSet<(PathBuf, u64, SystemTime)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows links, as the loader does (ConfigMap volumes are links).
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            list_manifests(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.insert((path, meta.len(), meta.modified()?));
        }
    }
    Ok(())
}
