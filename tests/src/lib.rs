//! Test bed: network-namespace topologies for Weir tests, demo and benchmarks.
//!
//! - [`Netns`]: a namespace that exists as long as its guard, and threads that run inside it;
//! - [`Topology`]: a node namespace and pods joined to it by veth pairs, as a CNI wires them,
//!   with TCP and UDP echo servers in every pod and parallel probes between them;
//! - [`Cluster`]: two such nodes on a bridged underlay, with an outside client, for node
//!   ports, load-balancer and external IPs;
//! - [`Reachability`]: expected connectivity, compared with probes in upstream's format;
//! - [`Agent`]: the `weir` binary running in the node namespace;
//! - [`Cgroup`]: a cgroup v2 of the test's own, for the socket programs and the processes
//!   they should see.
//! - [`Traffic`]: lanes of timed probes that run on while a test changes the desired state.
//!
//! Nothing here touches the root network namespace (shared GUIDE, section 3) nor attaches
//! anything to a cgroup it did not create. Guards delete what they made on every path a test
//! can take, panics included; a process killed outright runs no Drop, so its agent dies with
//! it and the next test process deletes its namespaces and cgroups ([`reap_orphans`],
//! [`reap_orphan_cgroups`]). Everything needs root: tests call [`require_root!`] first.
//!
//! Failures panic with context instead of returning errors: every caller is a test, and a
//! panic with the namespace, command and output in its message is the report it needs.
#![expect(
    clippy::missing_panics_doc,
    reason = "a test-support crate: panicking with context is the error handling of every function"
)]

mod agent;
mod bpf_query;
mod cgroup;
mod cluster;
pub mod fakeapi;
pub mod fixtures;
pub mod manifests;
mod netns;
pub mod packet;
mod probe;
mod reachability;
mod rng;
mod servers;
mod tempdir;
pub mod testrun;
mod topology;
mod traffic;

#[cfg(test)]
mod cluster_selftest;
#[cfg(test)]
mod selftest;

pub use agent::{Agent, AgentOptions, Launch, Status, http_get, uninstall, weir_binary};
pub use cgroup::{Cgroup, SOCKET_HOOKS, cgroup2_root, reap_orphan_cgroups};
pub use cluster::{
    CLIENT_IPV4, CLIENT_IPV6, Cluster, ClusterBuilder, ClusterNode, EXTERNAL_V4, EXTERNAL_V6,
    NODES, UPLINK,
};
pub use netns::{Netns, RunTag, netns_path, reap_orphans};
pub use probe::{
    Answer, CONNECT_TIMEOUT, Case, Family, Proto, REPLY_TIMEOUT, Session, exchange, exchange_from,
    request,
};
pub use reachability::{NODE, Peer, Reachability, TruthTable};
pub use rng::Rng;
pub use servers::{NAME_MARK, PROBE_PORTS};
pub use tempdir::TempDir;
pub use topology::{
    Labels, NODE_IPV4, NODE_IPV6, Pod, PodSpec, Probe, Source, Topology, TopologyBuilder,
    upstream_model,
};
pub use traffic::{Lane, Outcome, Traffic};

/// Whether the process runs as root, which every namespace test needs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns from the calling test, after saying so, unless the process runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}
