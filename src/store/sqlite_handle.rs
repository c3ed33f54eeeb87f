//! Statements run on a SQLite connection's own handle, with the driver's
//! worker locked out of it ([`LockedSqliteHandle`]): prepared, bound and
//! stepped on the calling thread (the blocking pool), with no hop to the
//! driver's thread per statement. [`sqlite_rows`](super::sqlite_rows) reads
//! events this way, [`sqlite_write`](super::sqlite_write) writes a
//! transaction.
//!
//! All of this module's `unsafe` is the calls into SQLite on a handle whose
//! driver worker is locked out for as long as they run; each block says
//! what it relies on.

use std::ffi::{CStr, c_int};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use libsqlite3_sys as ffi;
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr, Statement, Value};

use super::StoreError;
use crate::entity::audit_event::Column;

/// Why a read failed before it was sorted into a [`StoreError`].
#[derive(Debug)]
pub(super) enum Failure {
    /// SQLite returned `code`, saying `message`.
    Sqlite { code: c_int, message: String },
    /// A row held what an event cannot.
    Decode(DbErr),
}

impl From<Failure> for DbErr {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Sqlite { code, message } => {
                DbErr::Query(RuntimeErr::Internal(format!("sqlite error {code}: {message}")))
            }
            Failure::Decode(error) => error,
        }
    }
}

pub(super) fn query_error(error: sea_orm::sqlx::Error) -> StoreError {
    StoreError::Database(DbErr::Query(RuntimeErr::SqlxError(Arc::new(error))))
}

/// As sea-orm sorts a failed acquire, so it reads as unavailable storage.
pub(super) fn acquire_error(error: sea_orm::sqlx::Error) -> StoreError {
    StoreError::Database(match error {
        sea_orm::sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sea_orm::sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        other => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(other))),
    })
}

/// A statement's SQL and its values as SQLite binds them.
pub(super) struct BoundQuery {
    pub(super) sql: String,
    pub(super) values: Vec<Bound>,
}

impl BoundQuery {
    pub(super) fn of(statement: Statement) -> Result<Self, DbErr> {
        let values = statement
            .values
            .map(|values| values.0)
            .unwrap_or_default()
            .iter()
            .map(Bound::of)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sql: statement.sql,
            values,
        })
    }
}

/// A parameter's value as the driver would bind it (sea-query's values
/// through sqlx's SQLite encoders).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bound {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Bound {
    /// The value bound as sqlx binds it on SQLite: booleans and integers as
    /// integers, floats as reals, strings and JSON as text, bytes and
    /// UUIDs as blobs; other kinds, which no event statement binds, fail.
    pub(super) fn of(value: &Value) -> Result<Self, DbErr> {
        fn or_null<T>(value: &Option<T>, bound: impl FnOnce(&T) -> Bound) -> Bound {
            value.as_ref().map_or(Bound::Null, bound)
        }
        Ok(match value {
            Value::Bool(v) => or_null(v, |b| Bound::Integer(i64::from(*b))),
            Value::TinyInt(v) => or_null(v, |i| Bound::Integer(i64::from(*i))),
            Value::SmallInt(v) => or_null(v, |i| Bound::Integer(i64::from(*i))),
            Value::Int(v) => or_null(v, |i| Bound::Integer(i64::from(*i))),
            Value::BigInt(v) => or_null(v, |i| Bound::Integer(*i)),
            Value::TinyUnsigned(v) => or_null(v, |i| Bound::Integer(i64::from(*i))),
            Value::SmallUnsigned(v) => or_null(v, |i| Bound::Integer(i64::from(*i))),
            Value::Unsigned(v) => or_null(v, |i| Bound::Integer(i64::from(*i))),
            Value::BigUnsigned(Some(i)) => Bound::Integer(
                i64::try_from(*i).map_err(|_| DbErr::Custom(format!("parameter {i} is out of range")))?,
            ),
            Value::BigUnsigned(None) => Bound::Null,
            Value::Float(v) => or_null(v, |f| Bound::Real(f64::from(*f))),
            Value::Double(v) => or_null(v, |f| Bound::Real(*f)),
            Value::String(v) => or_null(v, |s| Bound::Text(s.clone())),
            Value::Char(v) => or_null(v, |c| Bound::Text(c.to_string())),
            Value::Bytes(v) => or_null(v, |b| Bound::Blob(b.clone())),
            Value::Uuid(v) => or_null(v, |u| Bound::Blob(u.as_bytes().to_vec())),
            Value::Json(v) => or_null(v, |j| Bound::Text(j.to_string())),
            other => {
                return Err(DbErr::Custom(format!(
                    "a parameter of this kind is not bound on the SQLite handle: {other:?}"
                )));
            }
        })
    }
}

/// A prepared statement on a locked handle, finalized when dropped.
pub(super) struct Prepared {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
}

impl Prepared {
    /// Prepares `sql` on `db`, whose driver worker is locked out for as
    /// long as the statement lives (the caller holds the lock).
    pub(super) fn new(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Self, Failure> {
        let len = c_int::try_from(sql.len()).map_err(|_| Failure::Sqlite {
            code: ffi::SQLITE_TOOBIG,
            message: "statement too long".to_owned(),
        })?;
        let mut stmt = ptr::null_mut();
        let mut tail: *const std::ffi::c_char = ptr::null();
        // SAFETY: `db` is an open connection no other thread uses while
        // the lock is held; `sql` is valid for `len` bytes (SQLite reads no
        // further, so no terminator is needed); `stmt` and `tail` are out
        // pointers, `tail` left within `sql` or at its end.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                sql.as_ptr().cast(),
                len,
                0,
                &raw mut stmt,
                &raw mut tail,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(Self::failure(db, rc));
        }
        // SQLite prepares the first statement only: anything after it
        // would be silently skipped.
        let consumed = (tail as usize)
            .saturating_sub(sql.as_ptr() as usize)
            .min(sql.len());
        if !stmt.is_null()
            && !sql[consumed..]
                .trim_matches(|c: char| c.is_whitespace() || c == ';')
                .is_empty()
        {
            // SAFETY: `stmt` was just prepared and is finalized once, here.
            unsafe { ffi::sqlite3_finalize(stmt) };
            return Err(Failure::Sqlite {
                code: ffi::SQLITE_MISUSE,
                message: "more than one statement".to_owned(),
            });
        }
        NonNull::new(stmt)
            .map(|stmt| Self { db, stmt })
            .ok_or_else(|| Failure::Sqlite {
                code: ffi::SQLITE_MISUSE,
                message: "an empty statement".to_owned(),
            })
    }

    /// SQLite's code and message for the call on `db` that just failed.
    fn failure(db: NonNull<ffi::sqlite3>, code: c_int) -> Failure {
        // SAFETY: `db` is open; the message is a NUL-terminated string
        // SQLite owns until the next call on `db`, copied at once.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) }
            .to_string_lossy()
            .into_owned();
        Failure::Sqlite { code, message }
    }

    pub(super) fn column_count(&self) -> c_int {
        // SAFETY: `stmt` is a live prepared statement.
        unsafe { ffi::sqlite3_column_count(self.stmt.as_ptr()) }
    }

    /// Binds parameter `index` (from 1).
    pub(super) fn bind(&mut self, index: c_int, value: &Bound) -> Result<(), Failure> {
        let stmt = self.stmt.as_ptr();
        let too_big = || Failure::Sqlite {
            code: ffi::SQLITE_TOOBIG,
            message: format!("parameter {index} too long"),
        };
        // SAFETY: `stmt` is a live statement that has not been stepped;
        // text and blobs are copied by SQLite (SQLITE_TRANSIENT) before the
        // call returns, and are valid for the lengths given.
        let rc = unsafe {
            match value {
                Bound::Null => ffi::sqlite3_bind_null(stmt, index),
                Bound::Integer(i) => ffi::sqlite3_bind_int64(stmt, index, *i),
                Bound::Real(f) => ffi::sqlite3_bind_double(stmt, index, *f),
                Bound::Text(s) => ffi::sqlite3_bind_text(
                    stmt,
                    index,
                    s.as_ptr().cast(),
                    c_int::try_from(s.len()).map_err(|_| too_big())?,
                    ffi::SQLITE_TRANSIENT(),
                ),
                Bound::Blob(b) => ffi::sqlite3_bind_blob(
                    stmt,
                    index,
                    b.as_ptr().cast(),
                    c_int::try_from(b.len()).map_err(|_| too_big())?,
                    ffi::SQLITE_TRANSIENT(),
                ),
            }
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(Self::failure(self.db, rc))
        }
    }

    /// Binds `values` as the driver does: each `?` to the next value, each
    /// `$n` (or `?n`) to the n-th, as many times as it appears.
    pub(super) fn bind_numbered(&mut self, values: &[Bound]) -> Result<(), Failure> {
        let stmt = self.stmt.as_ptr();
        // SAFETY: `stmt` is a live prepared statement.
        let count = unsafe { ffi::sqlite3_bind_parameter_count(stmt) };
        let mut anonymous = 0;
        for index in 1..=count {
            // SAFETY: `stmt` is live and `index` within its parameters; the
            // name is NULL (a bare `?`) or a NUL-terminated string SQLite
            // owns for the statement's life, read at once.
            let name = unsafe { ffi::sqlite3_bind_parameter_name(stmt, index) };
            let position = if name.is_null() {
                anonymous += 1;
                Some(anonymous)
            } else {
                let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
                name.strip_prefix(['$', '?'])
                    .and_then(|n| n.parse::<usize>().ok())
            };
            let value = position
                .and_then(|n| n.checked_sub(1))
                .and_then(|n| values.get(n))
                .ok_or_else(|| Failure::Sqlite {
                    code: ffi::SQLITE_RANGE,
                    message: format!("no value for parameter {index} of {} given", values.len()),
                })?;
            self.bind(index, value)?;
        }
        Ok(())
    }

    /// Steps to the next row: whether there is one. Taking `&mut self`
    /// ends every borrow of the row before (SQLite reuses its memory).
    pub(super) fn step(&mut self) -> Result<bool, Failure> {
        // SAFETY: `stmt` is a live statement on a handle only this thread
        // uses while the lock is held.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(Self::failure(self.db, rc)),
        }
    }

    /// The current row, valid until the next step.
    pub(super) fn row(&self) -> Row<'_> {
        Row { statement: self }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: `stmt` is live and finalized exactly once, here; its
        // result repeats the last step's error, already reported.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The row a statement stands on; what it lends lives until the next step.
pub(super) struct Row<'s> {
    statement: &'s Prepared,
}

impl<'s> Row<'s> {
    /// Column `column`'s bytes (text as stored, UTF-8), as the driver reads
    /// them (`sqlite3_column_blob`); `None` for NULL.
    pub(super) fn bytes(&self, column: Column) -> Option<&'s [u8]> {
        let stmt = self.statement.stmt.as_ptr();
        let index = column as c_int;
        // SAFETY: the statement stands on a row (`step` returned one) and
        // `index` is below its column count (checked once it was
        // prepared). The type is read before any conversion; the pointer
        // and length come from the same value, which SQLite keeps until
        // the statement is stepped again, and `&mut self` on `step` ends
        // this borrow first.
        unsafe {
            if ffi::sqlite3_column_type(stmt, index) == ffi::SQLITE_NULL {
                return None;
            }
            let data = ffi::sqlite3_column_blob(stmt, index).cast::<u8>();
            let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, index)).unwrap_or_default();
            if data.is_null() || len == 0 {
                Some(&[])
            } else {
                Some(std::slice::from_raw_parts(data, len))
            }
        }
    }

    /// Column `column` as an integer; `None` for NULL.
    pub(super) fn int(&self, column: Column) -> Option<i64> {
        let stmt = self.statement.stmt.as_ptr();
        let index = column as c_int;
        // SAFETY: as in `bytes`; an integer is returned by value.
        unsafe {
            if ffi::sqlite3_column_type(stmt, index) == ffi::SQLITE_NULL {
                None
            } else {
                Some(ffi::sqlite3_column_int64(stmt, index))
            }
        }
    }
}

/// Runs `sql` with `values` (see [`Prepared::bind_numbered`]) to its end
/// on `db`, whose driver worker is locked out (the caller holds the lock):
/// the rows it changed.
pub(super) fn execute(db: NonNull<ffi::sqlite3>, sql: &str, values: &[Bound]) -> Result<i64, Failure> {
    let mut statement = Prepared::new(db, sql)?;
    statement.bind_numbered(values)?;
    while statement.step()? {}
    drop(statement);
    // SAFETY: `db` is open and used by this thread alone while the lock is
    // held; the count is of the statement just finished.
    Ok(unsafe { ffi::sqlite3_changes64(db.as_ptr()) })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn values_are_bound_as_the_driver_binds_them() {
        let id = Uuid::now_v7();
        let cases = [
            (Value::Bool(Some(true)), Bound::Integer(1)),
            (Value::Int(Some(-7)), Bound::Integer(-7)),
            (Value::BigUnsigned(Some(1000)), Bound::Integer(1000)),
            (Value::Double(Some(0.5)), Bound::Real(0.5)),
            (Value::String(Some("a".into())), Bound::Text("a".into())),
            (Value::Uuid(Some(id)), Bound::Blob(id.as_bytes().to_vec())),
            (
                Value::Json(Some(Box::new(json!({"k": 1})))),
                Bound::Text(r#"{"k":1}"#.into()),
            ),
            (Value::String(None), Bound::Null),
        ];
        for (value, bound) in cases {
            assert_eq!(Bound::of(&value).unwrap(), bound, "{value:?}");
        }
        assert!(Bound::of(&Value::BigUnsigned(Some(u64::MAX))).is_err());
    }
}
