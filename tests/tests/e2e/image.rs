//! The image the chart runs, as its Dockerfile builds it (read here, not
//! built: building needs a container engine): every binary the chart's
//! pods start is a binary of the workspace, built from the locked
//! dependencies and copied into the runtime stage; the runtime stage runs
//! as the user the chart's pods run as, and carries the PostgreSQL tools
//! the coordinator restores schemas with.

use std::process::Command;

use godwit_tests::{describe, repo_root};

/// The binaries the workspace builds.
fn workspace_binaries() -> anyhow::Result<Vec<String>> {
    let output = Command::new("cargo")
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()?;
    anyhow::ensure!(output.status.success(), "{}", describe(&output));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut binaries = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
            if is_bin && let Some(name) = target["name"].as_str() {
                binaries.push(name.to_owned());
            }
        }
    }
    Ok(binaries)
}

#[test]
fn the_dockerfile_builds_what_the_chart_runs_as_the_chart_s_user() -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    anyhow::ensure!(stages.len() == 3, "a build stage and a runtime stage");
    let (build, runtime) = (stages[1], stages[2]);
    anyhow::ensure!(
        runtime.starts_with("debian:bookworm-slim"),
        "slim runtime: {runtime}"
    );
    anyhow::ensure!(build.contains("cargo build --release --locked"));

    // What the chart's pods start.
    let templates = repo_root().join("helm/godwit/templates");
    let mut started = Vec::new();
    for entry in std::fs::read_dir(&templates)? {
        let text = std::fs::read_to_string(entry?.path())?;
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "command:"
                && let Some(next) = lines.next()
                && let Some(binary) = next.trim().strip_prefix("- godwit")
            {
                started.push(format!("godwit{binary}"));
            }
        }
    }
    started.sort();
    started.dedup();
    assert_eq!(started, ["godwit-coordinator", "godwit-worker"]);
    let binaries = workspace_binaries()?;
    for binary in started.iter().map(String::as_str).chain(["godwit"]) {
        assert!(
            binaries.iter().any(|b| b == binary),
            "{binary} is not built by the workspace"
        );
        assert!(
            build.contains(&format!("--bin {binary} ")),
            "the image does not build {binary}"
        );
        assert!(
            build.contains(&format!("target/release/{binary} ")),
            "the image does not copy {binary}"
        );
    }
    anyhow::ensure!(runtime.contains("COPY --from=build /out/ /usr/local/bin/"));
    anyhow::ensure!(
        runtime.contains("postgresql-client-"),
        "no pg_dump/pg_restore"
    );

    // The chart's pods run as the image's user.
    let values = std::fs::read_to_string(repo_root().join("helm/godwit/values.yaml"))?;
    let uid = values
        .lines()
        .find_map(|l| l.trim().strip_prefix("runAsUser: "))
        .ok_or_else(|| anyhow::anyhow!("no runAsUser in the chart's values"))?;
    assert!(
        runtime.contains(&format!("USER {uid}:")),
        "the image's user is not the chart's runAsUser {uid}"
    );
    assert!(
        values.contains("Image holding godwit-coordinator, godwit-worker"),
        "the chart's image values say what the image holds"
    );
    Ok(())
}
