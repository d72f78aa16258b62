//! Cgroups (v2) owned by a test: created with a unique name under the cgroup2 root, removed
//! on drop.
//!
//! Programs attached to a cgroup apply to every process in it and in its descendants, the
//! root cgroup's to every process of the machine. Tests attach Weir's socket programs only to
//! a cgroup made here and put only their own child processes in it; nothing here touches a
//! cgroup the test bed did not create.
//!
//! As with namespaces, every cgroup is recorded with its owner before it exists, so that the
//! next test process removes those of a run killed before its guards could drop
//! ([`reap_orphan_cgroups`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use crate::bpf_query;
use crate::netns::RunTag;

/// `statfs` magic of cgroup v2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: libc::c_long = 0x6367_7270;
/// Where the owner of each cgroup is recorded (tmpfs, like the cgroups themselves).
const REGISTRY_DIR: &str = "/run/weir-testbed-cgroups";
/// Every cgroup the test bed makes starts so: anything else is never killed nor removed.
const PREFIX: &str = "weir-";
/// Processes killed with SIGKILL leave the cgroup within milliseconds; this bounds the wait.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A cgroup `weir-<tag>-<role>` directly under the cgroup2 root, that exists exactly as long
/// as this value. Dropping it kills what still runs in it (only processes a test put there),
/// then removes it, which also detaches every program attached to it.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `weir-<tag>-<role>` under the cgroup2 root. Panics when there is no cgroup2
    /// mount or the name is taken.
    ///
    /// The first call of a process also removes the cgroups of earlier test processes that
    /// were killed before their guards could drop (see [`reap_orphan_cgroups`]).
    pub fn new(tag: &RunTag, role: &str) -> Self {
        static REAP: Once = Once::new();
        REAP.call_once(reap_orphan_cgroups);
        let name = format!("{PREFIX}{}-{role}", tag.as_str());
        let path = cgroup2_root().join(&name);
        // Recorded before it exists, so that no kill can leave it unrecorded.
        registry::record(&name, &path);
        if let Err(e) = std::fs::create_dir(&path) {
            registry::forget(&name);
            panic!("creating the cgroup {}: {e}", path.display());
        }
        Self { path }
    }

    /// The cgroup's folder, which is what programs attach to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the process `command` spawns join this cgroup before it executes anything, so
    /// that no instruction of the program runs outside it.
    pub fn spawn_inside(&self, command: &mut Command) {
        let procs_path = self.path.join("cgroup.procs");
        let procs = File::options()
            .write(true)
            .open(&procs_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", procs_path.display()));
        // SAFETY: write(2) is async-signal-safe, the only kind of call allowed between fork
        // and exec; `procs` lives in the closure, hence as long as the command.
        unsafe {
            command.pre_exec(move || {
                // "0" names the writing process itself: the child, before its exec.
                let written = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if written == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }

    /// The processes in the cgroup now.
    pub fn processes(&self) -> Vec<i32> {
        processes(&self.path)
    }

    /// How many programs are attached to this cgroup itself (inherited ones not counted) at
    /// the hooks `attach_types` (`bpf_attach_type` numbers, as [`SOCKET_HOOKS`]), summed.
    pub fn attached_programs(&self, attach_types: &[u32]) -> u32 {
        let dir = File::open(&self.path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display()));
        let fd = u32::try_from(dir.as_raw_fd()).expect("an open descriptor is not negative");
        attach_types
            .iter()
            .map(|&attach_type| {
                bpf_query::attached_programs(fd, attach_type).unwrap_or_else(|e| {
                    panic!(
                        "BPF_PROG_QUERY of {} at hook {attach_type}: {e}",
                        self.path.display()
                    )
                })
            })
            .sum()
    }
}

/// The hooks of Weir's socket programs, as `bpf_attach_type` numbers of the kernel's
/// `include/uapi/linux/bpf.h`: `BPF_CGROUP_INET4_CONNECT` (10), `INET6_CONNECT` (11),
/// `UDP4_SENDMSG` (14), `UDP6_SENDMSG` (15), `UDP4_RECVMSG` (19), `UDP6_RECVMSG` (20),
/// `INET4_GETPEERNAME` (29), `INET6_GETPEERNAME` (30).
pub const SOCKET_HOOKS: [u32; 8] = [10, 11, 14, 15, 19, 20, 29, 30];

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Runs during unwinding too: report, never panic (that would abort the test binary
        // and hide the original failure).
        match remove(&self.path) {
            Ok(()) => registry::forget(&file_name(&self.path)),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
}

/// Removes the cgroups recorded by test processes that no longer run. Those of live
/// processes, this one's or a concurrent run's, are left alone.
pub fn reap_orphan_cgroups() {
    for (name, path, owner_alive) in registry::entries() {
        if owner_alive {
            continue;
        }
        if path.exists() {
            if let Err(e) = remove(&path) {
                eprintln!("warning: {e}");
                continue; // keep the record: a later run tries again
            }
            eprintln!(
                "removed {}, left behind by a killed test run",
                path.display()
            );
        }
        registry::forget(&name);
    }
}

/// Where cgroup v2 is mounted, as this process sees it: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one (this project's test machines). Read from
/// `/proc/self/mountinfo`; only a mount of the hierarchy's root counts.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    mountinfo
        .lines()
        .find_map(cgroup2_mount_point)
        .unwrap_or_else(|| {
            panic!(
                "no cgroup2 mount in /proc/self/mountinfo (a private mount namespace, as \
                 `ip netns exec` makes, has none)"
            )
        })
}

/// The mount point of a mountinfo line that mounts the root of a cgroup2 hierarchy.
///
/// Format (proc(5)): `id parent major:minor root mount-point options [optional...] - fstype
/// source super-options`.
fn cgroup2_mount_point(line: &str) -> Option<PathBuf> {
    let (mount, fs) = line.split_once(" - ")?;
    if fs.split_whitespace().next()? != "cgroup2" {
        return None;
    }
    let mut fields = mount.split_whitespace().skip(3);
    let root = fields.next()?;
    let mount_point = fields.next()?;
    // Spaces and other specials are octal-escaped; a cgroup mount point has none.
    (root == "/" && !mount_point.contains('\\')).then(|| PathBuf::from(mount_point))
}

/// Kills the processes still in the cgroup at `path`, waits until it is empty, and removes it.
///
/// Refuses any folder that is not a cgroup2 folder named `weir-...`: a corrupt record must
/// never make this kill the processes of a cgroup the test bed did not make.
fn remove(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !file_name(path).starts_with(PREFIX) || !is_cgroup2(path) {
        return Err(format!("refusing to remove {shown}: not a test cgroup"));
    }
    kill_all(path);
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while killed processes are still on their way out.
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "removing the cgroup {shown}: {e} (processes left: {:?})",
                    processes(path)
                ));
            }
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// SIGKILLs every process of the cgroup: with `cgroup.kill` (Linux 5.14) in one write that
/// also catches processes forking meanwhile, else one by one.
fn kill_all(path: &Path) {
    if processes(path).is_empty() {
        return;
    }
    if std::fs::write(path.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in processes(path) {
        // SAFETY: kill(2) has no memory preconditions; the pid is in a cgroup this test bed
        // made and filled.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn processes(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) writes into a zeroed struct we own, reading a NUL-terminated path.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &raw mut stat) == 0 && stat.f_type == CGROUP2_MAGIC
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Which process made each cgroup: one file per cgroup under [`REGISTRY_DIR`], holding the
/// owner's pid and start time (a pid alone could have been reused) and the cgroup's path.
mod registry {
    use std::path::{Path, PathBuf};

    use super::REGISTRY_DIR as DIR;

    pub(super) fn record(name: &str, path: &Path) {
        std::fs::create_dir_all(DIR).unwrap_or_else(|e| panic!("creating {DIR}: {e}"));
        let me = std::process::id();
        let started =
            crate::netns::registry::start_time(me).expect("this process has a start time");
        let entry = entry(name);
        std::fs::write(&entry, format!("{me} {started}\n{}\n", path.display()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", entry.display()));
    }

    pub(super) fn forget(name: &str) {
        std::fs::remove_file(entry(name)).ok();
    }

    /// Every recorded cgroup: its name, its path, and whether its owner still runs.
    pub(super) fn entries() -> Vec<(String, PathBuf, bool)> {
        let Ok(dir) = std::fs::read_dir(DIR) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let record = std::fs::read_to_string(e.path()).ok()?;
                let (owner, path) = record.split_once('\n')?;
                let path = PathBuf::from(path.trim_end());
                Some((name, path, crate::netns::registry::is_alive(owner)))
            })
            .collect()
    }

    fn entry(name: &str) -> PathBuf {
        PathBuf::from(DIR).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_of_a_killed_run_are_removed_by_the_next_with_their_processes() {
        crate::require_root!();
        // What a run killed by SIGKILL leaves: a cgroup with a process still in it, and a
        // record naming an owner that no longer exists (no pid reaches u32::MAX).
        let name = format!("{PREFIX}{}-orphan", RunTag::random().as_str());
        let path = cgroup2_root().join(&name);
        std::fs::create_dir(&path).expect("creating a cgroup");
        let guard = Cgroup { path: path.clone() };
        let mut sleeper = Command::new("sleep");
        sleeper.arg("60");
        guard.spawn_inside(&mut sleeper);
        let mut sleeper = sleeper.spawn().expect("starting sleep");
        std::mem::forget(guard); // the killed run ran no Drop
        std::fs::create_dir_all(REGISTRY_DIR).expect("creating the registry");
        let record = Path::new(REGISTRY_DIR).join(&name);
        let owner = format!("{} 1\n{}\n", u32::MAX, path.display());
        std::fs::write(&record, owner).expect("writing a record");

        reap_orphan_cgroups();

        let survived = path.exists();
        let exited = sleeper.try_wait().expect("polling sleep").is_some() || {
            thread::sleep(Duration::from_millis(200));
            sleeper.try_wait().expect("polling sleep").is_some()
        };
        if survived {
            sleeper.kill().ok();
            sleeper.wait().ok();
            std::fs::remove_dir(&path).ok();
        }
        assert!(!survived, "{name} outlived its dead owner");
        assert!(exited, "the process left in {name} still runs");
        assert!(!record.exists(), "the record of {name} was kept");
    }

    #[test]
    fn removal_refuses_what_the_test_bed_did_not_name() {
        crate::require_root!();
        let other = cgroup2_root().join(format!("testbed-{}-other", RunTag::random().as_str()));
        std::fs::create_dir(&other).expect("creating a cgroup");
        let refused = remove(&other);
        std::fs::remove_dir(&other).ok();
        assert!(refused.is_err(), "removed {}", other.display());
        let not_cgroup =
            std::env::temp_dir().join(format!("{PREFIX}{}", RunTag::random().as_str()));
        assert!(remove(&not_cgroup).is_err(), "{}", not_cgroup.display());
    }

    #[test]
    fn finds_only_mounts_of_a_cgroup2_root() {
        let hybrid = "35 26 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1 = "36 26 0:31 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_mount_point(v1), None);
        let nested = "90 80 0:30 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_mount_point(nested), None);
    }
}
