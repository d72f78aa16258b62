//! The Service control plane at scale: compiling 10 000 Services of 10 endpoints each and
//! writing them into empty maps, then one endpoint changing (a pod replaced: one address out,
//! one in), compiled and written as a difference.
//!
//! Each figure is the median of `rounds` runs, after a warm-up run thrown away, as wall-clock
//! time and as the thread's CPU time (user and kernel): on a shared machine the second leaves
//! out the time spent waiting for a CPU. The write of a change is `Dataplane::sync_maps`, what
//! the agent pays after compiling: the difference over every map, the writes, and keeping the
//! new state. The maps are fresh and unpinned.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use weir::compile::{self, NodeView};

use crate::measure::thread_cpu;
use weir::dataplane::Dataplane;
use weir::model::{
    DesiredState, Endpoint, EndpointPort, EndpointSlice, Protocol, Service, ServicePort, TargetPort,
};

use crate::measure::median;

/// Services generated.
pub const SERVICES: u32 = 10_000;
/// Ready endpoints of each Service.
pub const ENDPOINTS: u32 = 10;

/// What the section measured.
pub struct ServicesReport {
    frontends: usize,
    backends: usize,
    tables: usize,
    compile: Vec<Timing>,
    write: Vec<Timing>,
    change_compile: Vec<Timing>,
    change_write: Vec<Timing>,
    change_entries: (usize, usize),
}

/// One timed run: wall-clock and thread CPU time.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

/// 10.96.0.0/16 + `i`: the cluster IP of Service `i`.
fn cluster_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))
}

/// 10.128.0.0/9 + `i × ENDPOINTS + j`: endpoint `j` of Service `i`; `generation` moves the
/// address (a replaced pod gets a new one).
fn endpoint_ip(i: u32, j: u32, generation: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        0x0a80_0000 + generation * SERVICES * ENDPOINTS + i * ENDPOINTS + j,
    ))
}

fn service(i: u32) -> Service {
    Service {
        namespace: format!("ns-{}", i % 100),
        name: format!("svc-{i}"),
        cluster_ips: vec![cluster_ip(i)],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
        }],
        ..Service::default()
    }
}

fn slice(i: u32, replaced: Option<u32>) -> EndpointSlice {
    let svc = service(i);
    EndpointSlice {
        name: format!("{}-abcde", svc.name),
        namespace: svc.namespace,
        service: svc.name,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        endpoints: (0..ENDPOINTS)
            .map(|j| Endpoint {
                addresses: vec![endpoint_ip(i, j, u32::from(replaced == Some(j)))],
                ready: true,
                serving: true,
                node_name: Some(format!("node-{}", j % 50)),
                ..Endpoint::default()
            })
            .collect(),
        ..EndpointSlice::default()
    }
}

/// The cluster, in the order sources hand it over.
fn state() -> DesiredState {
    let mut state = DesiredState {
        services: (0..SERVICES).map(|i| Arc::new(service(i))).collect(),
        endpoint_slices: (0..SERVICES).map(|i| Arc::new(slice(i, None))).collect(),
        ..DesiredState::default()
    };
    state.sort_services_and_slices();
    state
}

/// `base` after the slice of Service 0 changed (with `replaced`, its endpoint `j` has a new
/// address), as a source hands it over: every other object is the one `base` has.
fn changed(base: &DesiredState, replaced: Option<u32>) -> DesiredState {
    let mut next = base.clone();
    let slice = Arc::new(slice(0, replaced));
    for old in &mut next.endpoint_slices {
        if old.key() == slice.key() {
            *old = slice;
            break;
        }
    }
    next
}

fn node() -> NodeView {
    NodeView {
        node_name: Some("node-0".into()),
        ..NodeView::default()
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Timing)> {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let out = f()?;
    let timing = Timing {
        wall: wall.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu),
    };
    Ok((out, timing))
}

/// Runs the section: `rounds` measured runs of each step.
pub fn run(rounds: usize) -> Result<ServicesReport> {
    eprintln!("weir-bench: services: {SERVICES} Services × {ENDPOINTS} endpoints");
    let base = state();
    let node = node();
    let mut report = ServicesReport {
        frontends: 0,
        backends: 0,
        tables: 0,
        compile: Vec::new(),
        write: Vec::new(),
        change_compile: Vec::new(),
        change_write: Vec::new(),
        change_entries: (0, 0),
    };
    for round in 0..=rounds {
        let (maps, compile_time) =
            timed(|| compile::compile(&base, &node).context("compiling the Services"))?;
        let mut dp = Dataplane::load().context("loading the eBPF programs")?;
        let (_, write_time) = timed(|| dp.sync_maps(&maps).context("writing the Services"))?;
        // One endpoint of Service 0 replaced, then back: two changes per round.
        let mut change_compile = Vec::new();
        let mut change_write = Vec::new();
        for replaced in [Some(3), None] {
            let changed = changed(&base, replaced);
            let (next, t) = timed(|| {
                compile::compile_with(&changed, &node, dp.applied()).context("compiling a change")
            })?;
            change_compile.push(t);
            let (stats, t) = timed(|| dp.sync_maps(&next).context("writing a change"))?;
            change_write.push(t);
            report.change_entries = (stats.upserts, stats.removals);
        }
        if round == 0 {
            let counts = maps.services.counts();
            report.frontends = counts.frontends;
            report.backends = counts.backends;
            report.tables = counts.tables.iter().sum();
            ensure!(
                report.backends == (SERVICES * ENDPOINTS) as usize,
                "expected {} backends, compiled {}",
                SERVICES * ENDPOINTS,
                report.backends
            );
            continue;
        }
        report.compile.push(compile_time);
        report.write.push(write_time);
        report.change_compile.extend(change_compile);
        report.change_write.extend(change_write);
    }
    Ok(report)
}

/// Median wall-clock and CPU milliseconds.
fn ms(values: &[Timing]) -> (f64, f64) {
    let of = |f: fn(&Timing) -> Duration| {
        median(
            &values
                .iter()
                .map(|t| f(t).as_secs_f64())
                .collect::<Vec<_>>(),
        ) * 1e3
    };
    (of(|t| t.wall), of(|t| t.cpu))
}

impl ServicesReport {
    fn steps(&self) -> [(&'static str, &'static str, &[Timing]); 4] {
        [
            ("compile, from scratch", "compile", &self.compile),
            ("write into empty maps", "write", &self.write),
            (
                "one endpoint replaced: compile",
                "change_compile",
                &self.change_compile,
            ),
            (
                "one endpoint replaced: write",
                "change_write",
                &self.change_write,
            ),
        ]
    }

    /// The section as text.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "\nServices: {SERVICES} Services × {ENDPOINTS} endpoints: {} frontends, {} backends, \
             {} Maglev tables (medians of {} runs)\n\
             \x20 {:<32} {:>10} {:>10}\n",
            self.frontends,
            self.backends,
            self.tables,
            self.compile.len(),
            "",
            "wall ms",
            "CPU ms",
        );
        for (label, _, timings) in self.steps() {
            let (wall, cpu) = ms(timings);
            let _ = writeln!(out, "  {label:<32} {wall:>10.3} {cpu:>10.3}");
        }
        let _ = writeln!(
            out,
            "  (a change writes {} entries and removes {})",
            self.change_entries.0, self.change_entries.1
        );
        out
    }

    /// The section's `key=value` lines.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut kv = vec![
            ("services".into(), SERVICES.to_string()),
            ("services_endpoints_each".into(), ENDPOINTS.to_string()),
        ];
        for (_, key, timings) in self.steps() {
            let (wall, cpu) = ms(timings);
            kv.push((format!("services_{key}_wall_ms"), format!("{wall:.3}")));
            kv.push((format!("services_{key}_cpu_ms"), format!("{cpu:.3}")));
        }
        kv
    }
}
