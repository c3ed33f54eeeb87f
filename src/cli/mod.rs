//! What the command line runs besides the server: `verify`.

pub mod verify;
