//! Hitless changes: the `weir` agent applies a sequence of changes (policies added, removed and
//! modified, pod labels that move pods in and out of selectors) while probes run without pause,
//! and every probe is judged against what the states around it allow.
//!
//! The model is upstream's (namespaces x, y, z; pods a, b, c; see `e2e_policy.rs`), with a few
//! extra labels and policies that the churn turns on and off. The whole desired state lives in
//! one manifest file, replaced in one rename per change, so that each change is exactly one
//! generation of the agent, never half of one.
//!
//! **Windows.** A change's window opens just before its file is renamed and closes when
//! `/status` shows the next generation (polled every few milliseconds): the kernel's maps can
//! only move inside it. Changes are [`QUIET`] apart, longer than a probe lasts, so a probe
//! overlaps at most one window in practice (the judgement handles several).
//!
//! **Verdicts.** Each probe records when it started and ended and whether its echo came back.
//! A probe that overlaps no window must match the state in force exactly. A probe that overlaps
//! windows is wrong when it connected though none of the states from before its first change
//! to after its last allows it, or failed though all of them allow it. Which state allows what
//! is computed by a reference evaluator of the few `NetworkPolicy` features used here
//! ([`Policy::allows`]), written from the Kubernetes semantics and independent of Weir's
//! compiler; probes in quiet periods check it against the kernel in every state.
//!
//! **The hard case.** One change set moves pod y/a out of the guard's peer class (it loses
//! `team: blue`) and, in the same change, opens ports 81 to [`WIDE_END`] to that class (y/b
//! stays in it). Before and after, y/a → x/a on port 81 is denied; a dataplane that writes the
//! new rule before y/a's new class lets it through in between. The wide port range becomes one
//! policy entry per port, so the write takes long enough for probes to land in it; several
//! lanes probe that pair alone ([`HARD_LANES`]). Every [`HARD_EVERY`]th change is the hard
//! case, made and undone in turn.
//!
//! Choices (changes, probe targets) come from [`SEED`]: every run makes the same ones.
//!
//! Needs root; skips otherwise. Run: `cargo test -p weir-tests --test churn -- --nocapture`
//! prints one line per change (its window, the probes that overlapped it, wrong verdicts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::{
    Agent, Case, Labels, Lane, NODE, Outcome, PodSpec, Proto, Reachability, Rng, Source, TempDir,
    Topology, Traffic, manifests, upstream_model,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// Fixes every random choice of the test.
const SEED: u64 = 0x6368_7572_6e5f_3031;
/// Changes applied under traffic.
const CHANGES: usize = 24;
/// Every this many changes, one is the hard case (made and undone in turn).
const HARD_EVERY: usize = 3;
/// Time between the end of a change's window and the next change: more than a probe lasts
/// (TCP: 0.5 s to connect, 0.5 s for the echo), so that probes run wholly inside each state.
const QUIET: Duration = Duration::from_millis(1500);
/// How often `/status` is asked while a change is being applied: the window closes at most
/// this late.
const STATUS_POLL: Duration = Duration::from_millis(5);
/// Least time between the starts of two probes of one lane: lanes whose probes all answer at
/// once would otherwise take both cores from the agent.
const PACE: Duration = Duration::from_millis(10);
/// Lanes from every pod to every other pod, all cases, per source pod.
const MATRIX_LANES_PER_POD: usize = 2;
/// Lanes that probe only the hard case's pair (y/a → x/a, port 81, all families and protocols).
const HARD_LANES: usize = 24;
/// Last port of the range the hard case opens (from 81): one policy entry per port, protocol
/// and peer class, so that writing them takes a while.
const WIDE_END: u16 = 20_000;
/// The one manifest file: namespaces, pods and policies of the current state.
const STATE_FILE: &str = "cluster.yaml";

/// The pod the hard case moves out of the guard's peer class.
const MOVER: &str = "y/a";
/// The pod the guard policy isolates.
const GUARDED: &str = "x/a";

// ---------------------------------------------------------------------------------------------
// Policies: rendered as manifests, and evaluated by the reference semantics.

/// Label pairs of a `matchLabels` selector; empty selects everything.
type Selector = &'static [(&'static str, &'static str)];

/// A `NetworkPolicy` with explicit `policyTypes`: `Some` for each direction it isolates.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Policy {
    name: &'static str,
    namespace: &'static str,
    selects: Selector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

/// One rule: traffic matching any peer (all when none) on any port entry (all when none).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    peers: Vec<PeerSelector>,
    ports: Vec<Ports>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerSelector {
    namespaces: Namespaces,
    pods: Selector,
}

/// Which namespaces a peer's pods come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Namespaces {
    /// No `namespaceSelector`: the policy's own.
    Own,
    /// `namespaceSelector: {}`.
    Every,
    /// `namespaceSelector` with one label.
    Labelled(&'static str, &'static str),
}

/// A protocol, on every port or on `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ports {
    proto: Proto,
    range: Option<(u16, u16)>,
}

/// A pod as the reference semantics see it.
#[derive(Clone, Copy, Debug)]
struct PodView<'a> {
    namespace: &'a str,
    labels: &'a Labels,
    namespace_labels: &'a Labels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Policy {
    /// The rules that apply to `pod`'s traffic in `direction`, when this policy isolates it.
    fn isolates(&self, pod: PodView<'_>, direction: Direction) -> Option<&[Rule]> {
        if pod.namespace != self.namespace || !matches(self.selects, pod.labels) {
            return None;
        }
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Kubernetes semantics: traffic from `from` to `to` passes when `from` is not isolated for
    /// egress or a rule of a policy isolating it allows `to`, and likewise for `to`'s ingress.
    fn allows(policies: &[&Self], from: PodView<'_>, to: PodView<'_>, case: Case) -> bool {
        let direction_allows = |local: PodView<'_>, peer: PodView<'_>, direction| {
            let mut isolating = policies
                .iter()
                .filter_map(|p| Some((p, p.isolates(local, direction)?)))
                .peekable();
            isolating.peek().is_none()
                || isolating
                    .any(|(p, rules)| rules.iter().any(|r| r.allows(p.namespace, peer, case)))
        };
        direction_allows(from, to, Direction::Egress)
            && direction_allows(to, from, Direction::Ingress)
    }

    fn manifest(&self) -> Value {
        let mut types = Vec::new();
        let mut spec = json!({ "podSelector": selector(self.selects) });
        if let Some(rules) = &self.ingress {
            types.push("Ingress");
            spec["ingress"] = rules.iter().map(|r| r.manifest("from")).collect();
        }
        if let Some(rules) = &self.egress {
            types.push("Egress");
            spec["egress"] = rules.iter().map(|r| r.manifest("to")).collect();
        }
        spec["policyTypes"] = json!(types);
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": self.name, "namespace": self.namespace },
            "spec": spec,
        })
    }
}

impl Rule {
    fn allows(&self, policy_namespace: &str, peer: PodView<'_>, case: Case) -> bool {
        let peer_ok =
            self.peers.is_empty() || self.peers.iter().any(|s| s.matches(policy_namespace, peer));
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|p| p.matches(case));
        peer_ok && port_ok
    }

    /// `peers_key` is `from` for ingress rules, `to` for egress rules.
    fn manifest(&self, peers_key: &str) -> Value {
        let mut rule = serde_json::Map::new();
        if !self.peers.is_empty() {
            let peers = self.peers.iter().map(PeerSelector::manifest).collect();
            rule.insert(peers_key.to_owned(), peers);
        }
        if !self.ports.is_empty() {
            let ports = self.ports.iter().map(|p| p.manifest()).collect();
            rule.insert("ports".to_owned(), ports);
        }
        Value::Object(rule)
    }
}

impl PeerSelector {
    fn matches(&self, policy_namespace: &str, pod: PodView<'_>) -> bool {
        let namespace_ok = match self.namespaces {
            Namespaces::Own => pod.namespace == policy_namespace,
            Namespaces::Every => true,
            Namespaces::Labelled(key, value) => {
                pod.namespace_labels.get(key).is_some_and(|v| v == value)
            }
        };
        namespace_ok && matches(self.pods, pod.labels)
    }

    fn manifest(&self) -> Value {
        let mut peer = json!({ "podSelector": selector(self.pods) });
        match self.namespaces {
            Namespaces::Own => {}
            Namespaces::Every => peer["namespaceSelector"] = json!({}),
            Namespaces::Labelled(key, value) => {
                peer["namespaceSelector"] = json!({ "matchLabels": { key: value } });
            }
        }
        peer
    }
}

impl Ports {
    fn matches(self, case: Case) -> bool {
        self.proto == case.proto
            && self
                .range
                .is_none_or(|(first, last)| (first..=last).contains(&case.port))
    }

    fn manifest(self) -> Value {
        let mut ports = json!({ "protocol": self.proto.to_string() });
        if let Some((first, last)) = self.range {
            ports["port"] = json!(first);
            if last != first {
                ports["endPort"] = json!(last);
            }
        }
        ports
    }
}

fn matches(selector: Selector, labels: &Labels) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(*key).is_some_and(|v| v == value))
}

fn selector(labels: Selector) -> Value {
    if labels.is_empty() {
        return json!({});
    }
    let pairs: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({ "matchLabels": pairs })
}

fn port(proto: Proto, port: u16) -> Ports {
    Ports {
        proto,
        range: Some((port, port)),
    }
}

// ---------------------------------------------------------------------------------------------
// What the churn turns: knobs, their settings, and the states they make.

/// One thing a change can set: a policy's form (or its absence), or one label of one pod.
#[derive(Clone, Debug)]
struct Knob {
    kind: KnobKind,
    /// Setting of the initial state.
    initial: usize,
    /// Whether random changes turn it; the hard case's knobs only move in the hard case.
    churned: bool,
}

#[derive(Clone, Debug)]
enum KnobKind {
    /// Setting `i` is form `i`: a name and the policy, or `None` for absent.
    Policy {
        name: &'static str,
        forms: Vec<(String, Option<Policy>)>,
    },
    /// Setting 0 is without the label, 1 with it.
    Label {
        pod: &'static str,
        key: &'static str,
        value: &'static str,
    },
}

impl Knob {
    fn settings(&self) -> usize {
        match &self.kind {
            KnobKind::Policy { forms, .. } => forms.len(),
            KnobKind::Label { .. } => 2,
        }
    }

    fn describe(&self, setting: usize) -> String {
        match &self.kind {
            KnobKind::Policy { name, forms } => format!("policy {name}: {}", forms[setting].0),
            KnobKind::Label { pod, key, value } => {
                let sign = if setting == 1 { "+" } else { "-" };
                format!("{pod} {sign}{key}={value}")
            }
        }
    }
}

/// Every knob of the test, in a fixed order.
#[derive(Debug)]
struct Catalog {
    knobs: Vec<Knob>,
}

/// The setting of every knob of the [`Catalog`], in its order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    settings: Vec<usize>,
}

const TEAM_BLUE: Selector = &[("team", "blue")];
const ROLE_CLIENT: Selector = &[("role", "client")];

impl Catalog {
    #[expect(
        clippy::too_many_lines,
        reason = "a table of knobs: each entry reads on its own, splitting them would not"
    )]
    fn new() -> Self {
        let label = |pod, key, value, initial| Knob {
            kind: KnobKind::Label { pod, key, value },
            initial,
            churned: true,
        };
        let policy = |name, forms: Vec<(&str, Option<Policy>)>, initial| Knob {
            kind: KnobKind::Policy {
                name,
                forms: forms.into_iter().map(|(f, p)| (f.to_owned(), p)).collect(),
            },
            initial,
            churned: true,
        };
        let guard = |ports: Vec<Ports>| Policy {
            name: "guard",
            namespace: "x",
            selects: &[("pod", "a")],
            ingress: Some(vec![Rule {
                peers: vec![PeerSelector {
                    namespaces: Namespaces::Every,
                    pods: TEAM_BLUE,
                }],
                ports,
            }]),
            egress: None,
        };
        let narrow = vec![port(Proto::Tcp, 80), port(Proto::Udp, 80)];
        let mut wide = narrow.clone();
        wide.extend(Proto::ALL.map(|proto| Ports {
            proto,
            range: Some((81, WIDE_END)),
        }));
        let web = |ports| Policy {
            name: "web",
            namespace: "z",
            selects: &[("tier", "web")],
            ingress: Some(vec![Rule {
                peers: vec![PeerSelector {
                    namespaces: Namespaces::Every,
                    pods: ROLE_CLIENT,
                }],
                ports,
            }]),
            egress: None,
        };
        let y_c_egress = |ports| Policy {
            name: "c-out-to-x",
            namespace: "y",
            selects: &[("pod", "c")],
            ingress: None,
            egress: Some(vec![Rule {
                peers: vec![PeerSelector {
                    namespaces: Namespaces::Labelled("ns", "x"),
                    pods: &[],
                }],
                ports,
            }]),
        };
        let z_lockdown = Policy {
            name: "z-only",
            namespace: "z",
            selects: &[],
            ingress: Some(vec![Rule {
                peers: vec![PeerSelector {
                    namespaces: Namespaces::Own,
                    pods: &[],
                }],
                ports: vec![],
            }]),
            egress: None,
        };
        let x_b_no_egress = Policy {
            name: "b-no-egress",
            namespace: "x",
            selects: &[("pod", "b")],
            ingress: None,
            egress: Some(vec![]),
        };
        let y_b_from_x = Policy {
            name: "b-from-x",
            namespace: "y",
            selects: &[("pod", "b")],
            ingress: Some(vec![Rule {
                peers: vec![PeerSelector {
                    namespaces: Namespaces::Labelled("ns", "x"),
                    pods: &[],
                }],
                ports: vec![port(Proto::Tcp, 80)],
            }]),
            egress: None,
        };
        let knobs = vec![
            // The hard case's two knobs.
            Knob {
                kind: KnobKind::Policy {
                    name: "guard",
                    forms: vec![
                        ("TCP/UDP 80 from team=blue".to_owned(), Some(guard(narrow))),
                        (
                            format!("TCP/UDP 80 and 81-{WIDE_END} from team=blue"),
                            Some(guard(wide)),
                        ),
                    ],
                },
                initial: 0,
                churned: false,
            },
            Knob {
                churned: false,
                ..label(MOVER, "team", "blue", 1)
            },
            // The churn.
            label("z/b", "team", "blue", 1),
            label("x/c", "team", "blue", 0),
            label("x/b", "role", "client", 1),
            label("y/c", "role", "client", 0),
            label("z/a", "tier", "web", 1),
            label("z/c", "tier", "web", 0),
            policy(
                "web",
                vec![
                    ("absent", None),
                    ("all ports from role=client", Some(web(vec![]))),
                    (
                        "TCP 81 from role=client",
                        Some(web(vec![port(Proto::Tcp, 81)])),
                    ),
                ],
                1,
            ),
            policy(
                "c-out-to-x",
                vec![
                    ("absent", None),
                    (
                        "UDP to ns=x",
                        Some(y_c_egress(vec![Ports {
                            proto: Proto::Udp,
                            range: None,
                        }])),
                    ),
                    ("anything to ns=x", Some(y_c_egress(vec![]))),
                ],
                0,
            ),
            policy(
                "z-only",
                vec![("absent", None), ("present", Some(z_lockdown))],
                0,
            ),
            policy(
                "b-no-egress",
                vec![("absent", None), ("present", Some(x_b_no_egress))],
                0,
            ),
            policy(
                "b-from-x",
                vec![("absent", None), ("present", Some(y_b_from_x))],
                0,
            ),
        ];
        Self { knobs }
    }

    fn initial(&self) -> State {
        State {
            settings: self.knobs.iter().map(|k| k.initial).collect(),
        }
    }

    fn guard(&self) -> usize {
        self.position(|k| matches!(k, KnobKind::Policy { name: "guard", .. }))
    }

    fn mover_is_blue(&self) -> usize {
        self.position(|k| {
            matches!(
                k,
                KnobKind::Label {
                    pod: MOVER,
                    key: "team",
                    ..
                }
            )
        })
    }

    fn position(&self, f: impl Fn(&KnobKind) -> bool) -> usize {
        self.knobs
            .iter()
            .position(|k| f(&k.kind))
            .expect("the knob is in the catalog")
    }
}

impl State {
    fn policies<'c>(&self, catalog: &'c Catalog) -> Vec<&'c Policy> {
        catalog
            .knobs
            .iter()
            .zip(&self.settings)
            .filter_map(|(knob, &setting)| match &knob.kind {
                KnobKind::Policy { forms, .. } => forms[setting].1.as_ref(),
                KnobKind::Label { .. } => None,
            })
            .collect()
    }

    /// The labels of `spec` in this state: its own, plus the label knobs turned on for it.
    fn labels(&self, catalog: &Catalog, spec: &PodSpec) -> Labels {
        let mut labels = spec.labels.clone();
        let id = spec.id();
        for (knob, &setting) in catalog.knobs.iter().zip(&self.settings) {
            if let KnobKind::Label { pod, key, value } = knob.kind
                && pod == id
                && setting == 1
            {
                labels.insert(key.to_owned(), value.to_owned());
            }
        }
        labels
    }

    /// The manifest file of this state: every namespace, every pod (with `ips`), every policy.
    fn manifest_file(&self, catalog: &Catalog, pods: &[(PodSpec, [IpAddr; 2])]) -> String {
        let mut documents = Vec::new();
        let mut namespaces = Vec::new();
        for (spec, _) in pods {
            if !namespaces.contains(&spec.namespace) {
                namespaces.push(spec.namespace.clone());
                documents.push(manifests::namespace_yaml(
                    &spec.namespace,
                    &spec.namespace_labels,
                ));
            }
        }
        for (spec, ips) in pods {
            let spec = PodSpec {
                labels: self.labels(catalog, spec),
                ..spec.clone()
            };
            documents.push(manifests::pod_yaml(&spec, ips));
        }
        // JSON is YAML, and kubectl reads JSON manifests too.
        for policy in self.policies(catalog) {
            let json = serde_json::to_string_pretty(&policy.manifest()).expect("JSON serializes");
            documents.push(json + "\n");
        }
        documents.join("---\n")
    }
}

// ---------------------------------------------------------------------------------------------
// The script of changes.

#[derive(Clone, Debug)]
struct Change {
    description: String,
    hard: bool,
    after: State,
}

/// The changes, in order, drawn from [`SEED`]: random ones turn one to three churned knobs to
/// another setting; every [`HARD_EVERY`]th is the hard case, made and undone in turn.
fn script(catalog: &Catalog) -> Vec<Change> {
    let mut rng = Rng::seeded(SEED);
    let mut state = catalog.initial();
    let mut make_hard = true;
    let mut changes = Vec::new();
    for step in 1..=CHANGES {
        let change = if step % HARD_EVERY == 0 {
            let change = hard_case(catalog, &state, make_hard);
            make_hard = !make_hard;
            change
        } else {
            random_change(catalog, &state, &mut rng)
        };
        state = change.after.clone();
        changes.push(change);
    }
    changes
}

/// Made: the mover leaves team=blue and the guard opens 81-WIDE_END to team=blue, in one
/// change. Undone: both back.
fn hard_case(catalog: &Catalog, state: &State, make: bool) -> Change {
    let (guard, blue) = (catalog.guard(), catalog.mover_is_blue());
    assert_eq!(
        (state.settings[guard], state.settings[blue]),
        if make { (0, 1) } else { (1, 0) },
        "the hard case alternates"
    );
    let mut after = state.clone();
    after.settings[guard] = usize::from(make);
    after.settings[blue] = usize::from(!make);
    let description = if make {
        format!("HARD: {MOVER} leaves team=blue while guard opens 81-{WIDE_END} to team=blue")
    } else {
        format!("hard undone: {MOVER} rejoins team=blue while guard closes 81-{WIDE_END}")
    };
    Change {
        description,
        hard: true,
        after,
    }
}

fn random_change(catalog: &Catalog, state: &State, rng: &mut Rng) -> Change {
    let churned: Vec<usize> = (0..catalog.knobs.len())
        .filter(|&i| catalog.knobs[i].churned)
        .collect();
    let count = 1 + rng.below(3);
    let mut after = state.clone();
    let mut turned = Vec::new();
    for pick in rng.distinct(churned.len(), count) {
        let i = churned[pick];
        let knob = &catalog.knobs[i];
        let n = knob.settings();
        // Any setting but the current one.
        after.settings[i] = (state.settings[i] + 1 + rng.below(n - 1)) % n;
        turned.push(knob.describe(after.settings[i]));
    }
    Change {
        description: turned.join(", "),
        hard: false,
        after,
    }
}

// ---------------------------------------------------------------------------------------------
// Expected reachability of every state, and the judgement of every probe.

/// The pods of the model, with the one static extra label: y/b is always team=blue, so the
/// class the mover leaves never empties.
fn model() -> Vec<PodSpec> {
    upstream_model(&NAMESPACES, &PODS)
        .into_iter()
        .map(|spec| {
            if spec.id() == "y/b" {
                spec.label("team", "blue")
            } else {
                spec
            }
        })
        .collect()
}

/// Expected reachability per state (0: initial, `k`: after change `k`) and case.
struct Truth {
    states: Vec<BTreeMap<Case, Reachability>>,
}

impl Truth {
    fn new<'s>(
        catalog: &Catalog,
        specs: &[PodSpec],
        states: impl Iterator<Item = &'s State>,
    ) -> Self {
        let ids: Vec<String> = specs.iter().map(PodSpec::id).collect();
        let states = states
            .map(|state| {
                let policies = state.policies(catalog);
                let labels: Vec<Labels> = specs.iter().map(|s| state.labels(catalog, s)).collect();
                let view = |i: usize| PodView {
                    namespace: &specs[i].namespace,
                    labels: &labels[i],
                    namespace_labels: &specs[i].namespace_labels,
                };
                Case::all()
                    .into_iter()
                    .map(|case| {
                        let mut r = Reachability::new(&ids, true);
                        for (f, from) in ids.iter().enumerate() {
                            for (t, to) in ids.iter().enumerate().filter(|(t, _)| *t != f) {
                                r.expect(
                                    from,
                                    to,
                                    Policy::allows(&policies, view(f), view(t), case),
                                );
                            }
                        }
                        (case, r)
                    })
                    .collect()
            })
            .collect();
        Self { states }
    }

    fn allows(&self, state: usize, from: &str, to: &str, case: Case) -> bool {
        self.states[state][&case]
            .expected()
            .get(from, to)
            .unwrap_or_else(|| panic!("no expectation for {from} -> {to}"))
    }
}

/// When a change could take effect: from just before its file was renamed until `/status`
/// showed its generation.
#[derive(Clone, Copy, Debug)]
struct Window {
    opened: Instant,
    closed: Instant,
}

/// The judgement of one probe.
#[derive(Debug)]
struct Judged<'o> {
    outcome: &'o Outcome,
    /// The changes (indices into the windows) whose windows it overlapped.
    changes: Option<RangeInclusive<usize>>,
    /// The states it may have met, and whether each allows it.
    allowed_by: Vec<(usize, bool)>,
    wrong: bool,
}

fn judge<'o>(outcome: &'o Outcome, windows: &[Window], truth: &Truth) -> Judged<'o> {
    let overlaps = |w: &Window| outcome.started < w.closed && outcome.ended > w.opened;
    let first = windows.iter().position(overlaps);
    let changes = first.map(|first| {
        let last = windows.iter().rposition(overlaps).expect("one overlaps");
        first..=last
    });
    // State k holds after change k (1-based) and before change k + 1.
    let states = if let Some(changes) = &changes {
        *changes.start()..=changes.end() + 1
    } else {
        let before = windows
            .iter()
            .take_while(|w| w.closed <= outcome.started)
            .count();
        before..=before
    };
    let from = source_id(&outcome.probe.from);
    let allowed_by: Vec<(usize, bool)> = states
        .map(|s| {
            let allows = truth.allows(s, from, &outcome.probe.to, outcome.probe.case);
            (s, allows)
        })
        .collect();
    let wrong = if outcome.connected {
        allowed_by.iter().all(|(_, allows)| !allows)
    } else {
        allowed_by.iter().all(|(_, allows)| *allows)
    };
    Judged {
        outcome,
        changes,
        allowed_by,
        wrong,
    }
}

/// The row of the truth tables that a probe's source is.
fn source_id(source: &Source) -> &str {
    match source {
        Source::Node => NODE,
        Source::Pod(id) => id,
    }
}

/// Counts per change, and the wrong verdicts in detail.
struct Report<'o> {
    judged: Vec<Judged<'o>>,
    /// Per change: probes that overlapped its window, and how many of them were wrong.
    per_change: Vec<(usize, usize)>,
}

impl<'o> Report<'o> {
    fn new(outcomes: &'o [Outcome], windows: &[Window], truth: &Truth) -> Self {
        let judged: Vec<Judged<'o>> = outcomes.iter().map(|o| judge(o, windows, truth)).collect();
        let mut per_change = vec![(0, 0); windows.len()];
        for j in &judged {
            for c in j.changes.clone().into_iter().flatten() {
                per_change[c].0 += 1;
                per_change[c].1 += usize::from(j.wrong);
            }
        }
        Self { judged, per_change }
    }

    fn wrong(&self) -> impl Iterator<Item = &Judged<'o>> {
        self.judged.iter().filter(|j| j.wrong)
    }

    /// The first and last start, from the opening of change `c`'s window, of the wrong probes
    /// that overlapped it: for a while at least that long, the dataplane was wrong.
    fn wrong_span(&self, c: usize, window: &Window) -> Option<(Duration, Duration)> {
        self.wrong()
            .filter(|j| j.changes.as_ref().is_some_and(|r| r.contains(&c)))
            .map(|j| j.outcome.started.saturating_duration_since(window.opened))
            .fold(None, |span, t| match span {
                None => Some((t, t)),
                Some((first, last)) => Some((first.min(t), last.max(t))),
            })
    }

    fn summary(&self, changes: &[Change], windows: &[Window], t0: Instant) -> String {
        let mut out = String::new();
        for (i, ((change, window), (overlapping, wrong))) in changes
            .iter()
            .zip(windows)
            .zip(&self.per_change)
            .enumerate()
        {
            let span = self
                .wrong_span(i, window)
                .map(|(first, last)| format!(" (started {first:.0?} to {last:.0?} into it)"))
                .unwrap_or_default();
            writeln!(
                out,
                "change {:>2} at {:>6.2} s, window {:>7.1?}, {overlapping:>4} probes overlapped, \
                 {wrong} wrong{span}: {}",
                i + 1,
                (window.opened - t0).as_secs_f64(),
                window.closed - window.opened,
                change.description
            )
            .expect("writing to a String");
        }
        let overlapping = self.judged.iter().filter(|j| j.changes.is_some()).count();
        let spanning = self
            .judged
            .iter()
            .filter(|j| j.changes.as_ref().is_some_and(|c| c.start() != c.end()))
            .count();
        let wrong_quiet = self.wrong().filter(|j| j.changes.is_none()).count();
        let wrong_hard = self
            .wrong()
            .filter(|j| {
                j.changes
                    .clone()
                    .into_iter()
                    .flatten()
                    .any(|c| changes[c].hard)
            })
            .count();
        writeln!(
            out,
            "{} probes ({} connected), {overlapping} overlapped a change window ({spanning} more \
             than one), {} changes ({} hard); wrong verdicts: {} ({wrong_hard} around hard \
             changes, {wrong_quiet} in quiet periods)",
            self.judged.len(),
            self.judged.iter().filter(|j| j.outcome.connected).count(),
            changes.len(),
            changes.iter().filter(|c| c.hard).count(),
            self.wrong().count(),
        )
        .expect("writing to a String");
        out
    }

    /// The first `limit` wrong verdicts in time, one line each.
    fn wrong_details(&self, limit: usize, t0: Instant) -> String {
        let mut wrong: Vec<&Judged<'o>> = self.wrong().collect();
        wrong.sort_by_key(|j| j.outcome.started);
        let mut out = String::new();
        for j in wrong.into_iter().take(limit) {
            let o = j.outcome;
            let states: Vec<String> = j
                .allowed_by
                .iter()
                .map(|(s, allows)| {
                    format!("state {s} {}", if *allows { "allows" } else { "denies" })
                })
                .collect();
            writeln!(
                out,
                "{} -> {} {}: {} at {:.3} s after {:.1?}; {}",
                source_id(&o.probe.from),
                o.probe.to,
                o.probe.case,
                if o.connected { "CONNECTED" } else { "FAILED" },
                (o.started - t0).as_secs_f64(),
                o.ended - o.started,
                states.join(", ")
            )
            .expect("writing to a String");
        }
        out
    }
}

/// The lanes: [`MATRIX_LANES_PER_POD`] per pod to every other pod in every case, and
/// [`HARD_LANES`] on the hard case's pair alone. Seeds drawn from [`SEED`].
fn lanes(specs: &[PodSpec]) -> Vec<Lane> {
    let mut rng = Rng::seeded(SEED.rotate_left(32));
    let ids: Vec<String> = specs.iter().map(PodSpec::id).collect();
    let mut lanes = Vec::new();
    for from in &ids {
        let targets: Vec<(String, Case)> = ids
            .iter()
            .filter(|to| *to != from)
            .flat_map(|to| Case::all().into_iter().map(move |case| (to.clone(), case)))
            .collect();
        for _ in 0..MATRIX_LANES_PER_POD {
            lanes.push(Lane {
                from: Source::Pod(from.clone()),
                targets: targets.clone(),
                seed: rng.next_u64(),
            });
        }
    }
    let hard: Vec<(String, Case)> = Case::all()
        .into_iter()
        .filter(|case| case.port == 81)
        .map(|case| (GUARDED.to_owned(), case))
        .collect();
    for _ in 0..HARD_LANES {
        lanes.push(Lane {
            from: Source::Pod(MOVER.to_owned()),
            targets: hard.clone(),
            seed: rng.next_u64(),
        });
    }
    lanes
}

// ---------------------------------------------------------------------------------------------
// The test.

#[test]
fn churn_under_traffic_gives_no_wrong_verdict() {
    testbed::require_root!();
    let catalog = Catalog::new();
    let changes = script(&catalog);
    let initial = catalog.initial();
    let specs = model();
    let truth = Truth::new(
        &catalog,
        &specs,
        std::iter::once(&initial).chain(changes.iter().map(|c| &c.after)),
    );

    let topology = Topology::builder().pods(specs.clone()).build();
    let pods: Vec<(PodSpec, [IpAddr; 2])> = topology
        .pods()
        .iter()
        .map(|p| (p.spec().clone(), p.ips()))
        .collect();
    let dir = TempDir::new("manifests");
    manifests::write_atomic(
        dir.path(),
        STATE_FILE,
        &initial.manifest_file(&catalog, &pods),
    );
    let mut agent = Agent::start(&topology, dir.path());
    agent.wait_ready();

    let traffic = Traffic::start(&topology, &lanes(&specs), PACE);
    let t0 = Instant::now();
    thread::sleep(QUIET);
    let mut windows = Vec::new();
    for change in &changes {
        let text = change.after.manifest_file(&catalog, &pods);
        let generation = agent.status().generation;
        let opened = Instant::now();
        manifests::write_atomic(dir.path(), STATE_FILE, &text);
        let status = agent.wait_generation_after_polling(generation, STATUS_POLL);
        let closed = Instant::now();
        assert_eq!(
            status.generation,
            generation + 1,
            "one change must be one generation (change: {})",
            change.description
        );
        windows.push(Window { opened, closed });
        thread::sleep(QUIET);
    }
    let outcomes = traffic.stop();

    let report = Report::new(&outcomes, &windows, &truth);
    eprint!("{}", report.summary(&changes, &windows, t0));
    let wrong = report.wrong().count();
    assert!(
        wrong == 0,
        "{wrong} wrong verdict(s); the first ones:\n{}",
        report.wrong_details(40, t0)
    );
}

// ---------------------------------------------------------------------------------------------
// The test's own parts, checked without root.

#[test]
fn the_reference_semantics_see_the_hard_case() {
    let catalog = Catalog::new();
    let initial = catalog.initial();
    let made = hard_case(&catalog, &initial, true);
    let undone = hard_case(&catalog, &made.after, false);
    assert_eq!(undone.after, initial);
    let truth = Truth::new(&catalog, &model(), [&initial, &made.after].into_iter());
    for case in Case::all() {
        // The pair the hard case must never let through, before or after.
        if case.port == 81 {
            assert!(!truth.allows(0, MOVER, GUARDED, case), "{case}");
            assert!(!truth.allows(1, MOVER, GUARDED, case), "{case}");
        }
        // y/b keeps the class, and gets port 81 with it.
        assert!(
            truth.allows(0, "y/b", GUARDED, case) == (case.port == 80),
            "{case}"
        );
        assert!(truth.allows(1, "y/b", GUARDED, case), "{case}");
        // The mover loses port 80 too; pods outside the class never had anything.
        assert!(
            truth.allows(0, MOVER, GUARDED, case) == (case.port == 80),
            "{case}"
        );
        assert!(!truth.allows(0, "y/c", GUARDED, case), "{case}");
        // Nothing else isolates x/a's neighbours in the initial state.
        assert!(truth.allows(0, GUARDED, "x/b", case), "{case}");
    }
}

#[test]
fn the_reference_semantics_follow_kubernetes_on_each_policy() {
    let catalog = Catalog::new();
    let specs = model();
    let set = |changes: &[(&str, usize)]| {
        let mut state = catalog.initial();
        for (name, setting) in changes {
            let i = catalog
                .knobs
                .iter()
                .position(|k| matches!(k.kind, KnobKind::Policy { name: n, .. } if n == *name))
                .expect("a policy knob");
            state.settings[i] = *setting;
        }
        Truth::new(&catalog, &specs, std::iter::once(&state))
    };
    let tcp = |port| Case {
        family: testbed::Family::V4,
        proto: Proto::Tcp,
        port,
    };
    let udp = |port| Case {
        proto: Proto::Udp,
        ..tcp(port)
    };
    // web, all ports: z/a (tier=web) accepts role=client (x/b) only.
    let t = set(&[]);
    assert!(t.allows(0, "x/b", "z/a", tcp(81)) && !t.allows(0, "x/c", "z/a", tcp(81)));
    // web, TCP 81 only.
    let t = set(&[("web", 2)]);
    assert!(t.allows(0, "x/b", "z/a", tcp(81)) && !t.allows(0, "x/b", "z/a", tcp(80)));
    // z-only adds z's own pods to z/a's allowed peers; z/b was not isolated before.
    let t = set(&[("z-only", 1)]);
    assert!(t.allows(0, "z/c", "z/a", tcp(80)) && t.allows(0, "x/b", "z/a", tcp(80)));
    assert!(t.allows(0, "z/a", "z/b", tcp(80)) && !t.allows(0, "y/a", "z/b", tcp(80)));
    // c-out-to-x: y/c reaches x on UDP only, nothing else; replies to others' probes pass.
    let t = set(&[("c-out-to-x", 1)]);
    assert!(t.allows(0, "y/c", "x/b", udp(80)) && !t.allows(0, "y/c", "x/b", tcp(80)));
    assert!(!t.allows(0, "y/c", "y/a", udp(80)) && t.allows(0, "y/a", "y/c", tcp(80)));
    // b-no-egress: x/b reaches nobody, and is still reached.
    let t = set(&[("b-no-egress", 1)]);
    assert!(!t.allows(0, "x/b", "y/a", udp(81)) && t.allows(0, "y/a", "x/b", udp(81)));
    // b-from-x: y/b accepts x's pods on TCP 80 only.
    let t = set(&[("b-from-x", 1)]);
    assert!(t.allows(0, "x/c", "y/b", tcp(80)) && !t.allows(0, "x/c", "y/b", tcp(81)));
    assert!(!t.allows(0, "y/a", "y/b", tcp(80)));
}

#[test]
fn the_script_is_fixed_by_its_seed_and_every_change_changes_something() {
    let catalog = Catalog::new();
    let one = script(&catalog);
    let two = script(&catalog);
    assert_eq!(
        one.iter().map(|c| &c.description).collect::<Vec<_>>(),
        two.iter().map(|c| &c.description).collect::<Vec<_>>()
    );
    let mut before = catalog.initial();
    for change in &one {
        assert_ne!(change.after, before, "{}", change.description);
        before = change.after.clone();
    }
    assert_eq!(one.len(), CHANGES);
    assert_eq!(one.iter().filter(|c| c.hard).count(), CHANGES / HARD_EVERY);
}

#[test]
fn every_state_is_a_manifest_weir_reads() {
    let catalog = Catalog::new();
    let pods: Vec<(PodSpec, [IpAddr; 2])> = model()
        .into_iter()
        .zip(1u8..)
        .map(|(spec, n)| {
            let ips = [
                IpAddr::from([10, 99, 0, n]),
                IpAddr::from([0xfd99, 0, 0, 0, 0, 0, 0, u16::from(n)]),
            ];
            (spec, ips)
        })
        .collect();
    let dir = TempDir::new("churn-manifests");
    for change in script(&catalog) {
        manifests::write_atomic(
            dir.path(),
            STATE_FILE,
            &change.after.manifest_file(&catalog, &pods),
        );
        let loaded = weir::manifest::load_dir(dir.path())
            .unwrap_or_else(|e| panic!("after {:?}: {e}", change.description));
        assert_eq!(
            loaded.state.policies.len(),
            change.after.policies(&catalog).len(),
            "{}",
            change.description
        );
    }
}
