//! `weir`: the agent and its CLI.
fn main() {}
