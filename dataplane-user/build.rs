//! Builds the eBPF object with the nightly toolchain and bpf-linker (installed by
//! `cargo xtask setup`) and leaves it in `OUT_DIR`, where `src/dataplane.rs` embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata_root()?;
    let ebpf = Package {
        name: "dataplane-ebpf",
        root_dir: &metadata,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default()).context("building the eBPF object")
}

fn cargo_metadata_root() -> anyhow::Result<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("no workspace root above {manifest_dir}"))?
        .join("dataplane-ebpf");
    Ok(root.display().to_string())
}
