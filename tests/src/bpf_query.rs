//! `BPF_PROG_QUERY`: how many programs are attached to a target, for tests that check Weir
//! attaches exactly once (a restarted agent adopting its links rather than adding to them)
//! and detaches everything when told.

use std::io;

/// `BPF_PROG_QUERY`, the `bpf(2)` command that lists what is attached to a target.
const BPF_PROG_QUERY: libc::c_long = 16;

/// `BPF_TCX_INGRESS` of `enum bpf_attach_type` (uapi `linux/bpf.h`, Linux 6.6): TC ingress
/// through TCX, where Weir attaches its ingress programs.
pub const TCX_INGRESS: u32 = 46;

/// The `query` member of `union bpf_attr` (uapi `linux/bpf.h`), trailing fields included so
/// that the kernel reads zeros there.
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    /// `target_fd` for a cgroup, `target_ifindex` for TCX (a union in the kernel's header).
    target: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The number of programs attached directly to `target` at `attach_type`: a cgroup's
/// descriptor for the cgroup hooks, or an interface index of the calling thread's network
/// namespace for the TCX hooks. Asked with no id buffer, the kernel answers only the count.
pub(crate) fn attached_programs(target: u32, attach_type: u32) -> io::Result<u32> {
    let mut attr = ProgQueryAttr {
        target,
        attach_type,
        ..ProgQueryAttr::default()
    };
    // SAFETY: `attr` is a live, zero-padded `bpf_attr.query` of the size passed; the kernel
    // writes only `attach_flags`, `prog_cnt` and `revision` back into it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &raw mut attr,
            size_of::<ProgQueryAttr>(),
        )
    };
    if rc == 0 {
        Ok(attr.prog_cnt)
    } else {
        Err(io::Error::last_os_error())
    }
}
