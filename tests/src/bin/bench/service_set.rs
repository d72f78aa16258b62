//! A set of `ClusterIP` Services as both Service benchmarks program them: each has one TCP
//! port, [`SERVICE_PORT`] → a target port, and [`ENDPOINTS_PER_SERVICE`] ready endpoints,
//! listed in one `EndpointSlice`. Service `i` is `svc-<i>` in namespace `svc-ns-<i / 100>`,
//! as a cluster of a hundred Services per namespace would name them. The set is given to
//! Weir as its desired state ([`to_model`]) or as the objects an API server holds
//! ([`service_json`], [`slice_json`]).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::{Value, json};
use weir::model::{
    Endpoint, EndpointPort, EndpointSlice, Origin, Protocol, Service, ServiceKind, ServicePort,
    TargetPort,
};

/// The port clients connect to on a `ClusterIP`.
pub const SERVICE_PORT: u16 = 80;
/// The port endpoints listen on, unless a benchmark gives a Service another.
pub const TARGET_PORT: u16 = 8080;
/// Endpoints of every Service.
pub const ENDPOINTS_PER_SERVICE: usize = 10;
/// The name of the one Service port (kube-proxy writes it into chain names and comments).
pub const PORT_NAME: &str = "http";
/// Services per namespace.
const SERVICES_PER_NAMESPACE: usize = 100;

/// One Service: who it is, where clients reach it, where it sends them.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    /// The `app` label its selector matches: the label of the pods behind it.
    pub app: String,
    pub cluster_ip: Ipv4Addr,
    /// The port its endpoints listen on.
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
}

impl ServiceSpec {
    /// `namespace/name:port`, kube-proxy's name of a Service port.
    pub fn port_name(&self) -> String {
        format!("{}/{}:{PORT_NAME}", self.namespace, self.name)
    }
}

/// The address `offset` places after `base`.
pub fn nth_address(base: Ipv4Addr, offset: usize) -> Ipv4Addr {
    let offset = u32::try_from(offset).expect("address offsets of the benchmarks fit 32 bits");
    Ipv4Addr::from(u32::from(base) + offset)
}

/// `count` Services: Service `i` at `cluster_ip(i)`, with endpoints `endpoints(i)` listening
/// on [`TARGET_PORT`].
pub fn generate(
    count: usize,
    cluster_ip: impl Fn(usize) -> Ipv4Addr,
    endpoints: impl Fn(usize) -> Vec<Ipv4Addr>,
) -> Vec<ServiceSpec> {
    (0..count)
        .map(|i| ServiceSpec {
            namespace: format!("svc-ns-{:04}", i / SERVICES_PER_NAMESPACE),
            name: format!("svc-{i:06}"),
            app: format!("svc-{i:06}"),
            cluster_ip: cluster_ip(i),
            target_port: TARGET_PORT,
            endpoints: endpoints(i),
        })
        .collect()
}

/// The Services and their slices as Weir's desired state holds them.
pub fn to_model(specs: &[ServiceSpec]) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    specs
        .iter()
        .map(|s| (Arc::new(service(s)), Arc::new(slice(s))))
        .unzip()
}

fn service(spec: &ServiceSpec) -> Service {
    Service {
        namespace: spec.namespace.clone(),
        name: spec.name.clone(),
        kind: ServiceKind::ClusterIp,
        cluster_ips: vec![IpAddr::V4(spec.cluster_ip)],
        ports: vec![ServicePort {
            name: PORT_NAME.to_owned(),
            protocol: Protocol::Tcp,
            port: SERVICE_PORT,
            target_port: TargetPort::Number(spec.target_port),
            node_port: None,
        }],
        selector: Some([("app".to_owned(), spec.app.clone())].into()),
        ..Service::default()
    }
}

/// The name of the one `EndpointSlice` of `spec`.
fn slice_name(spec: &ServiceSpec) -> String {
    format!("{}-ep", spec.name)
}

fn slice(spec: &ServiceSpec) -> EndpointSlice {
    EndpointSlice {
        namespace: spec.namespace.clone(),
        name: slice_name(spec),
        service: spec.name.clone(),
        ports: vec![EndpointPort {
            name: PORT_NAME.to_owned(),
            protocol: Protocol::Tcp,
            port: spec.target_port,
        }],
        endpoints: spec
            .endpoints
            .iter()
            .map(|a| Endpoint {
                addresses: vec![IpAddr::V4(*a)],
                ready: true,
                serving: true,
                ..Endpoint::default()
            })
            .collect(),
        legacy: false,
        origin: Origin::default(),
    }
}

/// The Service as `kubectl get -o yaml` shows it once the API server has filled in its
/// defaults: a single-stack IPv4 `ClusterIP` Service with a selector.
pub fn service_json(spec: &ServiceSpec) -> Value {
    let ip = spec.cluster_ip.to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{
                "name": PORT_NAME,
                "port": SERVICE_PORT,
                "protocol": "TCP",
                "targetPort": spec.target_port,
            }],
            "selector": {"app": spec.app},
            "sessionAffinity": "None",
            "type": "ClusterIP",
        },
    })
}

/// The Service's `EndpointSlice` as the `EndpointSlice` controller writes it: labelled with
/// the Service's name, every endpoint ready.
pub fn slice_json(spec: &ServiceSpec) -> Value {
    let endpoints: Vec<Value> = spec
        .endpoints
        .iter()
        .map(|a| {
            json!({
                "addresses": [a.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(spec),
            "namespace": spec.namespace,
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": spec.name,
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": PORT_NAME, "port": spec.target_port, "protocol": "TCP"}],
    })
}
