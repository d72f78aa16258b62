//! `weir`: the agent and its CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use weir::compile::{self, NodeView};
use weir::source::Source;
use weir::source::directory::Directory;
use weir::source::kubernetes::{Kubernetes, Target};
use weir::{agent, cli, manifest};

/// mimalloc, not glibc's allocator: after a reload frees tens of thousands of objects, glibc
/// settles them on the next allocations, which put milliseconds on a compile that needs a
/// tenth of one (README, "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "eBPF dataplane for Kubernetes NetworkPolicy"
)]
struct Cli {
    /// Log format on standard error: `text` for people, `json` for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the policies of a manifests directory or of the Kubernetes API on this node,
    /// following changes.
    Run {
        #[command(flatten)]
        source: SourceArgs,
        /// This node's name (default: the host name): Service endpoints whose `nodeName` it
        /// is count as local (`externalTrafficPolicy` and `internalTrafficPolicy: Local`).
        #[arg(long)]
        node_name: Option<String>,
        /// Address of /healthz, /readyz, /status and /metrics.
        #[arg(long, default_value = "127.0.0.1:9876")]
        health_addr: SocketAddr,
        /// How often the directory and routes are checked, in milliseconds.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
        /// Where maps and links are pinned (bpffs is mounted on its parent when missing).
        #[arg(long, default_value = weir::pins::DEFAULT_ROOT)]
        pin_path: PathBuf,
        #[command(flatten)]
        flow_events: cli::FlowEventArgs,
        #[command(flatten)]
        socket_lb: cli::SocketLbArgs,
        #[command(flatten)]
        uplinks: cli::UplinkArgs,
        /// Log every packet's outcome from the eBPF programs (aya-log, at debug level, target
        /// `weir::ebpf`; see `RUST_LOG`). For debugging: it costs far more than the packet.
        #[arg(long)]
        ebpf_debug_log: bool,
    },
    /// Print the flows the agent saw: drops and new connections (as `hubble observe`).
    Flows(cli::FlowsArgs),
    /// Explain which rules allow or deny a connection, from the maps being enforced.
    Explain(cli::ExplainArgs),
    /// Print the agent's status: local pods, maps, last sync, errors, counters.
    Status(cli::StatusArgs),
    /// Remove everything Weir pinned: links (interfaces stop being filtered) and maps.
    /// Stop the agent first: a running agent keeps what it holds until it exits.
    Uninstall {
        /// The agent's `--pin-path`.
        #[arg(long, default_value = weir::pins::DEFAULT_ROOT)]
        pin_path: PathBuf,
    },
    /// Validate a directory and print what would be compiled, without touching the kernel.
    Check {
        /// Directory of Kubernetes manifests.
        dir: PathBuf,
    },
}

/// Where `weir run` reads the desired state: exactly one of these.
#[derive(Args)]
#[group(multiple = false)]
struct SourceArgs {
    /// Directory of Kubernetes manifests (*.yaml, *.yml, recursive).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Follow the Kubernetes API server of this kubeconfig file's current context.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Follow the API server of the cluster this runs in, with its service account. The
    /// default when no other source is given and `KUBERNETES_SERVICE_HOST` is set.
    #[arg(long)]
    in_cluster: bool,
}

/// A source chosen from the command line, not opened yet.
#[derive(Debug, PartialEq, Eq)]
enum SourceChoice {
    Directory(PathBuf),
    Kubernetes(Target),
}

impl SourceArgs {
    /// The source asked for; in-cluster by default inside a pod, which is how a `DaemonSet`
    /// runs the agent.
    fn choose(self, in_a_pod: bool) -> anyhow::Result<SourceChoice> {
        match (self.manifests, self.kubeconfig, self.in_cluster) {
            (Some(dir), ..) => Ok(SourceChoice::Directory(dir)),
            (None, Some(path), _) => Ok(SourceChoice::Kubernetes(Target::Kubeconfig(path))),
            (None, None, true) => Ok(SourceChoice::Kubernetes(Target::InCluster)),
            (None, None, false) if in_a_pod => Ok(SourceChoice::Kubernetes(Target::InCluster)),
            (None, None, false) => anyhow::bail!(
                "no source of policies: pass --manifests DIR, --kubeconfig FILE or --in-cluster"
            ),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Run {
            source,
            node_name,
            health_addr,
            poll_ms,
            pin_path,
            flow_events,
            socket_lb,
            uplinks,
            ebpf_debug_log,
        } => run(source, node_name, |source, node_name| agent::Config {
            source,
            health_addr,
            poll_interval: Duration::from_millis(poll_ms.max(10)),
            pins: weir::pins::Pins::new(pin_path),
            flow_events: flow_events.events(),
            node_name,
            socket_cgroup: socket_lb.cgroup(),
            uplinks: uplinks.choice(),
            ebpf_debug_log,
        }),
        Command::Flows(args) => cli::run(|| cli::flows(&args)),
        Command::Explain(args) => cli::run(|| cli::explain(&args)),
        Command::Status(args) => cli::run(|| cli::status(&args)),
        Command::Uninstall { pin_path } => uninstall(&weir::pins::Pins::new(pin_path)),
        Command::Check { dir } => check(&dir),
    }
}

/// Opens the source, then runs the agent with the configuration `config` makes around it
/// and the node's name.
fn run(
    source: SourceArgs,
    node_name: Option<String>,
    config: impl FnOnce(Box<dyn Source>, Option<String>) -> agent::Config,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let in_a_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let agent = async {
        let choice = source.choose(in_a_pod)?;
        let node_name = match (node_name, &choice) {
            (Some(name), _) => Some(name),
            (None, SourceChoice::Kubernetes(_)) => {
                Some(host_name().context("reading the host name (pass --node-name)")?)
            }
            // A directory names nodes as the user wrote them: the host name is a guess.
            (None, SourceChoice::Directory(_)) => host_name().ok(),
        };
        let source = open(choice, node_name.clone()).await?;
        agent::run(config(source, node_name)).await
    };
    match runtime.block_on(agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error, filtered by `RUST_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn uninstall(pins: &weir::pins::Pins) -> ExitCode {
    match pins.remove_all() {
        Ok(n) => {
            println!("removed {n} pinned objects under {}", pins.root().display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "error: removing pins under {}: {err}",
                pins.root().display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Opens the chosen source. The Kubernetes source's watchers start on the current runtime.
async fn open(choice: SourceChoice, node_name: Option<String>) -> anyhow::Result<Box<dyn Source>> {
    match choice {
        SourceChoice::Directory(dir) => Ok(Box::new(Directory::new(dir))),
        SourceChoice::Kubernetes(target) => {
            let node_name = node_name.context("the Kubernetes source needs --node-name")?;
            let source = Kubernetes::connect(&target, node_name).await?;
            Ok(Box::new(source))
        }
    }
}

/// The kernel's host name: the node name of a `hostNetwork` pod, as the kubelet's default.
fn host_name() -> std::io::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_owned())
}

/// Loads and compiles as a node hosting every pod would: the largest the maps can get.
fn check(dir: &std::path::Path) -> ExitCode {
    let loaded = match manifest::load_dir(dir) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("{err}");
            eprintln!("{} error(s); nothing would be applied", err.errors.len());
            return ExitCode::FAILURE;
        }
    };
    for ignored in &loaded.ignored {
        println!("{ignored}");
    }
    print!("{}", cli::check_summary(&loaded));
    let state = &loaded.state;
    let node = all_local(state);
    match compile::compile(state, &node) {
        Ok(maps) => {
            println!("compiled as a node hosting every pod:");
            print!("{maps}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A node view in which every pod is local, with made-up interface numbers.
fn all_local(state: &weir::model::DesiredState) -> NodeView {
    let mut node = NodeView::default();
    for (ifindex, pod) in (1u32..).zip(&state.pods) {
        for ip in &pod.ips {
            node.local_routes.insert(*ip, ifindex);
        }
    }
    node
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn choice(args: &[&str], in_a_pod: bool) -> anyhow::Result<SourceChoice> {
        let cli = Cli::try_parse_from([&["weir", "run"], args].concat())?;
        let Command::Run { source, .. } = cli.command else {
            unreachable!("parsed a run command");
        };
        source.choose(in_a_pod)
    }

    fn socket_cgroup(args: &[&str]) -> anyhow::Result<Option<PathBuf>> {
        let cli = Cli::try_parse_from([&["weir", "run"], args].concat())?;
        let Command::Run { socket_lb, .. } = cli.command else {
            unreachable!("parsed a run command");
        };
        Ok(socket_lb.cgroup())
    }

    #[test]
    fn socket_programs_attach_to_the_root_cgroup_unless_told_otherwise() {
        let root = Some(PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(socket_cgroup(&[]).unwrap(), root);
        let mine = Some(PathBuf::from("/sys/fs/cgroup/mine"));
        assert_eq!(
            socket_cgroup(&["--cgroup", "/sys/fs/cgroup/mine"]).unwrap(),
            mine
        );
        assert_eq!(socket_cgroup(&["--no-socket-lb"]).unwrap(), None);
        assert!(socket_cgroup(&["--no-socket-lb", "--cgroup", "/x"]).is_err());
    }

    #[test]
    fn run_reads_exactly_one_source() {
        let dir = SourceChoice::Directory(PathBuf::from("p"));
        assert_eq!(choice(&["--manifests", "p"], true).unwrap(), dir);
        let file = SourceChoice::Kubernetes(Target::Kubeconfig(PathBuf::from("k")));
        assert_eq!(choice(&["--kubeconfig", "k"], false).unwrap(), file);
        let in_cluster = SourceChoice::Kubernetes(Target::InCluster);
        assert_eq!(choice(&["--in-cluster"], false).unwrap(), in_cluster);
        assert_eq!(choice(&[], true).unwrap(), in_cluster);
        assert!(choice(&[], false).is_err());
        assert!(choice(&["--manifests", "p", "--kubeconfig", "k"], false).is_err());
        assert!(choice(&["--kubeconfig", "k", "--in-cluster"], false).is_err());
    }
}
