//! Writing event rows: a multi-row INSERT on SQLite, one `unnest` INSERT
//! per chunk on PostgreSQL.

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, IntoActiveModel,
    QueryTrait, Statement,
};

use super::pg_array::ArrayLiteral;
use crate::entity::{audit_event, tenant_statement};

/// Rows per INSERT statement: keeps the bound parameters under SQLite's and
/// PostgreSQL's limits for batches of any size.
const INSERT_CHUNK: usize = 400;
/// Rows per `unnest` INSERT on PostgreSQL (bounds one statement's size).
const UNNEST_CHUNK: usize = 5000;

/// Inserts `rows` (events of one tenant) in the transaction.
pub(super) async fn insert_events(
    txn: &DatabaseTransaction,
    rows: Vec<audit_event::Model>,
) -> Result<(), DbErr> {
    for statement in events_insert(txn.get_database_backend(), &rows, "")? {
        txn.execute_raw(statement).await?;
    }
    Ok(())
}

/// The statements that insert `rows` (events of one tenant): on PostgreSQL
/// one `unnest` INSERT per [`UNNEST_CHUNK`] rows, whose rows are selected
/// `gate` (SQL after the unnested rows, say a WHERE clause; `""`: all);
/// elsewhere a multi-row INSERT per [`INSERT_CHUNK`] rows (no gate).
pub(super) fn events_insert(
    backend: DbBackend,
    rows: &[audit_event::Model],
    gate: &str,
) -> Result<Vec<Statement>, DbErr> {
    if backend == DbBackend::Postgres {
        return rows
            .chunks(UNNEST_CHUNK)
            .map(|chunk| events_insert_postgres(chunk, gate))
            .collect::<Result<Vec<_>, _>>()
            .map(|statements| statements.into_iter().flatten().collect());
    }
    Ok(rows
        .chunks(INSERT_CHUNK)
        .map(|chunk| {
            let models = chunk.iter().map(|m| m.clone().into_active_model().reset_all());
            audit_event::Entity::insert_many(models).build(backend)
        })
        .collect())
}

/// One INSERT for a batch of events of one tenant on PostgreSQL: each
/// column travels as one array literal and the server `unnest`s them, so
/// the statement is prepared once and planned once, where a multi-row
/// VALUES list of a new length (26 parameters a row) is parsed and planned
/// anew on every group commit.
fn events_insert_postgres(rows: &[audit_event::Model], gate: &str) -> Result<Option<Statement>, DbErr> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let n = rows.len();
    let mut numbers: [ArrayLiteral; 8] = std::array::from_fn(|_| ArrayLiteral::with_capacity(n * 17));
    let mut texts: [ArrayLiteral; 17] = std::array::from_fn(|_| ArrayLiteral::with_capacity(n * 24));
    for row in rows {
        if row.tenant_id != first.tenant_id {
            return Err(DbErr::Custom("one INSERT takes the events of one tenant".into()));
        }
        let [
            seq,
            id,
            occurred_at,
            recorded_at,
            actor_type,
            outcome,
            status_code,
            deleted_at,
        ] = &mut numbers;
        seq.push_plain(Some(row.seq));
        id.push_plain(Some(row.id));
        occurred_at.push_plain(row.occurred_at);
        recorded_at.push_plain(Some(row.recorded_at));
        actor_type.push_plain(row.actor_type);
        outcome.push_plain(row.outcome);
        status_code.push_plain(row.request_status_code);
        deleted_at.push_plain(row.deleted_at);
        let metadata = row.metadata.as_ref().map(serde_json::Value::to_string);
        for (literal, value) in texts.iter_mut().zip([
            row.actor_id.as_deref(),
            row.actor_name.as_deref(),
            row.actor_email.as_deref(),
            row.action.as_deref(),
            row.resource_type.as_deref(),
            row.resource_id.as_deref(),
            row.resource_name.as_deref(),
            row.request_method.as_deref(),
            row.request_path.as_deref(),
            row.request_client_ip.as_deref(),
            row.request_user_agent.as_deref(),
            row.request_id.as_deref(),
            row.request_client_identity.as_deref(),
            row.source.as_deref(),
            row.reasoning.as_deref(),
            metadata.as_deref(),
            row.idempotency_key.as_deref(),
        ]) {
            literal.push_text(value);
        }
    }
    let values = numbers.into_iter().chain(texts).map(|l| l.finish().into());
    Ok(Some(tenant_statement(
        DbBackend::Postgres,
        &first.tenant_id,
        &format!(
            "INSERT INTO audit_events (tenant_id, seq, id, occurred_at, recorded_at, actor_type, outcome, \
             request_status_code, deleted_at, actor_id, actor_name, actor_email, action, resource_type, \
             resource_id, resource_name, request_method, request_path, request_client_ip, \
             request_user_agent, request_id, request_client_identity, source, reasoning, metadata, \
             idempotency_key) \
             SELECT $1, t.* FROM unnest($2::text::bigint[], $3::text::uuid[], $4::text::bigint[], \
             $5::text::bigint[], $6::text::int[], $7::text::int[], $8::text::int[], $9::text::bigint[], \
             $10::text::text[], $11::text::text[], $12::text::text[], $13::text::text[], $14::text::text[], \
             $15::text::text[], $16::text::text[], $17::text::text[], $18::text::text[], $19::text::text[], \
             $20::text::text[], $21::text::text[], $22::text::text[], $23::text::text[], \
             $24::text::text[], $25::text::jsonb[], $26::text::text[]) AS t{gate}"
        ),
        values,
    )))
}
