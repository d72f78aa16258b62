//! Kubernetes manifests for the agent to read: Namespaces, Pods, and test policies.
//!
//! Files are replaced atomically (written as a dot-file, then renamed to `*.yaml`), so the
//! agent never reads half a file, and one rename is one change of the directory.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use crate::probe::Proto;
use crate::topology::{Labels, Pod, PodSpec};

/// Image of the upstream e2e probe pods; never pulled here, a pod spec needs one.
const IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

/// Writes a Namespace manifest per namespace and a Pod manifest per pod.
pub(crate) fn write_all(dir: &Path, pods: &[Pod]) {
    let mut namespaces = BTreeSet::new();
    for pod in pods {
        let spec = pod.spec();
        if namespaces.insert(spec.namespace.clone()) {
            let yaml = namespace_yaml(&spec.namespace, &spec.namespace_labels);
            write_atomic(dir, &format!("namespace-{}.yaml", spec.namespace), &yaml);
        }
        write_pod(dir, spec, &pod.ips());
    }
}

/// Writes (or replaces) the manifest of one pod.
pub(crate) fn write_pod(dir: &Path, spec: &PodSpec, ips: &[IpAddr]) {
    let name = format!("pod-{}-{}.yaml", spec.namespace, spec.name);
    write_atomic(dir, &name, &pod_yaml(spec, ips));
}

/// Replaces `dir/name` with `contents` in one rename. `name` must end in `.yaml`.
pub fn write_atomic(dir: &Path, name: &str, contents: &str) {
    assert!(
        Path::new(name).extension().is_some_and(|e| e == "yaml") && !name.starts_with('.'),
        "{name}: the agent reads *.yaml files"
    );
    let staging = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staging, contents)
        .unwrap_or_else(|e| panic!("writing {}: {e}", staging.display()));
    let target = dir.join(name);
    std::fs::rename(&staging, &target)
        .unwrap_or_else(|e| panic!("renaming to {}: {e}", target.display()));
}

/// Removes `dir/name` if it exists.
pub fn remove(dir: &Path, name: &str) {
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing {name} from {}: {e}", dir.display()),
    }
}

/// A `v1` Namespace.
pub fn namespace_yaml(name: &str, labels: &Labels) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:{}\n",
        quote(name),
        labels_yaml(labels, "    ")
    )
}

/// A running `v1` Pod with its addresses in `status.podIPs`, its node in `spec.nodeName` when
/// the spec names one, and a named container port for every port and protocol its probe
/// servers answer (`serve-<port>-<proto>` unless the spec names it otherwise).
pub fn pod_yaml(spec: &PodSpec, ips: &[IpAddr]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels:{}\nspec:\n",
        quote(&spec.name),
        quote(&spec.namespace),
        labels_yaml(&spec.labels, "    ")
    );
    if let Some(node) = &spec.node_name {
        writeln!(yaml, "  nodeName: {}", quote(node)).expect("writing to a String");
    }
    writeln!(
        yaml,
        "  containers:\n    - name: probe\n      image: {IMAGE}\n      ports:"
    )
    .expect("writing to a String");
    for proto in Proto::ALL {
        for &port in &spec.ports {
            let name = spec.container_port_name(port, proto);
            writeln!(
                yaml,
                "        - name: {}\n          containerPort: {port}\n          protocol: {proto}",
                quote(&name)
            )
            .expect("writing to a String");
        }
    }
    yaml.push_str("status:\n  phase: Running\n");
    if let Some(first) = ips.first() {
        writeln!(yaml, "  podIP: {}", quote(&first.to_string())).expect("writing to a String");
    }
    yaml.push_str("  podIPs:\n");
    for ip in ips {
        writeln!(yaml, "    - ip: {}", quote(&ip.to_string())).expect("writing to a String");
    }
    yaml
}

/// A label map as an indented YAML block, or ` {}` when empty.
fn labels_yaml(labels: &Labels, indent: &str) -> String {
    if labels.is_empty() {
        return " {}".to_owned();
    }
    let mut yaml = String::new();
    for (k, v) in labels {
        write!(yaml, "\n{indent}{}: {}", quote(k), quote(v)).expect("writing to a String");
    }
    yaml
}

/// A YAML double-quoted scalar: JSON string syntax is a subset of it, and quoting keeps
/// values such as `true` or `80` strings.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_manifest_has_labels_named_ports_and_pod_ips() {
        let spec = PodSpec::new("x", "a")
            .label("pod", "a")
            .namespace_label("ns", "x");
        let yaml = pod_yaml(
            &spec,
            &["10.99.0.1".parse().unwrap(), "fd99::1".parse().unwrap()],
        );
        for expected in [
            "  name: \"a\"\n  namespace: \"x\"\n  labels:\n    \"pod\": \"a\"\n",
            "        - name: \"serve-81-tcp\"\n          containerPort: 81\n          protocol: TCP\n",
            "        - name: \"serve-80-udp\"\n          containerPort: 80\n          protocol: UDP\n",
            "  podIP: \"10.99.0.1\"\n  podIPs:\n    - ip: \"10.99.0.1\"\n    - ip: \"fd99::1\"\n",
        ] {
            assert!(yaml.contains(expected), "missing {expected:?} in\n{yaml}");
        }
    }

    #[test]
    fn pod_manifest_names_its_node_when_it_has_one() {
        let ips = ["10.98.2.1".parse().unwrap()];
        let spec = PodSpec::new("x", "a");
        assert!(!pod_yaml(&spec, &ips).contains("nodeName"));
        let placed = PodSpec {
            node_name: Some("node2".to_owned()),
            ..spec
        };
        assert!(
            pod_yaml(&placed, &ips).contains("spec:\n  nodeName: \"node2\"\n  containers:\n"),
            "{}",
            pod_yaml(&placed, &ips)
        );
    }

    #[test]
    fn namespace_manifest_quotes_labels_and_writes_empty_maps() {
        let labels = Labels::from([("kubernetes.io/metadata.name".into(), "x".into())]);
        assert_eq!(
            namespace_yaml("x", &labels),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"x\"\n  labels:\n    \
             \"kubernetes.io/metadata.name\": \"x\"\n"
        );
        assert!(namespace_yaml("y", &Labels::new()).ends_with("  labels: {}\n"));
    }
}
