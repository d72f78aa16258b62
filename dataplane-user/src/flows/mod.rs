//! Flows: the programs' flow events, named and kept for `GET /flows` and `weir flows`.
//!
//! [`ring`] reads `WEIR_FLOWS_V2`; [`FlowRecord::from_event`] names what an event holds as
//! numbers (pods, policy, rule, the policies that isolate a pod) with the [`Catalog`] of the
//! generation in force; [`FlowLog`] keeps the recent ones, feeds followers and tallies drops
//! and allowed connections by policy for `/metrics`.

mod log;
pub mod ring;
mod time;

use std::fmt;
use std::net::IpAddr;

use dataplane_abi::{
    Direction, DropReason, FLOW_UNKNOWN, FlowEvent, FlowVerdict, PassReason, PolicyValue,
    flow_flags, proto,
};
use serde::{Deserialize, Serialize};

pub use self::log::{FlowLog, Tally};
pub use self::time::{Clock, rfc3339};
use crate::catalog::{self, Catalog};

/// What happened to a flow's packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Passed: policy or a rule that needs none let it through.
    Allowed,
    /// Dropped by the program.
    Dropped,
}

impl Verdict {
    /// `allowed` or `dropped`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Dropped => "dropped",
        }
    }

    /// Parses [`Verdict::name`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allowed" => Some(Self::Allowed),
            "dropped" => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    /// `None` when the packet's headers could not be read (`malformed`).
    pub ip: Option<IpAddr>,
    /// Port, ICMP echo identifier, or `None` when the protocol has neither.
    pub port: Option<u16>,
    /// `namespace/name` of a pod, or `node`.
    pub name: Option<String>,
}

/// A flow event with names: what `GET /flows` serves, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Order of arrival at the agent, from 1; gaps are events a follower missed.
    pub seq: u64,
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// Whether the packet was allowed or dropped.
    pub verdict: Verdict,
    /// The pass or drop reason's stable name.
    pub reason: String,
    /// `ingress` (towards the local pod) or `egress` (from it).
    pub direction: String,
    /// The protocol's name (`TCP`, `ICMPv6`, `proto-47`), or `?` when the headers could not
    /// be read.
    pub proto: String,
    /// TCP flags (`SYN`, `SYN,ACK`), when TCP.
    pub tcp_flags: Option<String>,
    /// The sender.
    pub src: FlowPeer,
    /// The receiver.
    pub dst: FlowPeer,
    /// Host-side interface the packet crossed.
    pub interface: u32,
    /// The local pod behind that interface.
    pub pod: Option<String>,
    /// The policy that allowed it (`namespace/name`).
    pub policy: Option<String>,
    /// Its rule, as a field path (`spec.ingress[0]`).
    pub rule: Option<String>,
    /// For policy drops: every policy isolating the local pod in this direction.
    pub isolated_by: Vec<String>,
    /// The peer's class, when the program learnt it.
    pub peer_class: Option<u32>,
    /// The Service (`namespace/name`) the packet was sent to: its destination as sent was the
    /// Service's address, and `dst` is the backend it was translated to (for a connection
    /// refused for want of endpoints, the Service's address itself).
    #[serde(default)]
    pub service: Option<String>,
    /// One sentence: why.
    pub summary: String,
}

impl FlowRecord {
    /// Names the numbers of `ev`; `None` for an event whose numbers this agent does not know
    /// (a newer program's reason, say).
    pub fn from_event(ev: &FlowEvent, names: &Catalog, clock: &Clock) -> Option<Self> {
        let dir = Direction::from_u8(ev.direction)?;
        let (verdict, outcome) = match FlowVerdict::from_u8(ev.verdict)? {
            FlowVerdict::Passed => (Verdict::Allowed, Ok(pass_reason(ev.reason)?)),
            FlowVerdict::Dropped => (Verdict::Dropped, Err(drop_reason(ev.reason)?)),
        };
        let allowed_by = (ev.policy != FLOW_UNKNOWN).then_some(PolicyValue {
            policy: ev.policy,
            rule: ev.rule,
        });
        let because = names.because(ev.ifindex, dir, outcome, allowed_by);
        let headers = ev.flags & flow_flags::HEADERS != 0;
        let has_ports = matches!(
            ev.proto,
            proto::TCP | proto::UDP | proto::SCTP | proto::ICMP | proto::ICMPV6
        );
        let peer = |addr, port: u16| {
            let ip = headers.then(|| catalog::to_ip(addr));
            FlowPeer {
                ip,
                port: (headers && has_ports).then_some(port),
                name: ip.and_then(|ip| names.name_of(ip)),
            }
        };
        Some(Self {
            seq: 0,
            time: rfc3339(clock.unix_ns(ev.time_ns)),
            verdict,
            reason: match outcome {
                Ok(r) => r.name(),
                Err(r) => r.name(),
            }
            .to_owned(),
            direction: catalog::direction_name(dir).to_owned(),
            proto: if headers {
                catalog::proto_name(ev.proto)
            } else {
                "?".to_owned()
            },
            tcp_flags: (headers && ev.proto == proto::TCP).then(|| tcp_flags(ev.tcp_flags)),
            src: peer(&ev.src, ev.src_port_h),
            dst: peer(&ev.dst, ev.dst_port_h),
            interface: ev.ifindex,
            pod: names.local_pod(ev.ifindex).map(str::to_owned),
            policy: because.policy,
            rule: because.rule,
            isolated_by: because.isolated_by,
            peer_class: (ev.peer_class != FLOW_UNKNOWN).then_some(ev.peer_class),
            service: service_name(ev.service, names),
            summary: because.summary,
        })
    }
}

/// The name of Service `id`; its number when this generation does not know it (an event sent
/// just before the Service was removed).
fn service_name(id: u32, names: &Catalog) -> Option<String> {
    (id != FLOW_UNKNOWN).then(|| {
        names
            .service(id)
            .map_or_else(|| format!("#{id}"), str::to_owned)
    })
}

fn pass_reason(n: u32) -> Option<PassReason> {
    PassReason::ALL.into_iter().find(|r| *r as u32 == n)
}

fn drop_reason(n: u32) -> Option<DropReason> {
    DropReason::ALL.into_iter().find(|r| *r as u32 == n)
}

/// `SYN,ACK`; `-` for none.
fn tcp_flags(bits: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if set.is_empty() {
        "-".to_owned()
    } else {
        set.join(",")
    }
}

/// Reads one event out of a ring-buffer record; `None` for a record too short to be one.
pub fn event_from_bytes(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: enough bytes, checked above; `FlowEvent` is plain old data, valid for any bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// Which flows a reader wants: every given condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Either end is this pod (`namespace/name`).
    pub pod: Option<String>,
    /// Either end is a pod of this namespace.
    pub namespace: Option<String>,
    /// The flow has this verdict.
    pub verdict: Option<Verdict>,
    /// Either end has this port.
    pub port: Option<u16>,
}

impl FlowFilter {
    /// Whether `r` passes every condition.
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let ends = [&r.src, &r.dst];
        let named =
            |want: &dyn Fn(&str) -> bool| ends.iter().any(|p| p.name.as_deref().is_some_and(want));
        self.pod.as_ref().is_none_or(|pod| named(&|n| n == pod))
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| named(&|n| n.split_once('/').is_some_and(|(n_ns, _)| n_ns == ns)))
            && self.verdict.is_none_or(|v| v == r.verdict)
            && self
                .port
                .is_none_or(|port| ends.iter().any(|p| p.port == Some(port)))
    }

    /// The query parameters `pod`, `namespace`, `verdict` and `port`; others are ignored.
    pub fn from_query(params: &[(String, String)]) -> Result<Self, String> {
        let mut f = Self::default();
        for (k, v) in params {
            match k.as_str() {
                "pod" => f.pod = Some(v.clone()),
                "namespace" => f.namespace = Some(v.clone()),
                "verdict" => {
                    f.verdict = Some(
                        Verdict::parse(v)
                            .ok_or_else(|| format!("verdict {v}: allowed or dropped"))?,
                    );
                }
                "port" => f.port = Some(v.parse().map_err(|_| format!("port {v}: a number"))?),
                _ => {}
            }
        }
        Ok(f)
    }

    /// The inverse of [`FlowFilter::from_query`].
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(p) = &self.pod {
            out.push(("pod", p.clone()));
        }
        if let Some(ns) = &self.namespace {
            out.push(("namespace", ns.clone()));
        }
        if let Some(v) = self.verdict {
            out.push(("verdict", v.name().to_owned()));
        }
        if let Some(p) = self.port {
            out.push(("port", p.to_string()));
        }
        out
    }
}

impl fmt::Display for FlowPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(ip) = self.ip else {
            return f.write_str("?");
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        match &self.name {
            Some(name) => write!(f, "{name}{port} ({ip})"),
            None if ip.is_ipv6() && self.port.is_some() => write!(f, "[{ip}]{port}"),
            None => write!(f, "{ip}{port}"),
        }
    }
}

/// One line, `hubble observe` style: time, source → destination (and the Service it was sent
/// to), protocol, verdict, why.
impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Milliseconds are enough to read; the JSON keeps nanoseconds.
        let time = self.time.get(..23).unwrap_or(&self.time);
        let flags = self
            .tcp_flags
            .as_deref()
            .map(|t| format!(" {t}"))
            .unwrap_or_default();
        let verdict = self.verdict.name().to_ascii_uppercase();
        let via = self
            .service
            .as_deref()
            .map(|s| format!(" via service {s}"))
            .unwrap_or_default();
        write!(
            f,
            "{time}Z  {} -> {}{via}  {}{flags}  {}  {verdict} {}: {}",
            self.src, self.dst, self.proto, self.direction, self.reason, self.summary
        )
    }
}

#[cfg(test)]
mod tests;
