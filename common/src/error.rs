//! The one error type of the shared library. Each variant says whether
//! retrying the same operation can succeed; callers decide what to do with it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job spec or configuration is wrong; the message names the field and the fix.
    #[error("invalid job spec: {0}")]
    Spec(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key error: {0}")]
    Key(String),
    /// A staged object failed authentication or is malformed; it must never be loaded.
    #[error("chunk {object} rejected: {reason}")]
    ChunkRejected { object: String, reason: String },
    #[error("{context}: {}", describe_postgres(source))]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Catalog(String),
    /// A server could not be reached at the network level.
    #[error("{0}")]
    Unreachable(String),
    #[error("schema copy failed: {0}")]
    Schema(String),
    #[error("staging {location}: {source}")]
    Staging {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("lease store: {0}")]
    LeaseStore(String),
    #[error("lease on {key} lost: {reason}")]
    LeaseLost { key: String, reason: String },
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("verification failed: {0}")]
    Verification(String),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Whether the same operation may succeed if tried again (network, lost
    /// lease, transient server errors) as opposed to a fault in the input.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Postgres { source, .. } => match source.as_db_error() {
                None => true,
                // Transient server-side conditions: serialization failures and
                // deadlocks, the server shutting down or out of connections.
                Some(db) => {
                    let code = db.code().code();
                    ["40001", "40P01", "57P01", "57P02", "57P03", "53300"].contains(&code)
                        || code.starts_with("08")
                }
            },
            Error::Staging { .. }
            | Error::LeaseStore(_)
            | Error::LeaseLost { .. }
            | Error::Unreachable(_) => true,
            Error::Io { .. } => true,
            _ => false,
        }
    }

    pub fn postgres(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Postgres {
            context: context.into(),
            source,
        }
    }
}

/// The driver's own message is only "db error"; what PostgreSQL said (its
/// message, detail, hint, where and SQLSTATE) is what tells an operator what
/// went wrong. A detail that quotes row values ("Key (email)=(…) already
/// exists") is left out: messages reach logs, and logs never hold customer data.
fn describe_postgres(source: &tokio_postgres::Error) -> String {
    let Some(db) = source.as_db_error() else {
        return match std::error::Error::source(source) {
            Some(cause) => format!("{source}: {cause}"),
            None => source.to_string(),
        };
    };
    let mut text = format!("{}: {}", db.severity(), db.message());
    if let Some(detail) = db.detail().filter(|d| !d.contains(")=(")) {
        text.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        text.push_str(&format!("; hint: {hint}"));
    }
    if let Some(context) = db.where_() {
        text.push_str(&format!("; where: {}", context.replace('\n', " / ")));
    }
    text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
    text
}

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        Error::LeaseStore(e.to_string())
    }
}
