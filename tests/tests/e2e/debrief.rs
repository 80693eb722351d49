//! The customer's debrief, read back: the HTML by headless Chromium, the
//! PDF by `pdftotext` (poppler). Both carry what moved, the timeline and
//! its charts, the verification, the lineage and the audit trail's head
//! hash as `godwit audit show` records it; never a value.

use std::process::Command;

use godwit_tests::{Job, describe, run_godwit};
use sha2::{Digest, Sha256};

/// The SHA-256 of the job's last audit record as stored: the head the
/// debrief must show.
pub(crate) fn audit_head(job: &Job) -> anyhow::Result<String> {
    let shown = run_godwit(&["audit", "show", job.spec(), "--json"], &[])?;
    anyhow::ensure!(shown.status.success(), "{}", describe(&shown));
    let text = String::from_utf8_lossy(&shown.stdout);
    let last = text.lines().last().unwrap_or_default();
    anyhow::ensure!(!last.is_empty(), "no audit record");
    Ok(hex::encode(Sha256::digest(last.as_bytes())))
}

/// The text `pdftotext` reads out of `pdf` (layout kept, a page after
/// another).
pub(crate) fn pdf_text(dir: &std::path::Path, pdf: &[u8]) -> anyhow::Result<String> {
    anyhow::ensure!(pdf.starts_with(b"%PDF-"), "not a PDF");
    let file = dir.join("debrief.pdf");
    std::fs::write(&file, pdf)?;
    let read = Command::new("pdftotext")
        .args(["-layout"])
        .arg(&file)
        .arg("-")
        .output()
        .map_err(|e| {
            anyhow::anyhow!("cannot run pdftotext (scripts/setup installs poppler-utils): {e}")
        })?;
    anyhow::ensure!(read.status.success(), "{}", describe(&read));
    let info = Command::new("pdfinfo").arg(&file).output()?;
    anyhow::ensure!(info.status.success(), "pdfinfo: {}", describe(&info));
    Ok(String::from_utf8_lossy(&read.stdout).into_owned())
}

/// The DOM headless Chromium builds from `html`.
pub(crate) fn browse(dir: &std::path::Path, html: &str) -> anyhow::Result<String> {
    let file = dir.join("debrief.html");
    std::fs::write(&file, html.as_bytes())?;
    let profile = tempfile::tempdir()?;
    let browsed = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run chromium (scripts/setup installs it): {e}"))?;
    anyhow::ensure!(browsed.status.success(), "{}", describe(&browsed));
    Ok(String::from_utf8_lossy(&browsed.stdout).into_owned())
}

/// `godwit report JOB --format FORMAT` (with `extra` arguments), its
/// stdout.
pub(crate) fn report(job: &str, format: &str, extra: &[&str]) -> anyhow::Result<Vec<u8>> {
    let mut args = vec!["report", job, "--format", format];
    args.extend_from_slice(extra);
    let output = run_godwit(&args, &[])?;
    anyhow::ensure!(output.status.success(), "{}", describe(&output));
    Ok(output.stdout)
}

/// What both documents of a copied job's debrief must say: the phases
/// and their steps, the copy's chart, the audit head.
pub(crate) fn assert_copy_sections(text: &str, head: &str) -> anyhow::Result<()> {
    for expected in [
        "What moved",
        "When",
        "planning: snapshot",
        "planning: schema",
        "copying",
        "finalizing: check",
        "Copy throughput over time",
        "MiB/s read",
        "Verification",
        "Audit trail",
        "chained and authenticated",
        head,
    ] {
        anyhow::ensure!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    Ok(())
}
