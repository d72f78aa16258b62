//! Probe servers: in each pod, TCP and UDP echo servers on the probe ports, both families.
//!
//! Every answer names the pod that gives it and the client it saw: the request (one TCP
//! read, or one datagram), then [`NAME_MARK`], the pod's id (`namespace/name`), a space, the
//! source address and port of the connection or datagram as the pod received it, and a
//! newline. A client of a Service learns from it which backend its connection reached and
//! whether its address arrived intact or translated (source NAT); a client of a pod, that the
//! pod it addressed answered.
//!
//! One thread per pod multiplexes all its sockets with `poll(2)`, so a client that stalls
//! (its packets dropped half-way through a connection) cannot hold up the others.

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// Ports every pod serves, on TCP and UDP; the manifests name them `serve-<port>-<proto>`.
pub const PROBE_PORTS: [u16; 2] = [80, 81];

/// Separates the echoed request from the name of the pod that answers it.
pub const NAME_MARK: char = '@';

/// How often the serving thread looks at its stop flag when idle.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A connection idle for that long is dropped: the client has long given up (a probe waits
/// half a second), or its packets are being dropped. A client that keeps asking keeps it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probes send a few dozen bytes; anything longer is not ours.
const MAX_MESSAGE: usize = 512;

/// The servers of one pod. Dropping it stops and joins the thread, which must happen before
/// the pod's namespace is deleted (the thread holds it alive).
#[derive(Debug)]
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServers {
    /// Binds every port of `ports` on each of `addrs` inside `netns` and starts serving,
    /// answering as pod `name`. Returns once all sockets are bound, so that a probe sent right
    /// after cannot race the bind.
    pub fn start(netns: &Netns, name: &str, addrs: Vec<IpAddr>, ports: Vec<u16>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let name = name.to_owned();
        let thread = netns.spawn(
            format!("echo-{}", netns.name()),
            move || match Sockets::bind(&addrs, &ports, name) {
                Ok(sockets) => {
                    ready_tx.send(Ok(())).ok();
                    sockets.serve(&thread_stop);
                }
                Err(e) => {
                    ready_tx.send(Err(e)).ok();
                }
            },
        );
        let servers = Self {
            stop,
            thread: Some(thread),
        };
        let bound = ready_rx.recv().unwrap_or_else(|_| {
            panic!("probe server thread in {} died while binding", netns.name())
        });
        bound.unwrap_or_else(|e| panic!("binding probe servers in {}: {e}", netns.name()));
        servers
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("warning: a probe server thread panicked");
        }
    }
}

/// An accepted TCP connection: its stream, the client's address as the pod saw it, and when
/// it last carried a request.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    last_active: Instant,
}

/// The sockets of one pod and its open TCP connections.
struct Sockets {
    listeners: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    connections: Vec<Connection>,
    /// The pod's id, which signs every echo.
    name: String,
}

impl Sockets {
    fn bind(addrs: &[IpAddr], ports: &[u16], name: String) -> io::Result<Self> {
        let mut sockets = Self {
            listeners: Vec::new(),
            udp: Vec::new(),
            connections: Vec::new(),
            name,
        };
        // Bound to the pod's own addresses rather than the wildcard: a v6 wildcard socket
        // is dual-stack by default and would collide with the v4 one.
        for addr in addrs {
            for port in ports {
                let at = SocketAddr::new(*addr, *port);
                let listener = TcpListener::bind(at)?;
                listener.set_nonblocking(true)?;
                sockets.listeners.push(listener);
                let udp = UdpSocket::bind(at)?;
                udp.set_nonblocking(true)?;
                sockets.udp.push(udp);
            }
        }
        Ok(sockets)
    }

    fn serve(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let ready = self.wait_readable();
            let (listeners, rest) = ready.split_at(self.listeners.len());
            let (udp, connections) = rest.split_at(self.udp.len());
            // Connections first: the flags describe the connections that were polled, and
            // accepting appends new ones.
            let now = Instant::now();
            let mut flags = connections.iter();
            let name = &self.name;
            self.connections.retain_mut(|connection| {
                let readable = *flags.next().expect("one flag per polled connection");
                if readable {
                    connection.last_active = now;
                    return echo_stream(connection, name);
                }
                now.duration_since(connection.last_active) < IDLE_TIMEOUT
            });
            for (listener, _) in self.listeners.iter().zip(listeners).filter(|(_, r)| **r) {
                accept_all(listener, &mut self.connections);
            }
            for (socket, _) in self.udp.iter().zip(udp).filter(|(_, r)| **r) {
                echo_datagrams(socket, name);
            }
        }
    }

    /// Waits up to [`POLL_INTERVAL`] and returns, for every socket in the order
    /// listeners, UDP sockets, connections, whether it has something to read.
    fn wait_readable(&self) -> Vec<bool> {
        let fds: Vec<RawFd> = self
            .listeners
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(self.udp.iter().map(AsRawFd::as_raw_fd))
            .chain(self.connections.iter().map(|c| c.stream.as_raw_fd()))
            .collect();
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let nfds = libc::nfds_t::try_from(pollfds.len()).expect("few sockets");
        let timeout = i32::try_from(POLL_INTERVAL.as_millis()).expect("short interval");
        // SAFETY: `pollfds` is a live, correctly sized array for the duration of the call.
        let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), nfds, timeout) };
        if rc < 0 {
            // EINTR: report nothing ready and let the loop come round again.
            return vec![false; pollfds.len()];
        }
        pollfds.iter().map(|p| p.revents != 0).collect()
    }
}

fn accept_all(listener: &TcpListener, connections: &mut Vec<Connection>) {
    while let Ok((stream, peer)) = listener.accept() {
        if stream.set_nonblocking(true).is_ok() {
            connections.push(Connection {
                stream,
                peer,
                last_active: Instant::now(),
            });
        }
    }
}

fn echo_datagrams(socket: &UdpSocket, name: &str) {
    let mut buf = [0u8; MAX_MESSAGE];
    while let Ok((len, from)) = socket.recv_from(&mut buf) {
        // A lost echo is the client's timeout to notice, as with a real server.
        socket.send_to(&signed(&buf[..len], name, from), from).ok();
    }
}

/// Echoes what the client sent; returns whether the connection stays open (a probe closes
/// its side after its request, and we close ours after the echo; a longer-lived client sends
/// one request at a time and waits for each answer).
fn echo_stream(connection: &mut Connection, name: &str) -> bool {
    let mut buf = [0u8; MAX_MESSAGE];
    match connection.stream.read(&mut buf) {
        Ok(0) => false,
        // The reply is about as small as the request and the send buffer is empty: it fits.
        Ok(len) => connection
            .stream
            .write_all(&signed(&buf[..len], name, connection.peer))
            .is_ok(),
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// The answer to `request` from pod `name` to the client seen as `peer`: the request, then
/// [`NAME_MARK`], the pod's id, a space, the peer and a newline.
fn signed(request: &[u8], name: &str, peer: SocketAddr) -> Vec<u8> {
    let signature = format!("{NAME_MARK}{name} {peer}\n");
    [request, signature.as_bytes()].concat()
}
