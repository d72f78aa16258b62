//! Which files are manifests: `*.yaml` and `*.yml` under a directory, recursively, with the
//! metadata of each, so that a caller following the directory can tell what changed.
//!
//! Hidden files and directories (editors' temporary files, the `..data` of a mounted
//! `ConfigMap`) are skipped; symbolic links are followed, since `ConfigMap` volumes are links.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{ManifestError, file_error};

/// What a walk of a manifests directory found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every manifest file, in path order, with its metadata (links followed).
    pub files: Vec<(PathBuf, fs::Metadata)>,
    /// Every directory walked, as reached (through links too), each directory once.
    pub dirs: Vec<PathBuf>,
    /// What could not be read: directories, and links named like manifests that lead
    /// nowhere. Each is an error of the load, since a file it hides could hold a policy.
    pub errors: Vec<ManifestError>,
}

/// Walks `root`, which may also be a single file.
pub fn list(root: &Path) -> Listing {
    let mut listing = Listing::default();
    match fs::metadata(root) {
        Ok(meta) if meta.is_file() => listing.files.push((root.to_owned(), meta)),
        _ => walk(root, &mut HashSet::new(), &mut listing),
    }
    listing.files.sort_by(|(a, _), (b, _)| a.cmp(b));
    listing
}

/// Whether a file name is one a walk skips: hidden (`.name`).
pub fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

/// Whether a file name is a manifest's: `*.yaml` or `*.yml`.
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml")
}

/// Collects manifest files under `dir`. `visited` holds canonical directories already walked,
/// so that a symbolic link to a parent cannot loop.
fn walk(dir: &Path, visited: &mut HashSet<PathBuf>, listing: &mut Listing) {
    match fs::canonicalize(dir) {
        Ok(canonical) => {
            if !visited.insert(canonical) {
                return;
            }
        }
        Err(error) => return listing.errors.push(file_error(dir, &error)),
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => return listing.errors.push(file_error(dir, &error)),
    };
    listing.dirs.push(dir.to_owned());
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(error) => return listing.errors.push(file_error(dir, &error)),
        };
        if is_hidden(&path) {
            continue;
        }
        // `fs::metadata` follows links: ConfigMap volumes are links to files.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, visited, listing),
            Ok(meta) => {
                if meta.is_file() && is_manifest(&path) {
                    listing.files.push((path, meta));
                }
            }
            // A dangling link named like a manifest is worth a word; other names are not ours.
            Err(error) => {
                if is_manifest(&path) {
                    listing.errors.push(file_error(&path, &error));
                }
            }
        }
    }
}
