//! The coordinator's error type and its one conversion to gRPC status.

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
    /// Exit code for the CLI: 2 for rejected input, 1 for a failed run.
    pub fn exit_code(&self) -> i32 {
        match self {
            JobError::Rejected(_) | JobError::AlreadyExists(_) | JobError::NotFound(_) => 2,
            JobError::Failed(_) | JobError::Cancelled(_) => 1,
        }
    }
}

impl From<JobError> for tonic::Status {
    fn from(e: JobError) -> Self {
        let message = e.to_string();
        match e {
            JobError::Rejected(godwit_common::Error::Spec(_)) => {
                tonic::Status::invalid_argument(message)
            }
            JobError::Rejected(godwit_common::Error::Catalog(_)) => {
                tonic::Status::not_found(message)
            }
            JobError::Rejected(_) => tonic::Status::failed_precondition(message),
            JobError::AlreadyExists(_) => tonic::Status::already_exists(message),
            JobError::NotFound(_) => tonic::Status::not_found(message),
            JobError::Failed(_) => tonic::Status::internal(message),
            JobError::Cancelled(_) => tonic::Status::cancelled(message),
        }
    }
}
