//! The end of a job's staged data: its data key re-wrapped under another
//! key-encryption key, shredded, or purged with everything it sealed.

use std::path::Path;

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
    match godwit_common::keyring::rotate(&spec, to).await {
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
            tracing::info!(job_id = %spec.job, from = %rotated.from, to = %rotated.to, action = "keys.rotate", "data key re-wrapped");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

pub async fn shred(spec_path: &Path, yes: bool) -> i32 {
    let spec = match load(spec_path) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    if !yes {
        eprintln!(
            "error: shredding job {}'s data key makes its staged chunks, change batches and reports unreadable \
             for ever; run again with --yes to do it",
            spec.job
        );
        return 2;
    }
    let staging = match Staging::open(&spec.staging) {
        Ok(staging) => staging,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match staging.delete_wrapped_key(&spec.job).await {
        Ok(()) => {
            println!(
                "shredded job {}'s data key in {}: its staged data can no longer be opened",
                spec.job,
                staging.url()
            );
            tracing::info!(job_id = %spec.job, action = "keys.shred", "data key shredded");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

pub async fn purge(spec_path: &Path, yes: bool) -> i32 {
    let spec = match load(spec_path) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    if !yes {
        eprintln!(
            "error: purging deletes every staged object of job {} and shreds its data key; run again with --yes \
             to do it",
            spec.job
        );
        return 2;
    }
    let staging = match Staging::open(&spec.staging) {
        Ok(staging) => staging,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match staging.purge_job(&spec.job).await {
        Ok(objects) => {
            println!(
                "purged job {}: {objects} staged object(s) deleted from {}, data key shredded",
                spec.job,
                staging.url()
            );
            tracing::info!(job_id = %spec.job, objects, action = "purge", "staged data purged");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
