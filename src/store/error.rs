//! The one error type of the store, and the one place it becomes the
//! service's [`Error`] (and so a gRPC status): store functions return
//! [`StoreError`], handlers use `?`.

use sea_orm::{DbErr, RuntimeErr};
use tonic::Status;

use crate::error::Error;
use crate::tenant::TenantId;

/// What a store function can fail with, in the log's terms.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No such thing in the tenant's log (an event: or it was erased).
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked for, for example `event`.
        kind: &'static str,
        /// Its id as the caller gave it.
        id: String,
    },
    /// `Delete` of an event the service wrote itself: the log's own record.
    #[error("event {id} ({action}) was written by the audit service itself and cannot be deleted")]
    Protected {
        /// The event's id.
        id: String,
        /// Its action, for example `audit.event.deleted`.
        action: String,
    },
    /// `Delete` of an event an active legal hold keeps.
    #[error("event {id} is kept by legal hold {hold_id}")]
    LegalHold {
        /// The event's id.
        id: String,
        /// The first active hold (by id) that matches it.
        hold_id: String,
    },
    /// A change the tenant's locked retention forbids: shortening, unsetting
    /// or unlocking it, or `Delete` of an event younger than its period.
    #[error("{message}")]
    RetentionLocked {
        /// What was refused and why.
        message: String,
    },
    /// `ReleaseLegalHold` of a hold released already.
    #[error("legal hold {id} was released already")]
    HoldReleased {
        /// The hold's id.
        id: String,
    },
    /// The tenant already has the most active legal holds it may have.
    #[error("at most {max} legal holds may be active at once; release one first")]
    TooManyHolds {
        /// The limit.
        max: u64,
    },
    /// A concurrent writer changed what this write was built on (the
    /// tenant's log moved, the group written before it did not commit);
    /// nothing of it was stored, and it may be retried.
    #[error("tenant {tenant}: {what}")]
    Conflict {
        /// The tenant written to.
        tenant: TenantId,
        /// What changed under the write.
        what: String,
    },
    /// Storage holds what the log's rules say cannot be (a missing Merkle
    /// node or event, a missing sequence head).
    #[error("storage of tenant {tenant} is corrupt: {what}")]
    Corrupt {
        /// The tenant whose rows are wrong.
        tenant: TenantId,
        /// What is missing or wrong, naming the row.
        what: String,
    },
    /// A `Stats` series would hold more buckets than the request allows.
    #[error(
        "the series would have more than {max} buckets; use a larger bucket or a narrower start_time/end_time"
    )]
    TooManyBuckets {
        /// The most buckets the request allows.
        max: u64,
    },
    /// A read ran past the store's deadline.
    #[error("the read took longer than {seconds} s; narrow the filter")]
    ReadTimedOut {
        /// The deadline, in seconds.
        seconds: u64,
    },
    /// The database failed: unreachable, a statement timed out or failed.
    /// Its text stays in the server log (see `From<DbErr> for Error`).
    #[error("database: {0}")]
    Database(#[from] DbErr),
}

/// A store result.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// A [`StoreError::NotFound`] of the event `id`.
    pub fn event_not_found(id: impl std::fmt::Display) -> Self {
        Self::NotFound {
            kind: "event",
            id: id.to_string(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { kind, id } => Error::NotFound { kind, id },
            StoreError::Protected { ref action, .. } => Error::FailedPrecondition {
                reason: "PROTECTED_EVENT",
                metadata: vec![("action", action.clone())],
                message: error.to_string(),
            },
            StoreError::LegalHold { ref hold_id, .. } => Error::FailedPrecondition {
                reason: "LEGAL_HOLD",
                metadata: vec![("hold_id", hold_id.clone())],
                message: error.to_string(),
            },
            StoreError::RetentionLocked { message } => Error::FailedPrecondition {
                reason: "RETENTION_LOCKED",
                metadata: Vec::new(),
                message,
            },
            StoreError::HoldReleased { ref id } => Error::FailedPrecondition {
                reason: "HOLD_RELEASED",
                metadata: vec![("hold_id", id.clone())],
                message: error.to_string(),
            },
            StoreError::TooManyHolds { .. } => Error::ResourceExhausted(error.to_string()),
            StoreError::Conflict { .. } => {
                tracing::info!(%error, "write conflicted with a concurrent writer");
                Error::Aborted(
                    "a concurrent write to this tenant's log got there first; nothing was stored, retry"
                        .into(),
                )
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(%error, "corrupt storage");
                Error::DataLoss(error.to_string())
            }
            StoreError::TooManyBuckets { .. } => Error::invalid("bucket", error.to_string()),
            StoreError::ReadTimedOut { .. } => Error::DeadlineExceeded(error.to_string()),
            StoreError::Database(error) => database_error(error),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        Error::from(error).into()
    }
}

/// A database error as the client sees it: its class, never its text
/// (which can quote values, table names and the database's internals).
/// The text goes to the server log; an internal failure's message carries a
/// reference to find it there.
fn database_error(error: DbErr) -> Error {
    if is_unavailable(&error) {
        tracing::warn!(%error, "storage unavailable");
        Error::Unavailable("storage unavailable: the database cannot answer right now; retry".to_owned())
    } else if is_statement_timeout(&error) {
        tracing::warn!(%error, "database statement timed out");
        Error::DeadlineExceeded("the database did not finish in time; narrow the request".into())
    } else {
        let reference = uuid::Uuid::now_v7();
        tracing::error!(%error, %reference, "storage failed");
        Error::Internal(format!(
            "storage failed; the server log has the details under {reference}"
        ))
    }
}

/// Whether a database error means "cannot reach the database" (retryable)
/// rather than a failed statement.
pub fn is_unavailable(error: &DbErr) -> bool {
    let runtime = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    match runtime {
        RuntimeErr::SqlxError(sqlx_error) => {
            matches!(
                sqlx_error.as_ref(),
                sea_orm::sqlx::Error::Io(_)
                    | sea_orm::sqlx::Error::PoolTimedOut
                    | sea_orm::sqlx::Error::PoolClosed
                    | sea_orm::sqlx::Error::WorkerCrashed
                    | sea_orm::sqlx::Error::Tls(_)
            ) || is_transient_state(sqlx_error.as_ref())
        }
        _ => false,
    }
}

/// Whether PostgreSQL cancelled the statement (SQLSTATE 57014), which is
/// how a read's `statement_timeout` ends it.
pub(super) fn is_statement_timeout(error: &DbErr) -> bool {
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(e.as_ref(), sea_orm::sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
        }
        _ => false,
    }
}

/// Whether PostgreSQL ended the statement for a reason that passes:
/// SQLSTATE class 57P (operator intervention: a restart), 08 (connection
/// exception), `idle_in_transaction_session_timeout` (25P03), or
/// `lock_not_available` (55P03: a lock wait reached the service's
/// `lock_timeout`, its transaction rolled back).
fn is_transient_state(error: &sea_orm::sqlx::Error) -> bool {
    match error {
        sea_orm::sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("57P") || code.starts_with("08") || code == "25P03" || code == "55P03"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn acme() -> TenantId {
        TenantId::parse("acme", "tenant").unwrap()
    }

    #[test]
    fn each_variant_has_its_code_and_reason() {
        let cases = [
            (StoreError::event_not_found("e1"), Code::NotFound, "NOT_FOUND"),
            (
                StoreError::Protected {
                    id: "e1".into(),
                    action: "audit.event.deleted".into(),
                },
                Code::FailedPrecondition,
                "PROTECTED_EVENT",
            ),
            (
                StoreError::Conflict {
                    tenant: acme(),
                    what: "the log moved to head 9 while this group was written for head 7".into(),
                },
                Code::Aborted,
                "CONFLICT",
            ),
            (
                StoreError::Corrupt {
                    tenant: acme(),
                    what: "Merkle node (level 0, index 4) is missing".into(),
                },
                Code::DataLoss,
                "CORRUPT_STORAGE",
            ),
            (
                StoreError::ReadTimedOut { seconds: 10 },
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
            ),
        ];
        for (error, code, reason) in cases {
            let status = Status::from(error.clone());
            assert_eq!(status.code(), code, "{error:?}");
            let details = status.get_error_details();
            assert_eq!(
                details.error_info().expect("error info").reason,
                reason,
                "{error:?}"
            );
        }
    }

    #[test]
    fn messages_name_the_thing_once() {
        let status = Status::from(StoreError::event_not_found("0190d1a4"));
        assert_eq!(status.message(), "event 0190d1a4 not found");
        let status = Status::from(StoreError::Corrupt {
            tenant: acme(),
            what: "event seq 5 is missing".into(),
        });
        assert_eq!(
            status.message(),
            "storage of tenant acme is corrupt: event seq 5 is missing"
        );
    }

    #[test]
    fn a_conflict_keeps_the_other_writers_details_out() {
        let status = Status::from(StoreError::Conflict {
            tenant: acme(),
            what: "the log moved to head 9".into(),
        });
        assert!(!status.message().contains("head 9"), "{status:?}");
    }

    #[test]
    fn database_error_text_never_reaches_the_client() {
        let secret = "relation \"audit_events\" violates check constraint near 'hunter2'";
        for error in [
            DbErr::Custom(secret.into()),
            DbErr::Query(RuntimeErr::Internal(secret.into())),
            DbErr::Conn(RuntimeErr::Internal(secret.into())),
        ] {
            let status = Status::from(StoreError::from(error));
            assert!(!status.message().contains("hunter2"), "{status:?}");
            assert!(!status.message().contains("audit_events"), "{status:?}");
            assert!(
                matches!(status.code(), Code::Internal | Code::Unavailable),
                "{status:?}"
            );
        }
    }

    #[test]
    fn unavailable_storage_is_retryable_and_keeps_the_databases_words_out() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "FATAL: terminating connection due to administrator command",
        );
        let error = DbErr::Conn(RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::Io(io),
        )));
        let status = Status::from(StoreError::from(error));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().starts_with("storage unavailable"), "{status:?}");
        assert!(!status.message().contains("FATAL"), "{status:?}");
        assert!(!status.message().contains("administrator"), "{status:?}");
    }
}
