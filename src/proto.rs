//! Generated protobuf types, the tonic server and client of `audit.v1`, and
//! the file descriptor set that reflection serves.

#![allow(missing_docs, clippy::large_enum_variant, clippy::doc_lazy_continuation)]

tonic::include_proto!("audit.v1");

/// Encoded `FileDescriptorSet` of `proto/audit/v1/*.proto`, with comments.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("audit_descriptor");

/// Encoded `FileDescriptorSet` of the `google.rpc` error details the service
/// returns, so reflection clients can decode error statuses.
pub const ERROR_DETAILS_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rpc_descriptor");
