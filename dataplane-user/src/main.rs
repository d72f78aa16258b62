//! `weir`: the agent and its CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weir::compile::{self, NodeView};
use weir::source::directory::Directory;
use weir::{agent, manifest};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "eBPF dataplane for Kubernetes NetworkPolicy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the manifests of a directory on this node, following changes.
    Run {
        /// Directory of Kubernetes manifests (*.yaml, *.yml, recursive).
        #[arg(long)]
        manifests: PathBuf,
        /// Address of /healthz, /readyz, /status and /metrics.
        #[arg(long, default_value = "127.0.0.1:9876")]
        health_addr: SocketAddr,
        /// How often the directory and routes are checked, in milliseconds.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
    },
    /// Validate a directory and print what would be compiled, without touching the kernel.
    Check {
        /// Directory of Kubernetes manifests.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run {
            manifests,
            health_addr,
            poll_ms,
        } => run(agent::Config {
            source: Box::new(Directory::new(manifests)),
            health_addr,
            poll_interval: Duration::from_millis(poll_ms.max(10)),
        }),
        Command::Check { dir } => check(&dir),
    }
}

fn run(config: agent::Config) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
    let state = &loaded.state;
    println!(
        "{} files: {} namespaces, {} pods, {} network policies",
        loaded.files,
        state.namespaces.len(),
        state.pods.len(),
        state.policies.len()
    );
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
