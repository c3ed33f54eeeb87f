//! What the command line runs besides the server: `verify`, `export` and
//! `verify-export`.

pub mod export;
mod proto_json;
pub mod verify;
pub mod verify_export;
