//! SQLite's settings that only C calls reach: its process-wide
//! configuration (memory statistics, allocator), which must come before the
//! library initializes, and the query planner stability guarantee of each
//! connection.

/// SQLite's process-wide settings, once, before the first connection
/// initializes the library: memory statistics off, and allocations from
/// mimalloc ([`sqlite_on_mimalloc`]).
///
/// With memory statistics on (SQLite's default), every allocation and free inside SQLite
/// takes one process-wide mutex to keep the counters; sqlx copies every value
/// of every row it reads (`sqlite3_value_dup`) and frees it when the row is
/// dropped, so a page of events meant ~2 500 trips through that mutex, from
/// the connection's worker thread and the runtime's threads at once. Nothing
/// here reads the counters (`sqlite3_memory_used` and friends).
pub(super) fn sqlite_process_settings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. sqlite3_config is
        // not thread-safe against other SQLite calls, but this runs from
        // `tune_process`, which `main` calls before this process opens any
        // SQLite connection; once the library is initialized (by someone
        // else first) it returns SQLITE_MISUSE and changes nothing.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int)
        };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(rc, "SQLite was initialized already; memory statistics stay on");
        }
        let rc = sqlite_on_mimalloc();
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(rc, "SQLite was initialized already; it keeps the C allocator");
        }
    });
}

/// Points SQLite's allocations at mimalloc, before the library initializes.
///
/// SQLite calls the C library's `malloc` otherwise: sqlx copies every value
/// of every row on the connection's worker thread and frees it on the
/// runtime's, and glibc's `malloc`/`free` took ≈ 10% of the service's CPU
/// while it served Query pages from SQLite (`perf`, `sqlite3MemMalloc` →
/// `_int_malloc`). mimalloc, the binaries' allocator, frees across threads
/// without a lock.
fn sqlite_on_mimalloc() -> std::ffi::c_int {
    use std::ffi::{c_int, c_void};

    use libmimalloc_sys as mi;

    // SAFETY (all four): SQLite passes sizes > 0 and only pointers these
    // functions returned, as its allocator contract says. (A size that
    // does not convert asks for 0 bytes, which mimalloc serves.)
    unsafe extern "C" fn malloc(size: c_int) -> *mut c_void {
        unsafe { mi::mi_malloc(usize::try_from(size).unwrap_or(0)) }
    }
    unsafe extern "C" fn free(p: *mut c_void) {
        unsafe { mi::mi_free(p) }
    }
    unsafe extern "C" fn realloc(p: *mut c_void, size: c_int) -> *mut c_void {
        unsafe { mi::mi_realloc(p, usize::try_from(size).unwrap_or(0)) }
    }
    unsafe extern "C" fn size(p: *mut c_void) -> c_int {
        c_int::try_from(unsafe { mi::mi_usable_size(p) }).unwrap_or(c_int::MAX)
    }
    unsafe extern "C" fn roundup(size: c_int) -> c_int {
        (size + 7) & !7
    }
    unsafe extern "C" fn init(_: *mut c_void) -> c_int {
        libsqlite3_sys::SQLITE_OK
    }
    unsafe extern "C" fn shutdown(_: *mut c_void) {}

    let methods = libsqlite3_sys::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a sqlite3_mem_methods,
    // which SQLite copies before returning. Called as the MEMSTATUS call
    // above, before this process opens any connection; SQLITE_MISUSE and no
    // change when the library is initialized already.
    unsafe {
        libsqlite3_sys::sqlite3_config(
            libsqlite3_sys::SQLITE_CONFIG_MALLOC,
            &methods as *const libsqlite3_sys::sqlite3_mem_methods,
        )
    }
}

/// Turns on SQLite's query planner stability guarantee for a connection.
///
/// Without it, a statement whose plan looked at a bound value (SQLite does
/// this for `LIMIT ?`, which every page query has) is marked expired when
/// that parameter is bound again, so each execution of a cached statement
/// is parsed and planned from scratch; with it, a prepared statement keeps
/// its plan and the statement cache does its job.
pub(in crate::store) fn stable_query_plans(
    mut db: std::ptr::NonNull<libsqlite3_sys::sqlite3>,
) -> Result<(), sea_orm::sqlx::Error> {
    // SAFETY: `db` is the open handle of a connection whose worker is
    // locked out for the duration of the call (`lock_handle`); the option
    // takes an int and an optional int* for the previous setting (NULL).
    let rc = unsafe {
        libsqlite3_sys::sqlite3_db_config(
            db.as_mut(),
            libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        )
    };
    if rc == libsqlite3_sys::SQLITE_OK {
        Ok(())
    } else {
        Err(sea_orm::sqlx::Error::Configuration(
            format!("sqlite3_db_config(SQLITE_DBCONFIG_ENABLE_QPSG) failed with code {rc}").into(),
        ))
    }
}

/// Whether SQLite's allocations come from mimalloc; SQLite must be
/// initialized (a connection open).
#[cfg(test)]
pub(super) fn allocates_from_mimalloc() -> bool {
    // SAFETY: the library is initialized, as the caller promises; the
    // block is freed by SQLite's own free.
    unsafe {
        let block = libsqlite3_sys::sqlite3_malloc(100);
        assert!(!block.is_null());
        assert!(libsqlite3_sys::sqlite3_msize(block) >= 100);
        let from_mimalloc = libmimalloc_sys::mi_is_in_heap_region(block);
        libsqlite3_sys::sqlite3_free(block);
        from_mimalloc
    }
}

#[cfg(test)]
mod tests {
    use crate::config::DatabaseConfig;
    use crate::store::Store;

    /// Reads a connection's `SQLITE_DBCONFIG_ENABLE_QPSG` setting.
    fn query_plan_stability(mut db: std::ptr::NonNull<libsqlite3_sys::sqlite3>) -> std::ffi::c_int {
        let mut enabled: std::ffi::c_int = -1;
        // SAFETY: as in `stable_query_plans`; a negative value leaves the
        // setting alone and writes the current one to `enabled`.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_db_config(
                db.as_mut(),
                libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
                -1 as std::ffi::c_int,
                &mut enabled as *mut std::ffi::c_int,
            )
        };
        assert_eq!(rc, libsqlite3_sys::SQLITE_OK);
        enabled
    }

    #[tokio::test]
    async fn every_sqlite_connection_keeps_its_query_plans() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let pool = store.connection().get_sqlite_connection_pool();
        // Two connections at once, so more than the first one is checked.
        let mut first = pool.acquire().await.unwrap();
        let mut second = pool.acquire().await.unwrap();
        for connection in [&mut first, &mut second] {
            let mut handle = connection.lock_handle().await.unwrap();
            assert_eq!(query_plan_stability(handle.as_raw_handle()), 1);
        }
    }
}
