//! A directory of manifests (`*.yaml`, `*.yml`, recursive; hidden entries skipped, as
//! editors' temporary files and Kubernetes `ConfigMap` volumes' `..data` links are).
//!
//! Built to follow tens of thousands of files cheaply:
//! - Each file is read and validated once, and again only when it changes. A load assembles
//!   the kept per-file results ([`manifest::assemble`]: duplicates across files, namespaces
//!   nobody declares, all or nothing), which costs little next to reading.
//! - Changes are noticed with inotify, one watch per directory walked: a check reads the
//!   events that arrived and looks again at only the files they name. An event that may
//!   stand for more than one file (a directory created or removed, a `ConfigMap`'s `..data`
//!   link swapped, the kernel's event queue overflowing) makes the check walk the whole tree
//!   again, and so does a timer every [`RESCAN_INTERVAL`], a safety net for what inotify does
//!   not report (a file behind a link that leads out of the tree, remote file systems).
//! - Without inotify (the kernel refuses more watches), every check walks the tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::Source;
use crate::manifest::listing::{self, is_hidden, is_manifest};
use crate::manifest::{self, FileManifests, LoadError, Loaded, ManifestError};

/// How often the whole tree is walked even though inotify reported nothing: it bounds how
/// long a change inotify cannot see goes unnoticed. A walk of 20 000 files costs about a
/// tenth of a second, so this stays far below 1 % of a core.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// Follows a directory: its version changes whenever a manifest is added, changed, removed
/// or renamed, and its loads re-read only the files that did.
#[derive(Debug)]
pub struct Directory {
    path: PathBuf,
    /// Every manifest file as last seen, by path (in path order, the order of a load).
    files: BTreeMap<PathBuf, File>,
    /// What the last walk could not read.
    walk_errors: Vec<ManifestError>,
    /// `None` when inotify is unavailable: every check walks the tree.
    watcher: Option<Watcher>,
    /// A walk of the whole tree is due at the next check.
    rescan: bool,
    /// When the tree was last walked, `None` before the first walk.
    walked: Option<Instant>,
    /// Grows by one whenever what a load would read has changed.
    version: u64,
    /// Files read so far.
    reads: u64,
}

/// A manifest file: what identifies its contents, and what they held when last read.
#[derive(Debug)]
struct File {
    key: FileKey,
    /// `None` until read, and again once the file has changed.
    parsed: Option<FileManifests>,
}

/// What changes when a file's contents may have: the inode (a file renamed over it), size,
/// modification time, and the change time, which no one can set back (`touch -d`, `rsync
/// -t` can for the modification time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl From<&fs::Metadata> for FileKey {
    fn from(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Directory {
    /// A source reading `path` (a directory, or a single file). Falls back to walking the
    /// tree at every check when inotify cannot be used.
    pub fn new(path: PathBuf) -> Self {
        let watcher = match Watcher::new() {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, "inotify unavailable: every check walks the manifests");
                None
            }
        };
        Self::with_watcher(path, watcher)
    }

    fn with_watcher(path: PathBuf, watcher: Option<Watcher>) -> Self {
        Self {
            path,
            files: BTreeMap::new(),
            walk_errors: Vec::new(),
            watcher,
            rescan: true,
            walked: None,
            version: 0,
            reads: 0,
        }
    }

    /// How many times a file has been read so far: once per file at the first load, then
    /// once per change.
    pub fn files_read(&self) -> u64 {
        self.reads
    }

    /// Brings the view of the files up to date: the files inotify named, or the whole tree.
    fn refresh(&mut self) {
        let named = self.read_events();
        let due = self
            .walked
            .is_none_or(|walked| walked.elapsed() >= RESCAN_INTERVAL);
        if self.rescan || due || self.watcher.is_none() {
            self.walk();
        }
        // After a walk too: a file written twice within one tick of the kernel's clock keeps
        // its key, and only its events tell.
        for path in named {
            self.restat(path);
        }
    }

    /// Walks the whole tree: every file's key compared with the one seen before, watches
    /// placed on every directory.
    fn walk(&mut self) {
        let found = listing::list(&self.path);
        self.rescan = false;
        if let Some(watcher) = &mut self.watcher {
            match watcher.watch(&found.dirs) {
                // A directory that was not watched during this walk may have changed unseen
                // between being read and being watched: walk once more, under watch.
                Ok(walk_again) => self.rescan = walk_again,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "inotify watches refused: every check walks the manifests"
                    );
                    self.watcher = None;
                }
            }
        }
        // Nothing watched (a single file, a directory that does not exist yet): look again
        // at every check.
        self.rescan |= found.dirs.is_empty();
        let mut changed = found.errors != self.walk_errors;
        let mut files = BTreeMap::new();
        for (path, meta) in found.files {
            let key = FileKey::from(&meta);
            let file = match self.files.remove(&path) {
                Some(file) if file.key == key => file,
                _ => {
                    changed = true;
                    File { key, parsed: None }
                }
            };
            files.insert(path, file);
        }
        // Left over: files that are gone.
        changed |= !self.files.is_empty();
        self.files = files;
        self.walk_errors = found.errors;
        self.walked = Some(Instant::now());
        if changed {
            self.version += 1;
        }
    }

    /// Looks again at one path inotify named.
    fn restat(&mut self, path: PathBuf) {
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                // Changed even if its key did not: two writes within one tick of the kernel's
                // clock leave the same size and times.
                let key = FileKey::from(&meta);
                self.files.insert(path, File { key, parsed: None });
                self.version += 1;
            }
            Ok(meta) if meta.is_dir() => self.rescan = true,
            // A pipe or a socket named like a manifest: not one.
            Ok(_) => self.forget(&path),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(&path).is_ok() {
                    // A link leading nowhere: the walk reports it.
                    self.rescan = true;
                } else {
                    self.forget(&path);
                }
            }
            Err(_) => self.rescan = true,
        }
    }

    fn forget(&mut self, path: &Path) {
        if self.files.remove(path).is_some() {
            self.version += 1;
        }
    }

    /// Reads the events that arrived; returns the manifest files they name, and sets
    /// [`Directory::rescan`] if some need a walk.
    fn read_events(&mut self) -> HashSet<PathBuf> {
        let mut named = HashSet::new();
        let Some(watcher) = &mut self.watcher else {
            return named;
        };
        let mut seen = Vec::new();
        if let Err(error) = watcher.read(&mut seen) {
            tracing::warn!(%error, "reading inotify events; walking the manifests");
            self.rescan = true;
        }
        for what in seen {
            match what {
                Seen::Manifest(path) => {
                    named.insert(path);
                }
                // No manifest by its name, but a directory or a link to one (a `ConfigMap`'s
                // `..data`), now or before, holds files.
                Seen::Other(path) => {
                    self.rescan |= watcher.is_watching(&path)
                        || fs::metadata(&path).is_ok_and(|meta| meta.is_dir());
                }
                Seen::Tree => self.rescan = true,
            }
        }
        named
    }
}

impl Source for Directory {
    fn version(&mut self) -> anyhow::Result<u64> {
        self.refresh();
        Ok(self.version)
    }

    fn load(&mut self) -> Result<Loaded, LoadError> {
        if self.walked.is_none() {
            self.walk();
        }
        let unread: Vec<(&PathBuf, &mut File)> = self
            .files
            .iter_mut()
            .filter(|(_, file)| file.parsed.is_none())
            .collect();
        let read = unread.len();
        let paths: Vec<&Path> = unread.iter().map(|(path, _)| path.as_path()).collect();
        for ((_, file), parsed) in unread.into_iter().zip(read_files(&paths)) {
            file.parsed = Some(parsed);
        }
        self.reads += read as u64;
        tracing::debug!(read, files = self.files.len(), "manifest files read");
        let parsed = self.files.values().filter_map(|file| file.parsed.as_ref());
        manifest::assemble(self.walk_errors.clone(), parsed)
    }

    fn describe(&self) -> String {
        let how = if self.watcher.is_some() {
            "inotify"
        } else {
            "walked at every check"
        };
        format!("directory {} ({how})", self.path.display())
    }
}

/// Below this many files to read, one thread reads them all.
const PARALLEL_READS_FROM: usize = 256;
/// Threads that read files at most: reading is parsing, bound by the CPU.
const MAX_READERS: usize = 4;

/// Reads and validates `paths`, in order: a first load of thousands of files on a thread per
/// core (up to [`MAX_READERS`]), a change's few on this one.
fn read_files(paths: &[&Path]) -> Vec<FileManifests> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let readers = cores.min(MAX_READERS);
    if readers < 2 || paths.len() < PARALLEL_READS_FROM {
        return paths.iter().map(|path| manifest::read_file(path)).collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = paths
            .chunks(paths.len().div_ceil(readers))
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|path| manifest::read_file(path))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|part| {
                part.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// What one inotify event means for the files.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A file named like a manifest was created, written, renamed or removed.
    Manifest(PathBuf),
    /// Another entry changed: it matters only if it is (or was) a directory.
    Other(PathBuf),
    /// Several files may have changed: the tree must be walked.
    Tree,
}

/// An inotify instance with one watch per directory walked.
#[derive(Debug)]
struct Watcher {
    inotify: Inotify,
    /// The directory of each watch, as the walk reached it (through links too).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    buffer: Vec<u8>,
}

/// What a directory watch reports: entries created, written, renamed, removed or changed
/// in their attributes (a file made unreadable); the directory itself removed or moved.
/// `ONLYDIR`: a path that is no longer a directory is refused rather than watched as a file.
fn watch_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// Room for a few hundred events per read.
const EVENT_BUFFER: usize = 64 * 1024;

impl Watcher {
    fn new() -> io::Result<Self> {
        Ok(Self {
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
            buffer: vec![0; EVENT_BUFFER],
        })
    }

    /// Watches exactly `dirs`; returns whether the tree must be walked again: a directory
    /// was not watched before, or is gone since the walk read it.
    ///
    /// # Errors
    ///
    /// The kernel refusing a watch for another reason than the directory being gone (the
    /// limit of watches reached).
    fn watch(&mut self, dirs: &[PathBuf]) -> io::Result<bool> {
        let mut watched = HashMap::with_capacity(dirs.len());
        let mut walk_again = false;
        for dir in dirs {
            match self.inotify.watches().add(dir, watch_mask()) {
                Ok(wd) => {
                    walk_again |= self.dirs.get(&wd) != Some(dir);
                    watched.insert(wd, dir.clone());
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    walk_again = true;
                }
                Err(error) => return Err(error),
            }
        }
        for (wd, _) in self.dirs.drain() {
            if !watched.contains_key(&wd) {
                // Fails for a directory already gone, whose watch the kernel removed.
                let _ = self.inotify.watches().remove(wd);
            }
        }
        self.dirs = watched;
        Ok(walk_again)
    }

    /// Whether `dir` is a directory watched, by the path the walk reached it by.
    fn is_watching(&self, dir: &Path) -> bool {
        self.dirs.values().any(|watched| watched == dir)
    }

    /// Appends what every event waiting means to `seen`, without blocking.
    fn read(&mut self, seen: &mut Vec<Seen>) -> io::Result<()> {
        loop {
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            };
            for event in events {
                let dir = self.dirs.get(&event.wd).map(PathBuf::as_path);
                seen.extend(classify(dir, event.mask, event.name));
            }
        }
    }
}

/// What an event on the watched directory `dir` (`None`: a watch no longer ours) means.
fn classify(dir: Option<&Path>, mask: EventMask, name: Option<&OsStr>) -> Option<Seen> {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Some(Seen::Tree);
    }
    let dir = dir?;
    let tree_changed =
        EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT;
    if mask.intersects(tree_changed) {
        return Some(Seen::Tree);
    }
    // An event on the directory itself: its permissions, say.
    let Some(name) = name else {
        return Some(Seen::Tree);
    };
    let path = dir.join(name);
    if is_hidden(&path) && mask.contains(EventMask::ISDIR) {
        // The walk skips hidden directories (a `ConfigMap`'s `..2024_01_01...`); what
        // matters there is the swap of the `..data` link, which is no directory itself.
        return None;
    }
    if mask.contains(EventMask::ISDIR) {
        return Some(Seen::Tree);
    }
    if !is_hidden(&path) && is_manifest(&path) {
        return Some(Seen::Manifest(path));
    }
    Some(Seen::Other(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A directory under the system's temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("weir-directory-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.0.join(relative)
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.path(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        /// Writes a dot-file next to `relative` and renames it over, as editors and
        /// `kubectl cp` do.
        fn replace(&self, relative: &str, text: &str) {
            let path = self.path(relative);
            let staging = path.with_file_name(format!(".{}.tmp", relative.replace('/', "_")));
            fs::write(&staging, text).unwrap();
            fs::rename(staging, path).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn namespace(name: &str, team: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\n"
        )
    }

    fn pod(name: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n")
    }

    /// The namespaces a load finds, with their `team` label.
    fn teams(source: &mut Directory) -> Vec<(String, String)> {
        let loaded = source.load().unwrap_or_else(|error| panic!("{error}"));
        loaded
            .state
            .namespaces
            .values()
            .map(|ns| (ns.name.clone(), ns.labels["team"].clone()))
            .collect()
    }

    fn pair(name: &str, team: &str) -> (String, String) {
        (name.to_owned(), team.to_owned())
    }

    /// Both ways of noticing changes: inotify, and walking at every check.
    fn sources(dir: &TempDir) -> [Directory; 2] {
        [
            Directory::new(dir.0.clone()),
            Directory::with_watcher(dir.0.clone(), None),
        ]
    }

    #[test]
    fn the_version_holds_still_until_a_file_changes() {
        let dir = TempDir::new("still");
        dir.write("a.yaml", &namespace("a", "x"));
        for mut source in sources(&dir) {
            let first = source.version().unwrap();
            source.load().unwrap();
            for _ in 0..3 {
                assert_eq!(source.version().unwrap(), first, "{}", source.describe());
            }
            dir.replace("a.yaml", &namespace("a", "yy"));
            assert_ne!(source.version().unwrap(), first, "{}", source.describe());
        }
    }

    #[test]
    fn a_change_rereads_only_the_changed_file() {
        let dir = TempDir::new("reread");
        for name in ["a", "b", "c"] {
            dir.write(&format!("{name}.yaml"), &namespace(name, "x"));
        }
        for mut source in sources(&dir) {
            source.version().unwrap();
            assert_eq!(teams(&mut source).len(), 3);
            assert_eq!(source.files_read(), 3);

            dir.replace("b.yaml", &namespace("b", "changed"));
            source.version().unwrap();
            let expected = [pair("a", "x"), pair("b", "changed"), pair("c", "x")];
            assert_eq!(teams(&mut source), expected, "{}", source.describe());
            assert_eq!(source.files_read(), 4, "{}", source.describe());
            dir.replace("b.yaml", &namespace("b", "x"));
            source.version().unwrap();
            teams(&mut source);
        }
    }

    #[test]
    fn a_file_written_in_place_is_reread() {
        let dir = TempDir::new("in-place");
        dir.write("a.yaml", &namespace("a", "x"));
        let mut source = Directory::new(dir.0.clone());
        let before = source.version().unwrap();
        teams(&mut source);
        // Same size, likely the same tick of the kernel's clock: only the events tell.
        dir.write("a.yaml", &namespace("a", "z"));
        assert_ne!(source.version().unwrap(), before);
        assert_eq!(teams(&mut source), [pair("a", "z")]);
    }

    #[test]
    fn files_added_and_removed_come_and_go() {
        let dir = TempDir::new("add-remove");
        dir.write("a.yaml", &namespace("a", "x"));
        for mut source in sources(&dir) {
            source.version().unwrap();
            assert_eq!(teams(&mut source), [pair("a", "x")]);
            dir.write("sub/deeper/b.yml", &namespace("b", "x"));
            dir.write("notes.txt", "not a manifest");
            source.version().unwrap();
            assert_eq!(teams(&mut source), [pair("a", "x"), pair("b", "x")]);
            // A file in a directory created after the walk that found the directory.
            dir.write("sub/deeper/c.yaml", &namespace("c", "x"));
            source.version().unwrap();
            assert_eq!(teams(&mut source).len(), 3, "{}", source.describe());

            fs::remove_file(dir.path("a.yaml")).unwrap();
            fs::remove_dir_all(dir.path("sub")).unwrap();
            fs::remove_file(dir.path("notes.txt")).unwrap();
            source.version().unwrap();
            assert_eq!(teams(&mut source), [], "{}", source.describe());
            dir.write("a.yaml", &namespace("a", "x"));
        }
    }

    #[test]
    fn hidden_files_are_not_manifests() {
        let dir = TempDir::new("hidden");
        dir.write("a.yaml", &namespace("a", "x"));
        let mut source = Directory::new(dir.0.clone());
        let before = source.version().unwrap();
        teams(&mut source);
        dir.write(".a.yaml.swp", "not: [valid");
        dir.write(".git/b.yaml", "not: [valid");
        assert_eq!(source.version().unwrap(), before);
        assert_eq!(teams(&mut source), [pair("a", "x")]);
    }

    /// What the kubelet does to a `ConfigMap` volume: files are links through `..data`, a
    /// link to a hidden directory of the current contents, swapped by a rename.
    #[test]
    fn a_config_map_update_is_seen() {
        let dir = TempDir::new("configmap");
        dir.write("..2024_01/a.yaml", &namespace("a", "old"));
        symlink("..2024_01", dir.path("..data")).unwrap();
        symlink("..data/a.yaml", dir.path("a.yaml")).unwrap();
        for mut source in sources(&dir) {
            source.version().unwrap();
            assert_eq!(teams(&mut source), [pair("a", "old")]);

            dir.write("..2024_02/a.yaml", &namespace("a", "new"));
            symlink("..2024_02", dir.path("..data_tmp")).unwrap();
            fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
            fs::remove_dir_all(dir.path("..2024_01")).unwrap();
            source.version().unwrap();
            assert_eq!(
                teams(&mut source),
                [pair("a", "new")],
                "{}",
                source.describe()
            );

            // Back, for the next source.
            dir.write("..2024_01/a.yaml", &namespace("a", "old"));
            symlink("..2024_01", dir.path("..data_tmp")).unwrap();
            fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
            fs::remove_dir_all(dir.path("..2024_02")).unwrap();
        }
    }

    #[test]
    fn a_bad_change_refuses_the_whole_directory_until_fixed() {
        let dir = TempDir::new("refused");
        dir.write("a.yaml", &pod("web"));
        dir.write("b.yaml", &namespace("b", "x"));
        let mut source = Directory::new(dir.0.clone());
        source.version().unwrap();
        assert_eq!(source.load().unwrap().state.pods.len(), 1);

        // A duplicate of an object of a file that did not change, and a bad file.
        dir.replace("b.yaml", &pod("web"));
        dir.write(
            "c.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\n",
        );
        source.version().unwrap();
        let errors: Vec<String> = source
            .load()
            .unwrap_err()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        let a = dir.path("a.yaml").display().to_string();
        let b = dir.path("b.yaml").display().to_string();
        let c = dir.path("c.yaml").display().to_string();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0],
            format!("{b}:3:18: metadata.name: duplicate Pod shop/web, first defined at {a}:1")
        );
        assert!(errors[1].starts_with(&format!("{c}:3:")), "{errors:?}");

        dir.replace("b.yaml", &pod("api"));
        fs::remove_file(dir.path("c.yaml")).unwrap();
        source.version().unwrap();
        let loaded = source.load().unwrap_or_else(|error| panic!("{error}"));
        let names: Vec<&str> = loaded.state.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
    }

    #[test]
    fn a_first_load_of_many_files_keeps_path_order() {
        let dir = TempDir::new("many");
        for i in 0..2 * PARALLEL_READS_FROM {
            dir.write(
                &format!("n{i:04}.yaml"),
                &namespace(&format!("n{i:04}"), "x"),
            );
        }
        dir.write("z.yaml", &namespace("n0000", "again"));
        let mut source = Directory::new(dir.0.clone());
        source.version().unwrap();
        let errors = source.load().unwrap_err().errors;
        assert_eq!(source.files_read(), 2 * PARALLEL_READS_FROM as u64 + 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, dir.path("z.yaml"));
        let first = format!("first defined at {}:1", dir.path("n0000.yaml").display());
        assert!(errors[0].message.ends_with(&first), "{}", errors[0]);

        fs::remove_file(dir.path("z.yaml")).unwrap();
        source.version().unwrap();
        let loaded = source.load().unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(loaded.files, 2 * PARALLEL_READS_FROM);
        assert_eq!(source.files_read(), 2 * PARALLEL_READS_FROM as u64 + 1);
    }

    #[test]
    fn a_missing_directory_is_an_error_until_it_appears() {
        let dir = TempDir::new("appears");
        let path = dir.path("later");
        let mut source = Directory::new(path.clone());
        let before = source.version().unwrap();
        let error = source.load().unwrap_err();
        assert!(
            error.to_string().starts_with(&path.display().to_string()),
            "{error}"
        );

        dir.write("later/a.yaml", &namespace("a", "x"));
        assert_ne!(source.version().unwrap(), before);
        assert_eq!(teams(&mut source), [pair("a", "x")]);
        // Watched from then on.
        dir.write("later/b.yaml", &namespace("b", "x"));
        source.version().unwrap();
        assert_eq!(teams(&mut source).len(), 2);
    }

    #[test]
    fn events_name_files_or_ask_for_a_walk() {
        let dir = Path::new("/m");
        let file = |name: &str| Some(OsStr::new(name).to_owned());
        let cases = [
            (
                EventMask::MODIFY,
                file("a.yaml"),
                Some(Seen::Manifest(dir.join("a.yaml"))),
            ),
            (
                EventMask::MOVED_TO,
                file("b.yml"),
                Some(Seen::Manifest(dir.join("b.yml"))),
            ),
            (
                EventMask::CREATE,
                file(".a.yaml.tmp"),
                Some(Seen::Other(dir.join(".a.yaml.tmp"))),
            ),
            (
                EventMask::MOVED_TO,
                file("..data"),
                Some(Seen::Other(dir.join("..data"))),
            ),
            (
                EventMask::CREATE,
                file("notes.txt"),
                Some(Seen::Other(dir.join("notes.txt"))),
            ),
            (
                EventMask::CREATE | EventMask::ISDIR,
                file("sub"),
                Some(Seen::Tree),
            ),
            (
                EventMask::CREATE | EventMask::ISDIR,
                file("..2024_01"),
                None,
            ),
            (EventMask::DELETE_SELF, None, Some(Seen::Tree)),
            (EventMask::IGNORED, None, Some(Seen::Tree)),
            (EventMask::ATTRIB | EventMask::ISDIR, None, Some(Seen::Tree)),
        ];
        for (mask, name, expected) in cases {
            let seen = classify(Some(dir), mask, name.as_deref());
            assert_eq!(seen, expected, "{mask:?} {name:?}");
        }
        assert_eq!(
            classify(None, EventMask::MODIFY, file("a.yaml").as_deref()),
            None
        );
        assert_eq!(
            classify(None, EventMask::Q_OVERFLOW, None),
            Some(Seen::Tree)
        );
    }
}
