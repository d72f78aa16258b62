//! Fragments: later fragments carry no L4 header, so the first fragment's ports are remembered
//! (only when policy allowed it) and lent to the rest. A later fragment whose first was never
//! seen, or was denied, is dropped: the datagram could not be reassembled anyway.

use dataplane_abi::{Addr, DropReason, FragKey, FragPorts};

use crate::FRAGMENTS;
use crate::parse::Packet;

#[inline(always)]
fn key(pkt: &Packet, dst: &Addr, id: u32) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: *dst,
        id,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// Gives a later fragment the ports of its datagram's first fragment.
#[inline(always)]
pub fn resolve_ports(pkt: &mut Packet) -> Result<(), DropReason> {
    if !pkt.fragment.is_later() {
        return Ok(());
    }
    let id = pkt.fragment.id;
    // SAFETY: the value is copied out before the program run ends.
    let ports =
        unsafe { FRAGMENTS.get(key(pkt, &pkt.dst, id)) }.ok_or(DropReason::FragmentUnknown)?;
    pkt.src_port_h = ports.src_port_h;
    pkt.dst_port_h = ports.dst_port_h;
    Ok(())
}

/// Remembers an allowed first fragment's ports for the fragments that follow. `wire_dst` is
/// the destination the datagram was sent to, before any translation: the later fragments
/// arrive with it.
#[inline(always)]
pub fn remember(pkt: &Packet, wire_dst: &Addr) {
    if pkt.fragment.is_first() {
        let id = pkt.fragment.id;
        let ports = FragPorts {
            src_port_h: pkt.src_port_h,
            dst_port_h: pkt.dst_port_h,
        };
        let _ = FRAGMENTS.insert(key(pkt, wire_dst, id), ports, 0);
    }
}
