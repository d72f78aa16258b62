//! Weir's task runner: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! It orchestrates and installs; cargo stays the build system. Every task starts with `setup`,
//! which is idempotent and takes well under two seconds once the machine is ready, so a fresh
//! machine (CI's included) needs nothing but `cargo xtask test` or `cargo xtask demo`.

mod cmd;
mod setup;
mod tasks;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Weir's task runner",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, bpf-linker, ip, nsenter,
    /// iptables, nft); idempotent, fast when everything is present.
    Setup,
    /// Set up, then build the agent in release mode (its build.rs builds the eBPF object).
    Build,
    /// Set up, build, and run the demo on `policies/` (needs root). Extra arguments go to
    /// `weir-demo`.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then rustfmt check, clippy (host crates and the eBPF crate) and the test suite.
    Test,
    /// Set up, then run the benchmarks (`weir-bench`). Extra arguments go to `weir-bench`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The workspace root: the parent of this crate's folder.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.task {
        Task::Setup => setup::run(&root),
        Task::Build => tasks::build(&root),
        Task::Demo { args } => tasks::demo(&root, &args),
        Task::Test => tasks::test(&root),
        Task::Bench { args } => tasks::bench(&root, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
