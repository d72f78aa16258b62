//! Files read one by one, then assembled: what depends on more than one file.

use std::path::Path;

use super::*;

fn file(name: &str, text: &str) -> FileManifests {
    parse_file(Path::new(name), text)
}

const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n";

/// `file:line:column` of each error.
fn places(error: &LoadError) -> Vec<String> {
    error
        .errors
        .iter()
        .map(|e| format!("{}:{}:{}", e.file.display(), e.line, e.column))
        .collect()
}

#[test]
fn an_object_of_an_earlier_file_defined_again_is_an_error_in_line_order() {
    let a = file("a.yaml", WEB);
    let b = file(
        "b.yaml",
        &[
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_1}\n",
            WEB,
            "kind: Pod\n",
        ]
        .join("---\n"),
    );
    assert!(a.is_valid());
    assert!(!b.is_valid());

    let error = assemble(Vec::new(), [&a, &b]).unwrap_err();
    assert_eq!(places(&error), ["b.yaml:3:18", "b.yaml:7:18", "b.yaml:9:1"]);
    assert_eq!(
        error.errors[1].to_string(),
        "b.yaml:7:18: metadata.name: duplicate Pod shop/web, first defined at a.yaml:1"
    );
    // The first definition is the one in the first file given.
    let error = assemble(Vec::new(), [&b, &a]).unwrap_err();
    assert_eq!(places(&error), ["b.yaml:3:18", "b.yaml:9:1", "a.yaml:3:18"]);
}

#[test]
fn the_walk_errors_come_first() {
    let walk = vec![ManifestError {
        file: PathBuf::from("sub"),
        line: 0,
        column: 0,
        field: String::new(),
        message: "permission denied".to_owned(),
    }];
    let error = assemble(walk, [&file("a.yaml", "kind: Pod\n")]).unwrap_err();
    assert_eq!(places(&error), ["sub:0:0", "a.yaml:1:1"]);
}

#[test]
fn files_assemble_again_as_often_as_needed() {
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ops, labels: {a: b}}\n";
    let files = [file("a.yaml", WEB), file("b.yaml", namespace)];
    let first = assemble(Vec::new(), &files).unwrap_or_else(|error| panic!("{error}"));
    let again = assemble(Vec::new(), &files).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(first, again);
    assert_eq!(first.files, 2);
    // `shop` is used and declared nowhere: it exists all the same, once per assembly.
    assert_eq!(
        first.state.namespaces.keys().collect::<Vec<_>>(),
        ["ops", "shop"]
    );
    assert_eq!(first.state.pods[0].origin.to_string(), "a.yaml:1");
}

#[test]
fn an_unreadable_file_is_its_own_error() {
    let missing = Path::new("/nonexistent/weir/a.yaml");
    let read = read_file(missing);
    assert!(!read.is_valid());
    let error = assemble(Vec::new(), [&read]).unwrap_err();
    assert_eq!(places(&error), ["/nonexistent/weir/a.yaml:0:0"]);
}

fn service(name: &str, cluster_ip: &str, node_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  \
         type: NodePort\n  clusterIP: {cluster_ip}\n  selector: {{app: web}}\n  ports:\n  \
         - {{port: 80, nodePort: {node_port}}}\n"
    )
}

#[test]
fn a_cluster_ip_or_node_port_of_a_service_in_another_file_is_an_error_of_the_later_file() {
    let a = file("a.yaml", &service("one", "10.96.0.1", 30001));
    let b = file("b.yaml", &service("two", "10.96.0.1", 30001));
    assert!(a.is_valid() && b.is_valid(), "each file is fine on its own");
    let error = assemble(Vec::new(), [&a, &b]).unwrap_err();
    let messages: Vec<String> = error.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "b.yaml:1:1: spec.clusterIPs[0]: cluster IP 10.96.0.1 is already allocated to Service \
             shop/one (a.yaml:1)",
            "b.yaml:1:1: spec.ports[0].nodePort: node port 30001/TCP is already allocated to \
             Service shop/one (a.yaml:1)",
        ]
    );
    let c = file("c.yaml", &service("three", "10.96.0.3", 30003));
    assert!(
        assemble(Vec::new(), [&a, &c]).is_ok(),
        "different ones are fine"
    );
}

#[test]
fn a_health_check_node_port_of_a_service_in_another_file_is_an_error_of_the_later_file() {
    let a = file("a.yaml", &service("one", "10.96.0.1", 30001));
    let b = file(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: two, namespace: shop}\nspec:\n  \
         type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30001\n  \
         clusterIP: 10.96.0.2\n  ports: [{port: 80, nodePort: 30002}]\n",
    );
    assert!(a.is_valid() && b.is_valid(), "each file is fine on its own");
    let error = assemble(Vec::new(), [&a, &b]).unwrap_err();
    let messages: Vec<String> = error.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "b.yaml:1:1: spec.healthCheckNodePort: health check node port 30001/TCP is already \
             allocated to Service shop/one (a.yaml:1)",
        ]
    );
}
