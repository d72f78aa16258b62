//! The benchmark's output: tables for people, then a block of `key=value` lines for scripts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use crate::measure::median;

/// Highest acceptable cost at 100 000 rules relative to 10 rules, per case.
pub const GROWTH_TARGET: f64 = 1.2;

/// A measured packet, besides the floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    /// Second packet of an allowed TCP connection from a pod.
    EstablishedPod,
    /// Second packet of an allowed TCP connection from an ipBlock address (LPM trie lookup).
    EstablishedIpBlock,
    /// A SYN of a fresh 5-tuple that policy allows: policy lookup and conntrack insert.
    NewAllowed,
    /// A SYN that policy denies: every policy lookup misses, nothing is stored.
    NewDenied,
    /// Stage ladder: an ARP frame, which leaves right after the Ethernet header.
    NonIp,
    /// Stage ladder: a TCP SYN to an address of no pod: full parse and one endpoint lookup.
    NotPodAddress,
    /// Stage ladder: a TCP SYN from the node: full parse and both endpoint lookups.
    NodeTraffic,
}

impl Case {
    pub const ALL: [Self; 4] = [
        Self::EstablishedPod,
        Self::EstablishedIpBlock,
        Self::NewAllowed,
        Self::NewDenied,
    ];

    /// The stage ladder: each packet leaves the program one stage later than the previous.
    pub const LADDER: [Self; 6] = [
        Self::NonIp,
        Self::NotPodAddress,
        Self::NodeTraffic,
        Self::NewDenied,
        Self::EstablishedPod,
        Self::EstablishedIpBlock,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::EstablishedPod => "established, pod peer",
            Self::EstablishedIpBlock => "established, ipBlock peer",
            Self::NewAllowed => "new allowed (SYN) [1]",
            Self::NewDenied => "new denied (SYN)",
            Self::NonIp => "non-IP (ARP)",
            Self::NotPodAddress => "not a pod address",
            Self::NodeTraffic => "from the node",
        }
    }

    /// What a ladder packet goes through before it leaves the program.
    fn stage(self) -> &'static str {
        match self {
            Self::NonIp => "Ethernet header only",
            Self::NotPodAddress => "+ IPv4/TCP parse, endpoint miss",
            Self::NodeTraffic => "+ second endpoint lookup",
            Self::NewDenied => "+ conntrack miss, 6 policy misses",
            Self::EstablishedPod => "conntrack hit, 2 clock reads",
            Self::EstablishedIpBlock => "non-pod peer: no trie walk once tracked",
            Self::NewAllowed => "",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::EstablishedPod => "established_pod",
            Self::EstablishedIpBlock => "established_ipblock",
            Self::NewAllowed => "new_allowed",
            Self::NewDenied => "new_denied",
            Self::NonIp => "non_ip",
            Self::NotPodAddress => "not_pod_address",
            Self::NodeTraffic => "node_traffic",
        }
    }
}

/// How big one configuration's maps are.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sizes {
    pub policies: usize,
    pub rules: usize,
    pub policy_entries: usize,
    /// Policy entries of the measured pod alone.
    pub measured_entries: usize,
    pub peer_classes: usize,
    pub cidr_prefixes: usize,
    pub endpoints: usize,
    pub local_pods: usize,
}

/// Per-round medians of the single-run (`repeat = 1`) calls of one configuration.
#[derive(Clone, Debug, Default)]
pub struct SingleRounds {
    pub floor: Vec<f64>,
    pub established: Vec<f64>,
    pub new: Vec<f64>,
}

/// Everything measured on one configuration.
pub struct ConfigReport {
    /// Short name of the rule count (`10`, `10k`, `100k`).
    pub label: &'static str,
    pub sizes: Sizes,
    /// Per-round ns per packet of each case (for [`Case::NewAllowed`], the estimate).
    pub rounds: BTreeMap<Case, Vec<f64>>,
    pub single: SingleRounds,
}

impl ConfigReport {
    fn case_ns(&self, case: Case) -> f64 {
        median(&self.rounds[&case])
    }
}

/// The control-plane figures: compiling and writing the largest configuration.
pub struct ControlPlane {
    pub sizes: Sizes,
    pub pods: usize,
    pub compile: Vec<Duration>,
    /// `Dataplane::load`: object parsing, map creation, the verifier.
    pub program_load: Vec<Duration>,
    /// `sync_maps` into the fresh maps of a just-loaded dataplane.
    pub sync: Vec<Duration>,
    pub peak_rss_kib: u64,
}

/// Where and how the benchmark ran.
pub struct Environment {
    pub kernel: String,
    pub cpus: usize,
    pub clocksource: String,
    pub rounds: usize,
    pub repeat: u32,
    pub single_runs: usize,
}

/// The whole report.
pub struct Report {
    pub env: Environment,
    /// Per-round floor, all configurations pooled (the same empty program).
    pub floor: Vec<f64>,
    /// Smallest gap seen between two single-run durations.
    pub granularity: Option<f64>,
    pub configs: Vec<ConfigReport>,
    pub control: ControlPlane,
}

fn millis(values: &[Duration]) -> f64 {
    let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    median(&ms)
}

/// `PASS` when `growth` meets the target, `MISS` otherwise.
fn verdict(growth: f64) -> &'static str {
    if growth <= GROWTH_TARGET {
        "PASS"
    } else {
        "MISS"
    }
}

/// The final block for scripts: every part's `key=value` lines.
pub fn render_keys(kv: &[(String, String)]) -> String {
    let mut out = String::from("# weir-bench results\n");
    for (k, v) in kv {
        let _ = writeln!(out, "{k}={v}");
    }
    out
}

impl Report {
    fn floor_ns(&self) -> f64 {
        median(&self.floor)
    }

    /// Cost at the most rules over cost at the fewest.
    fn growth(&self, case: Case) -> f64 {
        let (Some(first), Some(last)) = (self.configs.first(), self.configs.last()) else {
            return f64::NAN;
        };
        last.case_ns(case) / first.case_ns(case)
    }

    /// The report's tables and notes; its `key=value` lines come from [`Self::keys`].
    pub fn render_tables(&self) -> String {
        let mut out = String::new();
        self.render_header(&mut out);
        self.render_sizes(&mut out);
        self.render_packets(&mut out);
        self.render_single(&mut out);
        self.render_ladder(&mut out);
        self.render_control(&mut out);
        out
    }

    fn render_header(&self, out: &mut String) {
        let e = &self.env;
        let _ = writeln!(
            out,
            "weir-bench: kernel {}, {} CPUs, clocksource {}",
            e.kernel, e.cpus, e.clocksource
        );
        let _ = writeln!(
            out,
            "In-kernel cost per packet through BPF_PROG_TEST_RUN on weir_to_pod (towards the \
             measured pod):\nmedian of {} rounds of {} runs per case; every configuration and \
             case runs in every round, in rotating order.\n",
            e.rounds, e.repeat
        );
    }

    fn render_sizes(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Configurations: {} pods in {} namespaces, {} apps; {} pods on this node",
            crate::cluster::PODS,
            crate::cluster::NAMESPACES,
            crate::cluster::APPS,
            crate::cluster::LOCAL_PODS
        );
        let _ = writeln!(
            out,
            "{:>6} {:>9} {:>8} {:>15} {:>14} {:>13} {:>14} {:>10} {:>11}",
            "rules",
            "policies",
            "rules",
            "policy entries",
            "measured pod",
            "peer classes",
            "CIDR prefixes",
            "endpoints",
            "local pods"
        );
        for c in &self.configs {
            let s = &c.sizes;
            let _ = writeln!(
                out,
                "{:>6} {:>9} {:>8} {:>15} {:>14} {:>13} {:>14} {:>10} {:>11}",
                c.label,
                s.policies,
                s.rules,
                s.policy_entries,
                s.measured_entries,
                s.peer_classes,
                s.cidr_prefixes,
                s.endpoints,
                s.local_pods
            );
        }
        out.push('\n');
    }

    fn render_packets(&self, out: &mut String) {
        let floor = self.floor_ns();
        let _ = write!(out, "{:<28}", "ns per packet (x floor)");
        for c in &self.configs {
            let _ = write!(out, "{:>19}", format!("{} rules", c.label));
        }
        let _ = writeln!(out, "  {:>9}", "100k / 10");
        let _ = writeln!(
            out,
            "{:<28}{:>9.1} ns (1.00x)",
            "floor (empty TC program)", floor
        );
        for case in Case::ALL {
            let _ = write!(out, "{:<28}", case.label());
            for c in &self.configs {
                let ns = c.case_ns(case);
                let _ = write!(out, "{:>19}", format!("{ns:.1} ns ({:.2}x)", ns / floor));
            }
            let growth = self.growth(case);
            let _ = writeln!(
                out,
                "  {:>8.3}x {} (target <= {GROWTH_TARGET}x)",
                growth,
                verdict(growth)
            );
        }
        out.push('\n');
    }

    fn render_single(&self, out: &mut String) {
        let e = &self.env;
        let _ = writeln!(
            out,
            "[1] A test run repeats one frame, so from its second run on a SYN finds the \
             connection its\nfirst run created. New flows are therefore sent one per call \
             (repeat = 1), {} fresh source\nports per round and configuration, each checked to \
             be judged by policy (policy_allowed\ncounter) and to create an entry. A single \
             run's kernel time also holds a ktime read and\ncolder caches, so the established \
             packet and the floor are sent the same way, interleaved,\nand the figure above is: \
             established (bulk) + [new - established] (single runs), per round.\nSingle-run \
             medians (timer granularity seen: {}):",
            e.single_runs,
            self.granularity
                .map_or_else(|| "n/a".to_owned(), |g| format!("{g:.0} ns"))
        );
        let _ = write!(out, "{:<28}", "ns per call");
        for c in &self.configs {
            let _ = write!(out, "{:>19}", format!("{} rules", c.label));
        }
        out.push('\n');
        for (label, row) in [
            ("floor", 0),
            ("established, pod peer", 1),
            ("new allowed, pod peer", 2),
        ] {
            let _ = write!(out, "{label:<28}");
            for c in &self.configs {
                let s = &c.single;
                let rounds = [&s.floor, &s.established, &s.new][row];
                let _ = write!(out, "{:>16.1} ns", median(rounds));
            }
            out.push('\n');
        }
        out.push('\n');
    }

    fn render_ladder(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Where the time goes: packets that leave the program at successive stages (ns per \
             packet,\nsame rounds as above). Headers are read directly from the linear skb.",
        );
        let _ = write!(out, "{:<27}{:<36}", "packet", "stages run");
        for c in &self.configs {
            let _ = write!(out, "{:>11}", format!("{} rules", c.label));
        }
        let _ = writeln!(out, "  {:>9}", "100k / 10");
        let _ = writeln!(
            out,
            "{:<27}{:<36}{:>11.1}",
            "floor",
            "empty program",
            self.floor_ns()
        );
        for case in Case::LADDER {
            let _ = write!(out, "{:<27}{:<36}", case.label(), case.stage());
            for c in &self.configs {
                let _ = write!(out, "{:>11.1}", c.case_ns(case));
            }
            let _ = writeln!(out, "  {:>8.3}x", self.growth(case));
        }
        out.push('\n');
    }

    fn render_control(&self, out: &mut String) {
        let c = &self.control;
        let _ = writeln!(
            out,
            "Control plane: {} policies ({} rules) over {} pods, median of {}",
            c.sizes.policies,
            c.sizes.rules,
            c.pods,
            c.compile.len()
        );
        let _ = writeln!(
            out,
            "  compile                  {:>9.1} ms",
            millis(&c.compile)
        );
        let _ = writeln!(
            out,
            "  load programs (verifier) {:>9.1} ms",
            millis(&c.program_load)
        );
        let _ = writeln!(
            out,
            "  sync_maps, fresh maps    {:>9.1} ms  ({} policy + {} endpoint + {} CIDR entries)",
            millis(&c.sync),
            c.sizes.policy_entries,
            c.sizes.endpoints,
            c.sizes.cidr_prefixes
        );
        #[expect(
            clippy::cast_precision_loss,
            reason = "a resident set size is far below 2^52 KiB"
        )]
        let rss_mib = c.peak_rss_kib as f64 / 1024.0;
        let _ = writeln!(out, "  peak RSS after that      {rss_mib:>9.1} MiB\n");
    }

    /// The `key=value` pairs of the in-kernel part.
    pub fn keys(&self) -> Vec<(String, String)> {
        let e = &self.env;
        let mut kv: Vec<(String, String)> = vec![
            ("kernel".into(), e.kernel.clone()),
            ("cpus".into(), e.cpus.to_string()),
            ("rounds".into(), e.rounds.to_string()),
            ("repeat".into(), e.repeat.to_string()),
            ("single_runs_per_round".into(), e.single_runs.to_string()),
            ("floor_ns".into(), format!("{:.1}", self.floor_ns())),
            (
                "single_run_granularity_ns".into(),
                self.granularity.map_or("nan".into(), |g| format!("{g:.0}")),
            ),
        ];
        for c in &self.configs {
            self.config_keys(c, &mut kv);
        }
        for case in Case::ALL
            .into_iter()
            .chain(Case::LADDER)
            .collect::<BTreeSet<_>>()
        {
            let growth = self.growth(case);
            kv.push((format!("{}_growth", case.key()), format!("{growth:.3}")));
            kv.push((format!("{}_verdict", case.key()), verdict(growth).into()));
        }
        let c = &self.control;
        kv.extend([
            ("control_policies".into(), c.sizes.policies.to_string()),
            ("control_rules".into(), c.sizes.rules.to_string()),
            ("control_pods".into(), c.pods.to_string()),
            ("compile_ms".into(), format!("{:.1}", millis(&c.compile))),
            (
                "program_load_ms".into(),
                format!("{:.1}", millis(&c.program_load)),
            ),
            ("sync_maps_ms".into(), format!("{:.1}", millis(&c.sync))),
            ("peak_rss_kib".into(), c.peak_rss_kib.to_string()),
        ]);
        kv
    }

    fn config_keys(&self, c: &ConfigReport, kv: &mut Vec<(String, String)>) {
        let p = format!("rules_{}", c.label);
        let s = &c.sizes;
        for (name, value) in [
            ("policies", s.policies),
            ("rules", s.rules),
            ("policy_entries", s.policy_entries),
            ("measured_pod_entries", s.measured_entries),
            ("peer_classes", s.peer_classes),
            ("cidr_prefixes", s.cidr_prefixes),
            ("endpoints", s.endpoints),
        ] {
            kv.push((format!("{p}_{name}"), value.to_string()));
        }
        let floor = self.floor_ns();
        for case in Case::ALL
            .into_iter()
            .chain(Case::LADDER)
            .collect::<BTreeSet<_>>()
        {
            let ns = c.case_ns(case);
            kv.push((format!("{}_{p}_ns", case.key()), format!("{ns:.1}")));
            kv.push((
                format!("{}_{p}_x_floor", case.key()),
                format!("{:.2}", ns / floor),
            ));
        }
        kv.push((
            format!("single_new_allowed_{p}_ns"),
            format!("{:.1}", median(&c.single.new)),
        ));
        kv.push((
            format!("single_established_pod_{p}_ns"),
            format!("{:.1}", median(&c.single.established)),
        ));
        kv.push((
            format!("single_floor_{p}_ns"),
            format!("{:.1}", median(&c.single.floor)),
        ));
    }
}
