//! The socket programs: attached to a cgroup (v2), they give the processes in it and in its
//! descendants Service translation at `connect()`/`sendmsg()` time, and the frontend back at
//! `recvmsg()` and `getpeername()`. The agent attaches them to the root cgroup by default, so
//! every process of the node reaches `ClusterIP`s as pods do; tests attach them to a cgroup of
//! their own.
//!
//! A restart keeps them working: the new agent attaches its programs next to the pinned ones
//! (both running for a moment is harmless: the second sees a backend, not a frontend) and
//! then moves its own pins over the old ones, which detaches them.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use dataplane_abi::{SockConfig, names, programs};

use super::{Dataplane, DataplaneError, Held};

/// `statfs(2)` magic of cgroup v2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: libc::c_long = 0x6367_7270;
/// Where systemd's hybrid layout mounts cgroup v2, under the v1 hierarchies' tmpfs.
const HYBRID_UNIFIED: &str = "unified";

impl Dataplane {
    /// The cgroup v2 folder that `path` names for the socket programs: `path` itself when it
    /// is one, else its `unified` folder on a host with systemd's hybrid v1/v2 layout (where
    /// `/sys/fs/cgroup` is a tmpfs of v1 hierarchies and v2 sits at `/sys/fs/cgroup/unified`).
    pub fn socket_cgroup(path: &Path) -> Result<PathBuf, DataplaneError> {
        let cgroup_err = |path: &Path, source| DataplaneError::Cgroup {
            path: path.to_path_buf(),
            source,
        };
        if is_cgroup2(path).map_err(|e| cgroup_err(path, e))? {
            return Ok(path.to_path_buf());
        }
        let unified = path.join(HYBRID_UNIFIED);
        if is_cgroup2(&unified).unwrap_or(false) {
            return Ok(unified);
        }
        Err(cgroup_err(
            path,
            not_cgroup2("not a cgroup v2 folder, nor the parent of one named `unified`"),
        ))
    }

    /// Loads the socket programs and attaches them to the cgroup v2 folder `cgroup` (the
    /// root of the hierarchy for every process of the node; see [`Self::socket_cgroup`]).
    /// With pins, the attachments outlive the agent; without, they last as long as this value.
    ///
    /// Only sockets of the network namespace with cookie `node_netns` are translated (see
    /// [`netns_cookie`]): the node's own processes, not its pods'.
    pub fn attach_sockets(&mut self, cgroup: &Path, node_netns: u64) -> Result<(), DataplaneError> {
        let cgroup_err = |source| DataplaneError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        };
        let mut config: Array<&mut MapData, SockConfig> =
            super::typed_map(&mut self.ebpf, names::SOCK_CONFIG, Array::try_from)?;
        config
            .set(
                0,
                SockConfig {
                    node_netns_cookie: node_netns,
                },
                0,
            )
            .map_err(super::map_err(names::SOCK_CONFIG))?;
        // Checked here: the kernel's answer to a folder of another file system, or of a v1
        // hierarchy, is a bare EBADF.
        if !is_cgroup2(cgroup).map_err(cgroup_err)? {
            return Err(cgroup_err(not_cgroup2("not a cgroup v2 folder")));
        }
        let file = File::open(cgroup).map_err(cgroup_err)?;
        for name in programs::SOCKETS {
            let prog = socket_program(&mut self.ebpf, name)?;
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
            // A link (what aya makes from Linux 5.7 on, and what a pin needs) always shares
            // the cgroup with other programs; the kernel refuses any flag with it (EINVAL),
            // and `Single` is the mode aya turns into none.
            let id = prog
                .attach(&file, CgroupAttachMode::Single)
                .map_err(|source| DataplaneError::Program { name, source })?;
            let Some(pins) = &self.pins else {
                continue;
            };
            let link = prog
                .take_link(id)
                .map_err(|source| DataplaneError::Program { name, source })?;
            let link =
                FdLink::try_from(link).map_err(|source| DataplaneError::Link { name, source })?;
            let path = pins.socket_link(name);
            let link = replace_pin(link, &path)?;
            self.sockets.push(Held {
                link,
                pin: Some(path),
            });
        }
        Ok(())
    }

    /// Detaches the socket programs an earlier agent pinned, when this one runs without them
    /// (`weir run --no-socket-lb`): unpinned, their links go, and the node's processes are
    /// no longer translated. Returns how many were removed.
    pub fn detach_pinned_sockets(&mut self) -> Result<usize, DataplaneError> {
        let mut removed = self.sockets.len();
        for held in self.sockets.drain(..) {
            held.detach();
        }
        let Some(pins) = &self.pins else {
            return Ok(removed);
        };
        for name in programs::SOCKETS {
            let path = pins.socket_link(name);
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(DataplaneError::Pin { path, source }),
            }
        }
        Ok(removed)
    }
}

/// The cookie (`SO_NETNS_COOKIE`, Linux 5.14) of the calling thread's network namespace.
///
/// # Errors
///
/// No socket could be made, or the kernel has no such option.
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).unwrap_or(8);
    // SAFETY: `cookie` is 8 writable bytes and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Pins `link` at `path`, atomically replacing (and so detaching) an earlier agent's link.
fn replace_pin(link: FdLink, path: &Path) -> Result<FdLink, DataplaneError> {
    // bpffs refuses names with a dot (EPERM): no `.new` extension.
    let mut fresh = PathBuf::from(path).into_os_string();
    fresh.push("-new");
    let fresh = PathBuf::from(fresh);
    let pin_err = |source| DataplaneError::Pin {
        path: fresh.clone(),
        source,
    };
    let _ = std::fs::remove_file(&fresh);
    let pinned = link.pin(&fresh).map_err(|e| pin_err(io::Error::other(e)))?;
    std::fs::rename(&fresh, path).map_err(pin_err)?;
    Ok(pinned.into())
}

fn socket_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, DataplaneError> {
    let prog = ebpf.program_mut(name).ok_or(DataplaneError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

fn not_cgroup2(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// Whether `path` is a folder of a cgroup v2 hierarchy; a path that does not exist is not.
fn is_cgroup2(path: &Path) -> io::Result<bool> {
    crate::pins::is_file_system(path, CGROUP2_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_of_another_file_system_is_no_socket_cgroup() {
        let err = Dataplane::socket_cgroup(Path::new("/proc")).unwrap_err();
        assert!(
            matches!(&err, DataplaneError::Cgroup { path, .. } if path == Path::new("/proc")),
            "{err:?}"
        );
        assert!(!is_cgroup2(Path::new("/no/such/folder")).unwrap());
    }
}
