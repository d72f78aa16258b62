//! `cargo xtask setup`: whatever a fresh machine of Weir's kind (Debian 12, rustup with stable
//! and nightly) lacks for building and testing, installed only when missing.
//!
//! Every check is a quick local probe, so a ready machine passes in well under two seconds;
//! one line per item says `present` or `installed`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The bpf-linker release the eBPF build is verified with (shared GUIDE, section 2).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Nightly components: `rust-src` for `-Z build-std=core`, clippy for linting the eBPF crate.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// Components of the default (stable) toolchain that `cargo xtask test` runs.
const HOST_COMPONENTS: &[&str] = &["clippy", "rustfmt"];

/// Programs the tests, the demo and the benchmarks run, with the Debian package of each.
const SYSTEM_TOOLS: &[(&str, &str)] = &[
    // Network namespaces, veth pairs, addresses and routes of every test bed.
    ("ip", "iproute2"),
    // Enters a namespace's network only, keeping the host's /sys and bpffs (GUIDE, section 3).
    ("nsenter", "util-linux"),
    // The kube-proxy-style baseline that comparisons and benchmarks program.
    ("iptables", "iptables"),
    // The nftables baseline.
    ("nft", "nftables"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Present,
    Installed,
    /// Missing and not installable by this user; only tests that skip without root need it.
    Missing,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Present => "present",
            Self::Installed => "installed",
            Self::Missing => "MISSING (needs root to install)",
        })
    }
}

fn report(item: &str, state: State) {
    println!("setup: {item:<36} {state}");
}

/// Makes the machine ready; see the module documentation.
pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    report("nightly toolchain, rust-src, clippy", nightly()?);
    report("stable clippy, rustfmt", host_components(root)?);
    let sysroot = nightly_sysroot()?;
    report(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        bpf_linker(&sysroot)?,
    );
    for (item, state) in system_tools()? {
        report(&item, state);
    }
    println!("setup: ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Whether `component` is in the output of `rustup component list --installed`
/// (`rust-src`, or `clippy-x86_64-unknown-linux-gnu` for `clippy`).
fn has_component(installed: &str, component: &str) -> bool {
    installed.lines().any(|line| {
        line == component
            || line
                .strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

fn nightly() -> Result<State> {
    let toolchains = cmd::stdout(Command::new("rustup").args(["toolchain", "list"]))?;
    // `nightly-<host>`, not a dated `nightly-2026-05-19-<host>`: that is what `+nightly` names.
    let has_nightly = toolchains.lines().any(|line| {
        line.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        for component in NIGHTLY_COMPONENTS {
            install.args(["--component", component]);
        }
        cmd::run(&mut install).context(
            "the nightly Rust toolchain is missing and rustup could not install it; \
             the eBPF crate needs nightly with rust-src (for -Z build-std=core): install it \
             with `rustup toolchain install nightly --profile minimal -c rust-src -c clippy` \
             from a network that reaches the Rust distribution server, then run this again",
        )?;
        return Ok(State::Installed);
    }
    let installed = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    let missing: Vec<&str> = NIGHTLY_COMPONENTS
        .iter()
        .copied()
        .filter(|component| !has_component(&installed, component))
        .collect();
    if missing.is_empty() {
        return Ok(State::Present);
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "could not add {} to the nightly toolchain (rustup needs the Rust distribution server)",
            missing.join(", ")
        )
    })?;
    Ok(State::Installed)
}

/// clippy and rustfmt of the toolchain the workspace builds with (stable, unless overridden).
fn host_components(root: &Path) -> Result<State> {
    let installed = cmd::stdout(
        Command::new("rustup")
            .args(["component", "list", "--installed"])
            .current_dir(root),
    )?;
    let missing: Vec<&str> = HOST_COMPONENTS
        .iter()
        .copied()
        .filter(|component| !has_component(&installed, component))
        .collect();
    if missing.is_empty() {
        return Ok(State::Present);
    }
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing)
            .current_dir(root),
    )
    .with_context(|| format!("could not add {} to the toolchain", missing.join(", ")))?;
    Ok(State::Installed)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = cmd::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// The version `bpf-linker --version` reports, if it runs.
///
/// bpf-linker is linked against the nightly toolchain's own `libLLVM.so`, which is not on the
/// loader path outside rustc (rustc adds its lib folder when it runs the linker), so the probe
/// adds that folder the same way. A nightly update that changes LLVM makes the probe fail, and
/// setup rebuilds the linker.
fn bpf_linker_version(sysroot: &Path) -> Option<String> {
    let mut library_path = vec![sysroot.join("lib")];
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        library_path.extend(std::env::split_paths(&existing));
    }
    let output = cmd::probe(
        Command::new("bpf-linker")
            .arg("--version")
            .env("LD_LIBRARY_PATH", std::env::join_paths(library_path).ok()?),
    )?;
    if !output.status.success() {
        return None;
    }
    // "bpf-linker 0.13.0"
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

fn bpf_linker(sysroot: &Path) -> Result<State> {
    if bpf_linker_version(sysroot).as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(State::Present);
    }
    install_bpf_linker(sysroot)?;
    match bpf_linker_version(sysroot) {
        Some(version) if version == BPF_LINKER_VERSION => Ok(State::Installed),
        found => bail!(
            "cargo installed bpf-linker {BPF_LINKER_VERSION}, but the `bpf-linker` on PATH reports \
             {}: put cargo's bin folder (~/.cargo/bin) first on PATH",
            found.as_deref().unwrap_or("nothing (it does not run)")
        ),
    }
}

/// Builds bpf-linker against the nightly toolchain's own LLVM (GUIDE, section 2): its build
/// script looks for `$LLVM_PREFIX/lib/libLLVM.so`, which rustup does not ship under that name,
/// so a folder of our own holds a symlink to the real file.
fn install_bpf_linker(sysroot: &Path) -> Result<()> {
    let (llvm, major) = nightly_libllvm(&sysroot.join("lib"))?;
    let prefix = cache_dir()?.join("weir").join("llvm");
    let link = prefix.join("lib").join("libLLVM.so");
    let link_dir = prefix.join("lib");
    std::fs::create_dir_all(&link_dir)
        .with_context(|| format!("could not create {}", link_dir.display()))?;
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("could not replace {}", link.display()));
        }
    }
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("could not link {} to {}", link.display(), llvm.display()))?;
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} \
         ({}); this takes a few minutes",
        llvm.display()
    );
    cmd::run(
        Command::new("cargo")
            .args(["+nightly", "install", "bpf-linker", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            // The crate ships its Cargo.lock: the dependency versions its release was tested with.
            // --force replaces a same-version install that no longer runs (LLVM changed).
            .args(["--locked", "--force"])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("could not build bpf-linker")
}

/// The nightly toolchain's `libLLVM.so.<major>.<minor>-rust-<version>` and its LLVM major.
fn nightly_libllvm(lib_dir: &Path) -> Result<(PathBuf, String)> {
    let entries = std::fs::read_dir(lib_dir)
        .with_context(|| format!("could not list {}", lib_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("could not list {}", lib_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            let major: String = version.chars().take_while(char::is_ascii_digit).collect();
            if !major.is_empty() {
                found.push((entry.path(), major));
            }
        }
    }
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no libLLVM.so.* in {}: the nightly toolchain ships no LLVM library to build \
             bpf-linker against",
            lib_dir.display()
        )
    })
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .context("neither XDG_CACHE_HOME nor HOME is set: no folder for bpf-linker's LLVM link")?;
    Ok(PathBuf::from(home).join(".cache"))
}

/// Installs the missing [`SYSTEM_TOOLS`] with apt (as root); one `(item, state)` per tool.
fn system_tools() -> Result<Vec<(String, State)>> {
    let missing: Vec<(&str, &str)> = SYSTEM_TOOLS
        .iter()
        .copied()
        .filter(|(tool, _)| cmd::find_program(tool).is_none())
        .collect();
    let state_of_missing = if missing.is_empty() {
        State::Present
    } else if cmd::is_root() {
        apt_install(&missing)?;
        State::Installed
    } else {
        // Tests that run these also need root, and skip themselves without it.
        let (tools, packages): (Vec<&str>, Vec<&str>) = missing.iter().copied().unzip();
        eprintln!(
            "setup: warning: {} not found; as root, run `apt-get install -y {}` (or this setup)",
            tools.join(", "),
            packages.join(" ")
        );
        State::Missing
    };
    Ok(SYSTEM_TOOLS
        .iter()
        .map(|&(tool, package)| {
            let state = if missing.iter().any(|&(name, _)| name == tool) {
                state_of_missing
            } else {
                State::Present
            };
            (format!("{tool} ({package})"), state)
        })
        .collect())
}

fn apt_install(missing: &[(&str, &str)]) -> Result<()> {
    let mut packages: Vec<&str> = missing.iter().map(|&(_, package)| package).collect();
    packages.dedup();
    cmd::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    match missing
        .iter()
        .find(|(tool, _)| cmd::find_program(tool).is_none())
    {
        Some((tool, package)) => {
            bail!("apt-get installed {package}, but `{tool}` is still not on PATH nor in /usr/sbin")
        }
        None => Ok(()),
    }
}
