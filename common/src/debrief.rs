//! What the customer's debrief is made of, read from the job's staging
//! area: its verification report, the staged copy's manifest, the job's
//! history and its audit trail's head. The CLI lays it out (HTML, PDF); a
//! coordinator sends it whole. Names, counts, times and hashes: never a
//! value of the customer's rows.

use serde::{Deserialize, Serialize};

use crate::history::JobHistory;
use crate::spec::JobSpec;
use crate::state::Manifest;
use crate::verify::Report;

/// The audit trail as the debrief shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditHead {
    /// Intact: its records and the SHA-256 of its last one.
    Intact { records: usize, head: String },
    /// Where it breaks, and why.
    Broken(String),
    /// Not readable here, and why.
    Unread(String),
}

/// Everything a debrief shows; what is missing is said so, not guessed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Debrief {
    pub report: Report,
    pub manifest: Option<Manifest>,
    pub history: Option<JobHistory>,
    pub audit: Option<AuditHead>,
}

/// Reads what the job staged beside its `report`: the manifest, the
/// history and the audit trail (checked, for its head). Each may be
/// missing; the debrief then says what it cannot show.
pub async fn gather(spec: &JobSpec, report: Report) -> Debrief {
    let (manifest, history) = match crate::sealed::SealedStaging::open(spec).await {
        Ok(sealed) => (
            sealed.get_manifest().await.ok().flatten(),
            crate::history::load(&sealed).await.ok().flatten(),
        ),
        Err(_) => (None, None),
    };
    let audit = match crate::audit::AuditLog::open(spec).await {
        Ok(log) => Some(match log.verify().await {
            Ok(Ok(records)) => match records.last() {
                Some(last) => AuditHead::Intact {
                    records: records.len(),
                    head: crate::audit::chain::link(&crate::audit::chain::stored_bytes(last)),
                },
                None => AuditHead::Unread("the trail holds no record".into()),
            },
            Ok(Err(broken)) => AuditHead::Broken(format!("{}: {}", broken.at, broken.why)),
            Err(e) => AuditHead::Unread(e.to_string()),
        }),
        Err(e) => Some(AuditHead::Unread(e.to_string())),
    };
    Debrief {
        // A document for the customer: counts, never the rows' keys.
        report: report.without_keys(),
        manifest,
        history,
        audit,
    }
}
