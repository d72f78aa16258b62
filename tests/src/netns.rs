//! Network namespaces owned by a test: created with a unique name, deleted on drop.
//!
//! Everything the test bed builds lives in namespaces made here, never in the root namespace
//! (shared GUIDE, section 3).

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;

/// Where `ip netns add` bind-mounts a namespace so that it outlives its creating process.
const NETNS_DIR: &str = "/var/run/netns";

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
    pub fn new(tag: &RunTag, role: &str) -> Self {
        let name = format!("weir-{}-{role}", tag.as_str());
        run_checked(Command::new("ip").args(["netns", "add", &name]));
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
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
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
