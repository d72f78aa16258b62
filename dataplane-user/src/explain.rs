//! `weir explain`: which rule allows or denies a connection, and why, found by the very lookups
//! the eBPF programs make, on the maps they read.
//!
//! [`judge`] follows `process` of `dataplane-ebpf/src/main.rs` for the first packet of a new
//! connection, on one local pod's side: endpoint lookup of the local pod, then of the peer
//! (node, the pod itself, another pod), the ipBlock trie for any other peer, the isolation
//! flag, and the six policy-key lookups in the programs' order. Both languages hold the same
//! rules; `tests/tests/explain.rs` holds them to the same verdicts with `BPF_PROG_TEST_RUN`
//! over a whole reachability matrix. Connection tracking plays no part: the question is
//! whether policy lets a connection start.

use std::fmt;
use std::net::IpAddr;

use dataplane_abi::{
    Addr, CidrInfo, Direction, DropReason, EndpointInfo, PEER_CLASS_ANY, PEER_CLASS_WORLD,
    PORT_ANY, PassReason, PolicyKey, PolicyValue, endpoint_flags, proto,
};
use serde::{Deserialize, Serialize};

use crate::catalog::{self, Catalog};
use crate::compile::{self, MapSet};
use crate::dataplane::{DataplaneError, MapReader};

/// The maps a policy decision reads, as the programs look them up, in one generation.
pub trait PolicyMaps {
    /// `WEIR_EP_V2[addr]`.
    fn endpoint(&self, addr: &Addr) -> Result<Option<EndpointInfo>, DataplaneError>;
    /// The longest prefix of `WEIR_CIDR_V2` holding `addr`.
    fn cidr(&self, addr: &Addr) -> Result<Option<CidrInfo>, DataplaneError>;
    /// `WEIR_POL_V2[key]`.
    fn policy(&self, key: &PolicyKey) -> Result<Option<PolicyValue>, DataplaneError>;
}

/// The kernel's maps in the generation packets read now: what is enforced.
pub struct Enforced<'a> {
    reader: &'a MapReader,
    slot: u32,
}

impl<'a> Enforced<'a> {
    /// The generation enforced now, read once, as a packet reads it once.
    ///
    /// # Errors
    ///
    /// The configuration map could not be read.
    pub fn now(reader: &'a MapReader) -> Result<Self, DataplaneError> {
        Ok(Self {
            reader,
            slot: reader.slot()?,
        })
    }
}

impl PolicyMaps for Enforced<'_> {
    fn endpoint(&self, addr: &Addr) -> Result<Option<EndpointInfo>, DataplaneError> {
        self.reader.endpoint(self.slot, addr)
    }
    fn cidr(&self, addr: &Addr) -> Result<Option<CidrInfo>, DataplaneError> {
        self.reader.cidr(self.slot, addr)
    }
    fn policy(&self, key: &PolicyKey) -> Result<Option<PolicyValue>, DataplaneError> {
        self.reader.policy(self.slot, key)
    }
}

/// A compiled state, before (or without) the kernel: what would be enforced.
impl PolicyMaps for MapSet {
    fn endpoint(&self, addr: &Addr) -> Result<Option<EndpointInfo>, DataplaneError> {
        Ok(self.endpoints.get(addr).copied())
    }
    fn cidr(&self, addr: &Addr) -> Result<Option<CidrInfo>, DataplaneError> {
        // Longest prefix first, as the trie answers.
        Ok((0..=128u32)
            .rev()
            .find_map(|len| self.cidrs.get(&(len, mask(addr, len))).copied()))
    }
    fn policy(&self, key: &PolicyKey) -> Result<Option<PolicyValue>, DataplaneError> {
        Ok(self.policy.get(key).copied())
    }
}

/// `addr` with all but its first `len` bits cleared.
fn mask(addr: &Addr, len: u32) -> Addr {
    let bits = u128::from_be_bytes(*addr);
    let kept = if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - len))
    };
    kept.to_be_bytes()
}

/// The first packet of a connection: from `src` to `dst`, protocol `proto`, destination port
/// `port` (0 for protocols without ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// Address of the sender.
    pub src: IpAddr,
    /// Address of the receiver, of the same family as `src`.
    pub dst: IpAddr,
    /// IANA protocol number (see [`dataplane_abi::proto`]).
    pub proto: u8,
    /// Destination port, host byte order; 0 for protocols without ports.
    pub port: u16,
}

/// One policy-map lookup, in the order the program makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The `WEIR_POL_V2` key looked up.
    pub key: PolicyKey,
    /// The value stored under it; `None` on a miss.
    pub found: Option<PolicyValue>,
}

/// How the program on a local pod's interface judges the query's first packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// Which program: the sender's egress or the receiver's ingress.
    pub direction: Direction,
    /// The local pod's interface, which is also its endpoint id.
    pub ifindex: u32,
    /// What the program does with the packet: passes it, for a reason, or drops it.
    pub outcome: Result<PassReason, DropReason>,
    /// The peer's class, when policy had to look at it.
    pub peer_class: Option<u32>,
    /// The policy lookups made, up to the first hit.
    pub lookups: Vec<Lookup>,
    /// The entry that allowed the packet.
    pub allowed_by: Option<PolicyValue>,
}

/// How the program of `dir` judges the first packet of `q`, or `None` when the pod on that
/// side (the sender for egress, the receiver for ingress) is not a pod of this node: then no
/// program of this node sees it that way.
pub fn judge(
    maps: &impl PolicyMaps,
    q: &Query,
    dir: Direction,
) -> Result<Option<Judgement>, DataplaneError> {
    let (src, dst) = (compile::to_addr(q.src), compile::to_addr(q.dst));
    let (local_addr, remote_addr) = match dir {
        Direction::Egress => (src, dst),
        Direction::Ingress => (dst, src),
    };
    let Some(local) = maps
        .endpoint(&local_addr)?
        .filter(|ep| ep.flags & endpoint_flags::LOCAL_POD != 0)
    else {
        return Ok(None);
    };
    let mut j = Judgement {
        direction: dir,
        ifindex: local.ifindex,
        outcome: Ok(PassReason::LinkLocal),
        peer_class: None,
        lookups: Vec::new(),
        allowed_by: None,
    };
    if is_link_scope(&src) || is_link_scope(&dst) {
        return Ok(Some(j));
    }
    let class = match maps.endpoint(&remote_addr)? {
        Some(ep) if ep.flags & endpoint_flags::HOST != 0 => {
            j.outcome = Ok(PassReason::NodeTraffic);
            return Ok(Some(j));
        }
        Some(ep) if ep.flags & endpoint_flags::LOCAL_POD != 0 && ep.endpoint == local.endpoint => {
            j.outcome = Ok(PassReason::SelfTraffic);
            return Ok(Some(j));
        }
        Some(ep) => ep.peer_class,
        None => maps
            .cidr(&remote_addr)?
            .map_or(PEER_CLASS_WORLD, |c| c.peer_class),
    };
    j.peer_class = Some(class);
    let isolated = match dir {
        Direction::Ingress => endpoint_flags::INGRESS_ISOLATED,
        Direction::Egress => endpoint_flags::EGRESS_ISOLATED,
    };
    if local.flags & isolated == 0 {
        j.outcome = Ok(PassReason::NotIsolated);
        return Ok(Some(j));
    }
    for key in policy_keys(local.endpoint, dir, class, q.proto, q.port) {
        let found = maps.policy(&key)?;
        j.lookups.push(Lookup { key, found });
        if found.is_some() {
            j.allowed_by = found;
            j.outcome = Ok(PassReason::PolicyAllowed);
            return Ok(Some(j));
        }
    }
    j.outcome = Err(DropReason::PolicyDenied);
    Ok(Some(j))
}

/// The policy keys the program tries, in its order: the peer's class then any peer; for each,
/// the exact port, any port of the protocol, any protocol. Protocols without ports (ICMP)
/// match only rules without `ports`.
fn policy_keys(endpoint: u32, dir: Direction, class: u32, l4: u8, port: u16) -> Vec<PolicyKey> {
    let has_ports = matches!(l4, proto::TCP | proto::UDP | proto::SCTP);
    let mut keys = Vec::with_capacity(6);
    for peer_class in [class, PEER_CLASS_ANY] {
        let key = |proto, port_h| PolicyKey {
            endpoint,
            peer_class,
            port_h,
            proto,
            direction: dir as u8,
        };
        if has_ports {
            keys.push(key(l4, port));
            keys.push(key(l4, PORT_ANY));
        }
        keys.push(key(proto::ANY, PORT_ANY));
    }
    keys
}

/// `parse::is_link_scope` of the programs: link-local, multicast, broadcast, unspecified.
fn is_link_scope(addr: &Addr) -> bool {
    match catalog::to_ip(addr) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a >= 224 || (a == 169 && b == 254) || a == 0
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local(),
    }
}

/// One end of the connection, with its name when it has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// The address the query used.
    pub ip: IpAddr,
    /// `namespace/name` of a pod, or `node`.
    pub name: Option<String>,
}

/// One policy lookup, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupLine {
    /// The peer class tried, or `any`.
    pub peer: String,
    /// The protocol tried, or `any`.
    pub proto: String,
    /// The port tried, or `any`.
    pub port: String,
    /// The policy and rule found there (`x/p spec.ingress[0]`), if any.
    pub found: Option<String>,
}

/// How one side of the connection judges it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// `egress` (the sender's) or `ingress` (the receiver's).
    pub direction: String,
    /// The pod on that side, when it is known.
    pub pod: Option<String>,
    /// Whether a program of this node judges it (the pod is local).
    pub judged: bool,
    /// `allowed` or `dropped`, when judged.
    pub verdict: Option<String>,
    /// The pass or drop reason's name, when judged.
    pub reason: Option<String>,
    /// One sentence.
    pub summary: String,
    /// The policy that allowed it (`namespace/name`), when a rule did.
    pub policy: Option<String>,
    /// That policy's rule, as a field path: `spec.ingress[1]`.
    pub rule: Option<String>,
    /// The policies that isolate the pod in this direction (`namespace/name`).
    pub isolated_by: Vec<String>,
    /// The peer's class, when policy had to look at it.
    pub peer_class: Option<u32>,
    /// The policy lookups made, up to the first hit.
    pub lookups: Vec<LookupLine>,
}

/// The answer to `weir explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The sender.
    pub src: Party,
    /// The receiver.
    pub dst: Party,
    /// The protocol's name: `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`.
    pub proto: String,
    /// Destination port; 0 for protocols without ports.
    pub port: u16,
    /// `allowed`, `dropped`, or `not judged here` when neither end is a pod of this node.
    pub verdict: String,
    /// The sender's egress, then the receiver's ingress.
    pub sides: [Side; 2],
}

/// Explains `q` from the maps, naming what the numbers stand for with `names`.
pub fn explain(
    maps: &impl PolicyMaps,
    names: &Catalog,
    q: &Query,
) -> Result<Explanation, DataplaneError> {
    let egress = judge(maps, q, Direction::Egress)?;
    let ingress = judge(maps, q, Direction::Ingress)?;
    let verdict = match (&egress, &ingress) {
        (None, None) => "not judged here",
        _ if [&egress, &ingress]
            .into_iter()
            .flatten()
            .any(|j| j.outcome.is_err()) =>
        {
            "dropped"
        }
        _ => "allowed",
    };
    let party = |ip| Party {
        ip,
        name: names.name_of(ip),
    };
    Ok(Explanation {
        src: party(q.src),
        dst: party(q.dst),
        proto: catalog::proto_name(q.proto),
        port: q.port,
        verdict: verdict.to_owned(),
        sides: [
            side(names, Direction::Egress, q.src, egress.as_ref()),
            side(names, Direction::Ingress, q.dst, ingress.as_ref()),
        ],
    })
}

fn side(names: &Catalog, dir: Direction, ip: IpAddr, j: Option<&Judgement>) -> Side {
    let way = catalog::direction_name(dir);
    let Some(j) = j else {
        let who = names.name_of(ip);
        let summary = match who.as_deref() {
            Some("node") => "the node itself: no policy applies".to_owned(),
            Some(pod) => format!("{pod} is not on this node: its own node judges its {way}"),
            None => format!("{ip} is not a pod of this node: nothing here judges its {way}"),
        };
        return Side {
            direction: way.to_owned(),
            pod: who,
            judged: false,
            verdict: None,
            reason: None,
            summary,
            policy: None,
            rule: None,
            isolated_by: Vec::new(),
            peer_class: None,
            lookups: Vec::new(),
        };
    };
    let because = names.because(j.ifindex, dir, j.outcome, j.allowed_by);
    let (verdict, reason) = match j.outcome {
        Ok(r) => ("allowed", r.name()),
        Err(r) => ("dropped", r.name()),
    };
    Side {
        direction: way.to_owned(),
        pod: names.local_pod(j.ifindex).map(str::to_owned),
        judged: true,
        verdict: Some(verdict.to_owned()),
        reason: Some(reason.to_owned()),
        summary: because.summary,
        policy: because.policy,
        rule: because.rule,
        isolated_by: because.isolated_by,
        peer_class: j.peer_class,
        lookups: j.lookups.iter().map(|l| lookup_line(names, l)).collect(),
    }
}

fn lookup_line(names: &Catalog, l: &Lookup) -> LookupLine {
    let any_or = |is_any: bool, s: String| if is_any { "any".to_owned() } else { s };
    let way = Direction::from_u8(l.key.direction).map_or("?", catalog::direction_name);
    LookupLine {
        peer: any_or(
            l.key.peer_class == PEER_CLASS_ANY,
            format!("class {}", l.key.peer_class),
        ),
        proto: any_or(l.key.proto == proto::ANY, catalog::proto_name(l.key.proto)),
        port: any_or(l.key.port_h == PORT_ANY, l.key.port_h.to_string()),
        found: l.found.map(|v| {
            let policy = names
                .policy(v.policy)
                .map_or_else(|| format!("#{}", v.policy), |p| p.name.clone());
            format!("{policy} spec.{way}[{}]", v.rule)
        }),
    }
}

/// Why a query could not be understood: unknown pod, bad port, no common address family.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    /// `SRC` or `DST` is neither an address nor the `namespace/name` of a known pod.
    #[error("{what} is neither an IP address nor a known pod (namespace/name)")]
    UnknownEndpoint {
        /// What was typed.
        what: String,
    },
    /// The pod named has no address yet.
    #[error("pod {pod} has no address yet")]
    NoAddress {
        /// `namespace/name` of the pod.
        pod: String,
    },
    /// The two ends have no address of the same family.
    #[error("{src} and {dst} have no address family in common")]
    NoCommonFamily {
        /// The sender, as typed.
        src: String,
        /// The receiver, as typed.
        dst: String,
    },
    /// The port is not `PORT/PROTO` or `icmp`.
    #[error("{text}: expected PORT/PROTO (80/tcp, 53/udp, 9000/sctp) or icmp")]
    BadPort {
        /// What was typed.
        text: String,
    },
}

/// Builds a query from what a person types: `SRC` and `DST` as addresses or `namespace/name`
/// of pods (an address of the other side's family is picked; IPv4 when both have both), and
/// `PORT/PROTO` (`80/tcp`, `53/UDP`, `80` for TCP, `icmp`).
pub fn resolve(names: &Catalog, src: &str, dst: &str, port: &str) -> Result<Query, QueryError> {
    let (src_ip, dst_ip) = pick_addresses(&endpoint(names, src)?, &endpoint(names, dst)?)
        .ok_or_else(|| QueryError::NoCommonFamily {
            src: src.to_owned(),
            dst: dst.to_owned(),
        })?;
    let (proto, port) = parse_port(port, src_ip.is_ipv4())?;
    Ok(Query {
        src: src_ip,
        dst: dst_ip,
        proto,
        port,
    })
}

/// The addresses `text` may stand for.
fn endpoint(names: &Catalog, text: &str) -> Result<Vec<IpAddr>, QueryError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs = names
        .addresses(text)
        .ok_or_else(|| QueryError::UnknownEndpoint {
            what: text.to_owned(),
        })?;
    if addrs.is_empty() {
        return Err(QueryError::NoAddress {
            pod: text.to_owned(),
        });
    }
    Ok(addrs.to_vec())
}

fn pick_addresses(src: &[IpAddr], dst: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    [true, false].into_iter().find_map(|v4| {
        let s = src.iter().find(|ip| ip.is_ipv4() == v4)?;
        let d = dst.iter().find(|ip| ip.is_ipv4() == v4)?;
        Some((*s, *d))
    })
}

/// `80/tcp` → (TCP, 80); `icmp` → ICMP of the family, port 0.
fn parse_port(text: &str, v4: bool) -> Result<(u8, u16), QueryError> {
    let bad = || QueryError::BadPort {
        text: text.to_owned(),
    };
    let lower = text.to_ascii_lowercase();
    if matches!(lower.as_str(), "icmp" | "icmpv6" | "ping") {
        return Ok((if v4 { proto::ICMP } else { proto::ICMPV6 }, 0));
    }
    let (port, name) = lower.split_once('/').unwrap_or((&lower, "tcp"));
    let l4 = match name {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "sctp" => proto::SCTP,
        _ => return Err(bad()),
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((l4, port))
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} ({})", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 {
            String::new()
        } else {
            format!("/{}", self.port)
        };
        writeln!(
            f,
            "{} → {} {}{port}: {}",
            self.src, self.dst, self.proto, self.verdict
        )?;
        for side in &self.sides {
            let who = side.pod.as_deref().unwrap_or("?");
            match &side.verdict {
                Some(v) => writeln!(
                    f,
                    "  {} of {who}: {}, {}",
                    side.direction,
                    v.to_ascii_uppercase(),
                    side.summary
                )?,
                None => writeln!(f, "  {}: {}", side.direction, side.summary)?,
            }
            match side.peer_class {
                Some(0) => writeln!(f, "    peer class 0: no peer of any rule matches it")?,
                Some(class) => writeln!(f, "    peer class {class}")?,
                None => {}
            }
            for l in &side.lookups {
                let found = l.found.as_deref().unwrap_or("miss");
                let peer = match l.peer.as_str() {
                    "any" => "any peer".to_owned(),
                    class => format!("peer {class}"),
                };
                let proto = match l.proto.as_str() {
                    "any" => "any protocol",
                    name => name,
                };
                writeln!(f, "    lookup ({peer}, {proto}, port {}): {found}", l.port)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::compile::NodeView;
    use crate::model::{
        DesiredState, LabelSelector, NamespaceScope, Peer, Pod, Policy, PortMatch, PortSpec,
        Protocol, Rule,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// x/a (local, ifindex 3) allows TCP 80 from x/b and UDP 53 from 192.168.0.0/16 except
    /// 192.168.1.0/24; x/b is remote. Node 10.0.255.1.
    fn fixture() -> (MapSet, Catalog) {
        let labels = |v: &str| [("app".to_owned(), v.to_owned())].into();
        let pod = |name: &str, ips: &[&str]| Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: labels(name),
            ips: ips.iter().map(|s| ip(s)).collect(),
            ..Pod::default()
        };
        let port = |protocol, p| PortMatch {
            protocol,
            port: Some(PortSpec::Range { first: p, last: p }),
        };
        let state = DesiredState {
            pods: vec![
                Arc::new(pod("a", &["10.0.0.1", "fd00::1"])),
                Arc::new(pod("b", &["10.0.0.2", "fd00::2"])),
            ],
            policies: vec![Arc::new(Policy {
                namespace: "x".into(),
                name: "a-in".into(),
                pod_selector: LabelSelector {
                    match_labels: labels("a"),
                    ..LabelSelector::default()
                },
                ingress: Some(vec![
                    Rule {
                        peers: vec![Peer::Pods {
                            namespaces: NamespaceScope::Own("x".into()),
                            pods: LabelSelector {
                                match_labels: labels("b"),
                                ..LabelSelector::default()
                            },
                        }],
                        ports: vec![port(Protocol::Tcp, 80)],
                    },
                    Rule {
                        peers: vec![Peer::IpBlock {
                            cidr: "192.168.0.0/16".parse().unwrap(),
                            except: vec!["192.168.1.0/24".parse().unwrap()],
                        }],
                        ports: vec![port(Protocol::Udp, 53)],
                    },
                ]),
                ..Policy::default()
            })],
            ..DesiredState::default()
        };
        let node = NodeView {
            host_addrs: BTreeSet::from([ip("10.0.255.1")]),
            local_routes: [(ip("10.0.0.1"), 3), (ip("fd00::1"), 3)].into(),
            ..NodeView::default()
        };
        let maps = compile::compile(&state, &node).unwrap();
        let names = Catalog::new(&state, &maps);
        (maps, names)
    }

    fn query(names: &Catalog, src: &str, dst: &str, port: &str) -> Query {
        resolve(names, src, dst, port).unwrap()
    }

    #[test]
    fn an_allowed_connection_names_its_policy_rule_and_lookups() {
        let (maps, names) = fixture();
        let e = explain(&maps, &names, &query(&names, "x/b", "x/a", "80/tcp")).unwrap();
        assert_eq!(e.verdict, "allowed");
        let [egress, ingress] = &e.sides;
        assert!(!egress.judged);
        assert_eq!(
            egress.summary,
            "x/b is not on this node: its own node judges its egress"
        );
        assert_eq!(ingress.reason.as_deref(), Some("policy_allowed"));
        assert_eq!(ingress.policy.as_deref(), Some("x/a-in"));
        assert_eq!(ingress.rule.as_deref(), Some("spec.ingress[0]"));
        assert_eq!(ingress.lookups.len(), 1, "the first lookup hits");
        assert_eq!(e.src.ip, ip("10.0.0.2"), "IPv4 when both ends have it");
    }

    #[test]
    fn a_denied_connection_tries_six_keys_and_names_the_isolating_policy() {
        let (maps, names) = fixture();
        let e = explain(&maps, &names, &query(&names, "x/b", "x/a", "81/tcp")).unwrap();
        assert_eq!(e.verdict, "dropped");
        let ingress = &e.sides[1];
        assert_eq!(ingress.lookups.len(), 6);
        assert!(ingress.lookups.iter().all(|l| l.found.is_none()));
        assert_eq!(
            ingress.summary,
            "isolated by policy x/a-in and nothing allows it"
        );
    }

    #[test]
    fn ip_blocks_honour_except_through_the_longest_prefix() {
        let (maps, names) = fixture();
        let inside = explain(
            &maps,
            &names,
            &query(&names, "192.168.5.5", "x/a", "53/udp"),
        );
        assert_eq!(
            inside.unwrap().sides[1].rule.as_deref(),
            Some("spec.ingress[1]")
        );
        let except = explain(
            &maps,
            &names,
            &query(&names, "192.168.1.5", "x/a", "53/udp"),
        );
        assert_eq!(except.unwrap().verdict, "dropped");
    }

    #[test]
    fn node_self_and_unisolated_directions() {
        let (maps, names) = fixture();
        let from_node = explain(&maps, &names, &query(&names, "10.0.255.1", "x/a", "22")).unwrap();
        assert_eq!(from_node.sides[1].reason.as_deref(), Some("node_traffic"));
        let out = explain(&maps, &names, &query(&names, "x/a", "x/b", "443/tcp")).unwrap();
        assert_eq!(out.sides[0].reason.as_deref(), Some("not_isolated"));
        assert_eq!(
            out.sides[0].summary,
            "not isolated: no policy selects x/a for egress"
        );
        let to_self = explain(&maps, &names, &query(&names, "fd00::1", "x/a", "80")).unwrap();
        assert_eq!(to_self.sides[1].reason.as_deref(), Some("self_traffic"));
        assert_eq!(
            to_self.dst.ip,
            ip("fd00::1"),
            "the other side's family is picked"
        );
    }

    #[test]
    fn icmp_matches_only_rules_without_ports() {
        let (maps, names) = fixture();
        let e = explain(&maps, &names, &query(&names, "x/b", "x/a", "icmp")).unwrap();
        assert_eq!(e.proto, "ICMP");
        assert_eq!(
            e.sides[1].lookups.len(),
            2,
            "any protocol, exact then any peer"
        );
        assert_eq!(e.verdict, "dropped");
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let (_, names) = fixture();
        assert_eq!(
            resolve(&names, "x/nope", "x/a", "80"),
            Err(QueryError::UnknownEndpoint {
                what: "x/nope".into()
            })
        );
        assert!(matches!(
            resolve(&names, "x/b", "x/a", "80/icmp"),
            Err(QueryError::BadPort { .. })
        ));
        assert!(matches!(
            resolve(&names, "10.0.0.9", "fd00::1", "80"),
            Err(QueryError::NoCommonFamily { .. })
        ));
    }
}
