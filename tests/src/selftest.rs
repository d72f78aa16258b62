//! Checks of the test bed itself, with no agent: the wiring connects every pair, probes
//! can fail, and teardown leaves nothing behind even when a test panics.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use crate::{Case, Family, Proto, Reachability, TempDir, Topology, netns_path, upstream_model};

fn three_by_three() -> Topology {
    Topology::builder()
        .pods(upstream_model(&["x", "y", "z"], &["a", "b", "c"]))
        .build()
}

#[test]
fn without_policy_every_pod_and_the_node_reach_every_pod() {
    crate::require_root!();
    let started = Instant::now();
    let topology = three_by_three();
    let built = started.elapsed();
    let all = Reachability::new(&topology.pod_ids(), true);
    let expectations: Vec<_> = Case::all().into_iter().map(|c| (c, all.clone())).collect();
    let started = Instant::now();
    let failures = topology.verify(&expectations);
    let probed = started.elapsed();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Figures for the reader, not assertions (tests never assert on wall-clock time).
    eprintln!(
        "topology of 9 pods built in {built:?}; {} cases x {} pairs probed in {probed:?}",
        expectations.len(),
        all.expected().pairs().count()
    );
}

#[test]
fn probes_fail_on_a_closed_port() {
    crate::require_root!();
    let topology = Topology::builder()
        .pods(upstream_model(&["x"], &["a", "b"]))
        .build();
    for family in Family::ALL {
        for proto in Proto::ALL {
            assert!(
                !topology.probe("x/a", "x/b", 82, proto, family),
                "{family} {proto}/82 has no server, yet the probe passed"
            );
            assert!(
                topology.probe("x/a", "x/b", 81, proto, family),
                "{family} {proto}/81 has a server, yet the probe failed"
            );
        }
    }
}

#[test]
fn verify_reports_pairs_whose_packets_are_silently_dropped() {
    crate::require_root!();
    let topology = Topology::builder()
        .pods(upstream_model(&["x"], &["a", "b", "c"]))
        .build();
    let b = topology.pod("x/b");
    // Dropped in the node's forward path without an ICMP error, as a policy drop is: the
    // probes must time out. Traffic from the node itself is not forwarded, so it passes.
    let rules = format!(
        "add table inet weir_selftest\n\
         add chain inet weir_selftest forward {{ type filter hook forward priority 0; }}\n\
         add rule inet weir_selftest forward ip daddr {} drop\n\
         add rule inet weir_selftest forward ip6 daddr {} drop\n",
        b.ip(Family::V4),
        b.ip(Family::V6)
    );
    nft(&topology, &rules);

    let pods = topology.pod_ids();
    let everything = Reachability::new(&pods, true);
    let wrong: Vec<_> = Case::all()
        .into_iter()
        .map(|c| (c, everything.clone()))
        .collect();
    let reports = topology.verify(&wrong);
    assert_eq!(reports.len(), Case::all().len(), "{}", reports.join("\n"));
    assert!(
        reports[0]
            .contains("comparison (X = wrong):\n-\tx/a\tx/b\tx/c\nnode\t.\t.\t.\nx/a\t-\tX\t.\n"),
        "{}",
        reports[0]
    );

    // The rule is stateless: it drops the replies to x/b's own connections as well.
    let mut dropped = Reachability::new(&pods, true);
    dropped
        .expect_all_ingress("x/b", false)
        .expect_all_egress("x/b", false);
    let right: Vec<_> = Case::all()
        .into_iter()
        .map(|c| (c, dropped.clone()))
        .collect();
    let started = Instant::now();
    let reports = topology.verify(&right);
    assert!(reports.is_empty(), "{}", reports.join("\n"));
    eprintln!(
        "{} cases with 4 of 9 pairs dropped probed in {:?}",
        right.len(),
        started.elapsed()
    );

    nft(&topology, "delete table inet weir_selftest\n");
    let right: Vec<_> = Case::all()
        .into_iter()
        .map(|c| (c, everything.clone()))
        .collect();
    let reports = topology.verify(&right);
    assert!(reports.is_empty(), "{}", reports.join("\n"));
}

/// Loads nftables commands into the node namespace.
fn nft(topology: &Topology, commands: &str) {
    let dir = TempDir::new("nft");
    let file = dir.path().join("rules.nft");
    std::fs::write(&file, commands).expect("writing nft rules");
    let out = topology
        .node()
        .exec("nft", &["-f", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{commands}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_panicking_test_leaves_no_namespace_behind() {
    crate::require_root!();
    let mut created: Vec<(String, u64)> = Vec::new();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let topology = Topology::builder()
            .pods(upstream_model(&["x"], &["a", "b"]))
            .build();
        let namespaces =
            std::iter::once(topology.node()).chain(topology.pods().iter().map(crate::Pod::netns));
        for netns in namespaces {
            let inode = std::fs::metadata(netns.path())
                .expect("a namespace file")
                .ino();
            created.push((netns.name().to_owned(), inode));
        }
        panic!("deliberate panic with a topology alive");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    assert_eq!(created.len(), 3, "node and two pods");

    for (name, _) in &created {
        assert!(!netns_path(name).exists(), "{name} survived the panic");
    }
    // The name going away is not enough: a thread still inside would keep the namespace
    // alive in the kernel, unnamed. None of this process's threads may be in one of them.
    let inodes: BTreeSet<u64> = created.iter().map(|(_, ino)| *ino).collect();
    for task in std::fs::read_dir("/proc/self/task").expect("listing threads") {
        let link = task.expect("a thread entry").path().join("ns/net");
        if let Ok(ino) = std::fs::metadata(&link).map(|m| m.ino()) {
            assert!(
                !inodes.contains(&ino),
                "{} is still in a torn-down namespace",
                link.display()
            );
        }
    }
}

#[test]
fn namespaces_of_a_killed_run_are_deleted_by_the_next() {
    crate::require_root!();
    // What a run killed by SIGKILL leaves: a namespace, and its record naming an owner that
    // no longer exists (no pid reaches u32::MAX).
    let name = format!("weir-{}-orphan", crate::RunTag::random().as_str());
    let created = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("running ip netns add");
    assert!(created.success(), "ip netns add {name}");
    let record = std::path::Path::new(crate::netns::REGISTRY_DIR).join(&name);
    std::fs::create_dir_all(crate::netns::REGISTRY_DIR).expect("creating the registry");
    std::fs::write(&record, format!("{} 1\n", u32::MAX)).expect("writing a record");

    crate::netns::reap_orphans();

    let survived = netns_path(&name).exists();
    if survived {
        std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status()
            .ok();
    }
    assert!(!survived, "{name} outlived its dead owner");
    assert!(!record.exists(), "the record of {name} was kept");
}

#[test]
fn manifests_cover_every_namespace_and_pod_and_relabel_rewrites_one_file() {
    crate::require_root!();
    let topology = Topology::builder()
        .pods(upstream_model(&["x", "y"], &["a"]))
        .build();
    let dir = TempDir::new("manifests");
    topology.write_manifests(dir.path());
    let files = || -> BTreeSet<String> {
        std::fs::read_dir(dir.path())
            .expect("listing manifests")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    let expected: BTreeSet<String> = [
        "namespace-x.yaml",
        "namespace-y.yaml",
        "pod-x-a.yaml",
        "pod-y-a.yaml",
    ]
    .map(String::from)
    .into();
    assert_eq!(files(), expected, "no staging dot-file may remain");

    let pod = std::fs::read_to_string(dir.path().join("pod-y-a.yaml")).expect("reading");
    assert!(pod.contains(&format!("- ip: \"{}\"", topology.pod("y/a").ip(Family::V6))));

    let labels =
        crate::Labels::from([("pod".into(), "a".into()), ("role".into(), "client".into())]);
    topology.relabel(dir.path(), "y/a", &labels);
    assert_eq!(files(), expected);
    let pod = std::fs::read_to_string(dir.path().join("pod-y-a.yaml")).expect("reading");
    assert!(pod.contains("\"role\": \"client\""), "{pod}");
}
