//! A scratch directory removed on drop (the manifests the agent reads, its log).

use std::path::{Path, PathBuf};

use crate::netns::RunTag;

/// `$TMPDIR/weir-<tag>-<purpose>`, created empty and removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(purpose: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("weir-{}-{purpose}", RunTag::random().as_str()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}
