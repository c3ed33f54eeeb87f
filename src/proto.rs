//! Generated protobuf types and tonic clients of `audit.v1`, and the file
//! descriptor set that reflection serves. The servers the service runs are
//! generated once, into `wire::server`.

#![allow(missing_docs, clippy::large_enum_variant, clippy::doc_lazy_continuation)]

tonic::include_proto!("audit.v1");

/// Encoded `FileDescriptorSet` of `proto/audit/v1/*.proto`, with comments.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("audit_descriptor");

/// Encoded `FileDescriptorSet` of googleapis' `google/rpc/status.proto` and
/// `google/rpc/error_details.proto`, whole and under their own names, as
/// the maintained `tonic-types` crate ships them: reflection serves them so
/// clients can decode error statuses and their details.
pub const ERROR_DETAILS_DESCRIPTOR_SET: &[u8] = tonic_types::pb::FILE_DESCRIPTOR_SET;
