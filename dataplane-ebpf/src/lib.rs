//! Empty on purpose: the programs are the `dataplane-ebpf` binary. This library target only lets
//! `dataplane-user` name this crate as a build dependency, so cargo rebuilds the object on change.
#![no_std]
