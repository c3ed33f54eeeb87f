//! Integration tests: each starts the real server on an ephemeral port and
//! drives it through the generated tonic client. Every behaviour runs on
//! SQLite, and on PostgreSQL when `AUDIT_TEST_DATABASE_URL` is set.

mod support;

mod append;
mod auth;
mod delete;
mod expression_property;
mod expressions;
mod filter_metadata;
mod fixtures;
mod integrity;
mod paging;
mod reliability;
mod replicas;
mod serving;
mod stats;
mod tenancy;
mod validation;
mod watch;
mod watch_auth;
mod watch_memory;
