//! The socket programs: attached to a cgroup (v2), they give the processes in it Service
//! translation at `connect()`/`sendmsg()` time, and the frontend back at `recvmsg()` and
//! `getpeername()`. The agent attaches them to the root cgroup, so every process of the node
//! reaches `ClusterIP`s as pods do; tests attach them to a cgroup of their own.
//!
//! A restart keeps them working: the new agent attaches its programs next to the pinned ones
//! (both running for a moment is harmless: the second sees a backend, not a frontend) and
//! then moves its own pins over the old ones, which detaches them.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use dataplane_abi::programs;

use super::{Dataplane, DataplaneError, Held};

impl Dataplane {
    /// Loads the socket programs and attaches them to the cgroup at `cgroup` (a cgroup v2
    /// folder: `/sys/fs/cgroup` for every process of the node). With pins, the attachments
    /// outlive the agent; without, they last as long as this value.
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let file = File::open(cgroup).map_err(|source| DataplaneError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
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
}

/// Pins `link` at `path`, atomically replacing (and so detaching) an earlier agent's link.
fn replace_pin(link: FdLink, path: &Path) -> Result<FdLink, DataplaneError> {
    let pin_err = |source| DataplaneError::Pin {
        path: path.to_path_buf(),
        source,
    };
    let mut fresh = PathBuf::from(path);
    fresh.set_extension("new");
    let _ = std::fs::remove_file(&fresh);
    let pinned = link
        .pin(&fresh)
        .map_err(|e| pin_err(std::io::Error::other(e)))?;
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
