//! Real TCP traffic for the whole-path benchmark: request/reply servers in backend pods, and
//! the two clients: a tight connect–request–reply–close loop for the connection rate, and a
//! ping-pong on one established connection for the request latency.
//!
//! Every socket operation has a timeout, so a path that loses packets fails the measurement
//! instead of hanging it. Both ends set `TCP_NODELAY`: a request is one small segment, sent at
//! once. Servers and clients run on one CPU ([`pin`]): an exchange between two CPUs costs a
//! cross-CPU wake-up (an IPI, expensive in a VM) or not, as the scheduler happens to place the
//! threads, which here changed round trips between 18 and 50 µs from one round to the next;
//! on one CPU every exchange costs the same switches, and the path's own work (veth delivery
//! runs in the sender's softirq, programs and rules included) is all on the critical path.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use testbed::Netns;

/// Bytes of a request, and of its reply (the server sends the request back).
const MESSAGE: usize = 32;
/// The request every client sends.
const REQUEST: [u8; MESSAGE] = *b"GET /bench HTTP/1.0 weir-bench \n";
/// Longest wait for any one socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle server looks at its stop flag.
const POLL_INTERVAL_MS: i32 = 100;

/// One server thread per backend pod, listening on one or more ports. Dropping the value stops
/// and joins them, which must happen before the pods' namespaces are deleted.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts a server listening on every address of `at` inside each namespace of `pods`, on
    /// CPU `cpu`; returns once all are listening.
    pub fn start<'a>(
        pods: impl IntoIterator<Item = (&'a Netns, Vec<SocketAddr>)>,
        cpu: usize,
    ) -> Result<Self> {
        let mut servers = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (netns, at) in pods {
            let (ready_tx, ready_rx) = mpsc::channel();
            let stop = Arc::clone(&servers.stop);
            servers
                .threads
                .push(netns.spawn(format!("server-{}", netns.name()), move || {
                    let bound = pin(cpu).and_then(|()| {
                        at.iter()
                            .map(TcpListener::bind)
                            .collect::<io::Result<Vec<_>>>()
                    });
                    match bound {
                        Ok(listeners) => {
                            ready_tx.send(Ok(())).ok();
                            serve(&listeners, &stop);
                        }
                        Err(e) => {
                            ready_tx.send(Err(e)).ok();
                        }
                    }
                }));
            ready_rx
                .recv()
                .context("a server thread died before listening")?
                .with_context(|| format!("listening in {}", netns.name()))?;
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("warning: a benchmark server thread panicked");
            }
        }
    }
}

/// Accepts connections one at a time and answers each request with itself until the client
/// closes. One at a time is enough: each client has one connection open at any moment.
fn serve(listeners: &[TcpListener], stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        for listener in readable(listeners) {
            if let Ok((stream, _)) = listener.accept() {
                // A connection that breaks is the client's to report.
                let _ = answer(stream);
            }
        }
    }
}

/// The listeners with a connection waiting, after at most [`POLL_INTERVAL_MS`].
fn readable(listeners: &[TcpListener]) -> Vec<&TcpListener> {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let count = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: `fds` holds `count` valid pollfds for the duration of the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), count, POLL_INTERVAL_MS) } <= 0 {
        return Vec::new();
    }
    listeners
        .iter()
        .zip(&fds)
        .filter(|(_, fd)| fd.revents & libc::POLLIN != 0)
        .map(|(l, _)| l)
        .collect()
}

fn answer(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0; MESSAGE];
    loop {
        match stream.read_exact(&mut buf) {
            Ok(()) => stream.write_all(&buf)?,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Keeps the calling thread on CPU `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t; CPU_SET ignores CPUs beyond its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is valid for the call.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn connect(to: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One request and its reply on `stream`.
fn exchange(stream: &mut TcpStream) -> Result<()> {
    stream.write_all(&REQUEST).context("sending a request")?;
    let mut reply = [0; MESSAGE];
    stream.read_exact(&mut reply).context("reading a reply")?;
    if reply == REQUEST {
        Ok(())
    } else {
        Err(anyhow!("the reply is not the request sent"))
    }
}

/// Connections completed in a timed loop.
#[derive(Clone, Copy, Debug)]
pub struct Completed {
    pub connections: u64,
    pub elapsed: Duration,
}

impl Completed {
    pub fn per_second(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let n = self.connections as f64;
        n / self.elapsed.as_secs_f64()
    }
}

/// For `duration`: connect to the next of `targets` (in turn), send a request, read the reply,
/// close. Fails on the first connection that does not complete.
pub fn connection_loop(targets: &[SocketAddr], duration: Duration) -> Result<Completed> {
    let started = Instant::now();
    let mut connections = 0_u64;
    let mut next = targets.iter().cycle();
    while started.elapsed() < duration {
        let to = *next.next().context("no target")?;
        let mut stream = connect(to)?;
        exchange(&mut stream).with_context(|| format!("connection {connections} to {to}"))?;
        drop(stream);
        connections += 1;
    }
    Ok(Completed {
        connections,
        elapsed: started.elapsed(),
    })
}

/// For `duration`: request after request on one connection to `target`; the round trip of
/// each, in nanoseconds.
pub fn ping_pong(target: SocketAddr, duration: Duration) -> Result<Vec<f64>> {
    let mut stream = connect(target)?;
    let started = Instant::now();
    let mut rtts = Vec::new();
    while started.elapsed() < duration {
        let sent = Instant::now();
        exchange(&mut stream).with_context(|| format!("request {} to {target}", rtts.len()))?;
        #[expect(clippy::cast_precision_loss, reason = "round trips far below 2^52 ns")]
        rtts.push(sent.elapsed().as_nanos() as f64);
    }
    Ok(rtts)
}
