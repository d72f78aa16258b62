//! Test bed: network-namespace topologies for Weir tests, demo and benchmarks.
//!
//! - [`Netns`]: a namespace that exists as long as its guard, and threads that run inside it;
//! - [`Topology`]: a node namespace and pods joined to it by veth pairs, as a CNI wires them,
//!   with TCP and UDP echo servers in every pod and parallel probes between them;
//! - [`Reachability`]: expected connectivity, compared with probes in upstream's format;
//! - [`Agent`]: the `weir` binary running in the node namespace.
//!
//! Nothing here touches the root network namespace (shared GUIDE, section 3). Guards delete
//! what they made on every path a test can take, panics included; a process killed outright
//! runs no Drop, so its agent dies with it and the next test process deletes its namespaces
//! ([`reap_orphans`]). Everything needs root: tests call [`require_root!`] first.
//!
//! Failures panic with context instead of returning errors: every caller is a test, and a
//! panic with the namespace, command and output in its message is the report it needs.
#![expect(
    clippy::missing_panics_doc,
    reason = "a test-support crate: panicking with context is the error handling of every function"
)]

mod agent;
pub mod fakeapi;
pub mod fixtures;
pub mod manifests;
mod netns;
pub mod packet;
mod probe;
mod reachability;
mod servers;
mod tempdir;
mod topology;

#[cfg(test)]
mod selftest;

pub use agent::{Agent, AgentOptions, Launch, Status, http_get, weir_binary};
pub use netns::{Netns, RunTag, netns_path, reap_orphans};
pub use probe::{CONNECT_TIMEOUT, Case, Family, Proto, REPLY_TIMEOUT};
pub use reachability::{NODE, Peer, Reachability, TruthTable};
pub use servers::PROBE_PORTS;
pub use tempdir::TempDir;
pub use topology::{
    Labels, NODE_IPV4, NODE_IPV6, Pod, PodSpec, Probe, Source, Topology, TopologyBuilder,
    upstream_model,
};

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
