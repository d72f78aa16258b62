//! Probes: one TCP request/reply or one UDP echo, with bounded timeouts.
//!
//! A probe runs on a thread that is already inside the source namespace (see
//! `Topology::probe_all`), so the sockets here are created where the traffic starts.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time allowed for the TCP handshake. A dropped SYN is retransmitted only after 1 s, so a
/// connection that has not completed by then is not going to.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Time allowed for the reply once the request is sent.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(500);

/// Address family of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Self; 2] = [Self::V4, Self::V6];
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Transport protocol of a probe. SCTP is absent: this kernel has no SCTP sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const ALL: [Self; 2] = [Self::Tcp, Self::Udp];

    /// Lower-case spelling, as in the named ports `serve-80-tcp`.
    pub fn lowercase(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// Which traffic a probe sends: the columns of one reachability matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Case {
    pub family: Family,
    pub proto: Proto,
    pub port: u16,
}

impl Case {
    /// Every family × protocol × probe port combination the servers answer.
    pub fn all() -> Vec<Self> {
        let mut cases = Vec::new();
        for family in Family::ALL {
            for proto in Proto::ALL {
                for port in crate::PROBE_PORTS {
                    cases.push(Self {
                        family,
                        proto,
                        port,
                    });
                }
            }
        }
        cases
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.family, self.proto, self.port)
    }
}

/// Sends one request to `dst` from the calling thread's namespace; true when the echo came
/// back intact within the timeouts.
pub fn send(dst: SocketAddr, proto: Proto) -> bool {
    let token = unique_token(dst, proto);
    match proto {
        Proto::Tcp => tcp_exchange(dst, token.as_bytes()),
        Proto::Udp => udp_exchange(dst, token.as_bytes()),
    }
}

/// A payload no other probe sends, so that a stray or late reply cannot be mistaken for
/// this probe's echo.
fn unique_token(dst: SocketAddr, proto: Proto) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("weir-probe {n} {proto} {dst}")
}

fn tcp_exchange(dst: SocketAddr, token: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT) else {
        return false;
    };
    let sent = stream.set_read_timeout(Some(REPLY_TIMEOUT)).is_ok()
        && stream.set_write_timeout(Some(REPLY_TIMEOUT)).is_ok()
        && stream.write_all(token).is_ok()
        // Half-close so that the server sees the end of the request and closes after the echo.
        && stream.shutdown(Shutdown::Write).is_ok();
    if !sent {
        return false;
    }
    let mut reply = Vec::with_capacity(token.len());
    let limit = u64::try_from(token.len() + 1).expect("small token");
    stream.take(limit).read_to_end(&mut reply).is_ok() && reply == token
}

fn udp_exchange(dst: SocketAddr, token: &[u8]) -> bool {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let Ok(socket) = UdpSocket::bind(any) else {
        return false;
    };
    // Connected, so that an ICMP port unreachable ends the wait at once instead of timing out.
    if socket.connect(dst).is_err()
        || socket.set_read_timeout(Some(REPLY_TIMEOUT)).is_err()
        || socket.send(token).is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; token.len() + 1];
    matches!(socket.recv(&mut buf), Ok(len) if buf[..len] == *token)
}
