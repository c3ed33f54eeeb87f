//! What the service is measured against, run from the bench process on the
//! same database: the multi-row INSERT of the same rows (and COPY on
//! PostgreSQL), the Query path's SQL run directly, and a minimal tonic
//! unary call (the RPC floor).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use audit_service::entity::audit_event;
use audit_service::proto::{
    AppendRequest, AppendResponse, AuditEvent, DeleteRequest, DeleteResponse, ExportRequest,
    GetFilterMetadataRequest, GetFilterMetadataResponse, GetRequest, QueryRequest, QueryResponse,
    StatsRequest, StatsResponse, WatchRequest, WatchResponse,
};
use audit_service::wire::server::audit_service_server::{AuditService, AuditServiceServer};
use audit_service::wire::{EncodedExportResponse, EncodedQueryResponse};
use prost::Message as _;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, IntoActiveModel,
    Statement, TransactionTrait,
};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::{Request, Response, Status};

/// Rows per INSERT statement, as the service's sequencer chunks them on
/// SQLite (on PostgreSQL the service sends one `unnest` INSERT instead).
const INSERT_CHUNK: usize = 400;

/// Columns of `audit_events` in the order [`copy_csv`] writes them.
pub const COLUMNS: &str = "tenant_id, seq, id, occurred_at, recorded_at, actor_id, actor_type, actor_name, \
    actor_email, action, resource_type, resource_id, resource_name, outcome, request_method, \
    request_path, request_status_code, request_client_ip, request_user_agent, request_id, source, \
    reasoning, metadata, idempotency_key, deleted_at";

/// Writes rows straight into `audit_events` through the database pool the
/// service itself would open (same driver, same connection settings).
#[derive(Clone)]
pub struct RawWriter {
    db: DatabaseConnection,
    /// SQLite takes one writer at a time; queueing here, as the service
    /// does, keeps SQLite's busy-wait back-off out of the baseline.
    sqlite_writer: Option<Arc<Mutex<()>>>,
}

impl RawWriter {
    /// A writer on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        let sqlite = db.get_database_backend() == DbBackend::Sqlite;
        Self {
            db,
            sqlite_writer: sqlite.then(|| Arc::new(Mutex::new(()))),
        }
    }

    /// Inserts `rows` with multi-row INSERTs (one statement per
    /// [`INSERT_CHUNK`] rows; several in one transaction), durable on return.
    pub async fn insert(&self, rows: Vec<audit_event::Model>) -> anyhow::Result<()> {
        let _writer = match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let backend = self.db.get_database_backend();
        let statements: Vec<Statement> = rows
            .chunks(INSERT_CHUNK)
            .map(|chunk| {
                let models = chunk.iter().map(|m| m.clone().into_active_model().reset_all());
                sea_orm::QueryTrait::build(&audit_event::Entity::insert_many(models), backend)
            })
            .collect();
        if let [statement] = statements.as_slice() {
            self.db
                .execute_raw(statement.clone())
                .await
                .context("raw INSERT")?;
            return Ok(());
        }
        let txn = self.db.begin().await?;
        for statement in statements {
            txn.execute_raw(statement).await.context("raw INSERT")?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Loads `rows` with one `COPY ... FROM STDIN (FORMAT csv)` (PostgreSQL).
    pub async fn copy(&self, rows: &[audit_event::Model]) -> anyhow::Result<()> {
        let pool = self.db.get_postgres_connection_pool();
        let mut connection = pool.acquire().await?;
        let mut copy = connection
            .copy_in_raw(&format!(
                "COPY audit_events ({COLUMNS}) FROM STDIN WITH (FORMAT csv)"
            ))
            .await
            .context("COPY")?;
        copy.send(copy_csv(rows).into_bytes()).await?;
        copy.finish().await.context("COPY")?;
        Ok(())
    }
}

/// `rows` as CSV in [`COLUMNS`] order; NULL is an empty unquoted field.
fn copy_csv(rows: &[audit_event::Model]) -> String {
    fn text(out: &mut String, value: Option<&str>) {
        if let Some(value) = value {
            out.push('"');
            out.push_str(&value.replace('"', "\"\""));
            out.push('"');
        }
        out.push(',');
    }
    fn number(out: &mut String, value: Option<impl std::fmt::Display>) {
        if let Some(value) = value {
            let _ = write!(out, "{value}");
        }
        out.push(',');
    }
    let mut out = String::with_capacity(rows.len() * 512);
    for row in rows {
        text(&mut out, Some(row.tenant_id.as_str()));
        number(&mut out, Some(row.seq));
        number(&mut out, Some(row.id));
        number(&mut out, row.occurred_at);
        number(&mut out, Some(row.recorded_at));
        text(&mut out, row.actor_id.as_deref());
        number(&mut out, row.actor_type);
        text(&mut out, row.actor_name.as_deref());
        text(&mut out, row.actor_email.as_deref());
        text(&mut out, row.action.as_deref());
        text(&mut out, row.resource_type.as_deref());
        text(&mut out, row.resource_id.as_deref());
        text(&mut out, row.resource_name.as_deref());
        number(&mut out, row.outcome);
        text(&mut out, row.request_method.as_deref());
        text(&mut out, row.request_path.as_deref());
        number(&mut out, row.request_status_code);
        text(&mut out, row.request_client_ip.as_deref());
        text(&mut out, row.request_user_agent.as_deref());
        text(&mut out, row.request_id.as_deref());
        text(&mut out, row.source.as_deref());
        text(&mut out, row.reasoning.as_deref());
        text(&mut out, row.metadata.as_ref().map(|m| m.to_string()).as_deref());
        text(&mut out, row.idempotency_key.as_deref());
        number(&mut out, row.deleted_at);
        // The last field has no separator after it.
        out.pop();
        out.push('\n');
    }
    out
}

/// Runs `statement` (a SELECT) directly on the pool; returns the rows read.
pub async fn direct_query(db: &DatabaseConnection, statement: Statement) -> anyhow::Result<u64> {
    let rows = db.query_all_raw(statement).await.context("direct SQL")?;
    Ok(rows.len() as u64)
}

/// A tonic server in the bench process on an ephemeral port of 127.0.0.1,
/// with `TCP_NODELAY` on accepted sockets as the service has; it stops
/// when dropped.
pub struct InProcessServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl InProcessServer {
    async fn start(router: Router, what: &'static str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let serve = router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(error) = serve.await {
                eprintln!("note: the {what} server failed: {error}");
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A tonic server in the bench process answering `grpc.health.v1.Health`
/// `Check` from memory: the cost of one unary call and nothing else.
pub struct RpcFloor {
    pub server: InProcessServer,
    // Serving status lives as long as the reporter.
    _reporter: tonic_health::server::HealthReporter,
}

impl RpcFloor {
    /// Serves on an ephemeral port.
    pub async fn start() -> anyhow::Result<Self> {
        let (reporter, service) = tonic_health::server::health_reporter();
        let server = InProcessServer::start(Server::builder().add_service(service), "RPC-floor").await?;
        Ok(Self {
            server,
            _reporter: reporter,
        })
    }
}

/// An `AuditService` in the bench process whose `Query` answers every call
/// with `page`, held in memory already encoded, as the service's own server
/// answers it (an [`EncodedQueryResponse`]): what a page costs over gRPC
/// without a database (copying its bytes into the response, the round
/// trip, decoding it in the client). A service that spent nothing besides
/// its SELECT would still take about this much on top of it.
pub async fn page_floor(page: QueryResponse) -> anyhow::Result<InProcessServer> {
    let encoded =
        EncodedQueryResponse::decode(page.encode_to_vec().as_slice()).context("re-reading the page")?;
    let service = AuditServiceServer::new(MemoryPage(Arc::new(encoded)));
    InProcessServer::start(Server::builder().add_service(service), "page-floor").await
}

struct MemoryPage(Arc<EncodedQueryResponse>);

fn query_only() -> Status {
    Status::unimplemented("the page floor serves Query only")
}

#[tonic::async_trait]
impl AuditService for MemoryPage {
    async fn query(&self, _: Request<QueryRequest>) -> Result<Response<EncodedQueryResponse>, Status> {
        Ok(Response::new(EncodedQueryResponse::clone(&self.0)))
    }

    async fn append(&self, _: Request<AppendRequest>) -> Result<Response<AppendResponse>, Status> {
        Err(query_only())
    }

    async fn get(&self, _: Request<GetRequest>) -> Result<Response<AuditEvent>, Status> {
        Err(query_only())
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Err(query_only())
    }

    async fn get_filter_metadata(
        &self,
        _: Request<GetFilterMetadataRequest>,
    ) -> Result<Response<GetFilterMetadataResponse>, Status> {
        Err(query_only())
    }

    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(query_only())
    }

    type WatchStream = tokio_stream::Empty<Result<WatchResponse, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(query_only())
    }

    type ExportStream = tokio_stream::Empty<Result<EncodedExportResponse, Status>>;

    async fn export(&self, _: Request<ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        Err(query_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_csv_quotes_text_and_leaves_nulls_empty() {
        let input = crate::client::sample_event(0, 10);
        let mut row = crate::client::stored_row(&input, "t1", 5, 9).unwrap();
        // Text that needs quoting, as COPY's CSV would read it back.
        row.tenant_id = audit_service::tenant::TenantId::stored("t\"1".into());
        row.reasoning = None;
        let csv = copy_csv(&[row.clone()]);
        assert!(csv.starts_with(&format!("\"t\"\"1\",5,{},", row.id)));
        assert!(
            csv.contains("\"audit-bench\",,\"{\"\"attempt\"\":"),
            "no reasoning is NULL: {csv}"
        );
        assert!(
            csv.ends_with("}\",,\n"),
            "NULL idempotency key and deleted_at: {csv}"
        );
    }
}
