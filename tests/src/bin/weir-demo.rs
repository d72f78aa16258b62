//! `weir-demo`: Weir enforcing a directory of manifests on a node made of network namespaces.
//!
//! Every pod of the manifests that has an IPv4 and an IPv6 address gets a namespace with those
//! addresses, wired to a node namespace as a CNI plugin would, and serves TCP on every port the
//! manifests mention. The agent runs in the node namespace on the directory as it is; then
//! every pod (and the node) connects to every other pod on each of those ports, and the demo
//! prints what went through. Everything it creates is deleted when it ends.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use testbed::{Agent, Case, Family, PodSpec, Probe, Proto, Source, Topology, is_root};
use weir::model::{DesiredState, PortSpec};

fn main() -> ExitCode {
    let manifests = match parse_args() {
        Ok(dir) => dir,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::FAILURE;
        }
    };
    if !is_root() {
        eprintln!("weir-demo needs root: it creates network namespaces and loads eBPF programs");
        return ExitCode::FAILURE;
    }
    let state = match weir::manifest::load_dir(&manifests) {
        Ok(loaded) => loaded.state,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let ports = ports_worth_probing(&state);
    let specs = pod_specs(&state, &ports);
    if specs.is_empty() {
        eprintln!(
            "no pod in {} has both an IPv4 and an IPv6 address in status.podIPs",
            manifests.display()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "Weir demo: {} pods from {}, node namespace, agent on the directory as it is.",
        specs.len(),
        manifests.display()
    );
    let topology = Topology::builder().pods(specs).build();
    let mut agent = Agent::start(&topology, &manifests);
    agent.wait_ready();
    println!("agent ready; probing TCP on ports {ports:?}, IPv4 and IPv6\n");
    report(&topology, &ports);
    ExitCode::SUCCESS
}

fn parse_args() -> Result<PathBuf, String> {
    let usage = "usage: weir-demo [--manifests DIR]   (default: policies/)".to_owned();
    let mut args = std::env::args().skip(1);
    let mut dir = PathBuf::from("policies");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--manifests" => dir = args.next().map(PathBuf::from).ok_or(usage.clone())?,
            _ => return Err(usage),
        }
    }
    Ok(dir)
}

/// Every number a policy rule names, every named container port, and 80: the ports where
/// policy makes a difference.
fn ports_worth_probing(state: &DesiredState) -> Vec<u16> {
    let mut ports = BTreeSet::from([80]);
    ports.extend(
        state
            .pods
            .iter()
            .flat_map(|p| p.ports.iter().map(|n| n.port)),
    );
    for policy in &state.policies {
        let rules = policy.ingress.iter().chain(policy.egress.iter()).flatten();
        for m in rules.flat_map(|r| &r.ports) {
            if let Some(PortSpec::Range { first, .. }) = m.port {
                ports.insert(first);
            }
        }
    }
    ports.into_iter().collect()
}

fn pod_specs(state: &DesiredState, ports: &[u16]) -> Vec<PodSpec> {
    let mut specs = Vec::new();
    for pod in &state.pods {
        let v4 = pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let v6 = pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let (Some(v4), Some(v6)) = (v4, v6) else {
            println!(
                "skipping {}/{}: it needs an IPv4 and an IPv6 address",
                pod.namespace, pod.name
            );
            continue;
        };
        specs.push(spec_of(state, pod, v4, v6, ports));
    }
    specs
}

fn spec_of(
    state: &DesiredState,
    pod: &weir::model::Pod,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    ports: &[u16],
) -> PodSpec {
    let mut spec = PodSpec::new(&pod.namespace, &pod.name)
        .addresses(v4, v6)
        .serving(ports.to_vec());
    spec.labels.clone_from(&pod.labels);
    if let Some(ns) = state.namespaces.get(&pod.namespace) {
        spec.namespace_labels.clone_from(&ns.labels);
    }
    spec
}

/// Probes everything at once, then prints, per destination and port, who got through.
fn report(topology: &Topology, ports: &[u16]) {
    let ids = topology.pod_ids();
    let sources: Vec<Source> = std::iter::once(Source::Node)
        .chain(ids.iter().cloned().map(Source::Pod))
        .collect();
    let mut probes = Vec::new();
    for to in &ids {
        for &port in ports {
            for family in Family::ALL {
                for from in sources.iter().filter(|s| **s != Source::Pod(to.clone())) {
                    probes.push(Probe {
                        from: from.clone(),
                        to: to.clone(),
                        case: Case {
                            family,
                            proto: Proto::Tcp,
                            port,
                        },
                    });
                }
            }
        }
    }
    let results = topology.probe_all(&probes);
    let mut allowed = 0;
    for to in &ids {
        println!("{to}");
        for &port in ports {
            let line = |family: Family| {
                let (ok, denied): (Vec<_>, Vec<_>) = probes
                    .iter()
                    .zip(&results)
                    .filter(|(p, _)| &p.to == to && p.case.port == port && p.case.family == family)
                    .partition(|(_, ok)| **ok);
                let names = |v: &[(&Probe, &bool)]| {
                    v.iter()
                        .map(|(p, _)| source_name(&p.from))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                (names(&ok), names(&denied), ok.len())
            };
            let (v4_ok, v4_denied, n) = line(Family::V4);
            let (v6_ok, v6_denied, _) = line(Family::V6);
            allowed += n;
            let same = v4_ok == v6_ok && v4_denied == v6_denied;
            println!(
                "  tcp/{port:<5} allowed from: {}{}",
                or_nobody(&v4_ok),
                if same { "" } else { "  (IPv4)" }
            );
            println!("             denied from:  {}", or_nobody(&v4_denied));
            if !same {
                println!(
                    "             IPv6 allowed from: {}; denied from: {}",
                    or_nobody(&v6_ok),
                    or_nobody(&v6_denied)
                );
            }
        }
    }
    println!(
        "\n{} connections tried per family, {allowed} allowed over IPv4 (the node reaches every pod: Kubernetes requires it).",
        probes.len() / 2
    );
}

fn source_name(source: &Source) -> String {
    match source {
        Source::Node => "node".to_owned(),
        Source::Pod(id) => id.clone(),
    }
}

fn or_nobody(list: &str) -> &str {
    if list.is_empty() { "nobody" } else { list }
}
