//! Test bed: network-namespace topologies for Weir tests, demo and benchmarks.
