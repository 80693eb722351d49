//! The access policy file: which certified identities hold which role over
//! which customers, and what each customer's jobs may name (key files,
//! staging locations, databases, regions). Owns parsing and validation;
//! never decides a call (that is `access`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use godwit_common::{Error, Result};

/// What a role may do. Every RPC maps to one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, for every customer.
    Admin,
    /// Runs its customers' jobs: submit, watch, status, pause, resume,
    /// throttle, cutover, cancel, verify, report, purge.
    Operator,
    /// Reads its customers' status and reports; changes nothing.
    Auditor,
    /// A worker process: it works through the lease store and needs none of
    /// the API's calls.
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Worker => "worker",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// A certificate's SAN URI (`spiffe://platform/ops/alice`) or, for a
    /// certificate without one, its subject CN.
    pub identity: String,
    pub role: Role,
    /// Customers the role applies to; `admin` needs none.
    #[serde(default)]
    pub customers: Vec<String>,
}

/// A place a customer's job may name, with the region it lies in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// A staging URL prefix (`s3://bucket/prefix`, `file:///dir`), or a
    /// database as `host:port/dbname`.
    pub at: String,
    #[serde(default)]
    pub region: Option<String>,
}

/// What one customer's jobs may name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerRules {
    /// Regions the customer's data may be staged and landed in; empty: any.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Key-encryption key files its jobs may use (exact paths).
    #[serde(default)]
    pub key_files: Vec<String>,
    /// Staging locations (prefixes) its jobs may write to.
    #[serde(default)]
    pub staging: Vec<Place>,
    /// Source databases its jobs may read.
    #[serde(default)]
    pub sources: Vec<Place>,
    /// Target databases its jobs may write to.
    #[serde(default)]
    pub targets: Vec<Place>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub identities: Vec<Grant>,
    /// Actions that wait for a second identity's sign-off: `cutover`,
    /// `cancel` (of a job that streams changes), `purge`, `shred`.
    #[serde(default)]
    pub approvals: Vec<String>,
    #[serde(default)]
    pub customers: BTreeMap<String, CustomerRules>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "cannot read the access policy",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let policy: Policy = godwit_common::spec::from_yaml(text)
            .map_err(|e| Error::Spec(format!("access policy {}: {e}", path.display())))?;
        if let Some(unknown) = policy
            .approvals
            .iter()
            .find(|a| !["cutover", "cancel", "purge", "shred"].contains(&a.as_str()))
        {
            return Err(Error::Spec(format!(
                "access policy {}: `approvals` entry {unknown:?} is not an action that can wait for sign-off \
                 (cutover, cancel, purge, shred)",
                path.display()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for grant in &policy.identities {
            if !seen.insert(grant.identity.as_str()) {
                return Err(Error::Spec(format!(
                    "access policy {}: identity {} is listed twice; give it one entry",
                    path.display(),
                    grant.identity
                )));
            }
            if grant.role != Role::Admin && grant.role != Role::Worker && grant.customers.is_empty()
            {
                return Err(Error::Spec(format!(
                    "access policy {}: {} {} has no `customers`; list the customers it acts on",
                    path.display(),
                    grant.role,
                    grant.identity
                )));
            }
        }
        Ok(policy)
    }

    pub fn grant(&self, identity: &str) -> Option<&Grant> {
        self.identities.iter().find(|g| g.identity == identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_parses_and_rejects_what_it_cannot_mean() {
        let path = Path::new("policy.yaml");
        let policy = Policy::parse(
            "identities:\n  - { identity: 'spiffe://p/ops/alice', role: operator, customers: [acme] }\n  \
             - { identity: root, role: admin }\ncustomers:\n  acme:\n    regions: [eu]\n    \
             staging: [{ at: 's3://eu/acme', region: eu }]\n",
            path,
        )
        .expect("valid");
        assert_eq!(
            policy.grant("spiffe://p/ops/alice").map(|g| g.role),
            Some(Role::Operator)
        );
        assert!(policy.grant("mallory").is_none());
        for (bad, named) in [
            ("identities: [{ identity: a, role: boss }]", "boss"),
            ("identities: [{ identity: a, role: operator }]", "customers"),
            (
                "identities: [{ identity: a, role: admin }, { identity: a, role: auditor, customers: [x] }]",
                "listed twice",
            ),
            ("identites: []", "identites"),
        ] {
            let err = Policy::parse(bad, path).expect_err(bad).to_string();
            assert!(err.contains(named) && err.contains("policy.yaml"), "{err}");
        }
    }
}
