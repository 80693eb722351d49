//! Sealed copies of reports and range findings in the job's staging area:
//! they name primary keys, which are customer data.

use serde::{Deserialize, Serialize};

use super::content::RangeFinding;
use super::report::Report;
use crate::chunk::{self, ChunkId};
use crate::ids::JobId;
use crate::keys::DataKey;
use crate::spec::JobSpec;
use crate::staging::{ObjectPath, Staging};
use crate::state::VerifyRun;
use crate::{Error, Result};

/// Seals `value` as JSON with the job's data key at `path`.
pub(crate) async fn put_sealed<T: Serialize>(
    staging: &Staging,
    key: &DataKey,
    path: &ObjectPath,
    id: &ChunkId,
    value: &T,
) -> Result<()> {
    let json = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        what: staging.describe(path),
        reason: e.to_string(),
    })?;
    staging.put(path, chunk::seal(id, 0, &json, key)?).await
}

pub(crate) async fn get_sealed<T: for<'de> Deserialize<'de>>(
    staging: &Staging,
    key: &DataKey,
    path: &ObjectPath,
    id: &ChunkId,
) -> Result<T> {
    let object = staging.describe(path);
    let frame = staging.get(path).await?;
    let (_, plain) = chunk::open(&object, &frame, id, key)?;
    serde_json::from_slice(&plain).map_err(|e| Error::Corrupt {
        what: object,
        reason: e.to_string(),
    })
}

/// Seals `report` with the job's data key into its staging area (it names
/// primary keys, which are customer data); returns where it went.
pub async fn store_report(
    staging: &Staging,
    key: &DataKey,
    job: &JobId,
    report: &Report,
) -> Result<String> {
    let path = staging.report_path(job);
    let id = ChunkId::verification_report(job.as_str());
    put_sealed(staging, key, &path, &id, report).await?;
    Ok(staging.describe(&path))
}

/// The job's last stored report.
pub async fn load_report(spec: &JobSpec) -> Result<Report> {
    let sealed = crate::sealed::SealedStaging::open(spec).await?;
    let path = sealed.staging().report_path(&spec.job);
    let id = ChunkId::verification_report(spec.job.as_str());
    get_sealed(sealed.staging(), sealed.key(), &path, &id).await
}

/// Seals the finding of a range that differed (it names primary keys).
pub async fn store_finding(
    staging: &Staging,
    key: &DataKey,
    run: &VerifyRun,
    range: u32,
    finding: &RangeFinding,
) -> Result<()> {
    let job = &run.spec.job;
    let path = staging.finding_path(job, &run.run, range);
    let id = ChunkId::verification_finding(job.as_str(), &run.run, range);
    put_sealed(staging, key, &path, &id, finding).await
}

pub async fn load_finding(
    staging: &Staging,
    key: &DataKey,
    run: &VerifyRun,
    range: u32,
) -> Result<RangeFinding> {
    let job = &run.spec.job;
    let path = staging.finding_path(job, &run.run, range);
    let id = ChunkId::verification_finding(job.as_str(), &run.run, range);
    get_sealed(staging, key, &path, &id).await
}
