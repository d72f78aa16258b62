//! Every path Weir pins under bpffs, in one place.
//!
//! ```text
//! <root>/                       default /sys/fs/bpf/weir
//!   maps/WEIR_EP_V2 ...         the maps that outlive the agent (state, conntrack, Services,
//!                               counters)
//!   links/<ifindex>-from_pod    TCX links of each local pod's interface
//!   links/<ifindex>-to_pod
//!   links/<ifindex>-from_world  TCX link of each uplink (Services from outside the node)
//!   sockets/<program>           cgroup links of the socket programs (Services for the
//!                               node's own processes)
//! ```
//!
//! Pinned maps and links keep enforcing while no agent runs; the next agent adopts them and
//! replaces the program inside each link atomically. Map names carry a layout version, so a
//! new layout gets new pins instead of misreading old ones.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use dataplane_abi::names;

/// The default pin root.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/weir";

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// The maps pinned so that state, connections, Service balancing (tables, backends, client
/// affinity) and counters survive the agent.
pub const PINNED_MAPS: [&str; 19] = [
    names::ENDPOINTS,
    names::CIDRS,
    names::POLICY,
    names::CONNTRACK,
    names::FRAGMENTS,
    names::CONFIG,
    names::PASS_COUNTERS,
    names::DROP_COUNTERS,
    names::SERVICES,
    names::BACKENDS,
    names::MAGLEV_SMALL,
    names::MAGLEV_MEDIUM,
    names::MAGLEV_LARGE,
    names::AFFINITY,
    names::SOURCE_RANGES,
    names::SOCK_NAT,
    names::SOCK_CONFIG,
    names::NODEPORT_NAT,
    names::UPLINK_CONFIG,
];

/// Which program a pinned link holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// `weir_from_pod`, on TC ingress of the pod's host-side veth.
    FromPod,
    /// `weir_to_pod`, on TC egress of the pod's host-side veth.
    ToPod,
    /// `weir_from_world`, on TC ingress of an uplink.
    FromWorld,
}

impl Hook {
    fn suffix(self) -> &'static str {
        match self {
            Self::FromPod => "from_pod",
            Self::ToPod => "to_pod",
            Self::FromWorld => "from_world",
        }
    }
}

/// The pin layout under one root folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// Pins under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Where the link of `hook` on interface `ifindex` is pinned.
    pub fn link(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.links_dir()
            .join(format!("{ifindex}-{}", hook.suffix()))
    }

    fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Where the cgroup link of socket program `name` is pinned.
    pub fn socket_link(&self, name: &str) -> PathBuf {
        self.root.join("sockets").join(name)
    }

    /// Creates the folders, mounting bpffs on the root's bpffs folder first when the host
    /// has not (as Cilium does: a node may boot without it).
    pub fn prepare(&self) -> io::Result<()> {
        ensure_bpffs(&self.root)?;
        std::fs::create_dir_all(self.root.join("maps"))?;
        std::fs::create_dir_all(self.root.join("sockets"))?;
        self.remove_retired()?;
        std::fs::create_dir_all(self.links_dir())
    }

    /// Removes the pins of maps in layouts no program reads any more (an upgrade changed
    /// them): nothing else would ever free them.
    fn remove_retired(&self) -> io::Result<()> {
        for name in names::RETIRED {
            match std::fs::remove_file(self.map(name)) {
                Ok(()) => tracing::info!(map = name, "removed the pin of a retired map layout"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The pinned links, as `(ifindex, hook, path)`.
    pub fn pinned_links(&self) -> io::Result<Vec<(u32, Hook, PathBuf)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(self.links_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some((ifindex, suffix)) = name.to_str().and_then(|n| n.split_once('-')) else {
                continue;
            };
            let hook = match suffix {
                "from_pod" => Hook::FromPod,
                "to_pod" => Hook::ToPod,
                "from_world" => Hook::FromWorld,
                _ => continue,
            };
            if let Ok(ifindex) = ifindex.parse() {
                out.push((ifindex, hook, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes every pin: links first (their interfaces stop being filtered), then maps.
    /// What still holds an object (a running agent) keeps it alive until it lets go.
    pub fn remove_all(&self) -> io::Result<usize> {
        let mut removed = 0;
        for (_, _, path) in self.pinned_links()? {
            std::fs::remove_file(path)?;
            removed += 1;
        }
        for name in dataplane_abi::programs::SOCKETS {
            match std::fs::remove_file(self.socket_link(name)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for name in PINNED_MAPS {
            match std::fs::remove_file(self.map(name)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for dir in [
            self.links_dir(),
            self.root.join("sockets"),
            self.root.join("maps"),
            self.root.clone(),
        ] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

/// Mounts bpffs on the parent of `root` when that folder is not on bpffs yet.
fn ensure_bpffs(root: &Path) -> io::Result<()> {
    let mount_point = root.parent().unwrap_or(root);
    if is_bpffs(mount_point)? {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point)?;
    let target = CString::new(mount_point.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: NUL-terminated strings; a plain bpffs mount with no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    is_file_system(path, BPF_FS_MAGIC)
}

/// Whether `path` lies on a file system of type `magic` (`statfs(2)`'s `f_type`); a path that
/// does not exist lies on none.
pub(crate) fn is_file_system(path: &Path, magic: libc::c_long) -> io::Result<bool> {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return Ok(false);
    };
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path, valid out-parameter.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(stat.f_type == magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let pins = Pins::new("/sys/fs/bpf/weir");
        assert_eq!(
            pins.map(names::POLICY),
            Path::new("/sys/fs/bpf/weir/maps/WEIR_POL_V2")
        );
        assert_eq!(
            pins.link(7, Hook::ToPod),
            Path::new("/sys/fs/bpf/weir/links/7-to_pod")
        );
    }
}
