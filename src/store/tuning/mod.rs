//! Every call into C the crate makes, and so all of its `unsafe`: SQLite's
//! process-wide configuration and per-connection options, and TCP_NODELAY
//! on the PostgreSQL sockets.

mod nodelay;
mod sqlite;

pub(super) use nodelay::disable_nagle_everywhere;
pub(super) use sqlite::{sqlite_process_settings, stable_query_plans};
