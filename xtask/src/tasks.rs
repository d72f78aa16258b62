//! The tasks after set-up: build, demo, test, bench.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

/// `cargo` in the workspace root (the rustup proxy, so `+nightly` works).
fn cargo(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(root);
    command
}

fn require_root(what: &str) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "{what} needs root: it creates network namespaces and loads eBPF programs \
             (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN); run it again as root"
        );
    }
    Ok(())
}

/// `cargo xtask build`.
pub fn build(root: &Path) -> Result<()> {
    setup::run(root)?;
    build_agent(root)
}

/// The agent in release mode; its build.rs builds and embeds the eBPF object.
fn build_agent(root: &Path) -> Result<()> {
    cmd::run(cargo(root).args(["build", "--release", "-p", "dataplane-user"]))
}

/// `cargo xtask demo [ARGS]`: the README's first command.
pub fn demo(root: &Path, args: &[String]) -> Result<()> {
    require_root("the demo")?;
    setup::run(root)?;
    build_agent(root)?;
    let mut demo = cargo(root);
    demo.args([
        "run",
        "--release",
        "-p",
        "weir-tests",
        "--bin",
        "weir-demo",
        "--",
    ]);
    let chooses_manifests = args
        .iter()
        .any(|arg| arg == "--manifests" || arg.starts_with("--manifests="));
    if !chooses_manifests {
        demo.args(["--manifests", "policies/"]);
    }
    cmd::run(demo.args(args))
}

/// `cargo xtask bench [ARGS]`.
pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    require_root("the benchmarks")?;
    setup::run(root)?;
    cmd::run(
        cargo(root)
            .args([
                "run",
                "--release",
                "-p",
                "weir-tests",
                "--bin",
                "weir-bench",
                "--",
            ])
            .args(args),
    )
}

/// `cargo xtask test`: the README's second command, and all that `.ci/run` does.
///
/// Every check runs even when an earlier one failed, so one CI run reports all problems.
pub fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    setup::run(root)?;
    let ebpf_dir = root.join("dataplane-ebpf");
    let mut checks: Vec<(&str, Result<()>)> = Vec::new();

    checks.push((
        "rustfmt",
        cmd::run(cargo(root).args(["fmt", "--all", "--", "--check"])),
    ));
    // `--workspace` selects every member, the eBPF crate included, which only builds for
    // the BPF target: exclude it here and lint it below for its own target.
    checks.push((
        "clippy",
        cmd::run(cargo(root).args([
            "clippy",
            "--workspace",
            "--exclude",
            "dataplane-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
    ));
    checks.push((
        "clippy (eBPF)",
        cmd::run(cargo(&ebpf_dir).args([
            "+nightly",
            "clippy",
            "-p",
            "dataplane-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])),
    ));
    let mut counts = TestCounts::default();
    checks.push((
        "tests",
        cargo_test(
            cargo(root).args(["test", "--workspace", "--exclude", "dataplane-ebpf"]),
            &mut counts,
        ),
    ));

    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, result)| result.is_err())
        .map(|(name, _)| *name)
        .collect();
    for (name, result) in &checks {
        match result {
            Ok(()) => println!("xtask test: {name:<14} ok"),
            Err(error) => println!("xtask test: {name:<14} FAILED: {error:#}"),
        }
    }
    println!(
        "xtask test: {} in {:.0} s",
        if failed.is_empty() {
            "all checks passed"
        } else {
            "some checks failed"
        },
        started.elapsed().as_secs_f64()
    );
    // The closing line: the test harnesses' own totals, summed over every test binary.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Totals of libtest's `test result:` lines.
#[derive(Default)]
struct TestCounts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestCounts {
    /// Adds a line such as
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for field in rest.split(';') {
            let mut words = field.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                "ignored" => self.ignored += number,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test`, streaming its stdout line by line while counting the results.
fn cargo_test(command: &mut Command, counts: &mut TestCounts) -> Result<()> {
    let line = cmd::describe(command);
    eprintln!("$ {line}");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut out = std::io::stdout().lock();
    for text in BufReader::new(stdout).lines() {
        let text = text.context("reading cargo test's output")?;
        counts.add_line(&text);
        writeln!(out, "{text}").context("writing to stdout")?;
    }
    drop(out);
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn sums_libtest_result_lines() {
        let mut counts = TestCounts::default();
        for line in [
            "running 3 tests",
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in 0.01s",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; \
             finished in 1.50s",
            "test parse::ipv4 ... ok",
        ] {
            counts.add_line(line);
        }
        assert_eq!(
            (counts.passed, counts.failed, counts.ignored),
            (15, 2, 1),
            "totals of the two result lines"
        );
    }
}
