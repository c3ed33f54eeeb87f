//! The one error type of the service and its mapping to gRPC statuses with
//! rich details (`google.rpc.ErrorInfo`, `google.rpc.BadRequest`).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of every `ErrorInfo` the service returns.
pub const ERROR_DOMAIN: &str = "audit.v1";

/// One offending request field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, for example `events[3].actor.id`.
    pub field: String,
    /// What is wrong, in a sentence a client developer can act on.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Everything a call can fail with; handlers return it and `?` does the rest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request has one or more bad fields.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The `x-tenant-id` metadata is missing.
    #[error("the x-tenant-id metadata is required")]
    TenantRequired,
    /// No credential, or one that does not verify.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The credential belongs to another tenant than `x-tenant-id`.
    #[error("the credential's tenant does not match x-tenant-id")]
    TenantMismatch,
    /// A platform credential asked for what the platform may not do: write
    /// (it only reads), or call with `x-tenant-id: *` an RPC that acts on
    /// one tenant's log.
    #[error("{0}")]
    PlatformReadOnly(String),
    /// The credential lacks the scope the RPC needs.
    #[error("the credential lacks the scope {0}")]
    MissingScope(&'static str),
    /// No such thing in the caller's tenant (an event: or it was erased).
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked for, for example `event`.
        kind: &'static str,
        /// Its id as the caller gave it.
        id: String,
    },
    /// The request is well formed, but the log's state forbids it; `reason`
    /// is the `ErrorInfo` reason a client switches on.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason, for example `PROTECTED_EVENT`.
        reason: &'static str,
        /// What is in the way, in a sentence.
        message: String,
        /// `ErrorInfo` metadata naming what is in the way.
        metadata: Vec<(&'static str, String)>,
    },
    /// The capability is part of the contract but not served by this build.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// A limit was reached; retry later or ask for less.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The service cannot answer right now (the database cannot be
    /// reached, or the server is shutting down); safe to retry. The message
    /// says which, in full: it is shown as given.
    #[error("{0}")]
    Unavailable(String),
    /// The call ran out of time.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A concurrent write got there first; nothing was stored; retry.
    #[error("{0}")]
    Aborted(String),
    /// Stored data is lost or corrupt; the message names the tenant and
    /// what is wrong.
    #[error("{0}")]
    DataLoss(String),
    /// A bug or an unexpected storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A single-field [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Self::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Self::TenantRequired => (Code::InvalidArgument, "TENANT_REQUIRED"),
            Self::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Self::TenantMismatch => (Code::PermissionDenied, "TENANT_MISMATCH"),
            Self::MissingScope(_) => (Code::PermissionDenied, "MISSING_SCOPE"),
            Self::PlatformReadOnly(_) => (Code::PermissionDenied, "PLATFORM_READ_ONLY"),
            Self::NotFound { .. } => (Code::NotFound, "NOT_FOUND"),
            Self::FailedPrecondition { reason, .. } => (Code::FailedPrecondition, reason),
            Self::Unimplemented(_) => (Code::Unimplemented, "UNIMPLEMENTED"),
            Self::ResourceExhausted(_) => (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
            Self::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
            Self::DeadlineExceeded(_) => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
            Self::Aborted(_) => (Code::Aborted, "CONFLICT"),
            Self::DataLoss(_) => (Code::DataLoss, "CORRUPT_STORAGE"),
            Self::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let (code, reason) = error.code_and_reason();
        let mut metadata = HashMap::new();
        match &error {
            Error::MissingScope(scope) => {
                metadata.insert("scope".to_owned(), (*scope).to_owned());
            }
            Error::FailedPrecondition { metadata: named, .. } => {
                metadata.extend(named.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            }
            _ => {}
        }
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
        if let Error::InvalidArgument(violations) = &error {
            for violation in violations {
                details.add_bad_request_violation(&violation.field, &violation.description);
            }
        }
        if code == Code::Internal {
            tracing::error!(error = %error, "internal error");
        }
        Status::with_error_details(code, error.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn invalid_argument_carries_reason_and_each_field() {
        let status = Status::from(Error::InvalidArgument(vec![
            FieldViolation::new("events[0].action", "is required"),
            FieldViolation::new("events[1].actor.id", "is required"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, ERROR_DOMAIN);
        let fields: Vec<_> = details
            .bad_request()
            .expect("bad request")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["events[0].action", "events[1].actor.id"]);
    }

    #[test]
    fn unavailable_shows_its_message_as_given() {
        let status = Status::from(Error::Unavailable(
            "the server is shutting down; resume with after_seq=7".to_owned(),
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "the server is shutting down; resume with after_seq=7"
        );
    }

    #[test]
    fn missing_scope_names_the_scope() {
        let status = Status::from(Error::MissingScope("audit:write"));
        assert_eq!(status.code(), Code::PermissionDenied);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "MISSING_SCOPE");
        assert_eq!(
            info.metadata.get("scope").map(String::as_str),
            Some("audit:write")
        );
    }
}
