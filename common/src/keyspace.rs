//! The keyspace: every key a deployment keeps in the lease store, who
//! writes it, and whether the write is fenced. Knows no SQL and no record
//! types beyond their names.

use crate::ids::JobId;

/// Key layout under one root per deployment (default `/godwit`): every key,
/// who writes it, and whether the write is fenced by a lease.
///
/// ```text
/// ROOT/jobs/JOB/record                 job record (spec, phase, plan)     coordinator: created by the API on submission
///                                      (create-if-absent), then written by the leader only (fenced by ROOT/leader)
/// ROOT/jobs/JOB/control                operator requests (cancel)         coordinator API
/// ROOT/jobs/JOB/purged                 when staged data was purged        coordinator (retention sweep)
/// ROOT/jobs/JOB/approvals/ACTION       sign-off request and its approval  coordinator API
/// ROOT/jobs/JOB/work/KIND/items/NNNNNN   a unit of leased work (KIND: copy, verify, stream): its state and progress
///                                        coordinator (publishes); worker (fenced by the lease)
/// ROOT/jobs/JOB/work/KIND/leases/NNNNNN  who holds the unit          worker (create-if-absent, leased)
/// ROOT/jobs/JOB/requests/NAME         a request to the job's stream (pin-ID, drain, stop) or to its
///                                      leader (cutover)                   requester (create-if-absent, leased)
/// ROOT/jobs/JOB/answers/NAME           the answer to that request         whoever serves it
/// ROOT/leader                          the leading coordinator's identity coordinator (create-if-absent, leased)
/// ROOT/leader-term                     the last election: term, winner    the leader (fenced by ROOT/leader)
/// ROOT/active/JOB                      job open for leasing               coordinator
/// ROOT/paused/JOB                      reading paused (apart from the job's keys, so
///                                      one watch per worker follows every job's)  coordinator API
/// ROOT/retention/JOB                   when an ended job's staging goes   coordinator (job end; sweep)
/// ROOT/verifying/JOB                   the one running verification       coordinator (leased)
/// ROOT/customers/C/limits              a customer's throttle limits       coordinator (spec, API)
/// ROOT/customers/C/allocation          the budget split among leases      coordinator (allocator)
/// ROOT/customers/C/sessions/NNNN       a source session slot              worker (create-if-absent, leased)
/// ```
///
/// No secret is ever written here: connection strings carry no password
/// (a coordinator refuses specs that do) and keys stay in files.
#[derive(Debug, Clone)]
pub struct Keyspace {
    root: String,
}

impl Keyspace {
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_owned(),
        }
    }

    /// The leading coordinator's key, held on its lease.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }

    /// Who won the last election, and its number.
    pub fn leader_term(&self) -> String {
        format!("{}/leader-term", self.root)
    }

    /// Every key of the deployment.
    pub fn root_prefix(&self) -> String {
        format!("{}/", self.root)
    }

    pub fn jobs_prefix(&self) -> String {
        format!("{}/jobs/", self.root)
    }

    pub fn job_prefix(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/", self.root)
    }

    pub fn job_record(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/record", self.root)
    }

    /// Operator requests (cancel) for a job; written by the coordinator API,
    /// read by the job driver.
    pub fn job_control(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/control", self.root)
    }

    /// When the job's staged data was purged (its retention ran out, or an
    /// operator purged it); written once by the coordinator.
    pub fn job_purged(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/purged", self.root)
    }

    /// Actions on the job waiting for a second identity's sign-off, and
    /// their approvals; written by the coordinator API.
    pub fn approvals_prefix(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/approvals/", self.root)
    }

    pub fn approval(&self, job: &JobId, action: &str) -> String {
        format!("{}/jobs/{job}/approvals/{action}", self.root)
    }

    /// Ended jobs with a retention, each with the time (unix ms) its staged
    /// data is due to go; what the retention sweep lists.
    pub fn retention_prefix(&self) -> String {
        format!("{}/retention/", self.root)
    }

    pub fn retention(&self, job: &JobId) -> String {
        format!("{}/retention/{job}", self.root)
    }

    /// Jobs whose partitions are open for leasing; what workers scan.
    pub fn active_prefix(&self) -> String {
        format!("{}/active/", self.root)
    }

    pub fn active(&self, job: &JobId) -> String {
        format!("{}/active/{job}", self.root)
    }

    /// The job and kind of a work lease's key (see [`Self::work_lease`]);
    /// None for any other key.
    pub fn parse_work_lease(&self, key: &str) -> Option<(JobId, WorkKind)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/jobs/")?;
        let (job, rest) = rest.split_once("/work/")?;
        let (kind, rest) = rest.split_once("/leases/")?;
        if rest.is_empty() || rest.contains('/') {
            return None;
        }
        let kind = [WorkKind::Copy, WorkKind::Verify, WorkKind::Stream]
            .into_iter()
            .find(|k| k.segment() == kind)?;
        Some((JobId::parse(job).ok()?, kind))
    }

    /// Every unit of leased work of the kind the job has.
    pub fn work_prefix(&self, job: &JobId, kind: WorkKind) -> String {
        format!("{}/jobs/{job}/work/{}/", self.root, kind.segment())
    }

    pub fn work_items_prefix(&self, job: &JobId, kind: WorkKind) -> String {
        format!("{}items/", self.work_prefix(job, kind))
    }

    pub fn work_item(&self, job: &JobId, kind: WorkKind, number: u32) -> String {
        format!("{}items/{number:06}", self.work_prefix(job, kind))
    }

    pub fn work_leases_prefix(&self, job: &JobId, kind: WorkKind) -> String {
        format!("{}leases/", self.work_prefix(job, kind))
    }

    pub fn work_lease(&self, job: &JobId, kind: WorkKind, number: u32) -> String {
        format!("{}leases/{number:06}", self.work_prefix(job, kind))
    }

    /// A job's pause flag: while present, no partition of it is read.
    pub fn job_paused(&self, job: &JobId) -> String {
        format!("{}/paused/{job}", self.root)
    }

    /// Every job's pause flag, for watching them all at once.
    pub fn paused_prefix(&self) -> String {
        format!("{}/paused/", self.root)
    }

    pub fn customers_prefix(&self) -> String {
        format!("{}/customers/", self.root)
    }

    /// The limits in force for a customer ([`crate::throttle::CustomerLimits`]).
    pub fn customer_limits(&self, customer: &str) -> String {
        format!("{}/customers/{customer}/limits", self.root)
    }

    /// The coordinator's split of the customer's budget
    /// ([`crate::throttle::Allocation`]).
    pub fn customer_allocation(&self, customer: &str) -> String {
        format!("{}/customers/{customer}/allocation", self.root)
    }

    /// Source session slot `n` of a customer, held (attached to a work
    /// lease) by whoever has a session open on the source.
    pub fn session_slot(&self, customer: &str, n: u32) -> String {
        format!("{}/customers/{customer}/sessions/{n:04}", self.root)
    }

    /// Jobs being verified, each with its [`VerifyRun`]; what workers scan
    /// for key ranges to compare.
    pub fn verifying_prefix(&self) -> String {
        format!("{}/verifying/", self.root)
    }

    pub fn verifying(&self, job: &JobId) -> String {
        format!("{}/verifying/{job}", self.root)
    }
}

/// The kinds of leased work; each has its own items and leases under a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkKind {
    Copy,
    Verify,
    /// A job's change stream: one item, run by one worker at a time.
    Stream,
}

impl WorkKind {
    /// The kind's segment in the keyspace.
    pub fn segment(self) -> &'static str {
        match self {
            WorkKind::Copy => "copy",
            WorkKind::Verify => "verify",
            WorkKind::Stream => "stream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_lease_key_is_read_back_and_nothing_else_is() {
        let keyspace = Keyspace::new("/godwit");
        let job = JobId::parse("acme-2026").expect("job id");
        for kind in [WorkKind::Copy, WorkKind::Verify, WorkKind::Stream] {
            let key = keyspace.work_lease(&job, kind, 7);
            assert_eq!(keyspace.parse_work_lease(&key), Some((job.clone(), kind)));
        }
        for other in [
            keyspace.work_item(&job, WorkKind::Copy, 7),
            keyspace.job_record(&job),
            keyspace.work_leases_prefix(&job, WorkKind::Copy),
            "/other/jobs/acme-2026/work/copy/leases/000007".to_owned(),
        ] {
            assert_eq!(keyspace.parse_work_lease(&other), None, "{other}");
        }
    }
}
