//! The one error type of the shared library. Every variant has a kind
//! ([`ErrorKind`]), and the kind alone decides what callers do with it:
//! retry or not, the CLI's exit code, the gRPC status (see
//! [`ErrorKind::exit_code`]; the coordinator maps kinds to statuses).

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
    /// The databases or the machine do not meet a requirement of the job
    /// (a setting, a privilege, an empty target); the message says the fix.
    #[error("{0}")]
    Precondition(String),
    /// Something the input names does not exist (a table, a job).
    #[error("{0}")]
    NotFound(String),
    /// The target no longer matches the source where a change lands.
    #[error("{0}")]
    Diverged(String),
    /// A server answered what it never should (a malformed LSN, a change
    /// outside a transaction): a defect here or there, not the input's.
    #[error("{0}")]
    Internal(String),
    /// Someone else changed or holds what this call meant to change.
    #[error("{0}")]
    Conflict(String),
    /// A failure that outlasted every retry it was given.
    #[error("{0}")]
    Exhausted(String),
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

/// What an error means for whoever meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The same operation may succeed if tried again: a network cut, a lost
    /// lease, a server restarting, a transient server-side conflict.
    Retryable,
    /// The spec, a flag or a file the operator gave is wrong.
    BadInput,
    NotFound,
    /// The thing exists already, or is being done by someone else.
    Conflict,
    /// The databases or the machine must change before this can run.
    Precondition,
    /// Data failed a check: a tampered object, a difference found.
    Integrity,
    /// Retries are spent.
    Exhausted,
    Cancelled,
    /// A defect; the message is all there is.
    Internal,
}

impl ErrorKind {
    /// The CLI's exit code: 2 when the operator's input or environment must
    /// change before a run can succeed, 1 for a run that failed.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::BadInput
            | ErrorKind::NotFound
            | ErrorKind::Conflict
            | ErrorKind::Precondition => 2,
            _ => 1,
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Postgres { source, .. } => match source.as_db_error() {
                None => ErrorKind::Retryable,
                // Transient server-side conditions: serialization failures and
                // deadlocks, the server shutting down or out of connections.
                Some(db) => {
                    let code = db.code().code();
                    if ["40001", "40P01", "57P01", "57P02", "57P03", "53300"].contains(&code)
                        || code.starts_with("08")
                    {
                        ErrorKind::Retryable
                    } else if code.starts_with("42") || code.starts_with("28") {
                        // Syntax, undefined objects, privileges; authentication.
                        ErrorKind::Precondition
                    } else {
                        ErrorKind::Internal
                    }
                }
            },
            Error::Staging { .. }
            | Error::LeaseStore(_)
            | Error::LeaseLost { .. }
            | Error::Unreachable(_)
            | Error::Io { .. } => ErrorKind::Retryable,
            Error::Spec(_) | Error::Key(_) => ErrorKind::BadInput,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Precondition(_) | Error::Schema(_) => ErrorKind::Precondition,
            Error::ChunkRejected { .. }
            | Error::Corrupt { .. }
            | Error::Verification(_)
            | Error::Diverged(_) => ErrorKind::Integrity,
            Error::Exhausted(_) => ErrorKind::Exhausted,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether the same operation may succeed if tried again (network, lost
    /// lease, transient server errors) as opposed to a fault in the input.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
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
    redacted(
        db.code().code(),
        &format!("{}: {}", db.severity(), db.message()),
        db.detail(),
        db.hint(),
        db.where_(),
    )
}

/// PostgreSQL's error text without the row values it can quote: a DETAIL
/// naming key or row values (`Key (email)=(…)`, `Failing row contains (…)`),
/// the input a data exception (SQLSTATE class 22) quotes in its message,
/// and the field a `COPY` context quotes.
fn redacted(
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
    context: Option<&str>,
) -> String {
    let data_exception = code.starts_with("22");
    let mut text = match message.find(": \"") {
        Some(at) if data_exception => match own_conversion_message(&message[at + 3..]) {
            Some(own) => format!("{}: {own}", &message[..at]),
            None => format!("{}: \"…\"", &message[..at]),
        },
        _ => message.to_owned(),
    };
    let quotes_values =
        |d: &&str| d.contains(")=(") || d.contains("Failing row contains") || d.contains("Key (");
    if let Some(detail) = detail.filter(|d| !quotes_values(d) && !data_exception) {
        text.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = hint {
        text.push_str(&format!("; hint: {hint}"));
    }
    if let Some(context) = context {
        let context = context.replace('\n', " / ");
        let context = match context.find(": \"") {
            Some(at) if context.contains(", column ") => format!("{}: \"…\"", &context[..at]),
            _ => context,
        };
        text.push_str(&format!("; where: {context}"));
    }
    text.push_str(&format!(" (SQLSTATE {code})"));
    text
}

/// A mapping's guard against a value that does not convert fails by
/// casting its own message (`godwit: name of crm.accounts at key (7) does
/// not convert to character varying(20)`): kept, without the row's key,
/// which is customer data like any value.
fn own_conversion_message(quoted: &str) -> Option<String> {
    let quoted = quoted.strip_suffix('"').unwrap_or(quoted);
    let rest = quoted.strip_prefix("godwit: ")?;
    let (what, after) = rest.split_once(" at key ")?;
    let (_, target) = after.rsplit_once(" does not convert to ")?;
    Some(format!(
        "a value of {what} does not convert to {target} (the row's key is kept out of messages)"
    ))
}

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        Error::LeaseStore(e.to_string())
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted;

    #[test]
    fn a_mapping_guard_is_named_without_its_key() {
        let text = redacted(
            "22P02",
            "ERROR: invalid input syntax for type integer: \"godwit: name of crm.accounts at key (secret@x.com) \
             does not convert to character varying(20)\"",
            None,
            None,
            None,
        );
        assert_eq!(
            text,
            "ERROR: invalid input syntax for type integer: a value of name of crm.accounts does not convert \
             to character varying(20) (the row's key is kept out of messages) (SQLSTATE 22P02)"
        );
        let plain = redacted(
            "22P02",
            "ERROR: invalid input syntax for type integer: \"godwit: tricked\"",
            None,
            None,
            None,
        );
        assert!(!plain.contains("tricked"), "{plain}");
    }

    #[test]
    fn row_values_never_reach_an_error_message() {
        let secret = "leak-4f2a@example.com";
        for (code, message, detail, context) in [
            (
                "23505",
                "duplicate key value violates unique constraint \"customers_email_key\"",
                format!("Key (email)=({secret}) already exists."),
                None,
            ),
            (
                "23514",
                "new row for relation \"t\" violates check constraint \"c\"",
                format!("Failing row contains (1, {secret})."),
                None,
            ),
            (
                "22P02",
                &*format!("invalid input syntax for type integer: \"{secret}\""),
                String::new(),
                None,
            ),
            (
                "22001",
                "value too long for type character varying(5)",
                String::new(),
                Some(format!(
                    "COPY customers, line 3, column email: \"{secret}\""
                )),
            ),
        ] {
            let text = redacted(
                code,
                message,
                Some(&detail).filter(|d| !d.is_empty()).map(String::as_str),
                None,
                context.as_deref(),
            );
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains(code), "{text}");
        }
        let kept = redacted(
            "42P01",
            "relation \"x\" does not exist",
            Some("plain detail"),
            Some("a hint"),
            None,
        );
        assert!(
            kept.contains("plain detail") && kept.contains("a hint"),
            "{kept}"
        );
    }
}
