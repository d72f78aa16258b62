//! The `healthCheckNodePort`s of `LoadBalancer` Services with `externalTrafficPolicy: Local`:
//! an HTTP server on each, on every address of the node, as kube-proxy's
//! `pkg/proxy/healthcheck/service_health.go` serves them. Cloud load balancers probe them to
//! send a Service's traffic only to nodes that have one of its endpoints: any request answers
//! 200 when this node has ready local endpoints, 503 when it has none (its node ports drop
//! that Service's external traffic), with the count in a small JSON body.
//!
//! The count is the compiled one ([`HealthCheck::local_endpoints`]), so the answer always
//! says what the enforced maps do. A port that cannot be bound (another process has it) is
//! logged, reported in `/status` and retried; it never stops the agent.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::compile::HealthCheck;

/// What one health check port answers: the Service and its local endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Its ready endpoints on this node.
    pub local_endpoints: usize,
}

impl Answer {
    fn of(check: &HealthCheck) -> Self {
        Self {
            namespace: check.namespace.clone(),
            name: check.name.clone(),
            local_endpoints: check.local_endpoints,
        }
    }

    /// The status line's code and reason: 200 with local endpoints, 503 without.
    #[must_use]
    pub fn status(&self) -> (u16, &'static str) {
        if self.local_endpoints > 0 {
            (200, "OK")
        } else {
            (503, "Service Unavailable")
        }
    }

    /// The JSON body kube-proxy sends:
    /// `{"service":{"namespace":"NS","name":"NAME"},"localEndpoints":N}`.
    #[must_use]
    pub fn body(&self) -> String {
        serde_json::json!({
            "service": {"namespace": self.namespace, "name": self.name},
            "localEndpoints": self.local_endpoints,
        })
        .to_string()
    }

    /// The whole HTTP/1.1 response, with kube-proxy's headers (the weight header lets load
    /// balancers that read it spread traffic by endpoint count).
    #[must_use]
    pub fn response(&self) -> String {
        let (code, reason) = self.status();
        let body = self.body();
        format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n\
             X-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.local_endpoints,
            body.len()
        )
    }
}

/// One port being served.
struct Server {
    /// What it answers now; replaced in place when the count changes.
    answer: Arc<Mutex<Answer>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Aborting the accept loop drops the listener, which closes the port.
        self.task.abort();
    }
}

/// A port that is wanted but not served, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Failure {
    answer: Answer,
    error: String,
}

/// How one health check port is doing, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    /// The TCP port.
    pub port: u16,
    /// What it answers (or would, once bound).
    pub answer: Answer,
    /// Why it is not served; `None` when it is.
    pub error: Option<String>,
}

/// The health check ports this node serves, following the compiled Services.
#[derive(Default)]
pub struct HealthPorts {
    servers: BTreeMap<u16, Server>,
    failed: BTreeMap<u16, Failure>,
}

impl HealthPorts {
    /// Serves exactly the ports of `checks`: opens new ones, updates the answers of kept
    /// ones, closes the others. Must run inside a tokio runtime. When two Services claim one
    /// port (the loader refuses it; a hand-built state may not), the first keeps it.
    pub fn sync<'a>(&mut self, checks: impl IntoIterator<Item = &'a HealthCheck>) {
        let mut wanted: BTreeMap<u16, Answer> = BTreeMap::new();
        for check in checks {
            if let Some(first) = wanted.get(&check.port) {
                tracing::warn!(
                    port = check.port,
                    service = %format!("{}/{}", check.namespace, check.name),
                    "health check node port already serves Service {}/{}; ignored",
                    first.namespace,
                    first.name
                );
                continue;
            }
            wanted.insert(check.port, Answer::of(check));
        }
        self.servers.retain(|port, _| wanted.contains_key(port));
        self.failed.retain(|port, _| wanted.contains_key(port));
        for (port, answer) in wanted {
            if let Some(server) = self.servers.get(&port) {
                *server.answer.lock().unwrap_or_else(PoisonError::into_inner) = answer;
            } else {
                self.open(port, answer);
            }
        }
    }

    /// Tries again to bind the ports that could not be.
    pub fn retry(&mut self) {
        let failed = std::mem::take(&mut self.failed);
        for (port, failure) in failed {
            self.open(port, failure.answer);
        }
    }

    /// Every wanted port, served or not, by port.
    #[must_use]
    pub fn status(&self) -> Vec<PortStatus> {
        let served = self.servers.iter().map(|(port, server)| PortStatus {
            port: *port,
            answer: server
                .answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            error: None,
        });
        let failed = self.failed.iter().map(|(port, failure)| PortStatus {
            port: *port,
            answer: failure.answer.clone(),
            error: Some(failure.error.clone()),
        });
        let mut out: Vec<PortStatus> = served.chain(failed).collect();
        out.sort_by_key(|s| s.port);
        out
    }

    fn open(&mut self, port: u16, answer: Answer) {
        match listen(port) {
            Ok(listener) => {
                if self.failed.remove(&port).is_some() {
                    tracing::info!(port, "health check node port bound at last");
                }
                tracing::info!(
                    port,
                    service = %format!("{}/{}", answer.namespace, answer.name),
                    "serving health check node port"
                );
                let answer = Arc::new(Mutex::new(answer));
                let task = tokio::spawn(serve(listener, answer.clone()));
                self.servers.insert(port, Server { answer, task });
            }
            Err(err) => {
                let error = err.to_string();
                // Retried on every check: said once, and again only if the reason changes.
                let said = self.failed.get(&port).is_some_and(|f| f.error == error);
                if !said {
                    tracing::error!(
                        port,
                        service = %format!("{}/{}", answer.namespace, answer.name),
                        error = %error,
                        "cannot serve health check node port; load balancers will see this \
                         node as down for the Service"
                    );
                }
                self.failed.insert(port, Failure { answer, error });
            }
        }
    }
}

/// How many connections may wait to be accepted.
const BACKLOG: u32 = 128;

/// A listener on `port` of every address of the node: `[::]`, which takes IPv4 clients too,
/// or `0.0.0.0` where the node has no IPv6.
fn listen(port: u16) -> io::Result<TcpListener> {
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match bind(any6) {
        Ok(listener) => Ok(listener),
        Err(err) if is_no_ipv6(&err) => bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        Err(err) => Err(err),
    }
}

fn is_no_ipv6(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted agent must not wait out the old one's TIME_WAIT connections.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Answers every connection with the current answer, whatever it asks.
async fn serve(listener: TcpListener, answer: Arc<Mutex<Answer>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            // The request is read (not just ignored) so that closing does not reset a
            // connection whose request is still unread.
            if crate::agent::read_request_head(&mut stream).await.is_none() {
                return;
            }
            let response = answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .response();
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(local_endpoints: usize) -> Answer {
        Answer {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints,
        }
    }

    #[test]
    fn local_endpoints_answer_200_with_the_count() {
        let a = answer(2);
        assert_eq!(a.status(), (200, "OK"));
        assert_eq!(
            a.body(),
            r#"{"localEndpoints":2,"service":{"name":"web","namespace":"shop"}}"#
        );
    }

    #[test]
    fn no_local_endpoint_answers_503_with_zero() {
        let a = answer(0);
        assert_eq!(a.status(), (503, "Service Unavailable"));
        let body: serde_json::Value = serde_json::from_str(&a.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "service": {"namespace": "shop", "name": "web"},
                "localEndpoints": 0,
            })
        );
    }

    #[test]
    fn response_carries_kube_proxys_headers_and_the_body_length() {
        let text = answer(3).response();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"));
        let headers: Vec<&str> = lines.collect();
        for expected in [
            "Content-Type: application/json",
            "X-Content-Type-Options: nosniff",
            "X-Load-Balancing-Endpoint-Weight: 3",
            &format!("Content-Length: {}", body.len()),
        ] {
            assert!(
                headers.contains(&expected),
                "{expected} missing in {headers:?}"
            );
        }
    }
}
