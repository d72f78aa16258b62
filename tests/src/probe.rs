//! Probes: one TCP request/reply or one UDP echo, with bounded timeouts.
//!
//! A probe runs on a thread that is already inside the source namespace (see
//! `Topology::probe_all`), so the sockets here are created where the traffic starts. Every
//! answer names the pod that gave it and the source address it saw (see `servers`):
//! [`exchange`] and [`Session::exchange`] return both as an [`Answer`], [`request`] and
//! [`Session::ask`] the pod's name alone, [`send`] only whether the echo came back.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::servers::NAME_MARK;

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
    request(dst, proto).is_ok()
}

/// Sends one request to `dst` from the calling thread's namespace, on a socket of its own
/// (a new connection, a new flow), and returns the id (`namespace/name`) of the pod that
/// answered. Errors as [`exchange`]'s.
pub fn request(dst: SocketAddr, proto: Proto) -> io::Result<String> {
    exchange(dst, proto).map(|answer| answer.pod)
}

/// Sends one request to `dst` from the calling thread's namespace, on a socket of its own
/// (a new connection, a new flow), and returns who answered and whom it saw. A refused
/// connection or port (TCP reset, ICMP unreachable) is `ConnectionRefused`; silence is
/// `TimedOut` or `WouldBlock`; an answer that is not this request's echo is `InvalidData`.
pub fn exchange(dst: SocketAddr, proto: Proto) -> io::Result<Answer> {
    let token = unique_token(dst, proto);
    match proto {
        Proto::Tcp => tcp_exchange(dst, &token),
        Proto::Udp => udp_exchange(dst, &token),
    }
}

/// [`exchange`] from source address `src` of the calling thread's namespace: what a client
/// with several addresses (one inside a Service's source ranges, one outside) sends. One
/// request on a new connection or flow, as [`Session::exchange`] sends it.
pub fn exchange_from(src: IpAddr, dst: SocketAddr, proto: Proto) -> io::Result<Answer> {
    Session::open_from(src, dst, proto)
        .map_err(|(_, e)| e)?
        .exchange()
}

/// A pod's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The id (`namespace/name`) of the pod that answered.
    pub pod: String,
    /// The source address and port of the request as the pod received it: the client's own,
    /// or the address a source NAT on the way put in its place.
    pub peer: SocketAddr,
}

/// A payload no other probe sends, so that a stray or late reply cannot be mistaken for
/// this probe's echo.
fn unique_token(dst: SocketAddr, proto: Proto) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("weir-probe {n} {proto} {dst}")
}

/// The longest socket address a server writes: `[` an IPv6 address with a zone `%` name `]:`
/// and a port.
const PEER_LIMIT: usize = 1 + 45 + 1 + 15 + 2 + 5;

/// The longest answer a server gives to `token`: the echo, the mark, a pod id (a namespace
/// and a name of at most 253 bytes each, and the slash), a space, the peer and the newline.
fn answer_limit(token: &str) -> usize {
    token.len() + NAME_MARK.len_utf8() + 253 + 1 + 253 + 1 + PEER_LIMIT + 1
}

/// The pod that signed `answer` and the peer it saw, when `answer` is the echo of `token`
/// (see `servers`).
fn signer(answer: &[u8], token: &str) -> io::Result<Answer> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "answer {:?} to {token:?} is not its echo, a pod's name and the peer it saw",
                String::from_utf8_lossy(answer)
            ),
        )
    };
    let text = std::str::from_utf8(answer).map_err(|_| invalid())?;
    let signature = text
        .strip_prefix(token)
        .and_then(|rest| rest.strip_prefix(NAME_MARK))
        .and_then(|rest| rest.strip_suffix('\n'))
        .filter(|signature| !signature.contains('\n'))
        .ok_or_else(invalid)?;
    let (pod, peer) = signature.rsplit_once(' ').ok_or_else(invalid)?;
    let peer = peer.parse().map_err(|_| invalid())?;
    if pod.is_empty() || pod.contains(' ') {
        return Err(invalid());
    }
    Ok(Answer {
        pod: pod.to_owned(),
        peer,
    })
}

fn tcp_exchange(dst: SocketAddr, token: &str) -> io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    stream.write_all(token.as_bytes())?;
    // Half-close so that the server sees the end of the request and closes after the echo.
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    let limit = u64::try_from(answer_limit(token) + 1).expect("small token");
    stream.take(limit).read_to_end(&mut reply)?;
    signer(&reply, token)
}

fn udp_exchange(dst: SocketAddr, token: &str) -> io::Result<Answer> {
    let socket = UdpSocket::bind(unspecified(dst))?;
    // Connected, so that an ICMP port unreachable ends the wait at once instead of timing out.
    socket.connect(dst)?;
    socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
    socket.send(token.as_bytes())?;
    let mut buf = vec![0u8; answer_limit(token) + 1];
    let len = socket.recv(&mut buf)?;
    signer(&buf[..len], token)
}

/// The wildcard address of `dst`'s family, port 0: bind there for an ephemeral port.
fn unspecified(dst: SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// One client socket used for many requests: a TCP connection, or a connected UDP socket
/// (one flow, since its ports never change). Requests go one at a time, each waiting for its
/// answer, so that every answer says where that very request went.
#[derive(Debug)]
pub struct Session {
    socket: Socket,
    proto: Proto,
    local: SocketAddr,
    dst: SocketAddr,
}

impl Session {
    /// Opens a session to `dst` from the calling thread's namespace: binds an ephemeral port,
    /// then connects (TCP within [`CONNECT_TIMEOUT`]). A failed connect still names the port
    /// it was made from, so that what the dataplane reported about it can be found.
    pub fn open(dst: SocketAddr, proto: Proto) -> Result<Self, (SocketAddr, io::Error)> {
        Self::open_from(unspecified(dst).ip(), dst, proto)
    }

    /// [`Session::open`] from source address `src` (one of the namespace's addresses, or the
    /// wildcard for the kernel's choice), on an ephemeral port.
    pub fn open_from(
        src: IpAddr,
        dst: SocketAddr,
        proto: Proto,
    ) -> Result<Self, (SocketAddr, io::Error)> {
        let (ty, protocol) = match proto {
            Proto::Tcp => (Type::STREAM, Protocol::TCP),
            Proto::Udp => (Type::DGRAM, Protocol::UDP),
        };
        let bind_at = SocketAddr::new(src, 0);
        let socket = Socket::new(Domain::for_address(dst), ty, Some(protocol))
            .and_then(|s| s.bind(&bind_at.into()).map(|()| s))
            .map_err(|e| (bind_at, e))?;
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(bind_at);
        let connected = match proto {
            Proto::Tcp => socket.connect_timeout(&dst.into(), CONNECT_TIMEOUT),
            Proto::Udp => socket.connect(&dst.into()),
        };
        connected
            .and_then(|()| socket.set_read_timeout(Some(REPLY_TIMEOUT)))
            .and_then(|()| socket.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| (local, e))?;
        Ok(Self {
            socket,
            proto,
            local,
            dst,
        })
    }

    /// Waits up to `timeout` for each answer instead of [`REPLY_TIMEOUT`]: a long-lived
    /// session is judged on whether it breaks, and one retransmission on a busy machine must
    /// not end it.
    pub fn set_reply_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket.set_read_timeout(Some(timeout))?;
        self.socket.set_write_timeout(Some(timeout))
    }

    /// The client's own address and port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one request and returns the id of the pod that answered it; errors as
    /// [`exchange`]'s.
    pub fn ask(&mut self) -> io::Result<String> {
        self.exchange().map(|answer| answer.pod)
    }

    /// Sends one request and returns who answered it and whom it saw; errors as
    /// [`exchange`]'s.
    pub fn exchange(&mut self) -> io::Result<Answer> {
        let token = unique_token(self.dst, self.proto);
        let sent = self.socket.send(token.as_bytes())?;
        if sent != token.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "request cut short",
            ));
        }
        let limit = answer_limit(&token);
        let answer = match self.proto {
            Proto::Udp => {
                let mut buf = vec![0u8; limit + 1];
                let len = (&self.socket).read(&mut buf)?;
                buf.truncate(len);
                buf
            }
            Proto::Tcp => self.read_line(limit)?,
        };
        signer(&answer, &token)
    }

    /// Reads a stream up to and including a newline, at most `limit` bytes.
    fn read_line(&self, limit: usize) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        let mut buf = [0u8; 512];
        while !line.ends_with(b"\n") && line.len() <= limit {
            let len = (&self.socket).read(&mut buf)?;
            if len == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the answer ended",
                ));
            }
            line.extend_from_slice(&buf[..len]);
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_names_the_pod_and_the_peer_it_saw() {
        let token = "weir-probe 7 TCP 10.100.0.1:30080";
        let v4 = format!("{token}{NAME_MARK}svc/b1 10.100.0.100:40000\n");
        assert_eq!(
            signer(v4.as_bytes(), token).unwrap(),
            Answer {
                pod: "svc/b1".to_owned(),
                peer: "10.100.0.100:40000".parse().unwrap(),
            }
        );
        let v6 = format!("{token}{NAME_MARK}svc/b2 [fd00:100::1]:51000\n");
        assert_eq!(
            signer(v6.as_bytes(), token).unwrap().peer,
            "[fd00:100::1]:51000".parse().unwrap()
        );
    }

    #[test]
    fn an_answer_without_a_peer_or_to_another_request_is_invalid() {
        let token = "weir-probe 8 UDP 10.100.0.1:30080";
        for answer in [
            format!("{token}{NAME_MARK}svc/b1\n"),
            format!("{token}{NAME_MARK} 10.100.0.100:40000\n"),
            format!("weir-probe 9 UDP 10.100.0.1:30080{NAME_MARK}svc/b1 10.0.0.1:1\n"),
            format!("{token}{NAME_MARK}svc/b1 10.100.0.100:40000"),
        ] {
            let error = signer(answer.as_bytes(), token).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{answer:?}");
        }
    }
}
