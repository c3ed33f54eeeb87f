//! SeaORM entities of the tables created in `migrations/`.

/// One row per event of a tenant's log; `(tenant_id, seq)` is the key.
/// Content columns are NULL once an event is erased by `Delete`.
pub mod audit_event {
    use sea_orm::entity::prelude::*;

    /// A stored event. Times are unix microseconds.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        #[sea_orm(unique)]
        pub id: Uuid,
        pub occurred_at: Option<i64>,
        pub recorded_at: i64,
        pub actor_id: Option<String>,
        pub actor_type: Option<i32>,
        pub actor_name: Option<String>,
        pub actor_email: Option<String>,
        pub action: Option<String>,
        pub resource_type: Option<String>,
        pub resource_id: Option<String>,
        pub resource_name: Option<String>,
        pub outcome: Option<i32>,
        pub request_method: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub request_path: Option<String>,
        pub request_status_code: Option<i32>,
        pub request_client_ip: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub request_user_agent: Option<String>,
        pub request_id: Option<String>,
        pub source: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub reasoning: Option<String>,
        #[sea_orm(column_type = "JsonBinary", nullable)]
        pub metadata: Option<Json>,
        pub idempotency_key: Option<String>,
        pub deleted_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        /// Decodes a row of `Entity::find()` (every column, in declaration
        /// order) by position. The derived decoder looks each column up by
        /// name, which on a page of events costs as much as reading it.
        pub fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
            Ok(Self {
                tenant_id: row.try_get_by_index(Column::TenantId as usize)?,
                seq: row.try_get_by_index(Column::Seq as usize)?,
                id: row.try_get_by_index(Column::Id as usize)?,
                occurred_at: row.try_get_by_index(Column::OccurredAt as usize)?,
                recorded_at: row.try_get_by_index(Column::RecordedAt as usize)?,
                actor_id: row.try_get_by_index(Column::ActorId as usize)?,
                actor_type: row.try_get_by_index(Column::ActorType as usize)?,
                actor_name: row.try_get_by_index(Column::ActorName as usize)?,
                actor_email: row.try_get_by_index(Column::ActorEmail as usize)?,
                action: row.try_get_by_index(Column::Action as usize)?,
                resource_type: row.try_get_by_index(Column::ResourceType as usize)?,
                resource_id: row.try_get_by_index(Column::ResourceId as usize)?,
                resource_name: row.try_get_by_index(Column::ResourceName as usize)?,
                outcome: row.try_get_by_index(Column::Outcome as usize)?,
                request_method: row.try_get_by_index(Column::RequestMethod as usize)?,
                request_path: row.try_get_by_index(Column::RequestPath as usize)?,
                request_status_code: row.try_get_by_index(Column::RequestStatusCode as usize)?,
                request_client_ip: row.try_get_by_index(Column::RequestClientIp as usize)?,
                request_user_agent: row.try_get_by_index(Column::RequestUserAgent as usize)?,
                request_id: row.try_get_by_index(Column::RequestId as usize)?,
                source: row.try_get_by_index(Column::Source as usize)?,
                reasoning: row.try_get_by_index(Column::Reasoning as usize)?,
                metadata: row.try_get_by_index(Column::Metadata as usize)?,
                idempotency_key: row.try_get_by_index(Column::IdempotencyKey as usize)?,
                deleted_at: row.try_get_by_index(Column::DeletedAt as usize)?,
            })
        }
    }
}

/// The highest `seq` handed out per tenant; its row lock serializes appends.
pub mod tenant_head {
    use sea_orm::entity::prelude::*;

    /// A tenant's sequence head.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenant_heads")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        pub head_seq: i64,
        /// Leaves in the tenant's Merkle tree (`head_seq` once caught up).
        pub tree_size: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
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
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub level: i32,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i64,
        pub hash: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every checkpoint the service signed, one per tenant and tree size.
pub mod merkle_checkpoint {
    use sea_orm::entity::prelude::*;

    /// A signed checkpoint note.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "merkle_checkpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub tree_size: i64,
        pub root_hash: Vec<u8>,
        pub signed_at: i64,
        #[sea_orm(column_type = "Text")]
        pub note: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Secrets the replicas of one database share (the page-token key).
pub mod service_secret {
    use sea_orm::entity::prelude::*;

    /// A named secret.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "service_secrets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub value: Vec<u8>,
        pub created_at: i64,
    }

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
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: String,
        /// Space-separated scope names.
        pub scopes: String,
        pub secret_hash: Vec<u8>,
        pub created_at: i64,
        pub last_used_at: Option<i64>,
        pub revoked_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
