//! Weir's agent: reads Kubernetes manifests, compiles them into the eBPF dataplane's maps and
//! keeps those maps in sync.
//!
//! The path from input to kernel, one module each:
//! [`manifest`] (YAML → validated [`model::DesiredState`]) → [`compile`] (pure: state and
//! [`compile::NodeView`] → [`compile::MapSet`]) → [`dataplane`] (the thin syscall layer: load,
//! attach, apply a diff of map contents). [`node`] reads what the node hosts; [`agent`] runs the
//! loop and serves health and status.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod catalog;
pub mod cli;
pub mod compile;
pub mod dataplane;
pub mod endpoints;
pub mod explain;
pub mod flows;
pub mod health_ports;
pub mod manifest;
pub mod model;
pub mod node;
pub mod observer;
pub mod pins;
pub mod source;
