//! kube-proxy's rules for a set of `ClusterIP` Services, in its iptables mode (input for
//! `iptables-restore`) and its nftables mode (input for `nft -f`), written the way its proxiers
//! write them (kubernetes/kubernetes `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go`, as their `TestOverallIPTablesRules` and
//! `TestOverallNFTablesRules` show the output): the same tables, chains, matches, jumps and
//! order, for Services of one TCP port with endpoints on other nodes.
//!
//! - iptables: `KUBE-SERVICES` (from nat `PREROUTING` and `OUTPUT`) holds one rule per Service
//!   port, in Service order, matching the `ClusterIP` and port and jumping to `KUBE-SVC-<hash>`;
//!   that chain marks off-cluster clients for masquerade, then picks a `KUBE-SEP-<hash>` with
//!   `-m statistic --mode random --probability 1/n` rules, and the endpoint chain marks
//!   hairpin traffic and DNATs. The filter table holds kube-proxy's `KUBE-FORWARD` and its
//!   empty firewall and service chains, jumped to from the built-in chains as kube-proxy links
//!   them. A new connection walks `KUBE-SERVICES` rule by rule up to its Service.
//! - nftables: table `ip kube-proxy` with kube-proxy's base chains, sets and maps; a
//!   `service-ips` verdict map keyed by `ipv4_addr . inet_proto . inet_service` jumps to a
//!   per-Service chain, which picks an endpoint chain with `numgen random mod n vmap`, which
//!   does `dnat to`.
//!
//! Chain names have kube-proxy's shape (`KUBE-SVC-` and 16 base32 characters; `service-`, 8
//! characters and the port's name); the hash behind them is FNV-1a, not SHA-256, which changes
//! nothing the kernel does with them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::service_set::{PORT_NAME, SERVICE_PORT, ServiceSpec};

/// The cluster-wide addresses kube-proxy's rules name.
pub struct ClusterNet {
    /// `--cluster-cidr`: traffic from elsewhere to a `ClusterIP` is masqueraded.
    pub pod_cidr: &'static str,
    /// The Service CIDR (nftables mode drops traffic to unallocated addresses in it).
    pub service_cidr: &'static str,
    /// The node's address (nftables mode: `nodeport-ips`).
    pub node_ip: Ipv4Addr,
}

/// kube-proxy's masquerade mark bit.
const MASQ_MARK: &str = "0x4000";

/// The `iptables-restore` input for `services`, filter and nat tables, built-in chain links
/// included (kube-proxy adds those with `iptables -I` before its first restore).
pub fn iptables(services: &[ServiceSpec], net: &ClusterNet) -> String {
    let mut out = String::new();
    iptables_filter(&mut out);
    iptables_nat(&mut out, services, net);
    out
}

fn iptables_filter(out: &mut String) {
    out.push_str(
        "*filter\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FIREWALL - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n",
    );
    let new = "-m conntrack --ctstate NEW";
    for (chain, extra, comment, target) in [
        (
            "INPUT",
            new,
            "kubernetes externally-visible service portals",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "FORWARD",
            new,
            "kubernetes externally-visible service portals",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "INPUT",
            "",
            "kubernetes health check service ports",
            "KUBE-NODEPORTS",
        ),
        (
            "FORWARD",
            new,
            "kubernetes service portals",
            "KUBE-SERVICES",
        ),
        ("OUTPUT", new, "kubernetes service portals", "KUBE-SERVICES"),
        ("FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
        (
            "INPUT",
            new,
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        (
            "OUTPUT",
            new,
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        (
            "FORWARD",
            new,
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
    ] {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("{extra} ")
        };
        let _ = writeln!(
            out,
            "-A {chain} {extra}-m comment --comment \"{comment}\" -j {target}"
        );
    }
    out.push_str("-A INPUT -j KUBE-FIREWALL\n-A OUTPUT -j KUBE-FIREWALL\n");
    let _ = write!(
        out,
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
         -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n"
    );
}

fn iptables_nat(out: &mut String, services: &[ServiceSpec], net: &ClusterNet) {
    out.push_str(
        "*nat\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n",
    );
    for s in services {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
        for ep in &s.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, *ep));
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    for s in services {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {} \
             --dport {SERVICE_PORT} -j {}",
            s.port_name(),
            s.cluster_ip,
            svc_chain(s)
        );
    }
    let _ = write!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE\n"
    );
    for s in services {
        iptables_service(out, s, net);
    }
    out.push_str("COMMIT\n");
}

/// A Service's `KUBE-SVC` chain and its endpoints' `KUBE-SEP` chains.
fn iptables_service(out: &mut String, s: &ServiceSpec, net: &ClusterNet) {
    let name = s.port_name();
    for ep in &s.endpoints {
        let sep = sep_chain(s, *ep);
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -s {ep} -j KUBE-MARK-MASQ\n\
             -A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT \
             --to-destination {ep}:{}",
            s.target_port
        );
    }
    let svc = svc_chain(s);
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {} \
         --dport {SERVICE_PORT} ! -s {} -j KUBE-MARK-MASQ",
        s.cluster_ip, net.pod_cidr
    );
    let n = s.endpoints.len();
    for (i, ep) in s.endpoints.iter().enumerate() {
        // Rule i takes 1/(n - i) of what reaches it: every endpoint gets 1/n in all.
        let pick = if i + 1 < n {
            #[expect(clippy::cast_precision_loss, reason = "endpoint counts are small")]
            let p = 1.0 / (n - i) as f64;
            format!("-m statistic --mode random --probability {p:.10} ")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"{name} -> {ep}:{}\" {pick}-j {}",
            s.target_port,
            sep_chain(s, *ep)
        );
    }
}

fn svc_chain(s: &ServiceSpec) -> String {
    format!("KUBE-SVC-{}", hash_name(&[&s.port_name(), "tcp"], 16))
}

fn sep_chain(s: &ServiceSpec, ep: Ipv4Addr) -> String {
    let ep = format!("{ep}:{}", s.target_port);
    format!("KUBE-SEP-{}", hash_name(&[&s.port_name(), "tcp", &ep], 16))
}

/// The `nft -f` input for `services`: kube-proxy's whole `ip kube-proxy` table.
pub fn nftables(services: &[ServiceSpec], net: &ClusterNet) -> String {
    let mut out = nft_base(net);
    for s in services {
        nft_service(&mut out, s, net);
    }
    out
}

/// kube-proxy's base table: what it writes before any Service.
fn nft_base(net: &ClusterNet) -> String {
    let t = "ip kube-proxy";
    let key = "ipv4_addr . inet_proto . inet_service";
    let mut out = format!(
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}\n\
         add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add map {t} firewall-ips {{ type {key} : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}\n\
         add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add map {t} no-endpoint-services {{ type {key} : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n\
         add map {t} service-ips {{ type {key} : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n"
    );
    for chain in [
        "cluster-ips-check",
        "filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
        "filter-output-pre-dnat { type filter hook output priority -110 ; }",
        "filter-forward { type filter hook forward priority 0 ; }",
        "filter-input { type filter hook input priority 0 ; }",
        "filter-output { type filter hook output priority 0 ; }",
        "firewall-check",
        "mark-for-masquerade",
        "masquerading",
        "nat-output { type nat hook output priority -100 ; }",
        "nat-postrouting { type nat hook postrouting priority 100 ; }",
        "nat-prerouting { type nat hook prerouting priority -100 ; }",
        "nodeport-endpoints-check",
        "reject-chain { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
        "services",
        "service-endpoints-check",
    ] {
        let _ = writeln!(out, "add chain {t} {chain}");
    }
    for rule in [
        "cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"".to_owned(),
        format!(
            "cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
            net.service_cidr
        ),
        "filter-prerouting-pre-dnat ct state new jump firewall-check".to_owned(),
        "filter-forward ct state new jump service-endpoints-check".to_owned(),
        "filter-forward ct state new jump cluster-ips-check".to_owned(),
        "filter-input ct state new jump nodeport-endpoints-check".to_owned(),
        "filter-input ct state new jump service-endpoints-check".to_owned(),
        "filter-output ct state new jump service-endpoints-check".to_owned(),
        "filter-output-pre-dnat ct state new jump firewall-check".to_owned(),
        "filter-output ct state new jump cluster-ips-check".to_owned(),
        "firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips".to_owned(),
        format!("mark-for-masquerade mark set mark or {MASQ_MARK}"),
        format!("masquerading mark and {MASQ_MARK} == 0 return"),
        format!("masquerading mark set mark xor {MASQ_MARK}"),
        "masquerading masquerade fully-random".to_owned(),
        "nat-output jump services".to_owned(),
        "nat-postrouting jump masquerading".to_owned(),
        "nat-prerouting jump services".to_owned(),
        "nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports".to_owned(),
        "reject-chain reject".to_owned(),
        "services ip daddr . meta l4proto . th dport vmap @service-ips".to_owned(),
        "services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports".to_owned(),
        "service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services".to_owned(),
    ] {
        let _ = writeln!(out, "add rule {t} {rule}");
    }
    let _ = writeln!(out, "add element {t} nodeport-ips {{ {} }}", net.node_ip);
    out
}

/// A Service's chain, its endpoint chains (written first: the chain's map names them) and its
/// map elements.
fn nft_service(out: &mut String, s: &ServiceSpec, net: &ClusterNet) {
    let t = "ip kube-proxy";
    let base = format!("{}/{}/tcp/{PORT_NAME}", s.namespace, s.name);
    let svc = format!("service-{}-{base}", hash_name(&[&s.port_name(), "tcp"], 8));
    let mut picks = Vec::with_capacity(s.endpoints.len());
    for (i, ep) in s.endpoints.iter().enumerate() {
        let at = format!("{ep}:{}", s.target_port);
        let chain = format!(
            "endpoint-{}-{base}__{ep}/{}",
            hash_name(&[&s.port_name(), "tcp", &at], 8),
            s.target_port
        );
        let _ = writeln!(
            out,
            "add chain {t} {chain}\n\
             add rule {t} {chain} ip saddr {ep} jump mark-for-masquerade\n\
             add rule {t} {chain} meta l4proto tcp dnat to {at}"
        );
        picks.push(format!("{i} : goto {chain}"));
    }
    let _ = writeln!(
        out,
        "add chain {t} {svc}\n\
         add rule {t} {svc} ip daddr {} ip saddr != {} jump mark-for-masquerade\n\
         add rule {t} {svc} numgen random mod {} vmap {{ {} }}\n\
         add element {t} cluster-ips {{ {} }}\n\
         add element {t} service-ips {{ {} . tcp . {SERVICE_PORT} : goto {svc} }}",
        s.cluster_ip,
        net.pod_cidr,
        s.endpoints.len(),
        picks.join(" , "),
        s.cluster_ip,
        s.cluster_ip,
    );
}

/// The first `len` base32 characters (RFC 4648 alphabet) of a 128-bit FNV-1a hash of `parts`.
fn hash_name(parts: &[&str], len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for byte in parts.concat().bytes() {
        h ^= u128::from(byte);
        h = h.wrapping_mul(PRIME);
    }
    (0..len)
        .map(|i| char::from(ALPHABET[usize::try_from((h >> (5 * i)) & 31).unwrap_or(0)]))
        .collect()
}
