//! A one-node cluster in network namespaces, wired the way a CNI plugin (Calico-style) wires
//! pods, and modelled on the upstream Kubernetes `NetworkPolicy` e2e suite.
//!
//! ```text
//!  pod netns x/a                     node netns
//!  eth0 10.99.0.1/32, fd99::1/128 ── wv0  proxy_arp, fe80::1/64, routes 10.99.0.1/32, fd99::1/128
//!  default via 169.254.1.1 onlink    lo   10.99.255.1/32, fd99::ff:1/128 (the node address)
//!  default via fe80::1               ip_forward, IPv6 forwarding
//! ```
//!
//! Pods answer ARP and NDP for their own /32 and /128 only; the node side answers for the
//! gateways (proxy ARP for 169.254.1.1, and owns `fe80::1`), so all pod traffic crosses the
//! node namespace, where Weir attaches its programs to the `wvN` devices.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::thread;

use crate::netns::{self, Netns, RunTag};
use crate::probe::{self, Case, Family, Proto};
use crate::reachability::{NODE, Reachability, TruthTable};
use crate::servers::EchoServers;
use crate::servers::PROBE_PORTS;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The node's own addresses: a global source for node → pod traffic.
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(10, 99, 255, 1);
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0xff, 1);
/// The gateway every pod routes through; nothing owns it, the node answers ARP by proxy.
const POD_GATEWAY_V4: &str = "169.254.1.1";
/// The IPv6 gateway, owned by every node-side veth.
const POD_GATEWAY_V6: &str = "fe80::1";

/// How many times a probe that should have passed is repeated before it counts as failed.
/// A connection that policy allows can still lose a race with a busy machine; a connection
/// that policy denies never passes by accident, so unexpected passes are never retried.
const FALSE_NEGATIVE_RETRIES: usize = 2;

/// A pod as Kubernetes sees it: its namespace, name, labels and its namespace's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub namespace_labels: Labels,
    /// Addresses from a manifest; `None`: the next free pair of the test range.
    pub addresses: Option<(Ipv4Addr, Ipv6Addr)>,
    /// Ports served on TCP and UDP.
    pub ports: Vec<u16>,
    /// Container port names other than the default `serve-<port>-<proto>`, by port and
    /// protocol: what a Service's named `targetPort` looks up.
    pub port_names: BTreeMap<(u16, Proto), String>,
    /// `spec.nodeName`: the node the pod runs on; `None` in a one-node topology, whose
    /// manifests leave it out.
    pub node_name: Option<String>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: Labels::new(),
            namespace_labels: Labels::new(),
            addresses: None,
            ports: PROBE_PORTS.to_vec(),
            port_names: BTreeMap::new(),
            node_name: None,
        }
    }

    /// Gives the pod these addresses instead of the next free pair.
    #[must_use]
    pub fn addresses(mut self, v4: Ipv4Addr, v6: Ipv6Addr) -> Self {
        self.addresses = Some((v4, v6));
        self
    }

    /// Serves these ports (TCP and UDP) instead of the probe ports.
    #[must_use]
    pub fn serving(mut self, ports: Vec<u16>) -> Self {
        self.ports = ports;
        self
    }

    /// Names container port `port` of `proto` `name` in the manifest (it must be served).
    #[must_use]
    pub fn port_name(mut self, port: u16, proto: Proto, name: &str) -> Self {
        assert!(
            self.ports.contains(&port),
            "pod {} names port {port}, which it does not serve",
            self.id()
        );
        self.port_names.insert((port, proto), name.to_owned());
        self
    }

    /// The name of container port `port` of `proto`: as given, else `serve-<port>-<proto>`.
    pub fn container_port_name(&self, port: u16, proto: Proto) -> String {
        self.port_names
            .get(&(port, proto))
            .cloned()
            .unwrap_or_else(|| format!("serve-{port}-{}", proto.lowercase()))
    }

    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    #[must_use]
    pub fn namespace_label(mut self, key: &str, value: &str) -> Self {
        self.namespace_labels
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// `namespace/name`, the id used by probes and truth tables.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The pods of the upstream e2e model: every name of `pods` in every namespace of
/// `namespaces`, labelled `pod: <name>`, in namespaces labelled `ns: <namespace>` and
/// `kubernetes.io/metadata.name: <namespace>` (as the API server labels every namespace).
pub fn upstream_model(namespaces: &[&str], pods: &[&str]) -> Vec<PodSpec> {
    namespaces
        .iter()
        .flat_map(|ns| {
            pods.iter().map(move |pod| {
                PodSpec::new(ns, pod)
                    .label("pod", pod)
                    .namespace_label("ns", ns)
                    .namespace_label("kubernetes.io/metadata.name", ns)
            })
        })
        .collect()
}

/// A pod of a running topology.
#[derive(Debug)]
pub struct Pod {
    spec: PodSpec,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    host_veth: String,
    netns: Netns,
}

impl Pod {
    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    pub fn id(&self) -> String {
        self.spec.id()
    }

    /// The pod's addresses, IPv4 first, as `status.podIPs` lists them.
    pub fn ips(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }

    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ipv4.into(),
            Family::V6 => self.ipv6.into(),
        }
    }

    /// The node-side end of the pod's veth pair, where a CNI's programs attach.
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

/// Where a probe starts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The node namespace, with the node's address as source.
    Node,
    /// A pod, by id (`ns/name`).
    Pod(String),
}

/// One probe: from a source to a pod, with the traffic of `case`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub from: Source,
    pub to: String,
    pub case: Case,
}

/// Panics unless `spec` may join `pods`: a new id, and its namespace's labels as the other pods
/// of that namespace declare them.
pub(crate) fn check_new_pod(pods: &[PodSpec], spec: &PodSpec) {
    assert!(
        pods.iter().all(|p| p.id() != spec.id()),
        "pod {} declared twice",
        spec.id()
    );
    if let Some(same_ns) = pods.iter().find(|p| p.namespace == spec.namespace) {
        assert_eq!(
            same_ns.namespace_labels, spec.namespace_labels,
            "pods of namespace {} disagree on its labels",
            spec.namespace
        );
    }
}

/// Collects pod specs, then builds the namespaces.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    pods: Vec<PodSpec>,
}

impl TopologyBuilder {
    /// Adds every spec of `specs`, in order.
    #[must_use]
    pub fn pods(self, specs: impl IntoIterator<Item = PodSpec>) -> Self {
        specs.into_iter().fold(self, Self::pod)
    }

    #[must_use]
    pub fn pod(mut self, spec: PodSpec) -> Self {
        check_new_pod(&self.pods, &spec);
        self.pods.push(spec);
        self
    }

    /// Creates the node and pod namespaces, wires them, and starts the probe servers.
    /// Whatever was created is torn down if a step panics.
    pub fn build(self) -> Topology {
        let tag = RunTag::random();
        let node = Netns::new(&tag, "node");
        configure_node(&node);
        let mut topology = Topology {
            servers: Vec::new(),
            pods: Vec::new(),
            node,
        };
        for (index, spec) in self.pods.into_iter().enumerate() {
            let pod = add_pod(&tag, &topology.node, index, spec, one_node_addresses(index));
            topology.pods.push(pod);
        }
        topology.servers = topology.pods.iter().map(start_servers).collect();
        topology
    }
}

/// A running one-node cluster. Dropping it stops the servers and deletes every namespace.
#[derive(Debug)]
pub struct Topology {
    // Fields drop in declaration order: servers first (their threads hold the pod
    // namespaces alive), then the pods (deleting a pod namespace deletes its veth pair),
    // then the node.
    servers: Vec<EchoServers>,
    pods: Vec<Pod>,
    node: Netns,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Pod ids (`ns/name`) in declaration order: the rows and columns of truth tables.
    pub fn pod_ids(&self) -> Vec<String> {
        self.pods.iter().map(Pod::id).collect()
    }

    /// The pod with id `ns/name`; panics when there is none.
    pub fn pod(&self, id: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id} in the topology"))
    }

    /// One probe from pod `from` to pod `to`; true when the echo came back.
    pub fn probe(&self, from: &str, to: &str, port: u16, proto: Proto, family: Family) -> bool {
        let case = Case {
            family,
            proto,
            port,
        };
        self.probe_all(&[Probe {
            from: Source::Pod(from.to_owned()),
            to: to.to_owned(),
            case,
        }])[0]
    }

    /// Runs all `probes` in parallel (a thread per source namespace, and inside it a thread
    /// per probe, all of which start in that namespace); results in the same order.
    pub fn probe_all(&self, probes: &[Probe]) -> Vec<bool> {
        let mut by_source: BTreeMap<&Source, Vec<usize>> = BTreeMap::new();
        for (i, p) in probes.iter().enumerate() {
            by_source.entry(&p.from).or_default().push(i);
        }
        let mut results = vec![false; probes.len()];
        thread::scope(|s| {
            let workers: Vec<_> = by_source
                .into_iter()
                .map(|(source, indices)| {
                    let netns = self.source_netns(source).path();
                    let jobs: Vec<(usize, SocketAddr, Proto)> = indices
                        .into_iter()
                        .map(|i| (i, self.target(&probes[i]), probes[i].case.proto))
                        .collect();
                    s.spawn(move || run_in(&netns, &jobs))
                })
                .collect();
            for worker in workers {
                for (i, ok) in worker.join().expect("a probe worker panicked") {
                    results[i] = ok;
                }
            }
        });
        results
    }

    /// Probes every pair (node → pod, pod → other pod) of each of `cases`, all at once;
    /// one truth table per case.
    pub fn observe(&self, cases: &[Case]) -> Vec<TruthTable> {
        let template = TruthTable::new(&self.pod_ids(), false);
        let cells: Vec<(usize, Probe)> = cases
            .iter()
            .enumerate()
            .flat_map(|(i, case)| {
                template
                    .pairs()
                    .map(move |(from, to)| (i, Probe::of_cell(from, to, *case)))
            })
            .collect();
        let mut tables = vec![template.clone(); cases.len()];
        self.probe_into(&cells, &mut tables);
        tables
    }

    /// Probes every case of `expectations` at once and compares; pairs that should connect
    /// but did not are probed again (see [`FALSE_NEGATIVE_RETRIES`]). Returns one report per
    /// case that still differs, empty when everything matched.
    pub fn verify(&self, expectations: &[(Case, Reachability)]) -> Vec<String> {
        let cases: Vec<Case> = expectations.iter().map(|(c, _)| *c).collect();
        let mut observed = self.observe(&cases);
        for _ in 0..FALSE_NEGATIVE_RETRIES {
            let retry = false_negatives(expectations, &observed);
            if retry.is_empty() {
                break;
            }
            self.probe_into(&retry, &mut observed);
        }
        expectations
            .iter()
            .zip(&observed)
            .filter_map(|((case, expected), observed)| {
                expected
                    .mismatch_report(observed)
                    .map(|report| format!("{case}: {report}"))
            })
            .collect()
    }

    /// Writes the Namespace and Pod manifests of every pod into `dir`.
    pub fn write_manifests(&self, dir: &Path) {
        crate::manifests::write_all(dir, &self.pods);
    }

    /// Rewrites the manifest of pod `id` with new labels (atomically, as one change).
    pub fn relabel(&self, dir: &Path, id: &str, labels: &Labels) {
        let pod = self.pod(id);
        let spec = PodSpec {
            labels: labels.clone(),
            ..pod.spec.clone()
        };
        crate::manifests::write_pod(dir, &spec, &pod.ips());
    }

    /// Runs the probes of `cells` and records each result in the table of its case index.
    fn probe_into(&self, cells: &[(usize, Probe)], tables: &mut [TruthTable]) {
        let probes: Vec<Probe> = cells.iter().map(|(_, p)| p.clone()).collect();
        for ((i, probe), ok) in cells.iter().zip(self.probe_all(&probes)) {
            tables[*i].set(&source_name(&probe.from), &probe.to, ok);
        }
    }

    pub(crate) fn source_netns(&self, source: &Source) -> &Netns {
        match source {
            Source::Node => &self.node,
            Source::Pod(id) => &self.pod(id).netns,
        }
    }

    fn target(&self, probe: &Probe) -> SocketAddr {
        SocketAddr::new(self.pod(&probe.to).ip(probe.case.family), probe.case.port)
    }
}

/// Pairs expected to connect that did not, as probes to repeat, with their case index.
fn false_negatives(
    expectations: &[(Case, Reachability)],
    observed: &[TruthTable],
) -> Vec<(usize, Probe)> {
    let mut retry = Vec::new();
    for (i, ((case, expected), observed)) in expectations.iter().zip(observed).enumerate() {
        for (from, to) in observed.pairs() {
            if expected.expected().get(from, to) == Some(true)
                && observed.get(from, to) == Some(false)
            {
                retry.push((i, Probe::of_cell(from, to, *case)));
            }
        }
    }
    retry
}

impl Probe {
    /// The probe behind one cell of a truth table (row `from`, column `to`).
    fn of_cell(from: &str, to: &str, case: Case) -> Self {
        let from = if from == NODE {
            Source::Node
        } else {
            Source::Pod(from.to_owned())
        };
        Self {
            from,
            to: to.to_owned(),
            case,
        }
    }
}

fn source_name(source: &Source) -> String {
    match source {
        Source::Node => NODE.to_owned(),
        Source::Pod(id) => id.clone(),
    }
}

/// Enters `netns`, then runs every job on its own thread (threads inherit the namespace of
/// the thread that creates them), so that denied probes time out together, not in turn.
fn run_in(netns: &Path, jobs: &[(usize, SocketAddr, Proto)]) -> Vec<(usize, bool)> {
    netns::enter(netns).unwrap_or_else(|e| panic!("setns into {}: {e}", netns.display()));
    thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(i, dst, proto)| {
                let handle = thread::Builder::new()
                    .stack_size(PROBE_STACK)
                    .spawn_scoped(s, move || probe::send(dst, proto))
                    .expect("spawning a probe thread");
                (i, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(i, h)| (i, h.join().expect("a probe thread panicked")))
            .collect()
    })
}

/// Probe threads do one blocking exchange; the default 2 MiB stack is far more than needed
/// with hundreds of them alive at once.
const PROBE_STACK: usize = 128 * 1024;

/// Sysctls and addresses of the node namespace.
fn configure_node(node: &Netns) {
    configure_router(node);
    // This kernel has no dummy driver (CONFIG_DUMMY off), so the node address lives on
    // `lo`, as many routing daemons keep their router id: it is global and always up.
    node.ip_batch(&format!(
        "addr add {NODE_IPV4}/32 dev lo\n\
         addr add {NODE_IPV6}/128 dev lo nodad\n"
    ));
}

/// What makes a namespace a node that routes for its pods: forwarding on, `lo` up, and the
/// route that lets it answer ARP for the pods' gateway.
pub(crate) fn configure_router(node: &Netns) {
    node.sysctl("net/ipv4/ip_forward", "1");
    node.sysctl("net/ipv6/conf/all/forwarding", "1");
    disable_dad(node);
    node.ip_batch(&format!(
        "link set lo up\n\
         route add {POD_GATEWAY_V4}/32 dev lo\n"
    ));
    // Proxy ARP answers only for addresses the node has a route to through another device:
    // the route above stands for a real node's uplink (Calico relies on its default route).
}

/// The addresses of the `index`th pod (from 0) of a one-node topology: 10.99.0.0/16 and
/// `fd99::/112`, below the node's own range.
fn one_node_addresses(index: usize) -> (Ipv4Addr, Ipv6Addr) {
    let n = u16::try_from(index + 1)
        .ok()
        .filter(|n| *n < 0xff00)
        .expect("the node address range (10.99.255.0/24) is not for pods");
    let [hi, lo] = n.to_be_bytes();
    (
        Ipv4Addr::new(10, 99, hi, lo),
        Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, n),
    )
}

/// Creates the pod namespace and the veth pair `wv<index>` in `node`, gives the pod the
/// spec's addresses (or `addresses` when it names none), and routes them.
pub(crate) fn add_pod(
    tag: &RunTag,
    node: &Netns,
    index: usize,
    spec: PodSpec,
    addresses: (Ipv4Addr, Ipv6Addr),
) -> Pod {
    let (ipv4, ipv6) = spec.addresses.unwrap_or(addresses);
    let host_veth = format!("wv{index}");
    let netns = Netns::new(tag, &format!("{}-{}", spec.namespace, spec.name));
    // Before the veth exists: its IPv6 settings are copied from `default` when it appears.
    disable_dad(&netns);
    let pod = Pod {
        spec,
        ipv4,
        ipv6,
        host_veth,
        netns,
    };
    wire_host_side(node, &pod);
    wire_pod_side(&pod);
    pod
}

/// The echo servers of `pod`, on both its addresses and every port of its spec.
pub(crate) fn start_servers(pod: &Pod) -> EchoServers {
    EchoServers::start(
        &pod.netns,
        &pod.id(),
        pod.ips().to_vec(),
        pod.spec.ports.clone(),
    )
}

fn wire_host_side(node: &Netns, pod: &Pod) {
    let veth = &pod.host_veth;
    node.ip(&[
        "link",
        "add",
        veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.netns.name(),
    ]);
    node.sysctl(&format!("net/ipv4/conf/{veth}/proxy_arp"), "1");
    // Answer proxy ARP at once; the default delays it up to 0.8 s (Calico does the same).
    node.sysctl(&format!("net/ipv4/neigh/{veth}/proxy_delay"), "0");
    node.ip_batch(&format!(
        "link set {veth} up\n\
         addr add {POD_GATEWAY_V6}/64 dev {veth} nodad\n\
         route add {}/32 dev {veth}\n\
         route add {}/128 dev {veth}\n",
        pod.ipv4, pod.ipv6
    ));
}

fn wire_pod_side(pod: &Pod) {
    pod.netns.ip_batch(&format!(
        "link set lo up\n\
         addr add {}/32 dev eth0\n\
         addr add {}/128 dev eth0 nodad\n\
         link set eth0 up\n\
         route add default via {POD_GATEWAY_V4} dev eth0 onlink\n\
         route add default via {POD_GATEWAY_V6} dev eth0\n",
        pod.ipv4, pod.ipv6
    ));
}

/// Duplicate address detection would hold new IPv6 addresses (link-local ones included)
/// tentative for about a second; nothing else can claim them in a namespace we own.
pub(crate) fn disable_dad(netns: &Netns) {
    netns.sysctl("net/ipv6/conf/all/accept_dad", "0");
    netns.sysctl("net/ipv6/conf/default/accept_dad", "0");
}
