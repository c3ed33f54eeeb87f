//! What the command line runs besides the server: `verify`, `export`,
//! `verify-export` and `token mint`.

pub mod export;
mod proto_json;
pub mod token;
pub mod verify;
pub mod verify_export;
