//! Integration tests: each starts the real server on an ephemeral port and
//! drives it through the generated tonic client. Every behaviour runs on
//! SQLite, and on PostgreSQL when `AUDIT_TEST_DATABASE_URL` is set.

mod support;

mod access_audit;
mod access_log;
mod append;
mod auth;
mod backends;
mod contention;
mod delete;
mod distribution;
mod export;
mod export_file;
mod expression_property;
mod expressions;
mod filter_metadata;
mod fixtures;
mod hostile;
mod integrity;
mod metrics;
mod page_bytes;
mod paging;
mod platform;
mod platform_fixtures;
mod platform_reads;
mod platform_streams;
mod read_replica;
mod reconnect;
mod reliability;
mod replicas;
mod retention;
mod retention_replicas;
mod retention_review;
mod rollups;
mod serving;
mod shutdown;
mod stats;
mod streaming_standby;
mod tenancy;
mod tls;
mod token_mint;
mod validation;
mod viewer;
mod viewer_browser;
mod watch;
mod watch_auth;
mod watch_memory;
