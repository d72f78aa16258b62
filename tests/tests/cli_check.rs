//! `weir check DIR`: validates without touching the kernel, prints what would be compiled,
//! exits 0 on a good directory and non-zero, naming file, line and field, on a bad one.

use std::path::Path;
use std::process::{Command, Output};

use testbed::{TempDir, weir_binary};

fn check(dir: &Path) -> Output {
    Command::new(weir_binary())
        .arg("check")
        .arg(dir)
        .output()
        .expect("running weir check")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_example_policies_check_clean_and_other_kinds_are_listed_as_ignored() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = check(&dir);
    let text = text(&out);
    assert!(out.status.success(), "weir check policies/ failed:\n{text}");
    // mon-pod is the course Service's only pod; the manifest gives the Service no cluster IP.
    assert!(
        text.contains(
            "service default/mon-service: ClusterIP no address; 80/TCP -> 9376; 2 endpoint \
             addresses, 2 ready"
        ),
        "{text}"
    );
    assert!(
        text.contains("ignored: Ingress default/exemple-ingress"),
        "{text}"
    );
    assert!(
        text.contains("pod default/mon-pod: ingress isolated, egress isolated"),
        "{text}"
    );
}

#[test]
fn a_bad_port_is_reported_with_file_line_and_field_and_fails() {
    let dir = TempDir::new("check-bad");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad
  namespace: x
spec:
  podSelector: {}
  ingress:
  - ports:
    - protocol: TCP
      port: 0
",
    )
    .expect("writing the manifest");
    let out = check(dir.path());
    let text = text(&out);
    assert!(!out.status.success(), "a bad manifest passed:\n{text}");
    let expected = format!("{}:11:", file.display());
    assert!(text.contains(&expected), "no {expected} in:\n{text}");
    assert!(text.contains("spec.ingress[0].ports[0].port"), "{text}");
}

#[test]
fn a_misspelt_field_is_an_error_not_a_silent_allow() {
    let dir = TempDir::new("check-typo");
    std::fs::write(
        dir.path().join("typo.yaml"),
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: typo
spec:
  podSelecter:
    matchLabels:
      app: db
",
    )
    .expect("writing the manifest");
    let out = check(dir.path());
    let text = text(&out);
    assert!(!out.status.success(), "a misspelt field passed:\n{text}");
    assert!(text.contains("podSelecter"), "{text}");
    assert!(text.contains(":6:"), "the error names line 6:\n{text}");
}

#[test]
fn the_service_examples_check_clean_with_their_endpoints() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/services");
    let out = check(&dir);
    let text = text(&out);
    assert!(
        out.status.success(),
        "weir check policies/services failed:\n{text}"
    );
    assert!(
        text.contains(
            "1 namespaces, 5 pods, 0 network policies, 6 services, 12 endpoint slices (10 \
             derived from pods), 1 nodes"
        ),
        "{text}"
    );
    let expected = [
        // Three pods, two addresses each; mon-app-3 is not ready.
        "service lb/mon-service: ClusterIP 10.99.100.10 fd99::100:10; 80/TCP -> 9376; 6 \
         endpoint addresses, 4 ready",
        "service lb/mon-service-nodeport: NodePort 10.99.100.11; 80/TCP -> 9376 (node port \
         30080); 3 endpoint addresses, 2 ready",
        "service lb/mon-service-lb: LoadBalancer 10.99.100.12 fd99::100:12 10.99.200.10 \
         fd99::200:10; 80/TCP -> 9376 (node port 30081); clients from 10.99.0.0/24 fd99::/112; \
         external traffic Local; 6 endpoint addresses, 4 ready",
        "service lb/api: ClusterIP 10.99.100.20 fd99::100:20; 80/TCP -> http; 4 endpoint \
         addresses, 4 ready",
        "service lb/mon-service-sticky: ClusterIP 10.99.100.13; 80/TCP -> 9376; ClientIP \
         affinity 600s; 3 endpoint addresses, 2 ready",
        // The hand-written slices, not derived ones (it has no selector).
        "service lb/external-db: ClusterIP 10.99.100.30 fd99::100:30; 5432/TCP -> 5432; 2 \
         endpoint addresses, 2 ready",
    ];
    for line in expected {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn service_mistakes_are_reported_with_file_line_and_field_and_fail() {
    let dir = TempDir::new("check-service");
    let service = dir.path().join("service.yaml");
    std::fs::write(
        &service,
        "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - port: 80
    targetport: 8080
    nodePort: 8080
",
    )
    .expect("writing the Service");
    let slice = dir.path().join("slice.yaml");
    std::fs::write(
        &slice,
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
addressType: IPv4
endpoints:
- addresses: ['fd00::1']
",
    )
    .expect("writing the EndpointSlice");
    let out = check(dir.path());
    let reported = text(&out);
    assert!(!out.status.success(), "a bad Service passed:\n{reported}");
    let expected = [
        format!(
            "{}:11:5: spec.ports[0].targetport: unknown field \"targetport\"",
            service.display()
        ),
        format!(
            "{}:4:3: metadata.labels: label kubernetes.io/service-name is required",
            slice.display()
        ),
        format!(
            "{}:7:15: endpoints[0].addresses[0]: fd00::1 is not an IPv4 address",
            slice.display()
        ),
    ];
    for line in expected {
        assert!(reported.contains(&line), "no {line:?} in:\n{reported}");
    }
    assert!(
        reported.contains("3 error(s); nothing would be applied"),
        "{reported}"
    );

    // With the typo fixed, the node port is checked too.
    let fixed = std::fs::read_to_string(&service)
        .expect("reading the Service")
        .replace("targetport", "targetPort");
    std::fs::write(&service, fixed).expect("writing the Service");
    std::fs::remove_file(&slice).expect("removing the EndpointSlice");
    let fixed = text(&check(dir.path()));
    let expected = format!(
        "{}:12:15: spec.ports[0].nodePort: node port 8080 is outside the node port range \
         30000-32767",
        service.display()
    );
    assert!(fixed.contains(&expected), "no {expected:?} in:\n{fixed}");
}
