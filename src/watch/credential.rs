//! What a stream needs to know about the credential it was opened with.
//! The layer that authenticated the call supplies it (`watch` knows
//! nothing of keys or tokens).

use std::time::SystemTime;

use futures::future::BoxFuture;

use crate::error::Error;

/// The credential a stream was opened with, checked again for as long as
/// the stream lives.
pub trait CredentialCheck: Send + Sync {
    /// Unix microseconds at which the credential was seen valid when the
    /// call was authenticated.
    fn verified_at(&self) -> i64;

    /// When the credential lapses by itself (a token's expiry, with the
    /// same leeway as verification), if it does.
    fn lapses_at(&self) -> Option<SystemTime>;

    /// Checks that the credential still stands at some instant no earlier
    /// than `after` (unix microseconds) and returns that instant; fails
    /// with [`Error::Unauthenticated`] once it is revoked or expired, or
    /// with another error when it cannot be checked right now.
    fn confirm(&self, after: i64) -> BoxFuture<'_, Result<i64, Error>>;
}
