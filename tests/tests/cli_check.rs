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
    assert!(
        text.contains("ignored: Service default/mon-service"),
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
