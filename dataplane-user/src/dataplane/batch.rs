//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6) for hash maps: one system
//! call for many entries, where aya 0.14 makes one per entry. Writing 100 000 backends entry
//! by entry costs more in system calls than in the kernel's own work.
//!
//! LPM tries have no batch operations; their writes stay per entry.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

/// `enum bpf_cmd` numbers.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (`include/uapi/linux/bpf.h`). The kernel takes a
/// shorter attribute than its whole union and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i]` → `values[i]` for every `i` into the map behind `fd`, whose key and value
/// types must be `K` and `V`.
pub(super) fn update<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    if keys.len() != values.len() {
        return Err(io::Error::other("a batch needs one value per key"));
    }
    let mut done = 0;
    while done < keys.len() {
        let mut attr = attr(fd, keys.len() - done)?;
        attr.keys = keys[done..].as_ptr() as u64;
        attr.values = values[done..].as_ptr() as u64;
        let result = call(BPF_MAP_UPDATE_BATCH, &mut attr);
        // On failure `count` says how many entries were written before the one that failed.
        done += attr.count as usize;
        result?;
        if attr.count == 0 {
            return Err(io::Error::other("the kernel wrote no entry of a batch"));
        }
    }
    Ok(())
}

/// Deletes `keys` from the map behind `fd`, whose key type must be `K`. A key that is not in
/// the map is skipped (a rollback may repeat a removal).
pub(super) fn delete<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut done = 0;
    while done < keys.len() {
        let mut attr = attr(fd, keys.len() - done)?;
        attr.keys = keys[done..].as_ptr() as u64;
        let result = call(BPF_MAP_DELETE_BATCH, &mut attr);
        done += attr.count as usize;
        match result {
            Ok(()) => {}
            // The kernel stops at the first missing key: step over it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => done += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn attr(fd: BorrowedFd<'_>, count: usize) -> io::Result<BatchAttr> {
    Ok(BatchAttr {
        count: u32::try_from(count).map_err(|_| io::Error::other("batch too large"))?,
        map_fd: u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("bad map fd"))?,
        ..BatchAttr::default()
    })
}

fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for batch commands; the pointers in it
    // reference `count` keys and values of the map's sizes, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
