//! Network namespaces owned by a test: created with a unique name, deleted on drop.
//!
//! Everything the test bed builds lives in namespaces made here, never in the root namespace
//! (shared GUIDE, section 3).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::thread;

use crate::bpf_query;

/// Where `ip netns add` bind-mounts a namespace so that it outlives its creating process.
const NETNS_DIR: &str = "/var/run/netns";
/// Where the owner of each namespace is recorded; on tmpfs, like the namespaces' own bind
/// mounts, so both vanish at reboot.
pub(crate) const REGISTRY_DIR: &str = "/run/weir-testbed";

/// A random tag shared by every object of one test run (`weir-<6 hex>-...`), so that a person
/// reading `ip netns list` sees which namespaces belong together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunTag(String);

impl RunTag {
    /// Six hex digits from the kernel's random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; 3];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("reading /dev/urandom");
        let [a, b, c] = bytes;
        Self(format!("{a:02x}{b:02x}{c:02x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A network namespace that exists exactly as long as this value.
///
/// Threads that [`Netns::spawn`] started hold the namespace alive in the kernel after the
/// name is deleted: join them before this value drops (the `Topology` does).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `weir-<tag>-<role>`. Panics when the name is taken or `ip` fails.
    ///
    /// The first call of a process also deletes the namespaces of earlier test processes
    /// that were killed before their guards could drop (see [`reap_orphans`]).
    pub fn new(tag: &RunTag, role: &str) -> Self {
        static REAP: Once = Once::new();
        REAP.call_once(reap_orphans);
        let name = format!("weir-{}-{role}", tag.as_str());
        // Recorded before it exists, so that no kill can leave it unrecorded.
        registry::record(&name);
        let created = Command::new("ip")
            .args(["netns", "add", &name])
            .stdin(Stdio::null())
            .output()
            .expect("spawning ip netns add");
        if !created.status.success() {
            registry::forget(&name);
            panic!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&created.stderr).trim()
            );
        }
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names this namespace, the handle `setns` opens.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Runs `ip -n NAME ARGS...`; panics with `ip`'s message on failure.
    pub fn ip(&self, args: &[&str]) {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Runs many `ip` commands (one per line, without the leading `ip`) in one process.
    pub fn ip_batch(&self, commands: &str) {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ip -batch");
        // Written before waiting: a batch is far smaller than a pipe buffer.
        io::Write::write_all(
            &mut child.stdin.take().expect("piped stdin"),
            commands.as_bytes(),
        )
        .expect("writing ip -batch input");
        let output = child.wait_with_output().expect("waiting for ip -batch");
        assert!(
            output.status.success(),
            "ip -n {} -batch failed: {}\ninput:\n{commands}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs a short-lived program inside the namespace (`ip netns exec`) and returns its
    /// output, whatever its exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// Writes `value` to `/proc/sys/<key>` (key with slashes, e.g. `net/ipv4/ip_forward`) as
    /// seen from this namespace: `/proc/sys/net` shows the namespace of the opening thread.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name));
    }

    /// The index of interface `iface` of this namespace (what Weir names its link pins by).
    pub fn ifindex(&self, iface: &str) -> u32 {
        let name = CString::new(iface).expect("an interface name without NUL");
        // SAFETY: `name` is a valid C string for the duration of the call; if_nametoindex
        // asks the kernel through a socket of the calling thread's namespace.
        let index = self.run(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
        assert_ne!(index, 0, "no interface {iface} in {}", self.name);
        index
    }

    /// How many programs are attached to TC ingress of `iface` through TCX (where Weir's
    /// uplink program goes), counted by the kernel (`BPF_PROG_QUERY`).
    pub fn tcx_ingress_programs(&self, iface: &str) -> u32 {
        let ifindex = self.ifindex(iface);
        self.run(|| bpf_query::attached_programs(ifindex, bpf_query::TCX_INGRESS))
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_QUERY of TCX ingress of {iface} in {}: {e}",
                    self.name
                )
            })
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    /// Sockets `f` creates belong to the namespace for their whole life, and threads `f`
    /// spawns start inside it too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        thread::scope(|s| {
            s.spawn(move || {
                enter(&path).unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a long-lived thread inside this namespace. The caller must join it before
    /// the namespace drops.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: String,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                enter(&path).unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
                f()
            })
            .expect("spawning a thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Runs during unwinding too, so it reports instead of panicking (a panic here
        // would abort the test binary and hide the original failure).
        if let Err(e) = delete(&self.name) {
            eprintln!("warning: {e}");
        }
        registry::forget(&self.name);
    }
}

/// Deletes the namespaces recorded by test processes that no longer run: killed by a CI
/// timeout or ^C, they ran no Drop. Namespaces of live processes, this one's or a concurrent
/// run's, are left alone.
pub fn reap_orphans() {
    for (name, owner_alive) in registry::entries() {
        if owner_alive {
            continue;
        }
        match delete(&name) {
            Ok(()) => eprintln!("deleted {name}, left behind by a killed test run"),
            Err(e) if netns_path(&name).exists() => {
                eprintln!("warning: {e}");
                continue; // keep the record: a later run tries again
            }
            Err(_) => {} // never created, or deleted by hand
        }
        registry::forget(&name);
    }
}

fn delete(name: &str) -> Result<(), String> {
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("ip netns del {name}: {e}")),
    }
}

/// Which process made each namespace: one file per namespace under [`REGISTRY_DIR`],
/// holding the owner's pid and start time (a pid alone could have been reused). The cgroup
/// guard keeps its records the same way.
pub(crate) mod registry {
    use std::path::PathBuf;

    use super::REGISTRY_DIR as DIR;

    pub(super) fn record(name: &str) {
        std::fs::create_dir_all(DIR).unwrap_or_else(|e| panic!("creating {DIR}: {e}"));
        let me = std::process::id();
        let started = start_time(me).expect("this process has a start time");
        let path = entry(name);
        std::fs::write(&path, format!("{me} {started}\n"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    pub(super) fn forget(name: &str) {
        std::fs::remove_file(entry(name)).ok();
    }

    /// Every recorded namespace, and whether its owner still runs.
    pub(super) fn entries() -> Vec<(String, bool)> {
        let Ok(dir) = std::fs::read_dir(DIR) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                (name, is_alive(&owner))
            })
            .collect()
    }

    fn entry(name: &str) -> PathBuf {
        PathBuf::from(DIR).join(name)
    }

    /// `owner` is "pid start-time"; unreadable records count as alive, so that nothing is
    /// deleted on a guess.
    pub(crate) fn is_alive(owner: &str) -> bool {
        let mut fields = owner.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(started))) = (fields.next(), fields.next()) else {
            return true;
        };
        u32::try_from(pid).ok().and_then(start_time) == Some(started)
    }

    /// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
    pub(crate) fn start_time(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count from its end.
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(19)?.parse().ok()
    }
}

/// Path of the namespace named `name` (it may not exist).
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Moves the calling thread into the network namespace at `path`.
///
/// `setns(CLONE_NEWNET)` changes only the calling thread, which is why callers are always
/// threads made for the purpose: the test's own thread never changes namespace.
pub(crate) fn enter(path: &std::path::Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: `file` is an open namespace file for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `cmd` and panics with its stderr when it fails.
fn run_checked(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
