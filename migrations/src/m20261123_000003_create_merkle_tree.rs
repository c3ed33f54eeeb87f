//! Tamper evidence: the perfect subtrees of each tenant's Merkle tree, the
//! tree size beside the sequence head, and the signed checkpoints.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MerkleNodes {
    Table,
    TenantId,
    Level,
    Idx,
    Hash,
}

#[derive(DeriveIden)]
enum MerkleCheckpoints {
    Table,
    TenantId,
    TreeSize,
    RootHash,
    SignedAt,
    Note,
}

#[derive(DeriveIden)]
enum TenantHeads {
    Table,
    TreeSize,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Node (level, idx) hashes leaves idx * 2^level .. (idx + 1) * 2^level;
        // level 0 holds the leaves. Rows are only ever inserted.
        manager
            .create_table(
                Table::create()
                    .table(MerkleNodes::Table)
                    .if_not_exists()
                    .col(string(MerkleNodes::TenantId))
                    .col(integer(MerkleNodes::Level))
                    .col(big_integer(MerkleNodes::Idx))
                    .col(blob(MerkleNodes::Hash))
                    .primary_key(
                        Index::create()
                            .col(MerkleNodes::TenantId)
                            .col(MerkleNodes::Level)
                            .col(MerkleNodes::Idx),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MerkleCheckpoints::Table)
                    .if_not_exists()
                    .col(string(MerkleCheckpoints::TenantId))
                    .col(big_integer(MerkleCheckpoints::TreeSize))
                    .col(blob(MerkleCheckpoints::RootHash))
                    .col(big_integer(MerkleCheckpoints::SignedAt))
                    .col(text(MerkleCheckpoints::Note))
                    .primary_key(
                        Index::create()
                            .col(MerkleCheckpoints::TenantId)
                            .col(MerkleCheckpoints::TreeSize),
                    )
                    .to_owned(),
            )
            .await?;
        // Leaves in the tree; behind head_seq only for events recorded
        // before this migration, which the next write adds.
        manager
            .alter_table(
                Table::alter()
                    .table(TenantHeads::Table)
                    .add_column(big_integer(TenantHeads::TreeSize).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(TenantHeads::Table)
                    .drop_column(TenantHeads::TreeSize)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(MerkleCheckpoints::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(MerkleNodes::Table).to_owned())
            .await
    }
}
