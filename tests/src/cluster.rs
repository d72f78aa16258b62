//! A two-node cluster in network namespaces, with an outside client: what `NodePort`,
//! load-balancer and external IPs are reached from.
//!
//! ```text
//!                          lan netns: bridge br0 (the underlay)
//!          ┌───────────────────────────┼──────────────────────────────┐
//!  node1 netns eth0               node2 netns eth0                client netns eth0
//!  10.100.0.1/24, fd00:100::1/64  10.100.0.2/24, fd00:100::2/64   10.100.0.100, .101 /24
//!  10.98.2.0/24 via 10.100.0.2    10.98.1.0/24 via 10.100.0.1     fd00:100::100, ::101 /64
//!  fd98:2::/64 via fd00:100::2    fd98:1::/64 via fd00:100::1     10.98.N.0/24 via node N
//!  default via 10.100.0.254       default via 10.100.0.254        fd98:N::/64 via node N
//!  wvI ── pods 10.98.1.I+1,       wvI ── pods 10.98.2.I+1,        10.100.1.0/24 and
//!         fd98:1::I+1                    fd98:2::I+1              fd00:100:1::/64 via a node
//! ```
//!
//! Each node is wired for its pods exactly as the one-node [`crate::Topology`] wires its node
//! (veth pairs, host routes, proxy ARP, `fe80::1` as the pods' IPv6 gateway), with its own pod
//! range, and routes the other node's range through that node's uplink address, as a CNI in
//! direct-routing mode does. The client stands for the world outside the cluster: it reaches
//! pods by their addresses through the node that hosts them, and load-balancer and external
//! IPs ([`EXTERNAL_V4`], [`EXTERNAL_V6`]) through whichever node it is told
//! ([`Cluster::route_external`]), as a router that learnt them from BGP or a load balancer
//! would. It also owns the LAN's router addresses (the nodes' default gateway), so that the
//! nodes' uplink is the interface of their default routes, as on a real node; nothing is
//! forwarded there.
//!
//! Every pod runs the echo servers of [`crate::Topology`]'s pods, whose answers name the pod
//! and the source address it saw (see [`crate::Answer`]).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::agent::{Agent, AgentOptions};
use crate::manifests;
use crate::netns::{Netns, RunTag};
use crate::probe::Family;
use crate::servers::EchoServers;
use crate::topology::{self, Pod, PodSpec};

/// The nodes' names, as pods' `spec.nodeName` and the agents' `--node-name` give them.
pub const NODES: [&str; 2] = ["node1", "node2"];
/// Each node's uplink, the interface plugged into the underlay: what `weir run --uplink`
/// names.
pub const UPLINK: &str = "eth0";

/// The client's addresses, the first one its default source; the second stands for another
/// client, for source-range and policy tests.
pub const CLIENT_IPV4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(10, 100, 0, 100),
    Ipv4Addr::new(10, 100, 0, 101),
];
/// The client's IPv6 addresses, as [`CLIENT_IPV4`].
pub const CLIENT_IPV6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x100),
    Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x101),
];
/// Range of load-balancer and external IPs (10.100.1.0/24): nothing owns them, the client
/// routes them to a node.
pub const EXTERNAL_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 100, 1, 0), 24);
/// IPv6 range of load-balancer and external IPs (`fd00:100:1::/64`).
pub const EXTERNAL_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0), 64);

/// The underlay's prefix lengths.
const UNDERLAY_PREFIX_V4: u8 = 24;
const UNDERLAY_PREFIX_V6: u8 = 64;
/// The LAN's router, the nodes' default gateway; owned by the client namespace.
const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 254);
const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0xfe);
/// The bridge in the `lan` namespace.
const BRIDGE: &str = "br0";
/// Pods per node: the host part of a /24, less the network and broadcast addresses.
const MAX_PODS_PER_NODE: usize = 253;

/// A node of the cluster: its namespace and uplink addresses.
#[derive(Debug)]
pub struct ClusterNode {
    name: &'static str,
    /// 1 for `node1`: the last byte of its uplink addresses and the third of its pod range.
    number: u8,
    netns: Netns,
}

impl ClusterNode {
    /// The node's name (`node1`, `node2`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The node's namespace, where its agent runs.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The node's address of `family` on its uplink: its `InternalIP`, where node ports answer.
    pub fn ip(&self, family: Family) -> IpAddr {
        uplink_ip(self.number, family)
    }

    /// The node's pod range of `family`: 10.98.N.0/24 or `fd98:N::/64`.
    pub fn pod_cidr(&self, family: Family) -> (IpAddr, u8) {
        match family {
            Family::V4 => (Ipv4Addr::new(10, 98, self.number, 0).into(), 24),
            Family::V6 => (
                Ipv6Addr::new(0xfd98, self.number.into(), 0, 0, 0, 0, 0, 0).into(),
                64,
            ),
        }
    }

    /// The addresses of the `index`th pod (from 0) of the node.
    fn pod_addresses(&self, index: usize) -> (Ipv4Addr, Ipv6Addr) {
        let host = u8::try_from(index + 1)
            .ok()
            .filter(|_| index < MAX_PODS_PER_NODE)
            .unwrap_or_else(|| panic!("more than {MAX_PODS_PER_NODE} pods on {}", self.name));
        (
            Ipv4Addr::new(10, 98, self.number, host),
            Ipv6Addr::new(0xfd98, self.number.into(), 0, 0, 0, 0, 0, host.into()),
        )
    }

    /// The Node object of the node: its uplink addresses as `InternalIP`s and its pod ranges.
    fn manifest(&self) -> String {
        let mut yaml = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: \"{}\"\nspec:\n  podCIDRs:\n",
            self.name
        );
        for family in Family::ALL {
            let (ip, len) = self.pod_cidr(family);
            writeln!(yaml, "    - \"{ip}/{len}\"").expect("writing to a String");
        }
        yaml.push_str("status:\n  addresses:\n");
        for family in Family::ALL {
            writeln!(
                yaml,
                "    - type: InternalIP\n      address: \"{}\"",
                self.ip(family)
            )
            .expect("writing to a String");
        }
        writeln!(
            yaml,
            "    - type: Hostname\n      address: \"{}\"",
            self.name
        )
        .expect("writing to a String");
        yaml
    }
}

/// The uplink address of node number `number` (1-based).
fn uplink_ip(number: u8, family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(10, 100, 0, number).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, number.into()).into(),
    }
}

/// Collects pods and the node each runs on, then builds the namespaces.
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    pods: Vec<PodSpec>,
}

impl ClusterBuilder {
    /// Adds pod `spec` on node `node` (one of [`NODES`]), which becomes its `spec.nodeName`.
    #[must_use]
    pub fn pod(mut self, node: &str, spec: PodSpec) -> Self {
        assert!(
            NODES.contains(&node),
            "no node {node} in the cluster ({NODES:?})"
        );
        crate::topology::check_new_pod(&self.pods, &spec);
        assert!(
            spec.addresses.is_none(),
            "pod {}: cluster pods take their node's next addresses",
            spec.id()
        );
        self.pods.push(PodSpec {
            node_name: Some(node.to_owned()),
            ..spec
        });
        self
    }

    /// Adds every spec of `specs` on node `node`, in order.
    #[must_use]
    pub fn pods(self, node: &str, specs: impl IntoIterator<Item = PodSpec>) -> Self {
        specs.into_iter().fold(self, |b, spec| b.pod(node, spec))
    }

    /// Creates the underlay, the nodes, the client and the pods, and starts the echo
    /// servers. Whatever was created is torn down if a step panics: each guard is a local
    /// until the cluster owns it, and locals drop in reverse order on unwinding too.
    pub fn build(self) -> Cluster {
        let tag = RunTag::random();
        let lan = Netns::new(&tag, "lan");
        configure_lan(&lan);
        let nodes: Vec<ClusterNode> = (1..)
            .zip(NODES)
            .map(|(number, name)| add_node(&tag, &lan, name, number))
            .collect();
        let client = Netns::new(&tag, "client");
        configure_client(&lan, &client);
        route_pod_ranges(&nodes, &client);
        let mut pods = Vec::new();
        for node in &nodes {
            let specs = self
                .pods
                .iter()
                .filter(|spec| spec.node_name.as_deref() == Some(node.name));
            for (index, spec) in specs.enumerate() {
                let addresses = node.pod_addresses(index);
                pods.push(topology::add_pod(
                    &tag,
                    &node.netns,
                    index,
                    spec.clone(),
                    addresses,
                ));
            }
        }
        let servers = pods.iter().map(topology::start_servers).collect();
        Cluster {
            _servers: servers,
            pods,
            client,
            nodes,
            lan,
        }
    }
}

/// A running two-node cluster. Dropping it stops the servers and deletes every namespace.
#[derive(Debug)]
pub struct Cluster {
    // Fields drop in declaration order: servers first (their threads hold the pod namespaces
    // alive), then the pods (deleting a pod namespace deletes its veth pair), the client and
    // the nodes (each deletion takes its uplink's bridge port along), and the underlay last.
    // The servers are held for their `Drop` alone.
    _servers: Vec<EchoServers>,
    pods: Vec<Pod>,
    client: Netns,
    nodes: Vec<ClusterNode>,
    lan: Netns,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Both nodes, `node1` first.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The node named `name`; panics when there is none.
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the cluster"))
    }

    /// The client's namespace: the world outside the cluster.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The underlay's namespace, which holds the bridge.
    pub fn lan(&self) -> &Netns {
        &self.lan
    }

    /// Every pod, those of `node1` first, each node's in declaration order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pods of node `node`.
    pub fn pods_on<'c>(&'c self, node: &'c str) -> impl Iterator<Item = &'c Pod> + 'c {
        self.pods
            .iter()
            .filter(move |p| p.spec().node_name.as_deref() == Some(node))
    }

    /// The pod with id `ns/name`; panics when there is none.
    pub fn pod(&self, id: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id} in the cluster"))
    }

    /// The node pod `id` runs on.
    pub fn node_of(&self, id: &str) -> &ClusterNode {
        let name = self.pod(id).spec().node_name.clone();
        self.node(name.as_deref().expect("cluster pods have a node"))
    }

    /// The client's address number `n` (0 or 1) of `family`.
    pub fn client_ip(&self, family: Family, n: usize) -> IpAddr {
        match family {
            Family::V4 => CLIENT_IPV4[n].into(),
            Family::V6 => CLIENT_IPV6[n].into(),
        }
    }

    /// Makes the client reach `ip` (a load-balancer or external IP) through node `node`,
    /// replacing whatever route it had for that address alone.
    pub fn route_external(&self, ip: IpAddr, node: &str) {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        self.route_via(&format!("{ip}/{len}"), node, ip.is_ipv4());
    }

    /// Makes the client reach the whole external range ([`EXTERNAL_V4`], [`EXTERNAL_V6`])
    /// through node `node` (addresses given a route of their own keep it).
    pub fn route_external_range(&self, node: &str) {
        let (v4, len4) = EXTERNAL_V4;
        let (v6, len6) = EXTERNAL_V6;
        self.route_via(&format!("{v4}/{len4}"), node, true);
        self.route_via(&format!("{v6}/{len6}"), node, false);
    }

    fn route_via(&self, prefix: &str, node: &str, ipv4: bool) {
        let family = if ipv4 { Family::V4 } else { Family::V6 };
        let gateway = self.node(node).ip(family).to_string();
        self.client
            .ip(&["route", "replace", prefix, "via", &gateway, "dev", "eth0"]);
    }

    /// Writes the Namespace and Pod manifests of every pod (each with its `spec.nodeName`)
    /// and a Node manifest per node into `dir`: one directory that both agents read.
    pub fn write_manifests(&self, dir: &Path) {
        manifests::write_all(dir, &self.pods);
        for node in &self.nodes {
            manifests::write_atomic(dir, &format!("node-{}.yaml", node.name), &node.manifest());
        }
    }

    /// Starts `weir run` on node `node` with `options`, its name (`--node-name`) and its
    /// uplink (`--uplink eth0`), reading `manifests`; does not wait for it to be ready.
    pub fn start_agent(&self, node: &str, options: &AgentOptions, manifests: &Path) -> Agent<'_> {
        options
            .clone()
            .arg("--node-name")
            .arg(node)
            .arg("--uplink")
            .arg(UPLINK)
            .start_in(self.node(node).netns(), manifests)
    }

    /// Starts an agent on every node (as [`Cluster::start_agent`]), all reading `manifests`,
    /// and waits until each is ready. Agents of different nodes share nothing: each has its
    /// own namespace for its health port and, launched privately, its own mounts for pins.
    pub fn start_agents(&self, options: &AgentOptions, manifests: &Path) -> Vec<Agent<'_>> {
        let mut agents: Vec<Agent<'_>> = NODES
            .iter()
            .map(|node| self.start_agent(node, options, manifests))
            .collect();
        for agent in &mut agents {
            agent.wait_ready();
        }
        agents
    }
}

/// The underlay: a bridge, up, that forwards at once (no STP) and floods multicast (no
/// snooping without a querier to learn from, so neighbour discovery always gets through).
fn configure_lan(lan: &Netns) {
    topology::disable_dad(lan);
    lan.ip_batch(&format!(
        "link set lo up\n\
         link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0\n\
         link set {BRIDGE} up\n"
    ));
}

/// Plugs a new veth pair into the bridge: `port` on the bridge side, `eth0` in `netns`.
fn plug(lan: &Netns, port: &str, netns: &Netns) {
    lan.ip_batch(&format!(
        "link add {port} type veth peer name {UPLINK} netns {}\n\
         link set {port} master {BRIDGE}\n\
         link set {port} up\n",
        netns.name()
    ));
}

/// Creates node `name`, plugs its uplink into the underlay and addresses it.
fn add_node(tag: &RunTag, lan: &Netns, name: &'static str, number: u8) -> ClusterNode {
    let node = ClusterNode {
        name,
        number,
        netns: Netns::new(tag, name),
    };
    // Before the uplink exists: it copies the namespace's defaults when it appears.
    topology::configure_router(&node.netns);
    plug(lan, name, &node.netns);
    node.netns.ip_batch(&format!(
        "addr add {}/{UNDERLAY_PREFIX_V4} dev {UPLINK}\n\
         addr add {}/{UNDERLAY_PREFIX_V6} dev {UPLINK} nodad\n\
         link set {UPLINK} up\n\
         route add default via {ROUTER_V4} dev {UPLINK}\n\
         route add default via {ROUTER_V6} dev {UPLINK}\n",
        node.ip(Family::V4),
        node.ip(Family::V6),
    ));
    node
}

/// The client's addresses: the first of each family is its default source (the others are
/// IPv4 secondaries, and IPv6 addresses with no preferred lifetime, which the kernel chooses
/// as a source only when bound to), then the router's.
fn configure_client(lan: &Netns, client: &Netns) {
    topology::disable_dad(client);
    client.ip(&["link", "set", "lo", "up"]);
    plug(lan, "client", client);
    let mut batch = String::new();
    for ip in CLIENT_IPV4.iter().chain([&ROUTER_V4]) {
        writeln!(batch, "addr add {ip}/{UNDERLAY_PREFIX_V4} dev {UPLINK}")
            .expect("writing to a String");
    }
    let [first, rest @ ..] = CLIENT_IPV6;
    writeln!(
        batch,
        "addr add {first}/{UNDERLAY_PREFIX_V6} dev {UPLINK} nodad"
    )
    .expect("writing to a String");
    for ip in rest.iter().chain([&ROUTER_V6]) {
        writeln!(
            batch,
            "addr add {ip}/{UNDERLAY_PREFIX_V6} dev {UPLINK} nodad preferred_lft 0"
        )
        .expect("writing to a String");
    }
    writeln!(batch, "link set {UPLINK} up").expect("writing to a String");
    client.ip_batch(&batch);
}

/// Each node's pod ranges, routed through it by the other nodes and the client; the external
/// range, by the client through the first node until a test says otherwise.
fn route_pod_ranges(nodes: &[ClusterNode], client: &Netns) {
    for node in nodes {
        let mut batch = String::new();
        for family in Family::ALL {
            let (ip, len) = node.pod_cidr(family);
            writeln!(
                batch,
                "route add {ip}/{len} via {} dev {UPLINK}",
                node.ip(family)
            )
            .expect("writing to a String");
        }
        client.ip_batch(&batch);
        for other in nodes.iter().filter(|o| o.name != node.name) {
            other.netns.ip_batch(&batch);
        }
    }
    let first = &nodes[0];
    let (v4, len4) = EXTERNAL_V4;
    let (v6, len6) = EXTERNAL_V6;
    client.ip_batch(&format!(
        "route add {v4}/{len4} via {} dev {UPLINK}\n\
         route add {v6}/{len6} via {} dev {UPLINK}\n",
        first.ip(Family::V4),
        first.ip(Family::V6)
    ));
}
