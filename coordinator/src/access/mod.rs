//! Who may call the API, and what a submitted job may name. Callers are
//! identified by their verified client certificate; the access policy
//! (`policy.rs`, reloaded when its file changes) gives each identity a role
//! over some customers. Every RPC asks [`Access::authorize`] before it
//! touches anything; every refusal is logged with the identity, the action
//! and the customer. Never reads rows or talks to databases.
//!
//! A coordinator without TLS (a loopback listener, or an operator's
//! explicit `--insecure-plaintext`) cannot tell its callers apart: its
//! access is open, as a local process's is.

mod places;
pub mod policy;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tonic::{Request, Status};

use godwit_common::spec::JobSpec;
pub use policy::{Policy, Role};

/// What a call does, as the policy grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Submit,
    /// GetJob, ListJobs, WatchJob.
    Status,
    Pause,
    Resume,
    Throttle,
    Cutover,
    Cancel,
    Verify,
    Report,
    /// Purge a job's staged data or shred its data key.
    Purge,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Submit => "submit",
            Action::Status => "status",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Throttle => "throttle",
            Action::Cutover => "cutover",
            Action::Cancel => "cancel",
            Action::Verify => "verify",
            Action::Report => "report",
            Action::Purge => "purge",
        })
    }
}

impl Role {
    pub fn allows(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => true,
            Role::Auditor => matches!(action, Action::Status | Action::Report),
            Role::Worker => false,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A caller of a coordinator without TLS: nothing identifies it.
    Local,
    Certified {
        identity: String,
        role: Role,
        customers: BTreeSet<String>,
    },
}

impl Caller {
    /// Whether this caller may see and act on `customer`'s jobs at all.
    pub fn covers(&self, customer: &str) -> bool {
        match self {
            Caller::Local => true,
            Caller::Certified {
                role, customers, ..
            } => *role == Role::Admin || customers.contains(customer),
        }
    }

    /// The caller's name in logs and the audit trail.
    pub fn identity(&self) -> &str {
        match self {
            Caller::Local => "local",
            Caller::Certified { identity, .. } => identity,
        }
    }
}

/// The coordinator's access control: open (no TLS) or by policy.
#[derive(Clone)]
pub enum Access {
    Open,
    ByPolicy(Arc<PolicyFile>),
}

impl Access {
    /// Access by the policy in `path`, re-read whenever the file changes.
    pub fn by_policy(path: &Path) -> godwit_common::Result<Self> {
        let file = Arc::new(PolicyFile::load(path)?);
        tokio::spawn(PolicyFile::follow(Arc::downgrade(&file)));
        Ok(Access::ByPolicy(file))
    }

    /// The caller of `request`, from its verified client certificate.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let Access::ByPolicy(file) = self else {
            return Ok(Caller::Local);
        };
        let certificates = request.peer_certs().unwrap_or_default();
        let Some(leaf) = certificates.first() else {
            tracing::warn!(
                outcome = "refused",
                "call without a client certificate refused"
            );
            return Err(Status::unauthenticated(
                "no client certificate: this coordinator requires mTLS; present a certificate signed by its \
                 client CA (--tls-cert and --tls-key, or GODWIT__TLS_CERT and GODWIT__TLS_KEY)",
            ));
        };
        let Some(identity) = crate::tls::identity_of(leaf.as_ref()) else {
            tracing::warn!(
                outcome = "refused",
                "call with a certificate naming no identity refused"
            );
            return Err(Status::unauthenticated(
                "the client certificate names no identity (no SAN URI and no subject CN)",
            ));
        };
        let policy = file.current();
        let Some(grant) = policy.grant(&identity) else {
            tracing::warn!(identity = %identity, outcome = "refused", "call by an identity the policy does not know refused");
            return Err(Status::unauthenticated(format!(
                "identity {identity} is not in the coordinator's access policy; ask an admin to grant it a role"
            )));
        };
        Ok(Caller::Certified {
            identity,
            role: grant.role,
            customers: grant.customers.iter().cloned().collect(),
        })
    }

    /// Whether `caller` may do `action` on `customer`'s jobs
    /// (`None`: a call that names no customer).
    pub fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        customer: Option<&str>,
    ) -> Result<(), Status> {
        let Caller::Certified { identity, role, .. } = caller else {
            return Ok(());
        };
        let refused = |why: String| {
            tracing::warn!(identity = %identity, role = %role, action = %action, customer = customer.unwrap_or("-"), outcome = "refused", "call refused");
            Err(Status::permission_denied(why))
        };
        if !role.allows(action) {
            return refused(format!(
                "{identity} is {role}, which may not {action}{}",
                customer
                    .map(|c| format!(" (customer {c})"))
                    .unwrap_or_default()
            ));
        }
        if let Some(customer) = customer
            && !caller.covers(customer)
        {
            return refused(format!(
                "{identity} is {role} without customer {customer}: it may not {action} customer {customer}'s jobs"
            ));
        }
        tracing::debug!(identity = %caller.identity(), action = %action, "call allowed");
        Ok(())
    }

    /// Whether the policy holds `action` for a second identity's sign-off.
    pub fn needs_approval(&self, caller: &Caller, action: &str) -> bool {
        match (self, caller) {
            (Access::ByPolicy(file), Caller::Certified { .. }) => {
                file.current().approvals.iter().any(|a| a == action)
            }
            _ => false,
        }
    }

    /// Whether `spec` names only what its customer's rules allow; every
    /// place it names is checked before anything is written.
    pub fn admit(&self, spec: &JobSpec) -> Result<(), Status> {
        let Access::ByPolicy(file) = self else {
            return Ok(());
        };
        let policy = file.current();
        places::admit(&policy, spec).map_err(|why| {
            tracing::warn!(job_id = %spec.job, customer = %spec.customer, outcome = "refused", reason = %why, "submission refused");
            Status::permission_denied(why)
        })
    }
}

/// The policy file and its last good contents.
pub struct PolicyFile {
    path: PathBuf,
    loaded: RwLock<(Arc<Policy>, Option<SystemTime>)>,
}

/// How often the policy file's modification time is looked at.
const POLICY_CHECK: Duration = Duration::from_secs(1);

impl PolicyFile {
    fn load(path: &Path) -> godwit_common::Result<Self> {
        let policy = Policy::load(path)?;
        Ok(Self {
            path: path.to_owned(),
            loaded: RwLock::new((Arc::new(policy), modified(path))),
        })
    }

    fn current(&self) -> Arc<Policy> {
        match self.loaded.read() {
            Ok(loaded) => loaded.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Re-reads the file when it changes, while the access it serves lives.
    /// A file that no longer parses leaves the last good policy in force.
    async fn follow(file: std::sync::Weak<PolicyFile>) {
        loop {
            tokio::time::sleep(POLICY_CHECK).await;
            let Some(file) = file.upgrade() else { return };
            let now = modified(&file.path);
            let seen = file.loaded.read().map(|l| l.1).unwrap_or(None);
            if now == seen {
                continue;
            }
            match Policy::load(&file.path) {
                Ok(policy) => {
                    if let Ok(mut loaded) = file.loaded.write() {
                        *loaded = (Arc::new(policy), now);
                    }
                    tracing::info!(path = %file.path.display(), "access policy reloaded");
                }
                Err(e) => {
                    if let Ok(mut loaded) = file.loaded.write() {
                        loaded.1 = now;
                    }
                    tracing::error!(error = %e, "access policy not reloaded: the last good one stays in force");
                }
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
