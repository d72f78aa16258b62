//! The Kubernetes API server as a source: one kube-rs watcher per kind, each keeping its
//! objects in a shared store that [`Source::load`] assembles into the desired state.
//!
//! What the agent can rely on:
//! - nothing is applied before every kind has been listed once: until then
//!   [`Source::version`] is 0 and [`Source::load`] refuses with "waiting for the initial list
//!   of ...", since a state without the policies would open the node;
//! - a relist (after an expired watch, 410 Gone) replaces a kind's objects when it is
//!   complete, never clears them first;
//! - during an outage the last objects stay, and are loaded as they are; watchers retry
//!   within 2 s (see `watch`), and [`Kubernetes::health`] says how each is doing;
//! - an invalid object refuses the change set whole, named `kubernetes:Kind/ns/name` with
//!   the field at fault, as a bad file does.

mod kind;
mod store;
mod watch;

#[cfg(test)]
mod deploy_tests;

use std::path::PathBuf;
use std::sync::Arc;

use kube::Api;
use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::core::DynamicObject;
use tokio::task::AbortHandle;

pub use self::kind::Kind;
use self::store::Store;
pub use self::store::{Health, KindHealth};
use super::Source;
use crate::manifest::{LoadError, Loaded};

/// Which API server to follow, and with which credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The current context of a kubeconfig file.
    Kubeconfig(PathBuf),
    /// The cluster this runs in: its service account token and CA, the API server's address
    /// from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    InCluster,
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig file could not be read or used.
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        /// Path of the kubeconfig file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: KubeconfigError,
    },
    /// The service account token, CA or API server address could not be read.
    #[error("reading the in-cluster configuration")]
    InCluster {
        /// The cause.
        #[source]
        source: InClusterError,
    },
    /// The client could not be built from the configuration.
    #[error("creating the Kubernetes client")]
    Client {
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Follows the Kubernetes API server. Its watcher tasks stop when it drops.
#[derive(Debug)]
pub struct Kubernetes {
    store: Arc<Store>,
    tasks: Vec<AbortHandle>,
    server: String,
    node_name: String,
}

impl Kubernetes {
    /// Reads the configuration of `target` and starts watching. Must run inside a tokio
    /// runtime, which the watchers then run on.
    ///
    /// Nothing is sent to the server yet: an unreachable server is not an error here but a
    /// source that is not ready (the agent reports it and keeps retrying).
    pub async fn connect(target: &Target, node_name: String) -> Result<Self, ConnectError> {
        let config = match target {
            Target::Kubeconfig(path) => {
                let read = |source| ConnectError::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let kubeconfig = Kubeconfig::read_from(path).map_err(read)?;
                let options = KubeConfigOptions::default();
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(read)?
            }
            Target::InCluster => {
                kube::Config::incluster().map_err(|source| ConnectError::InCluster { source })?
            }
        };
        let server = config.cluster_url.to_string();
        let client =
            kube::Client::try_from(config).map_err(|source| ConnectError::Client { source })?;
        Ok(Self::start(&client, server, node_name))
    }

    /// Starts one watcher per [`Kind`] with `client`, whose server `server` names in logs.
    /// Must run inside a tokio runtime.
    pub fn start(client: &kube::Client, server: String, node_name: String) -> Self {
        let store = Arc::new(Store::default());
        let tasks = Kind::ALL
            .into_iter()
            .map(|kind| {
                let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
                tokio::spawn(watch::follow(kind, api, store.clone())).abort_handle()
            })
            .collect();
        Self {
            store,
            tasks,
            server,
            node_name,
        }
    }

    /// How each kind's watcher is doing.
    pub fn health(&self) -> Health {
        self.store.health()
    }

    /// The node this agent runs on (stored for the features that need it; policy
    /// enforcement does not).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Source for Kubernetes {
    fn version(&mut self) -> anyhow::Result<u64> {
        Ok(self.store.version())
    }

    fn load(&mut self) -> Result<Loaded, LoadError> {
        self.store.load()
    }

    fn describe(&self) -> String {
        format!("kubernetes API {} (node {})", self.server, self.node_name)
    }

    fn health(&self) -> Option<String> {
        Some(self.store.health().to_string())
    }
}
