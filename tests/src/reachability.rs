//! Expected and observed connectivity between pods, as truth tables in the format of the
//! upstream Kubernetes `NetworkPolicy` e2e suite (`test/e2e/network/netpol`).
//!
//! Rows are sources, columns destinations; `.` is connected, `X` is not. The first row is
//! the node itself: Kubernetes always allows traffic from a node to its own pods (the
//! kubelet's health checks depend on it), so no expectation can turn that row off.
//! The diagonal is never probed and prints `-`: traffic from a pod to itself never leaves
//! the pod, and upstream ignores it too, since its semantics are undefined
//! (kubernetes/kubernetes#95879).

use std::fmt::Write as _;

/// The row for traffic from the node's own namespace.
pub const NODE: &str = "node";

/// A table of one boolean per (source, destination) pair; `None` where nothing was
/// expected or observed (the diagonal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthTable {
    froms: Vec<String>,
    tos: Vec<String>,
    cells: Vec<Option<bool>>,
}

impl TruthTable {
    /// A table over `pods` (ids `ns/name`) plus the node row, every off-diagonal cell set to
    /// `value`.
    pub fn new(pods: &[String], value: bool) -> Self {
        let froms: Vec<String> = std::iter::once(NODE.to_owned())
            .chain(pods.iter().cloned())
            .collect();
        let cells = froms
            .iter()
            .flat_map(|from| pods.iter().map(move |to| (from != to).then_some(value)))
            .collect();
        Self {
            froms,
            tos: pods.to_vec(),
            cells,
        }
    }

    pub fn froms(&self) -> &[String] {
        &self.froms
    }

    pub fn tos(&self) -> &[String] {
        &self.tos
    }

    /// The value for `from` → `to`; `None` on the diagonal. Panics on an unknown name.
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        self.cells[self.index(from, to)]
    }

    /// Sets `from` → `to`; the diagonal stays unset. Panics on an unknown name.
    pub fn set(&mut self, from: &str, to: &str, value: bool) {
        let i = self.index(from, to);
        if from != to {
            self.cells[i] = Some(value);
        }
    }

    /// Every (from, to) pair that has a value.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.froms.iter().flat_map(move |from| {
            self.tos
                .iter()
                .filter(move |to| *to != from)
                .map(move |to| (from.as_str(), to.as_str()))
        })
    }

    /// Cell-by-cell equality: `Some(true)` where both tables agree.
    #[must_use]
    pub fn compare(&self, other: &Self) -> Self {
        assert!(
            self.froms == other.froms && self.tos == other.tos,
            "comparing truth tables over different pods"
        );
        let cells = self
            .cells
            .iter()
            .zip(&other.cells)
            .map(|(a, b)| a.zip(*b).map(|(a, b)| a == b))
            .collect();
        Self {
            cells,
            ..self.clone()
        }
    }

    /// Number of cells that are `Some(false)`.
    pub fn count_false(&self) -> usize {
        self.cells.iter().filter(|c| **c == Some(false)).count()
    }

    /// Upstream's `PrettyPrint`: tab-separated, `.` true, `X` false, `-` unset.
    pub fn pretty(&self) -> String {
        let mut out = std::iter::once("-")
            .chain(self.tos.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\t");
        for from in &self.froms {
            out.push('\n');
            out.push_str(from);
            for to in &self.tos {
                let mark = match self.get(from, to) {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "-",
                };
                write!(out, "\t{mark}").expect("writing to a String");
            }
        }
        out
    }

    fn index(&self, from: &str, to: &str) -> usize {
        let row = self
            .froms
            .iter()
            .position(|f| f == from)
            .unwrap_or_else(|| panic!("unknown source {from:?} in truth table"));
        let col = self
            .tos
            .iter()
            .position(|t| t == to)
            .unwrap_or_else(|| panic!("unknown destination {to:?} in truth table"));
        row * self.tos.len() + col
    }
}

/// Selects pods by namespace, name, both or neither (upstream's `Peer`): an empty field
/// matches everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer<'a> {
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
}

impl<'a> Peer<'a> {
    /// Every pod.
    pub fn any() -> Self {
        Self::default()
    }

    /// Every pod of namespace `ns`.
    pub fn namespace(ns: &'a str) -> Self {
        Self {
            namespace: Some(ns),
            pod: None,
        }
    }

    /// The single pod `ns/name`.
    pub fn exact(id: &'a str) -> Self {
        let (ns, pod) = id
            .split_once('/')
            .unwrap_or_else(|| panic!("pod ids are ns/name, got {id:?}"));
        Self {
            namespace: Some(ns),
            pod: Some(pod),
        }
    }

    /// Pods named `pod`, in every namespace.
    pub fn pod_name(pod: &'a str) -> Self {
        Self {
            namespace: None,
            pod: Some(pod),
        }
    }

    fn matches(&self, id: &str) -> bool {
        let Some((ns, pod)) = id.split_once('/') else {
            return false; // the node row: not a pod
        };
        self.namespace.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == pod)
    }
}

/// The expected connectivity of one case, built like upstream's `Reachability`.
#[derive(Clone, Debug)]
pub struct Reachability {
    expected: TruthTable,
}

impl Reachability {
    /// Every pod → pod pair set to `default`; the node row is always reachable.
    pub fn new(pods: &[String], default: bool) -> Self {
        let mut expected = TruthTable::new(pods, default);
        for to in pods {
            expected.set(NODE, to, true);
        }
        Self { expected }
    }

    /// Sets one pair. `from` and `to` are pod ids (`ns/name`).
    pub fn expect(&mut self, from: &str, to: &str, connected: bool) -> &mut Self {
        assert_ne!(from, NODE, "traffic from the node is always allowed");
        self.expected.set(from, to, connected);
        self
    }

    /// Sets every pair whose destination is `to`, except from the node.
    pub fn expect_all_ingress(&mut self, to: &str, connected: bool) -> &mut Self {
        self.expect_peer(Peer::any(), Peer::exact(to), connected)
    }

    /// Sets every pair whose source is `from`.
    pub fn expect_all_egress(&mut self, from: &str, connected: bool) -> &mut Self {
        self.expect_peer(Peer::exact(from), Peer::any(), connected)
    }

    /// Sets every pair whose source matches `from` and destination matches `to`.
    pub fn expect_peer(&mut self, from: Peer<'_>, to: Peer<'_>, connected: bool) -> &mut Self {
        let pairs: Vec<(String, String)> = self
            .expected
            .pairs()
            .filter(|(f, t)| from.matches(f) && to.matches(t))
            .map(|(f, t)| (f.to_owned(), t.to_owned()))
            .collect();
        for (f, t) in pairs {
            self.expected.set(&f, &t, connected);
        }
        self
    }

    pub fn expected(&self) -> &TruthTable {
        &self.expected
    }

    /// `None` when `observed` matches; otherwise the expected, observed and comparison
    /// tables, as upstream prints them.
    pub fn mismatch_report(&self, observed: &TruthTable) -> Option<String> {
        let comparison = self.expected.compare(observed);
        let wrong = comparison.count_false();
        (wrong > 0).then(|| {
            format!(
                "{wrong} wrong\n\nexpected:\n{}\n\nobserved:\n{}\n\ncomparison (X = wrong):\n{}\n",
                self.expected.pretty(),
                observed.pretty(),
                comparison.pretty()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<String> {
        ["x/a", "x/b", "y/a"].map(String::from).to_vec()
    }

    #[test]
    fn builder_sets_only_matching_pod_pairs_and_keeps_the_node_row() {
        let mut r = Reachability::new(&pods(), true);
        r.expect_all_ingress("x/a", false)
            .expect("y/a", "x/a", true)
            .expect_peer(Peer::namespace("y"), Peer::pod_name("b"), false);
        let e = r.expected();
        assert_eq!(e.get(NODE, "x/a"), Some(true));
        assert_eq!(e.get("x/b", "x/a"), Some(false));
        assert_eq!(e.get("y/a", "x/a"), Some(true));
        assert_eq!(e.get("y/a", "x/b"), Some(false));
        assert_eq!(e.get("x/a", "x/b"), Some(true));
        assert_eq!(e.get("x/a", "x/a"), None);
    }

    #[test]
    fn report_names_the_wrong_cells_in_upstream_format() {
        let r = Reachability::new(&pods(), true);
        let mut observed = TruthTable::new(&pods(), true);
        assert!(r.mismatch_report(&observed).is_none());
        observed.set("x/b", "y/a", false);
        let report = r.mismatch_report(&observed).expect("a mismatch");
        assert!(report.starts_with("1 wrong"), "{report}");
        assert!(
            report.contains("-\tx/a\tx/b\ty/a\nnode\t.\t.\t.\nx/a\t-\t.\t.\nx/b\t.\t-\tX"),
            "{report}"
        );
    }
}
