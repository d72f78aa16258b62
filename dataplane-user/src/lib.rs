//! Weir's agent: reads Kubernetes manifests, compiles them into the eBPF dataplane's maps and
//! keeps those maps in sync.
//!
//! The path from input to kernel, one module each:
//! `manifest` (YAML → validated [`model::DesiredState`]) → `compile` (pure: state → [`compile::MapSet`])
//! → `dataplane` (the thin syscall layer: load, attach, apply a diff of map contents).

pub mod manifest;
pub mod model;
