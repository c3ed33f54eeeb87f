//! Tamper evidence: each tenant's log is an RFC 9162 Merkle tree over its
//! events in `seq` order, with signed checkpoints, inclusion and consistency
//! proofs, and an offline verifier. See `docs/integrity.md`.

pub mod canonical;
pub mod checkpoint;
pub mod export;
pub mod merkle;
pub mod notary;

pub use canonical::{canonical_bytes, event_leaf};
pub use checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint, SigningKey, VerifierKey};
pub use merkle::Hash;
pub use notary::Notary;
