//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`: IPv4 (with options and fragments), IPv6
//! (with extension headers and fragments), TCP, UDP, SCTP, ICMP and `ICMPv6`, and truncations.
//! Checksums are left zero: the policy path does not read them.

use std::net::IpAddr;

/// Transport header of a crafted packet.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    Sctp {
        src: u16,
        dst: u16,
    },
    /// Echo request (`reply == false`) or reply with this identifier.
    Echo {
        id: u16,
        reply: bool,
    },
    /// Destination unreachable quoting the frame `quoted` (its IP header onwards).
    Unreachable {
        quoted: Box<Packet>,
    },
    /// No transport header at all (later fragments).
    None {
        proto: u8,
    },
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;

/// A packet to craft.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// IPv4 option bytes (multiple of 4), or IPv6 extension headers to insert.
    pub options: Options,
    pub fragment: Frag,
}

/// Extra IP-level bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Options {
    #[default]
    None,
    /// IPv4: 8 bytes of NOP options (IHL 7). IPv6: a hop-by-hop and a destination-options header.
    Some,
}

/// Fragment position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frag {
    #[default]
    Whole,
    First {
        id: u32,
    },
    /// Offset in 8-byte units, > 0.
    Later {
        id: u32,
        offset: u16,
    },
}

impl Packet {
    /// A plain packet from `src` to `dst`.
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Self {
            src,
            dst,
            l4,
            options: Options::None,
            fragment: Frag::Whole,
        }
    }

    #[must_use]
    pub fn with_options(mut self) -> Self {
        self.options = Options::Some;
        self
    }

    #[must_use]
    pub fn fragment(mut self, frag: Frag) -> Self {
        self.fragment = frag;
        self
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let mut out = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        out.extend_from_slice(if self.src.is_ipv4() {
            &[0x08, 0x00]
        } else {
            &[0x86, 0xdd]
        });
        out.extend(self.ip());
        out
    }

    /// The IP packet (no Ethernet header).
    pub fn ip(&self) -> Vec<u8> {
        let (proto, l4) = self.transport();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s.octets(), d.octets(), proto, &l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s.octets(), d.octets(), proto, &l4),
            _ => panic!("mixed address families in a crafted packet"),
        }
    }

    fn transport(&self) -> (u8, Vec<u8>) {
        let v6 = self.src.is_ipv6();
        match &self.l4 {
            L4::Tcp { src, dst, flags } => {
                let mut h = ports(*src, *dst);
                h.extend_from_slice(&[
                    0, 0, 0, 1, 0, 0, 0, 0, 0x50, *flags, 0xff, 0xff, 0, 0, 0, 0,
                ]);
                (6, h)
            }
            L4::Udp { src, dst } => {
                let mut h = ports(*src, *dst);
                h.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
                (17, h)
            }
            L4::Sctp { src, dst } => {
                let mut h = ports(*src, *dst);
                h.extend_from_slice(&[0; 8]);
                (132, h)
            }
            L4::Echo { id, reply } => {
                let kind = match (v6, *reply) {
                    (false, false) => 8,
                    (false, true) => 0,
                    (true, false) => 128,
                    (true, true) => 129,
                };
                let [hi, lo] = id.to_be_bytes();
                (if v6 { 58 } else { 1 }, vec![kind, 0, 0, 0, hi, lo, 0, 1])
            }
            L4::Unreachable { quoted } => {
                let mut h = if v6 {
                    vec![1, 4, 0, 0, 0, 0, 0, 0]
                } else {
                    vec![3, 3, 0, 0, 0, 0, 0, 0]
                };
                h.extend(quoted.ip());
                (if v6 { 58 } else { 1 }, h)
            }
            L4::None { proto } => (*proto, vec![0; 8]),
        }
    }

    fn ipv4(&self, src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let opts: &[u8] = match self.options {
            Options::None => &[],
            Options::Some => &[1, 1, 1, 1, 1, 1, 1, 0],
        };
        let ihl = u8::try_from((20 + opts.len()) / 4).unwrap_or(15);
        let total = u16::try_from(20 + opts.len() + l4.len()).unwrap_or(u16::MAX);
        let (id, frag): (u16, u16) = match self.fragment {
            Frag::Whole => (1, 0),
            Frag::First { id } => (truncate16(id), 0x2000),
            Frag::Later { id, offset } => (truncate16(id), offset & 0x1fff),
        };
        let mut h = vec![0x40 | ihl, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(opts);
        h.extend_from_slice(l4);
        h
    }

    fn ipv6(&self, src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut next = proto;
        // Built inside out: each header names the one after it.
        match self.fragment {
            Frag::Whole => {}
            Frag::First { id } | Frag::Later { id, .. } => {
                let (offset, more) = match self.fragment {
                    Frag::Later { offset, .. } => (offset, 0),
                    _ => (0, 1),
                };
                let field = (offset << 3) | more;
                let mut h = vec![next, 0];
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                ext.splice(0..0, h);
                next = 44;
            }
        }
        if self.options == Options::Some {
            // Destination options then hop-by-hop, each 8 bytes of PadN.
            ext.splice(0..0, [next, 0, 1, 4, 0, 0, 0, 0]);
            ext.splice(0..0, [60, 0, 1, 4, 0, 0, 0, 0]);
            next = 0;
        }
        let payload = u16::try_from(ext.len() + l4.len()).unwrap_or(u16::MAX);
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&payload.to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend(ext);
        h.extend_from_slice(l4);
        h
    }
}

fn ports(src: u16, dst: u16) -> Vec<u8> {
    let mut v = src.to_be_bytes().to_vec();
    v.extend_from_slice(&dst.to_be_bytes());
    v
}

fn truncate16(id: u32) -> u16 {
    u16::try_from(id & 0xffff).unwrap_or(0)
}

/// An ARP request frame: never IP, never blocked.
pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    f
}
