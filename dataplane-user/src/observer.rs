//! What the agent serves beyond the sync loop's status: flows (`/flows`), explanations
//! (`/explain`), map occupancy and flow-event figures (`/status`, `/metrics`).
//!
//! The sync loop publishes each applied generation here ([`Observer::publish`]); the HTTP
//! server and the flow-ring reader read from here, never from the `Dataplane`, which stays the
//! sync loop's alone: explanations go through duplicated map handles ([`MapReader`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use dataplane_abi::{capacity, names};
use serde_json::json;

use crate::catalog::Catalog;
use crate::compile::MapSet;
use crate::dataplane::{Dataplane, DataplaneError, FlowEvents, MapReader};
use crate::explain::{self, Explanation};
use crate::flows::{self, FlowLog};
use crate::model::DesiredState;

/// Flows kept for `GET /flows`.
const RECENT_FLOWS: usize = 4096;

/// A local pod's interface, as `/status` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interface {
    ifindex: u32,
    pod: String,
    attached: bool,
    ingress_isolated: bool,
    egress_isolated: bool,
}

/// What the last applied generation wrote.
#[derive(Clone, Debug, Default)]
struct Published {
    names: Arc<Catalog>,
    /// Entries per map the agent writes, with the map's capacity.
    occupancy: BTreeMap<&'static str, (usize, u32)>,
    interfaces: Vec<Interface>,
}

/// Shared by the sync loop (writer), the flow-ring reader and the HTTP server.
pub struct Observer {
    flows: Arc<FlowLog>,
    published: Mutex<Published>,
    reader: OnceLock<MapReader>,
    events: Mutex<FlowEvents>,
}

/// Why an explanation could not be given.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The query could not be resolved to addresses, protocol and port.
    #[error(transparent)]
    Query(#[from] explain::QueryError),
    /// The agent has not loaded the dataplane yet: no maps to read.
    #[error("the dataplane is not loaded yet")]
    NotLoaded,
    /// The policy maps could not be read.
    #[error("reading the maps")]
    Maps(#[source] DataplaneError),
}

impl Default for Observer {
    fn default() -> Self {
        Self {
            flows: Arc::new(FlowLog::new(RECENT_FLOWS)),
            published: Mutex::default(),
            reader: OnceLock::new(),
            events: Mutex::new(FlowEvents::Off),
        }
    }
}

impl Observer {
    /// Takes read handles on `dataplane`'s maps and, unless `events` is off, starts reading
    /// its flow ring, then tells the programs to send events: never before someone reads.
    /// Must run inside the tokio runtime.
    pub fn attach(
        self: &Arc<Self>,
        dataplane: &mut Dataplane,
        events: FlowEvents,
    ) -> Result<(), DataplaneError> {
        let _ = self.reader.set(dataplane.reader()?);
        if events != FlowEvents::Off {
            let ring = dataplane.take_flow_ring()?;
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let names = || me.names();
                if let Err(err) = flows::ring::read(ring, Arc::clone(&me.flows), names).await {
                    tracing::error!(error = %err, "flow events: reading the ring failed");
                }
            });
        }
        dataplane.set_flow_events(events)?;
        *self.events.lock().unwrap_or_else(PoisonError::into_inner) = events;
        Ok(())
    }

    /// Records the generation just applied: `maps`, compiled from `state`, and the
    /// interfaces the programs are attached to.
    pub fn publish(&self, state: &DesiredState, maps: &MapSet, attached: &[u32]) {
        let occupancy = occupancy(maps);
        let interfaces = maps
            .local_pods
            .values()
            .map(|lp| Interface {
                ifindex: lp.ifindex,
                pod: format!("{}/{}", lp.namespace, lp.name),
                attached: attached.contains(&lp.ifindex),
                ingress_isolated: lp.ingress_isolated,
                egress_isolated: lp.egress_isolated,
            })
            .collect();
        *self.lock() = Published {
            names: Arc::new(Catalog::new(state, maps)),
            occupancy,
            interfaces,
        };
    }

    /// The names of the generation in force.
    pub fn names(&self) -> Arc<Catalog> {
        Arc::clone(&self.lock().names)
    }

    /// The flow log.
    pub fn flows(&self) -> &FlowLog {
        &self.flows
    }

    /// Explains the connection `src` → `dst` on `port` (`80/tcp`, `icmp`) from the live maps.
    pub fn explain(&self, src: &str, dst: &str, port: &str) -> Result<Explanation, ExplainError> {
        let names = self.names();
        let query = explain::resolve(&names, src, dst, port)?;
        let reader = self.reader.get().ok_or(ExplainError::NotLoaded)?;
        let enforced = explain::Enforced::now(reader).map_err(ExplainError::Maps)?;
        explain::explain(&enforced, &names, &query).map_err(ExplainError::Maps)
    }

    /// The `/status` fields this module owns.
    pub fn status(&self) -> serde_json::Value {
        let published = self.lock().clone();
        let maps: serde_json::Map<String, serde_json::Value> = published
            .occupancy
            .iter()
            .map(|(name, (entries, cap))| {
                (
                    (*name).to_owned(),
                    json!({"entries": entries, "capacity": cap}),
                )
            })
            .collect();
        let interfaces: Vec<_> = published
            .interfaces
            .iter()
            .map(|i| {
                json!({
                    "ifindex": i.ifindex,
                    "pod": i.pod,
                    "attached": i.attached,
                    "ingress_isolated": i.ingress_isolated,
                    "egress_isolated": i.egress_isolated,
                })
            })
            .collect();
        let events = *self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let mut flow_events = json!({
            "mode": mode(events),
            "received": self.flows.received(),
        });
        for (name, n) in self.event_counters() {
            flow_events[name] = json!(n);
        }
        json!({
            "maps": maps,
            "interfaces": interfaces,
            "flow_events": flow_events,
        })
    }

    /// The `/metrics` families this module owns, in the Prometheus text format.
    pub fn metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP weir_flow_events_total Flow events the programs wanted to send, by what \
             became of them.\n# TYPE weir_flow_events_total counter"
        );
        for (name, n) in self.event_counters() {
            let _ = writeln!(out, "weir_flow_events_total{{result=\"{name}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP weir_flows_total Drops and new connections seen through flow events (a \
             sample when the rate limiter holds some back), by verdict, reason and policy: the \
             policy that allowed it, or each policy isolating the pod for a drop.\n\
             # TYPE weir_flows_total counter"
        );
        for (t, n) in self.flows.tallies() {
            let _ = writeln!(
                out,
                "weir_flows_total{{verdict=\"{}\",reason=\"{}\",policy=\"{}\"}} {n}",
                t.verdict.name(),
                label(&t.reason),
                label(&t.policy)
            );
        }
    }

    /// Kernel counters of the event path; empty before the dataplane is loaded.
    fn event_counters(&self) -> BTreeMap<&'static str, u64> {
        let Some(reader) = self.reader.get() else {
            return BTreeMap::new();
        };
        reader.flow_event_counters().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "reading the flow-event counters");
            BTreeMap::new()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Entries each map the agent writes holds in `maps`, with the map's capacity: the policy
/// maps and the Service maps.
fn occupancy(maps: &MapSet) -> BTreeMap<&'static str, (usize, u32)> {
    let services = maps.services.counts();
    let [small, medium, large] = services.tables;
    BTreeMap::from([
        (
            names::ENDPOINTS,
            (maps.endpoints.len(), capacity::ENDPOINTS),
        ),
        (names::CIDRS, (maps.cidrs.len(), capacity::CIDRS)),
        (names::POLICY, (maps.policy.len(), capacity::POLICY)),
        (names::SERVICES, (services.frontends, capacity::SERVICES)),
        (names::BACKENDS, (services.backends, capacity::BACKENDS)),
        (names::MAGLEV_SMALL, (small, capacity::BACKEND_SETS)),
        (names::MAGLEV_MEDIUM, (medium, capacity::MAGLEV_MEDIUM)),
        (names::MAGLEV_LARGE, (large, capacity::MAGLEV_LARGE)),
        (
            names::SOURCE_RANGES,
            (services.source_ranges, capacity::SOURCE_RANGES),
        ),
    ])
}

fn mode(events: FlowEvents) -> String {
    match events {
        FlowEvents::Off => "off".to_owned(),
        FlowEvents::Unlimited => "unlimited".to_owned(),
        FlowEvents::Limited { per_sec, burst } => {
            format!("{per_sec}/s per CPU, burst {burst}")
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{self, NodeView};
    use crate::model::{
        Endpoint, EndpointPort, EndpointSlice, Protocol, Service, ServicePort, TargetPort,
    };

    /// A `ClusterIP` Service of two ports over three ready endpoints.
    fn state() -> DesiredState {
        let port = |name: &str, port: u16| ServicePort {
            name: name.to_owned(),
            protocol: Protocol::Tcp,
            port,
            target_port: TargetPort::Number(port + 8000),
            node_port: None,
        };
        DesiredState {
            services: vec![Arc::new(Service {
                namespace: "shop".into(),
                name: "web".into(),
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                ports: vec![port("http", 80), port("https", 443)],
                ..Service::default()
            })],
            endpoint_slices: vec![Arc::new(EndpointSlice {
                namespace: "shop".into(),
                name: "web-x7k2p".into(),
                service: "web".into(),
                ports: vec![
                    EndpointPort {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: 8080,
                    },
                    EndpointPort {
                        name: "https".into(),
                        protocol: Protocol::Tcp,
                        port: 8443,
                    },
                ],
                endpoints: (1..=3)
                    .map(|n| Endpoint {
                        addresses: vec![format!("10.64.0.{n}").parse().unwrap()],
                        ready: true,
                        serving: true,
                        ..Endpoint::default()
                    })
                    .collect(),
                ..EndpointSlice::default()
            })],
            ..DesiredState::default()
        }
    }

    #[test]
    fn occupancy_counts_the_service_maps() {
        let maps = compile::compile(&state(), &NodeView::default()).unwrap();
        let occupancy = occupancy(&maps);
        let entries = |name: &str| occupancy[name].0;
        assert_eq!(entries(names::SERVICES), 2, "a frontend per port");
        assert_eq!(entries(names::BACKENDS), 6, "three endpoints per port");
        assert_eq!(entries(names::MAGLEV_SMALL), 2, "a table per backend set");
        assert_eq!(entries(names::MAGLEV_MEDIUM), 0);
        assert_eq!(entries(names::MAGLEV_LARGE), 0);
        assert_eq!(entries(names::SOURCE_RANGES), 0);
        assert_eq!(occupancy[names::BACKENDS].1, capacity::BACKENDS);
    }
}
