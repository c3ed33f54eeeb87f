//! The clock the store stamps rows with.

/// Now, in unix microseconds.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
