//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`: IPv4 (with options and fragments), IPv6
//! (with extension headers and fragments), TCP, UDP, SCTP, ICMP and `ICMPv6`, and truncations.
//! IPv4 header, TCP and UDP checksums are right (the NAT path updates them and tests check the
//! result with [`checksums`]); SCTP's CRC and ICMP checksums are left zero.

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
        let (proto, mut l4) = self.transport();
        if self.fragment == Frag::Whole {
            fill_l4_checksum(self.src, self.dst, proto, &mut l4);
        }
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
        let sum = !fold(sum16(&h, 0));
        h[10..12].copy_from_slice(&sum.to_be_bytes());
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

/// Where a transport's checksum sits in its header, for the protocols whose checksum covers the
/// addresses (TCP, UDP).
fn checksum_offset(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        _ => None,
    }
}

fn fill_l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &mut [u8]) {
    let Some(at) = checksum_offset(proto) else {
        return;
    };
    if l4.len() < at + 2 {
        return;
    }
    l4[at..at + 2].fill(0);
    let mut sum = !fold(sum16(l4, pseudo_header(src, dst, proto, l4.len())));
    if proto == 17 && sum == 0 {
        // Zero means "no checksum" for UDP over IPv4.
        sum = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut bytes = Vec::new();
    for a in [src, dst] {
        match a {
            IpAddr::V4(a) => bytes.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => bytes.extend_from_slice(&a.octets()),
        }
    }
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, proto]);
    sum16(&bytes, 0)
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `sum`, not folded.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u32::from);
        sum += hi | lo;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// The addresses, protocol and ports of a frame, as read back from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Reads a whole (unfragmented) TCP/UDP/SCTP frame back, checking its IPv4 header checksum and
/// its TCP or UDP checksum: a wrong checksum, or a frame this builder could not have made, is
/// an error saying what is wrong.
pub fn checksums(frame: &[u8]) -> Result<Tuple, String> {
    let ip = frame.get(14..).ok_or("frame shorter than Ethernet")?;
    let (src, dst, proto, l4) = match frame.get(12..14) {
        Some([0x08, 0x00]) => {
            let ihl = usize::from(ip.first().ok_or("no IPv4 header")? & 0x0f) * 4;
            let header = ip.get(..ihl).ok_or("IPv4 header cut short")?;
            if fold(sum16(header, 0)) != 0xffff {
                return Err(format!("bad IPv4 header checksum in {header:02x?}"));
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let src: [u8; 4] = ip[12..16].try_into().map_err(|_| "short")?;
            let dst: [u8; 4] = ip[16..20].try_into().map_err(|_| "short")?;
            let l4 = ip
                .get(ihl..total)
                .ok_or("IPv4 total length beyond the frame")?;
            (IpAddr::from(src), IpAddr::from(dst), ip[9], l4)
        }
        Some([0x86, 0xdd]) => {
            let src: [u8; 16] = ip
                .get(8..24)
                .ok_or("short")?
                .try_into()
                .map_err(|_| "short")?;
            let dst: [u8; 16] = ip
                .get(24..40)
                .ok_or("short")?
                .try_into()
                .map_err(|_| "short")?;
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let mut next = ip[6];
            let mut at = 40;
            while matches!(next, 0 | 43 | 60) {
                next = ip[at];
                at += (usize::from(ip[at + 1]) + 1) * 8;
            }
            let l4 = ip
                .get(at..40 + payload)
                .ok_or("IPv6 payload beyond the frame")?;
            (IpAddr::from(src), IpAddr::from(dst), next, l4)
        }
        _ => return Err("not IP".to_owned()),
    };
    if l4.len() < 4 {
        return Err("transport header cut short".to_owned());
    }
    if let Some(at) = checksum_offset(proto) {
        let zero_udp = proto == 17 && src.is_ipv4() && l4.get(at..at + 2) == Some(&[0, 0]);
        if !zero_udp && fold(sum16(l4, pseudo_header(src, dst, proto, l4.len()))) != 0xffff {
            return Err(format!("bad {proto} checksum for {src} → {dst}"));
        }
    }
    Ok(Tuple {
        src,
        dst,
        proto,
        src_port: u16::from_be_bytes([l4[0], l4[1]]),
        dst_port: u16::from_be_bytes([l4[2], l4[3]]),
    })
}

/// An ICMP(v6) error read back from a frame: its own addresses and the quoted packet's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub quoted_src: (IpAddr, u16),
    pub quoted_dst: (IpAddr, u16),
}

/// `error` (an ICMP(v6) destination unreachable built by [`Packet`], which leaves its checksum
/// zero) as a frame with its ICMP checksum right.
pub fn icmp_frame(error: &Packet) -> Vec<u8> {
    let mut frame = error.frame();
    let v6 = error.src.is_ipv6();
    let ip_len = if v6 { 40 } else { 20 };
    let seed = icmp_seed(&frame[14..], v6);
    let icmp = &mut frame[14 + ip_len..];
    let sum = !fold(sum16(icmp, u32::from(seed)));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// The sum an ICMP checksum starts from: nothing for ICMP, the IPv6 pseudo-header for
/// `ICMPv6`. `l3` is the IP packet.
fn icmp_seed(l3: &[u8], v6: bool) -> u16 {
    if !v6 {
        return 0;
    }
    let mut pseudo = l3[8..40].to_vec();
    let len = u32::try_from(l3.len() - 40).expect("short");
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    fold(sum16(&pseudo, 0))
}

/// Reads an ICMP error frame back, checking every checksum it carries: the IPv4 header, the
/// ICMP(v6) message, and the quoted IPv4 header.
pub fn read_icmp_error(frame: &[u8]) -> IcmpError {
    let l3 = &frame[14..];
    let v6 = frame[12..14] == [0x86, 0xdd];
    let addr = |bytes: &[u8]| -> IpAddr {
        if v6 {
            <[u8; 16]>::try_from(bytes).expect("16 bytes").into()
        } else {
            <[u8; 4]>::try_from(bytes).expect("4 bytes").into()
        }
    };
    let (ip_len, src_at, dst_at) = if v6 { (40, 8, 24) } else { (20, 12, 16) };
    let alen = if v6 { 16 } else { 4 };
    if !v6 {
        assert_eq!(fold(sum16(&l3[..20], 0)), 0xffff, "IPv4 header checksum");
    }
    let icmp = &l3[ip_len..];
    assert_eq!(
        fold(sum16(icmp, u32::from(icmp_seed(l3, v6)))),
        0xffff,
        "ICMP checksum"
    );
    let quoted = &icmp[8..];
    if !v6 {
        assert_eq!(
            fold(sum16(&quoted[..20], 0)),
            0xffff,
            "quoted IPv4 header checksum"
        );
    }
    let port = |at: usize| u16::from_be_bytes([quoted[ip_len + at], quoted[ip_len + at + 1]]);
    IcmpError {
        src: addr(&l3[src_at..src_at + alen]),
        dst: addr(&l3[dst_at..dst_at + alen]),
        quoted_src: (addr(&quoted[src_at..src_at + alen]), port(0)),
        quoted_dst: (addr(&quoted[dst_at..dst_at + alen]), port(2)),
    }
}
