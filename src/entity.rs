//! SeaORM entities of the tables created in `migrations/`.
//!
//! Every table that holds a tenant's data has a `tenant_id` column of type
//! [`TenantId`] and one constructor, `Entity::of_tenant`, that every
//! statement on that data starts from: it is already bound to the tenant, so
//! no query can forget it. Raw SQL on such a table goes through
//! [`tenant_statement`], which binds the tenant as `$1`. The exceptions are
//! named: API keys are found by id to learn whose they are (authentication,
//! the `keys` command), and the per-table unit tests below check each
//! constructor binds its tenant.

use sea_orm::{DbBackend, Statement, Value};

use crate::tenant::TenantId;

/// A raw statement on a tenant's rows: `sql` names the tenant as `$1`
/// (as often as it needs), always bound to `tenant`; `values` are `$2`,
/// `$3`, … (or, on SQLite, the `?`s that follow).
///
/// # Panics
/// When `sql` does not use `$1`: such a statement would not be scoped.
pub fn tenant_statement(
    backend: DbBackend,
    tenant: &TenantId,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    assert!(
        names_first_parameter(sql),
        "a tenant statement uses $1, the tenant: {sql}"
    );
    let values = std::iter::once(Value::from(tenant.clone())).chain(values);
    Statement::from_sql_and_values(backend, sql, values)
}

/// Whether `sql` uses `$1` (not only `$10`, `$11`, …).
fn names_first_parameter(sql: &str) -> bool {
    sql.match_indices("$1")
        .any(|(at, _)| !sql[at + 2..].starts_with(|c: char| c.is_ascii_digit()))
}

/// The ids of every tenant in the tenants registry but the reserved
/// `_platform`, or only of the tenants of `partner`: the tenant set of a
/// platform read across tenants.
fn registered_tenants(partner: Option<&crate::tenant::PartnerId>) -> sea_orm::sea_query::SelectStatement {
    use sea_orm::ColumnTrait as _;
    let mut tenants = sea_orm::sea_query::Query::select()
        .column(tenant::Column::TenantId)
        .from(tenant::Entity)
        .and_where(tenant::Column::TenantId.ne(TenantId::platform()))
        .to_owned();
    if let Some(partner) = partner {
        tenants.and_where(tenant::Column::PartnerId.eq(partner.as_str()));
    }
    tenants
}

/// The `of_tenant` constructor of a table with a `tenant_id` column.
macro_rules! tenant_scoped {
    () => {
        impl Entity {
            /// The tenant's rows of this table: where every statement on
            /// them starts, already bound to the tenant.
            pub fn of_tenant(tenant: &crate::tenant::TenantId) -> Select<Entity> {
                Entity::find().filter(Column::TenantId.eq(tenant.clone()))
            }

            /// An UPDATE of the tenant's rows of this table, already bound
            /// to the tenant (narrow it further with `filter`).
            pub fn update_of_tenant(tenant: &crate::tenant::TenantId) -> sea_orm::UpdateMany<Entity> {
                Entity::update_many().filter(Column::TenantId.eq(tenant.clone()))
            }
        }
    };
}

/// One row per event of a tenant's log; `(tenant_id, seq)` is the key.
/// Content columns are NULL once an event is erased by `Delete`.
pub mod audit_event {
    use std::borrow::Cow;

    use sea_orm::entity::prelude::*;
    use sea_orm::sqlx::{ColumnIndex, Decode, Row};

    /// A stored event. Times are unix microseconds.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        /// The tenant whose log holds the event.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// Position in the tenant's log: 1, 2, 3, … with no gaps, in commit order.
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        /// The event's UUIDv7, assigned by the service; unique across tenants.
        #[sea_orm(unique)]
        pub id: Uuid,
        /// When it happened by the producer's clock, in unix microseconds; NULL once erased.
        pub occurred_at: Option<i64>,
        /// When the service committed it, in unix microseconds.
        pub recorded_at: i64,
        /// Stable identifier of the actor.
        pub actor_id: Option<String>,
        /// The actor's `ActorType` enum value.
        pub actor_type: Option<i32>,
        /// The actor's display name.
        pub actor_name: Option<String>,
        /// The actor's email address, when it has one.
        pub actor_email: Option<String>,
        /// Dotted lowercase verb such as `user.login`.
        pub action: Option<String>,
        /// Kind of resource acted on, for example `document`.
        pub resource_type: Option<String>,
        /// Identifier of the resource acted on.
        pub resource_id: Option<String>,
        /// Display name of the resource acted on.
        pub resource_name: Option<String>,
        /// The event's `Outcome` enum value.
        pub outcome: Option<i32>,
        /// Protocol method of the request, for example `POST`.
        pub request_method: Option<String>,
        /// Request path or route.
        #[sea_orm(column_type = "Text", nullable)]
        pub request_path: Option<String>,
        /// Response status code (HTTP or gRPC), 0 when not applicable.
        pub request_status_code: Option<i32>,
        /// Client IP address (IPv4 or IPv6) as text.
        pub request_client_ip: Option<String>,
        /// Client user agent.
        #[sea_orm(column_type = "Text", nullable)]
        pub request_user_agent: Option<String>,
        /// Correlation id of the request.
        pub request_id: Option<String>,
        /// The calling workload's TLS client certificate identity.
        pub request_client_identity: Option<String>,
        /// The emitting service.
        pub source: Option<String>,
        /// Free-text justification.
        #[sea_orm(column_type = "Text", nullable)]
        pub reasoning: Option<String>,
        /// Arbitrary structured detail, as JSON.
        #[sea_orm(column_type = "JsonBinary", nullable)]
        pub metadata: Option<Json>,
        /// The producer's idempotency key, unique per tenant; kept after `Delete`.
        pub idempotency_key: Option<String>,
        /// When `Delete` erased the event's content, in unix microseconds; NULL while it is whole.
        pub deleted_at: Option<i64>,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();

    impl Entity {
        /// The rows of every tenant in the tenants registry but the
        /// reserved `_platform`, or only of the tenants of `partner`: where
        /// every statement of a platform read across tenants starts.
        pub fn of_registered_tenants(partner: Option<&crate::tenant::PartnerId>) -> Select<Entity> {
            Entity::find().filter(Column::TenantId.in_subquery(super::registered_tenants(partner)))
        }

        /// The same rows as [`Entity::of_registered_tenants`], for a read
        /// that is to walk the time index (`ix_audit_events_recorded`) in
        /// order: on SQLite the tenant test is written `+tenant_id IN
        /// (...)`, which its planner does not take as an index key, so an
        /// unselective read across tenants walks the newest rows and stops
        /// after a page instead of fetching every tenant's rows by primary
        /// key and sorting them all. PostgreSQL's planner weighs the two
        /// itself.
        pub fn of_registered_tenants_by_time(
            partner: Option<&crate::tenant::PartnerId>,
            backend: sea_orm::DbBackend,
        ) -> Select<Entity> {
            use sea_orm::sea_query::{Expr, ExprTrait as _};
            match backend {
                sea_orm::DbBackend::Sqlite => Entity::find().filter(
                    Expr::cust(r#"+"audit_events"."tenant_id""#)
                        .in_subquery(super::registered_tenants(partner)),
                ),
                _ => Self::of_registered_tenants(partner),
            }
        }
    }

    /// The columns that hold an event's content: NULL once it is erased
    /// (what [`Model::erased`] clears). The idempotency key stays, so a
    /// producer's retry of an erased event is still known as a duplicate.
    pub const CONTENT_COLUMNS: [Column; 20] = [
        Column::OccurredAt,
        Column::ActorId,
        Column::ActorType,
        Column::ActorName,
        Column::ActorEmail,
        Column::Action,
        Column::ResourceType,
        Column::ResourceId,
        Column::ResourceName,
        Column::Outcome,
        Column::RequestMethod,
        Column::RequestPath,
        Column::RequestStatusCode,
        Column::RequestClientIp,
        Column::RequestUserAgent,
        Column::RequestId,
        Column::RequestClientIdentity,
        Column::Source,
        Column::Reasoning,
        Column::Metadata,
    ];

    impl Model {
        /// Decodes a row of `Entity::find()` (every column, in declaration
        /// order) by position, straight from the driver's row. The derived
        /// decoder looks each column up by name, and sea-orm's positional
        /// getters check every value's type against the Rust type first;
        /// on a page of events those cost as much as reading the values.
        /// The column types are the migrations' own, so the values are
        /// decoded as the driver's decoders for these Rust types read them
        /// (the same ones sea-orm calls), without that check.
        pub fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
            if let Some(row) = row.try_as_sqlite_row() {
                return decode(row);
            }
            if let Some(row) = row.try_as_pg_row() {
                return decode(row);
            }
            Err(unsupported_backend())
        }

        /// The event's fields borrowed from this model, as
        /// [`fields_of_row`] reads them from a row (NULL text as empty).
        pub fn fields(&self) -> EventFields<'_> {
            fn text(value: &Option<String>) -> &str {
                value.as_deref().unwrap_or_default()
            }
            EventFields {
                id: self.id,
                tenant_id: self.tenant_id.as_str(),
                seq: self.seq,
                occurred_at: self.occurred_at,
                recorded_at: self.recorded_at,
                actor_id: text(&self.actor_id),
                actor_type: self.actor_type.unwrap_or_default(),
                actor_name: text(&self.actor_name),
                actor_email: text(&self.actor_email),
                action: text(&self.action),
                resource_type: text(&self.resource_type),
                resource_id: text(&self.resource_id),
                resource_name: text(&self.resource_name),
                outcome: self.outcome.unwrap_or_default(),
                request_method: text(&self.request_method),
                request_path: text(&self.request_path),
                request_status_code: self.request_status_code.unwrap_or_default(),
                request_client_ip: text(&self.request_client_ip),
                request_user_agent: text(&self.request_user_agent),
                request_id: text(&self.request_id),
                request_client_identity: text(&self.request_client_identity),
                source: text(&self.source),
                reasoning: text(&self.reasoning),
                metadata: self.metadata.as_ref().map(Cow::Borrowed),
            }
        }

        /// What is left of an event after `Delete`: its place in the log, nothing
        /// of its content.
        pub fn erased(self, deleted_at: i64) -> Self {
            Self {
                tenant_id: self.tenant_id,
                seq: self.seq,
                id: self.id,
                recorded_at: self.recorded_at,
                idempotency_key: self.idempotency_key,
                deleted_at: Some(deleted_at),
                occurred_at: None,
                actor_id: None,
                actor_type: None,
                actor_name: None,
                actor_email: None,
                action: None,
                resource_type: None,
                resource_id: None,
                resource_name: None,
                outcome: None,
                request_method: None,
                request_path: None,
                request_status_code: None,
                request_client_ip: None,
                request_user_agent: None,
                request_id: None,
                request_client_identity: None,
                source: None,
                reasoning: None,
                metadata: None,
            }
        }
    }

    /// One event's stored values, text borrowed from the row that holds them;
    /// NULL text (an erased event's content) reads as empty, as in
    /// the protobuf event of the row.
    #[derive(Clone, Debug, PartialEq)]
    pub struct EventFields<'a> {
        /// [`Model::id`].
        pub id: Uuid,
        /// [`Model::tenant_id`], as text.
        pub tenant_id: &'a str,
        /// [`Model::seq`].
        pub seq: i64,
        /// [`Model::occurred_at`].
        pub occurred_at: Option<i64>,
        /// [`Model::recorded_at`].
        pub recorded_at: i64,
        /// [`Model::actor_id`], empty when NULL.
        pub actor_id: &'a str,
        /// [`Model::actor_type`], 0 when NULL.
        pub actor_type: i32,
        /// [`Model::actor_name`], empty when NULL.
        pub actor_name: &'a str,
        /// [`Model::actor_email`], empty when NULL.
        pub actor_email: &'a str,
        /// [`Model::action`], empty when NULL.
        pub action: &'a str,
        /// [`Model::resource_type`], empty when NULL.
        pub resource_type: &'a str,
        /// [`Model::resource_id`], empty when NULL.
        pub resource_id: &'a str,
        /// [`Model::resource_name`], empty when NULL.
        pub resource_name: &'a str,
        /// [`Model::outcome`], 0 when NULL.
        pub outcome: i32,
        /// [`Model::request_method`], empty when NULL.
        pub request_method: &'a str,
        /// [`Model::request_path`], empty when NULL.
        pub request_path: &'a str,
        /// [`Model::request_status_code`], 0 when NULL.
        pub request_status_code: i32,
        /// [`Model::request_client_ip`], empty when NULL.
        pub request_client_ip: &'a str,
        /// [`Model::request_user_agent`], empty when NULL.
        pub request_user_agent: &'a str,
        /// [`Model::request_id`], empty when NULL.
        pub request_id: &'a str,
        /// [`Model::request_client_identity`], empty when NULL.
        pub request_client_identity: &'a str,
        /// [`Model::source`], empty when NULL.
        pub source: &'a str,
        /// [`Model::reasoning`], empty when NULL.
        pub reasoning: &'a str,
        /// [`Model::metadata`].
        pub metadata: Option<Cow<'a, Json>>,
    }

    /// The fields of a row of `Entity::find()` as [`Model::from_row`]
    /// reads them, text borrowed from the row instead of copied: what a
    /// page is written from.
    pub fn fields_of_row(row: &QueryResult) -> Result<EventFields<'_>, DbErr> {
        if let Some(row) = row.try_as_sqlite_row() {
            return fields(row);
        }
        if let Some(row) = row.try_as_pg_row() {
            return fields(row);
        }
        Err(unsupported_backend())
    }

    /// Whether the row of `Entity::find()` is an erased event's (its
    /// `deleted_at` set).
    pub fn is_erased_row(row: &QueryResult) -> Result<bool, DbErr> {
        if let Some(row) = row.try_as_sqlite_row() {
            return Ok(get::<_, Option<i64>>(row, Column::DeletedAt)?.is_some());
        }
        if let Some(row) = row.try_as_pg_row() {
            return Ok(get::<_, Option<i64>>(row, Column::DeletedAt)?.is_some());
        }
        Err(unsupported_backend())
    }

    fn unsupported_backend() -> DbErr {
        DbErr::Type("audit_events row from an unsupported backend".to_owned())
    }

    /// Column `column` of `row`.
    fn get<'r, R, T>(row: &'r R, column: Column) -> Result<T, DbErr>
    where
        R: Row,
        usize: ColumnIndex<R>,
        T: Decode<'r, R::Database>,
    {
        row.try_get_unchecked(column as usize).map_err(|error| {
            DbErr::Type(format!(
                "audit_events.{}: {error}",
                sea_orm::IdenStatic::as_str(&column)
            ))
        })
    }

    fn decode<'r, R>(row: &'r R) -> Result<Model, DbErr>
    where
        R: Row,
        usize: ColumnIndex<R>,
        String: Decode<'r, R::Database>,
        i64: Decode<'r, R::Database>,
        i32: Decode<'r, R::Database>,
        Uuid: Decode<'r, R::Database>,
        Json: Decode<'r, R::Database>,
    {
        Ok(Model {
            tenant_id: crate::tenant::TenantId::stored(get(row, Column::TenantId)?),
            seq: get(row, Column::Seq)?,
            id: get(row, Column::Id)?,
            occurred_at: get(row, Column::OccurredAt)?,
            recorded_at: get(row, Column::RecordedAt)?,
            actor_id: get(row, Column::ActorId)?,
            actor_type: get(row, Column::ActorType)?,
            actor_name: get(row, Column::ActorName)?,
            actor_email: get(row, Column::ActorEmail)?,
            action: get(row, Column::Action)?,
            resource_type: get(row, Column::ResourceType)?,
            resource_id: get(row, Column::ResourceId)?,
            resource_name: get(row, Column::ResourceName)?,
            outcome: get(row, Column::Outcome)?,
            request_method: get(row, Column::RequestMethod)?,
            request_path: get(row, Column::RequestPath)?,
            request_status_code: get(row, Column::RequestStatusCode)?,
            request_client_ip: get(row, Column::RequestClientIp)?,
            request_user_agent: get(row, Column::RequestUserAgent)?,
            request_id: get(row, Column::RequestId)?,
            request_client_identity: get(row, Column::RequestClientIdentity)?,
            source: get(row, Column::Source)?,
            reasoning: get(row, Column::Reasoning)?,
            metadata: get(row, Column::Metadata)?,
            idempotency_key: get(row, Column::IdempotencyKey)?,
            deleted_at: get(row, Column::DeletedAt)?,
        })
    }

    fn fields<'r, R>(row: &'r R) -> Result<EventFields<'r>, DbErr>
    where
        R: Row,
        usize: ColumnIndex<R>,
        &'r str: Decode<'r, R::Database>,
        i64: Decode<'r, R::Database>,
        i32: Decode<'r, R::Database>,
        Uuid: Decode<'r, R::Database>,
        Json: Decode<'r, R::Database>,
    {
        let text = |column| get::<R, Option<&str>>(row, column).map(Option::unwrap_or_default);
        Ok(EventFields {
            tenant_id: get(row, Column::TenantId)?,
            seq: get(row, Column::Seq)?,
            id: get(row, Column::Id)?,
            occurred_at: get(row, Column::OccurredAt)?,
            recorded_at: get(row, Column::RecordedAt)?,
            actor_id: text(Column::ActorId)?,
            actor_type: get::<R, Option<i32>>(row, Column::ActorType)?.unwrap_or_default(),
            actor_name: text(Column::ActorName)?,
            actor_email: text(Column::ActorEmail)?,
            action: text(Column::Action)?,
            resource_type: text(Column::ResourceType)?,
            resource_id: text(Column::ResourceId)?,
            resource_name: text(Column::ResourceName)?,
            outcome: get::<R, Option<i32>>(row, Column::Outcome)?.unwrap_or_default(),
            request_method: text(Column::RequestMethod)?,
            request_path: text(Column::RequestPath)?,
            request_status_code: get::<R, Option<i32>>(row, Column::RequestStatusCode)?.unwrap_or_default(),
            request_client_ip: text(Column::RequestClientIp)?,
            request_user_agent: text(Column::RequestUserAgent)?,
            request_id: text(Column::RequestId)?,
            request_client_identity: text(Column::RequestClientIdentity)?,
            source: text(Column::Source)?,
            reasoning: text(Column::Reasoning)?,
            metadata: get::<R, Option<Json>>(row, Column::Metadata)?.map(Cow::Owned),
        })
    }
}

/// The highest `seq` handed out per tenant; its row lock serializes appends.
pub mod tenant_head {
    use sea_orm::entity::prelude::*;

    /// A tenant's sequence head.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenant_heads")]
    pub struct Model {
        /// The tenant whose log this head counts.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// The highest `seq` handed out in the tenant's log (0 before its first event).
        pub head_seq: i64,
        /// Leaves in the tenant's Merkle tree (`head_seq` once caught up).
        pub tree_size: i64,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// The perfect subtrees of each tenant's Merkle tree: `(level, idx)`
/// hashes leaves `idx * 2^level .. (idx + 1) * 2^level`; level 0 holds the
/// leaves. Only ever inserted, never updated.
pub mod merkle_node {
    use sea_orm::entity::prelude::*;

    /// One stored subtree hash.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "merkle_nodes")]
    pub struct Model {
        /// The tenant whose tree holds the subtree.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// Height of the subtree above the leaves (0 is a leaf).
        #[sea_orm(primary_key, auto_increment = false)]
        pub level: i32,
        /// Position of the subtree among those of its level.
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i64,
        /// The subtree's RFC 9162 SHA-256 hash (32 bytes).
        pub hash: Vec<u8>,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// Every checkpoint the service signed, one per tenant and tree size.
pub mod merkle_checkpoint {
    use sea_orm::entity::prelude::*;

    /// A signed checkpoint note.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "merkle_checkpoints")]
    pub struct Model {
        /// The tenant whose tree the checkpoint signs.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// Number of leaves of the tree the checkpoint signs.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tree_size: i64,
        /// The tree's RFC 9162 SHA-256 root hash (32 bytes).
        pub root_hash: Vec<u8>,
        /// When the service signed it, in unix microseconds.
        pub signed_at: i64,
        /// The signed checkpoint note, as served to clients.
        #[sea_orm(column_type = "Text")]
        pub note: String,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// Secrets the replicas of one database share (the page-token key).
pub mod service_secret {
    use sea_orm::entity::prelude::*;

    /// A named secret.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "service_secrets")]
    pub struct Model {
        /// What the secret is for, for example the page-token key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The secret's bytes.
        pub value: Vec<u8>,
        /// When it was created, in unix microseconds.
        pub created_at: i64,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// API keys; the secret itself is never stored, only its SHA-256.
pub mod api_key {
    use sea_orm::entity::prelude::*;

    /// A minted key.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        /// Key id, shown by `keys list` and used by `keys revoke`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The tenant the key acts for.
        pub tenant_id: crate::tenant::TenantId,
        /// Space-separated scope names.
        pub scopes: String,
        /// SHA-256 of the key's secret.
        pub secret_hash: Vec<u8>,
        /// When it was minted, in unix microseconds.
        pub created_at: i64,
        /// When it last authenticated a call, in unix microseconds.
        pub last_used_at: Option<i64>,
        /// When it was revoked, in unix microseconds; NULL while it is valid.
        pub revoked_at: Option<i64>,
        /// A platform key (`keys create --platform`): its `tenant_id` is
        /// the reserved `_platform`, and it may read across tenants.
        pub platform: bool,
        /// The partner whose tenants a platform key is limited to; NULL for
        /// every tenant (and on a tenant's key).
        pub partner_id: Option<String>,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// The tenants registry: one row per tenant, added by the transaction that
/// creates its sequence head (its first append), with the partner an
/// operator assigned. Platform reads across tenants take their tenant set
/// from it.
pub mod tenant {
    use sea_orm::entity::prelude::*;

    /// One tenant.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// The partner (reseller, grouping) the tenant belongs to; NULL for none.
        pub partner_id: Option<String>,
        /// When the registry first saw the tenant, in unix microseconds.
        pub created_at: i64,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// A tenant's retention period, whether it is locked, and the retention
/// task's progress through the tenant's log.
pub mod retention_policy {
    use sea_orm::entity::prelude::*;

    /// One tenant's policy; no row (or a NULL period) keeps events forever.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "retention_policies")]
    pub struct Model {
        /// The tenant the policy is for.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// Events older than this many seconds (by `recorded_at`) are
        /// erased; NULL keeps them forever.
        pub period_secs: Option<i64>,
        /// Once set, the period only grows and is never unset.
        pub locked: bool,
        /// When the policy was last set, in unix microseconds.
        pub updated_at: i64,
        /// Who set it last (the caller's subject).
        pub updated_by: String,
        /// Every event up to this seq was erased, or was held when the
        /// retention task passed it (a released hold sends it back to 0).
        pub scanned_through: i64,
        /// Lowest seq the run in progress erased.
        pub run_first_seq: Option<i64>,
        /// Highest seq the run in progress erased.
        pub run_last_seq: Option<i64>,
        /// Events the run in progress erased.
        pub run_erased: i64,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// Legal holds: filters whose matching events neither retention nor
/// `Delete` may erase while the hold is active.
pub mod legal_hold {
    use sea_orm::entity::prelude::*;

    /// One hold, active until released.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "legal_holds")]
    pub struct Model {
        /// The tenant whose events it holds.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// The hold's UUIDv7.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The `audit.v1.EventFilter` of the held events, protobuf-encoded.
        pub filter: Vec<u8>,
        /// Why the events are held.
        #[sea_orm(column_type = "Text")]
        pub reason: String,
        /// When it was created, in unix microseconds.
        pub created_at: i64,
        /// Who created it (the caller's subject).
        pub created_by: String,
        /// When it was released, in unix microseconds; NULL while active.
        pub released_at: Option<i64>,
        /// Who released it.
        pub released_by: Option<String>,
        /// Why it was released.
        #[sea_orm(column_type = "Text", nullable)]
        pub release_reason: Option<String>,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// Whether each tenant's reads are recorded (access auditing).
pub mod access_audit_setting {
    use sea_orm::entity::prelude::*;

    /// One tenant's setting; no row means it was never set, so off.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "access_audit_settings")]
    pub struct Model {
        /// The tenant whose reads it is about.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// While true, each `Query`, `Get`, `Export` and `Watch` call of the
        /// tenant appends an `audit.log.read` event.
        pub enabled: bool,
        /// When it was last set, in unix microseconds.
        pub updated_at: i64,
        /// Who set it last (the caller's subject).
        pub updated_by: String,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();
}

/// Rollups: a tenant's live events counted per hour of `occurred_at` and
/// per combination of the dimensions `Stats` groups on. `Append`, `Delete`
/// and retention keep them in their own transactions; a row reaching 0 is
/// deleted, so every row counts at least one live event.
pub mod event_rollup {
    use sea_orm::entity::prelude::*;

    /// Width of a rollup's time bucket: one hour, in microseconds.
    pub const HOUR_MICROS: i64 = 3_600_000_000;

    /// Start of the hour holding `micros` (floor division, also before 1970).
    pub fn hour_of(micros: i64) -> i64 {
        micros - micros.rem_euclid(HOUR_MICROS)
    }

    /// The live events of one key in one hour.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "event_rollups")]
    pub struct Model {
        /// The tenant whose events are counted.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: crate::tenant::TenantId,
        /// Start of the hour of `occurred_at`, unix microseconds.
        #[sea_orm(primary_key, auto_increment = false)]
        pub hour_start: i64,
        /// The events' action.
        #[sea_orm(primary_key, auto_increment = false)]
        pub action: String,
        /// The events' `Outcome` enum value.
        #[sea_orm(primary_key, auto_increment = false)]
        pub outcome: i32,
        /// The events' `ActorType` enum value.
        #[sea_orm(primary_key, auto_increment = false)]
        pub actor_type: i32,
        /// The events' resource type (empty when none).
        #[sea_orm(primary_key, auto_increment = false)]
        pub resource_type: String,
        /// The events' source (empty when none).
        #[sea_orm(primary_key, auto_increment = false)]
        pub source: String,
        /// How many live events have this key in this hour (at least 1).
        pub event_count: i64,
    }

    /// Relations to other tables: none (sea-orm requires the enum).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    tenant_scoped!();

    impl Entity {
        /// The rollup rows of the tenants a platform read across tenants
        /// spans (see `audit_event::Entity::of_registered_tenants`).
        pub fn of_registered_tenants(partner: Option<&crate::tenant::PartnerId>) -> Select<Entity> {
            Entity::find().filter(Column::TenantId.in_subquery(super::registered_tenants(partner)))
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, EntityTrait, QueryTrait, Value};

    use super::*;

    fn acme() -> TenantId {
        TenantId::parse("acme", "tenant").unwrap()
    }

    #[test]
    fn each_tenant_tables_constructor_binds_its_tenant() {
        let tenant = acme();
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let placeholder = if backend == DbBackend::Postgres { "$1" } else { "?" };
            let statements = [
                (
                    "audit_events",
                    audit_event::Entity::of_tenant(&tenant).build(backend),
                ),
                (
                    "tenant_heads",
                    tenant_head::Entity::of_tenant(&tenant).build(backend),
                ),
                (
                    "merkle_nodes",
                    merkle_node::Entity::of_tenant(&tenant).build(backend),
                ),
                (
                    "merkle_checkpoints",
                    merkle_checkpoint::Entity::of_tenant(&tenant).build(backend),
                ),
                ("api_keys", api_key::Entity::of_tenant(&tenant).build(backend)),
                ("tenants", tenant::Entity::of_tenant(&tenant).build(backend)),
                (
                    "retention_policies",
                    retention_policy::Entity::of_tenant(&tenant).build(backend),
                ),
                (
                    "legal_holds",
                    legal_hold::Entity::of_tenant(&tenant).build(backend),
                ),
                (
                    "access_audit_settings",
                    access_audit_setting::Entity::of_tenant(&tenant).build(backend),
                ),
                (
                    "event_rollups",
                    event_rollup::Entity::of_tenant(&tenant).build(backend),
                ),
            ];
            let partner = crate::tenant::PartnerId::parse("p1", "partner").unwrap();
            let across = audit_event::Entity::of_registered_tenants(Some(&partner)).build(backend);
            assert!(across.sql.contains("FROM \"tenants\""), "{}", across.sql);
            assert_eq!(
                across.values.as_ref().unwrap().0,
                [Value::from(TenantId::platform()), Value::from("p1")],
                "every tenant but _platform, of the partner"
            );
            for (table, statement) in statements {
                let condition = format!("WHERE \"{table}\".\"tenant_id\" = {placeholder}");
                assert!(
                    statement.sql.contains(&condition),
                    "{backend:?} {table}: {}",
                    statement.sql
                );
                let values = statement.values.expect("bound values").0;
                assert_eq!(values, vec![Value::from("acme")], "{backend:?} {table}");
            }
        }
    }

    #[test]
    fn erasing_clears_exactly_the_content_columns() {
        use sea_orm::{IdenStatic, Iterable, ModelTrait};

        let whole = audit_event::Model {
            tenant_id: acme(),
            seq: 7,
            id: uuid::Uuid::now_v7(),
            occurred_at: Some(1),
            recorded_at: 2,
            actor_id: Some("a".into()),
            actor_type: Some(1),
            actor_name: Some("n".into()),
            actor_email: Some("e".into()),
            action: Some("x.y".into()),
            resource_type: Some("r".into()),
            resource_id: Some("i".into()),
            resource_name: Some("m".into()),
            outcome: Some(2),
            request_method: Some("GET".into()),
            request_path: Some("/".into()),
            request_status_code: Some(200),
            request_client_ip: Some("192.0.2.1".into()),
            request_user_agent: Some("ua".into()),
            request_client_identity: Some("spiffe://example.org/w".into()),
            request_id: Some("q".into()),
            source: Some("s".into()),
            reasoning: Some("why".into()),
            metadata: Some(serde_json::json!({"k": "v"})),
            idempotency_key: Some("k".into()),
            deleted_at: None,
        };
        let erased = whole.clone().erased(3);
        for column in audit_event::Column::iter() {
            let cleared = erased.get(column) != whole.get(column);
            let content = audit_event::CONTENT_COLUMNS
                .iter()
                .any(|c| c.as_str() == column.as_str());
            assert_eq!(
                cleared,
                content || matches!(column, audit_event::Column::DeletedAt),
                "{column:?}"
            );
        }
    }

    #[test]
    fn a_tenant_update_binds_its_tenant() {
        use sea_orm::sea_query::Expr;

        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let statement = retention_policy::Entity::update_of_tenant(&acme())
                .col_expr(retention_policy::Column::RunErased, Expr::val(0i64))
                .build(backend);
            assert!(
                statement
                    .sql
                    .contains("WHERE \"retention_policies\".\"tenant_id\" ="),
                "{}",
                statement.sql
            );
            let values = statement.values.expect("bound values").0;
            assert_eq!(values.last(), Some(&Value::from("acme")), "{backend:?}");
        }
    }

    #[test]
    fn a_statement_on_a_tenant_table_without_its_constructor_names_no_tenant() {
        // What the constructors exist for: a bare `find()` is unscoped.
        let bare = audit_event::Entity::find().build(DbBackend::Postgres);
        assert!(!bare.sql.contains("tenant_id\" ="), "{}", bare.sql);
    }

    #[test]
    fn a_tenant_statement_binds_the_tenant_as_its_first_value() {
        let statement = tenant_statement(
            DbBackend::Postgres,
            &acme(),
            "SELECT head_seq FROM tenant_heads WHERE tenant_id = $1 AND head_seq > $2",
            [7i64.into()],
        );
        let values = statement.values.expect("bound values").0;
        assert_eq!(values, vec![Value::from("acme"), Value::from(7i64)]);
    }

    #[test]
    #[should_panic(expected = "uses $1")]
    fn a_raw_statement_that_does_not_use_the_tenant_is_refused() {
        tenant_statement(
            DbBackend::Postgres,
            &acme(),
            "SELECT head_seq FROM tenant_heads WHERE head_seq > $10",
            [7i64.into()],
        );
    }
}
