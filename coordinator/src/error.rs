//! The coordinator's error type and its one conversion to gRPC status,
//! decided by the error's kind (`godwit_common::ErrorKind`).

use godwit_common::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The spec, or the databases, tables, keys or storage it names, are not
    /// usable as given. Raised before anything is written anywhere.
    #[error("{0}")]
    Rejected(godwit_common::Error),
    /// The job started and then failed; the message names the table or step.
    #[error("{0}")]
    Failed(godwit_common::Error),
    #[error(
        "job {0} already exists on this coordinator (its record, history and staged data are kept); choose \
         another `job` id"
    )]
    AlreadyExists(String),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {0} was cancelled")]
    Cancelled(String),
}

impl JobError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A refusal is never worth repeating as is: whatever the cause
            // (a server away included), the operator acts first.
            JobError::Rejected(e) => match e.kind() {
                ErrorKind::Retryable | ErrorKind::Internal => ErrorKind::Precondition,
                kind => kind,
            },
            JobError::Failed(e) => e.kind(),
            JobError::AlreadyExists(_) => ErrorKind::Conflict,
            JobError::NotFound(_) => ErrorKind::NotFound,
            JobError::Cancelled(_) => ErrorKind::Cancelled,
        }
    }

    /// Exit code for the CLI: 2 for rejected input, 1 for a run that
    /// started and failed, whatever failed it.
    pub fn exit_code(&self) -> i32 {
        match self {
            JobError::Rejected(_) => 2,
            JobError::Failed(_) => 1,
            other => other.kind().exit_code(),
        }
    }
}

/// The gRPC status of an error of `kind`.
pub fn status(kind: ErrorKind, message: String) -> tonic::Status {
    use tonic::Status;
    match kind {
        ErrorKind::BadInput => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::Conflict => Status::already_exists(message),
        ErrorKind::Precondition => Status::failed_precondition(message),
        ErrorKind::Retryable => Status::unavailable(message),
        ErrorKind::Integrity => Status::data_loss(message),
        ErrorKind::Exhausted => Status::aborted(message),
        ErrorKind::Cancelled => Status::cancelled(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

impl From<JobError> for tonic::Status {
    fn from(e: JobError) -> Self {
        status(e.kind(), e.to_string())
    }
}

impl From<godwit_common::Error> for JobError {
    fn from(e: godwit_common::Error) -> Self {
        JobError::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use godwit_common::Error;

    use super::*;

    #[test]
    fn a_refusal_reaches_grpc_clients_by_what_it_means() {
        let code = |e: JobError| tonic::Status::from(e).code();
        use tonic::Code;
        assert_eq!(
            code(JobError::Rejected(Error::Precondition(
                "wal_level = replica".into()
            ))),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(JobError::Rejected(Error::NotFound("table public.x".into()))),
            Code::NotFound
        );
        assert_eq!(
            code(JobError::Rejected(Error::Spec("bad".into()))),
            Code::InvalidArgument
        );
        // A server away at submission is still a refusal, not a retry hint.
        assert_eq!(
            code(JobError::Rejected(Error::Unreachable("no route".into()))),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(JobError::Failed(Error::Verification("differs".into()))),
            Code::DataLoss
        );
        assert_eq!(
            code(JobError::Failed(Error::Unreachable("reset".into()))),
            Code::Unavailable
        );
        assert_eq!(
            code(JobError::AlreadyExists("j".into())),
            Code::AlreadyExists
        );
        assert_eq!(
            JobError::Failed(Error::Precondition("x".into())).exit_code(),
            1
        );
        assert_eq!(
            JobError::Rejected(Error::Unreachable("x".into())).exit_code(),
            2
        );
    }
}
