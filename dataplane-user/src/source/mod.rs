//! Sources of desired state: a directory of manifests, or (with `kubernetes`) the API server.
//!
//! The agent polls a source's [`Source::version`], cheap and called every tick, and calls
//! [`Source::load`] once the version has changed and then held still for a tick (debounce).
//! Both are incremental where it pays: a directory reads its inotify events and re-reads only
//! the files that changed.

pub mod directory;
pub mod kubernetes;

use crate::manifest::{LoadError, Loaded};

/// Where the agent's desired state comes from.
pub trait Source: Send {
    /// A number that changes whenever the desired state may have changed.
    fn version(&mut self) -> anyhow::Result<u64>;

    /// The whole desired state now. An error refuses the change set whole.
    fn load(&mut self) -> Result<Loaded, LoadError>;

    /// What this source reads, for logs and `/status`.
    fn describe(&self) -> String;

    /// How the source's connection is doing, for `/status`, if it has one to report.
    fn health(&self) -> Option<String> {
        None
    }
}
