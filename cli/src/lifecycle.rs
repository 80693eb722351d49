//! The end of a job's staged data (its data key re-wrapped under another
//! key-encryption key, shredded, or purged with everything it sealed), each
//! recorded in the job's audit trail; and that trail, shown and verified.

use std::path::Path;

use godwit_common::audit::{self, AuditEvent, AuditLog};
use godwit_common::spec::JobSpec;
use godwit_common::staging::Staging;

fn load(spec_path: &Path) -> Result<JobSpec, i32> {
    JobSpec::from_file(spec_path).map_err(|e| {
        eprintln!("error: {e}");
        2
    })
}

pub async fn rotate(spec_path: &Path, to: Option<&Path>) -> i32 {
    let spec = match load(spec_path) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    match godwit_common::sealed::rotate(&spec, to).await {
        Ok(rotated) if rotated.from == rotated.to => {
            println!(
                "job {}'s data key is already wrapped by key-encryption key {}",
                spec.job, rotated.to
            );
            0
        }
        Ok(rotated) => {
            println!(
                "re-wrapped job {}'s data key from key-encryption key {} to {}; staged data untouched, key {} \
                 is no longer needed for this job",
                spec.job, rotated.from, rotated.to, rotated.from
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// The spec and its staging area for an irreversible step, once `--yes`
/// confirmed it (`what` says what would be lost).
fn confirmed(spec_path: &Path, yes: bool, what: &str) -> Result<(JobSpec, Staging), i32> {
    let spec = load(spec_path)?;
    if !yes {
        eprintln!(
            "error: {what} of job {} cannot be undone; run again with --yes to do it",
            spec.job
        );
        return Err(2);
    }
    let staging = Staging::open(&spec.staging).map_err(|e| {
        eprintln!("error: {e}");
        2
    })?;
    Ok((spec, staging))
}

pub async fn shred(spec_path: &Path, yes: bool) -> i32 {
    let what =
        "shredding the data key (its staged chunks, change batches and reports become unreadable)";
    let (spec, staging) = match confirmed(spec_path, yes, what) {
        Ok(found) => found,
        Err(code) => return code,
    };
    match staging.delete_wrapped_key(&spec.job).await {
        Ok(()) => {
            println!(
                "shredded job {}'s data key in {}: its staged data can no longer be opened",
                spec.job,
                staging.url()
            );
            audit::note(
                &spec,
                vec![AuditEvent::new("cli", "keys.shred", "ok").object("data key destroyed")],
            )
            .await;
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

pub async fn purge(spec_path: &Path, yes: bool) -> i32 {
    let what = "purging every staged object and the data key";
    let (spec, staging) = match confirmed(spec_path, yes, what) {
        Ok(found) => found,
        Err(code) => return code,
    };
    match staging.purge_job(&spec.job).await {
        Ok(objects) => {
            println!(
                "purged job {}: {objects} staged object(s) deleted from {}, data key shredded, audit trail kept",
                spec.job,
                staging.url()
            );
            audit::note(
                &spec,
                vec![AuditEvent::new("cli", "purge", "ok").object(format!(
                    "{objects} staged object(s) deleted, data key destroyed"
                ))],
            )
            .await;
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `json`: `Some` shows the records (as JSON lines when true), `None` only
/// verifies. Exit 0 when intact, 1 naming the first bad record, 2 when the
/// trail cannot be read.
pub async fn audit(spec_path: &Path, json: Option<bool>) -> i32 {
    let spec = match load(spec_path) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    let checked = match AuditLog::open(&spec).await {
        Ok(log) => log.verify().await,
        Err(e) => Err(e),
    };
    let records = match checked {
        Ok(Ok(records)) => records,
        Ok(Err(broken)) => {
            println!(
                "audit trail of job {}: BROKEN at {}: {}",
                spec.job, broken.at, broken.why
            );
            return 1;
        }
        Err(e) => {
            eprintln!(
                "error: cannot read the audit trail of job {}: {e}",
                spec.job
            );
            return 2;
        }
    };
    match json {
        None => {}
        Some(true) => {
            for record in &records {
                println!("{}", serde_json::to_string(record).unwrap_or_default());
            }
            return 0;
        }
        Some(false) => {
            for r in &records {
                println!(
                    "{:>6} {} {:<24} {:<16} {:<12} {}{}",
                    r.seq,
                    r.at_unix_ms,
                    r.actor,
                    r.action,
                    r.outcome,
                    r.object.as_deref().unwrap_or(""),
                    r.reason
                        .as_deref()
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default()
                );
            }
        }
    }
    println!(
        "audit trail of job {}: intact, {} record(s), anchored head matches",
        spec.job,
        records.len()
    );
    0
}
