//! Everything a coordinator call can fail with, and the one place that picks the gRPC
//! status code for each.

use lockstep::names::FieldError;
use lockstep_store::StoreError;
use tonic::Status;

/// A coordinator failure. Each variant maps to exactly one status code, so clients can
/// tell "fix your request" from "try again".
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A request field is malformed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Something named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A different transaction already has this id.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well formed but the rules refuse it now (guard, children,
    /// quarantine, already decided...).
    #[error("{0}")]
    Refused(String),
    /// The caller may not do this (the message names the permission, the scope and
    /// the principal).
    #[error("{0}")]
    Denied(String),
    /// Storage failed: the change was not made.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
}

impl CoordinatorError {
    /// Whether the same call may succeed if simply retried.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CoordinatorError::Store(_) | CoordinatorError::ShuttingDown
        )
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        match e {
            CoordinatorError::Invalid(f) => f.into(),
            CoordinatorError::NotFound(m) => Status::not_found(m),
            CoordinatorError::AlreadyExists(m) => Status::already_exists(m),
            CoordinatorError::Refused(m) => Status::failed_precondition(m),
            CoordinatorError::Denied(m) => Status::permission_denied(m),
            e @ CoordinatorError::Store(_) => Status::unavailable(e.to_string()),
            e @ CoordinatorError::ShuttingDown => Status::unavailable(e.to_string()),
        }
    }
}

/// Shorthand for coordinator results.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
