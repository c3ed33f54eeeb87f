//! Compiles a parsed expression ([`Node`]) to a SeaORM condition, so the
//! database does the filtering with the semantics [`Node::matches`] applies
//! in memory, on SQLite and PostgreSQL alike.
//!
//! Every value is a bound parameter; metadata keys are bound too (and were
//! restricted to `[A-Za-z0-9_-]+` by the parser). Each metadata comparison
//! is guarded by a `CASE` on the JSON value's type, so it is never NULL and
//! `NOT` means what it says even for a missing key.

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{Condition, DbBackend};

use super::expr::{Comparison, Field, MetadataTest, Node, Test, TextTest};
use super::prefix::prefix_upper_bound;

/// The condition selecting the events `node` matches.
pub fn condition(node: &Node, backend: DbBackend) -> Condition {
    match node {
        Node::And(parts) => parts
            .iter()
            .fold(Condition::all(), |all, part| all.add(condition(part, backend))),
        Node::Or(parts) => parts
            .iter()
            .fold(Condition::any(), |any, part| any.add(condition(part, backend))),
        Node::Not(part) => Condition::all().add(condition(part, backend)).not(),
        Node::Test(test) => Condition::all().add(test_expr(test, backend)),
        Node::Decided(holds) => Condition::all().add(Expr::val(1).eq(if *holds { 1 } else { 0 })),
    }
}

fn test_expr(test: &Test, backend: DbBackend) -> Expr {
    match test {
        Test::Text(Field::PartnerId, test) => partner_expr(test, backend),
        Test::Text(field, test) => text_expr(text_column(*field, backend), test),
        Test::Enum(field, value) => Expr::col(field.column()).eq(*value),
        Test::Number(field, comparison, value) => compare(Expr::col(field.column()), *comparison, *value),
        Test::Metadata(key, test) => metadata_expr(key, test, backend),
    }
}

/// The event's tenant is one the registry assigns a partner passing
/// `test`: never NULL, so `NOT` includes the tenants of no partner, as a
/// missing text field is treated.
fn partner_expr(test: &TextTest, backend: DbBackend) -> Expr {
    use crate::entity::tenant as registry;
    let partner = match backend {
        DbBackend::Postgres => Expr::cust(r#""tenants"."partner_id" COLLATE "C""#),
        _ => Expr::col((registry::Entity, registry::Column::PartnerId)),
    };
    let of_partners = sea_orm::sea_query::Query::select()
        .column((registry::Entity, registry::Column::TenantId))
        .from(registry::Entity)
        .and_where(text_expr(partner, test))
        .to_owned();
    Expr::col((
        crate::entity::audit_event::Entity,
        crate::entity::audit_event::Column::TenantId,
    ))
    .in_subquery(of_partners)
}

/// A text column, compared byte-wise: on PostgreSQL the long-text columns
/// were created without `COLLATE "C"`, so they get it here (the others have
/// it already, and keep their indexes usable).
fn text_column(field: Field, backend: DbBackend) -> Expr {
    let uncollated = match field {
        Field::RequestPath => Some(r#""request_path" COLLATE "C""#),
        Field::RequestUserAgent => Some(r#""request_user_agent" COLLATE "C""#),
        Field::Reasoning => Some(r#""reasoning" COLLATE "C""#),
        Field::TenantId => Some(r#""audit_events"."tenant_id" COLLATE "C""#),
        _ => None,
    };
    match uncollated {
        Some(collated) if backend == DbBackend::Postgres => Expr::cust(collated),
        _ => Expr::col(field.column()),
    }
}

fn compare<V: Into<sea_orm::Value>>(left: Expr, comparison: Comparison, value: V) -> Expr {
    let value = Expr::val(value);
    match comparison {
        Comparison::Eq => left.eq(value),
        Comparison::Lt => left.lt(value),
        Comparison::Le => left.lte(value),
        Comparison::Gt => left.gt(value),
        Comparison::Ge => left.gte(value),
    }
}

/// `value` passing a text test; text compares byte-wise on both backends
/// (SQLite's BINARY collation, PostgreSQL's `COLLATE "C"`).
fn text_expr(value: Expr, test: &TextTest) -> Expr {
    match test {
        TextTest::Equals(s) => value.eq(s.as_str()),
        // A range rather than LIKE, so an index on the column serves it.
        TextTest::Prefix(s) => match prefix_upper_bound(s) {
            Some(upper) => value.clone().gte(s.as_str()).and(value.lt(upper)),
            None => value.gte(s.as_str()),
        },
        TextTest::Compare(comparison, s) => compare(value, *comparison, s.as_str()),
        // Both sides are lowered ASCII-only: SQLite's lower() and PostgreSQL's
        // under COLLATE "C" fold only A-Z, and the needle is lowered in Rust.
        TextTest::Contains(s) => {
            let pattern = format!("%{}%", escape_like(s));
            Expr::expr(Func::lower(value)).like(LikeExpr::new(pattern).escape('\\'))
        }
        TextTest::Present => value.ne(""),
    }
}

/// `s` with LIKE's wildcards and the escape character escaped.
fn escape_like(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// How one backend reaches a top-level key of the `metadata` JSON column.
struct MetadataKey<'a> {
    backend: DbBackend,
    key: &'a str,
}

impl MetadataKey<'_> {
    fn postgres(&self) -> bool {
        self.backend == DbBackend::Postgres
    }

    /// SQLite's JSON path of the key (safe: the key is `[A-Za-z0-9_-]+`).
    fn path(&self) -> String {
        format!("$.\"{}\"", self.key)
    }

    /// The JSON type of the value, NULL when the key is missing.
    fn json_type(&self) -> Expr {
        if self.postgres() {
            Expr::cust_with_values(r#"jsonb_typeof("metadata" -> $1)"#, [self.key])
        } else {
            Expr::cust_with_values(r#"json_type("metadata", ?)"#, [self.path()])
        }
    }

    /// The value as text (meaningful for strings), compared byte-wise.
    fn text(&self) -> Expr {
        if self.postgres() {
            Expr::cust_with_values(r#"("metadata" ->> $1) COLLATE "C""#, [self.key])
        } else {
            Expr::cust_with_values(r#"json_extract("metadata", ?)"#, [self.path()])
        }
    }

    /// The value as a double (meaningful for numbers).
    fn number(&self) -> Expr {
        if self.postgres() {
            Expr::cust_with_values(r#"CAST("metadata" ->> $1 AS double precision)"#, [self.key])
        } else {
            Expr::cust_with_values(r#"json_extract("metadata", ?)"#, [self.path()])
        }
    }

    fn is_string(&self) -> Expr {
        self.json_type()
            .eq(if self.postgres() { "string" } else { "text" })
    }

    fn is_number(&self) -> Expr {
        if self.postgres() {
            self.json_type().eq("number")
        } else {
            self.json_type().is_in(["integer", "real"])
        }
    }

    fn is_bool(&self, value: bool) -> Expr {
        let name = if value { "true" } else { "false" };
        if self.postgres() {
            self.json_type()
                .eq("boolean")
                .and(Expr::cust_with_values(r#""metadata" ->> $1"#, [self.key]).eq(name))
        } else {
            self.json_type().eq(name)
        }
    }
}

/// `CASE WHEN guard THEN test ELSE FALSE END`: never NULL, and `test` runs
/// only on values of the right type (PostgreSQL's casts would fail otherwise).
fn guarded(guard: Expr, test: Expr) -> Expr {
    Expr::case(guard, test).finally(false).into()
}

fn metadata_expr(key: &str, test: &MetadataTest, backend: DbBackend) -> Expr {
    let key = MetadataKey { backend, key };
    match test {
        MetadataTest::Text(test) => guarded(key.is_string(), text_expr(key.text(), test)),
        MetadataTest::Number(comparison, value) => {
            guarded(key.is_number(), compare(key.number(), *comparison, *value))
        }
        MetadataTest::Bool(value) => guarded(key.is_bool(*value), Expr::val(true)),
        MetadataTest::Present => guarded(key.json_type().ne("null"), Expr::val(true)),
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{EntityTrait, QueryFilter, QueryTrait};

    use super::*;
    use crate::entity::audit_event::Entity;
    use crate::filter::expr::parse;

    fn sql(source: &str, backend: DbBackend) -> String {
        let node = parse(source).unwrap().unwrap();
        Entity::find()
            .filter(condition(&node, backend))
            .build(backend)
            .to_string()
    }

    #[test]
    fn metadata_keys_and_values_are_bound_per_backend() {
        let sqlite = sql(r#"metadata.region = "eu""#, DbBackend::Sqlite);
        assert!(
            sqlite.contains(r#"(json_type("metadata", '$."region"')) = 'text'"#),
            "{sqlite}"
        );
        assert!(
            sqlite.contains(r#"(json_extract("metadata", '$."region"')) = 'eu'"#),
            "{sqlite}"
        );
        let postgres = sql(r#"metadata.region = "eu""#, DbBackend::Postgres);
        assert!(
            postgres.contains(r#"(jsonb_typeof("metadata" -> 'region')) = 'string'"#),
            "{postgres}"
        );
        assert!(
            postgres.contains(r#"(("metadata" ->> 'region') COLLATE "C") = 'eu'"#),
            "{postgres}"
        );
    }

    #[test]
    fn substring_escapes_like_wildcards() {
        let text = sql(r#"action : "50%_off\\""#, DbBackend::Sqlite);
        assert!(text.contains(r#"LIKE '%50\%\_off\\%' ESCAPE '\'"#), "{text}");
    }

    #[test]
    fn long_text_columns_compare_byte_wise_on_postgres() {
        let text = sql(r#"request.path < "/b""#, DbBackend::Postgres);
        assert!(text.contains(r#"("request_path" COLLATE "C") < '/b'"#), "{text}");
        let text = sql(r#"request.path < "/b""#, DbBackend::Sqlite);
        assert!(text.contains(r#""request_path" < '/b'"#), "{text}");
    }

    #[test]
    fn prefixes_become_ranges() {
        let text = sql(r#"action = "user.*""#, DbBackend::Postgres);
        assert!(
            text.contains(r#""action" >= 'user.' AND "action" < 'user/'"#),
            "{text}"
        );
    }

    #[test]
    fn partner_id_is_decided_by_the_registry() {
        let text = sql(r#"partner_id = "p-1""#, DbBackend::Postgres);
        assert!(
            text.contains(r#""audit_events"."tenant_id" IN (SELECT "tenants"."tenant_id" FROM "tenants" WHERE ("tenants"."partner_id" COLLATE "C") = 'p-1')"#),
            "{text}"
        );
        let text = sql(r#"NOT partner_id:*"#, DbBackend::Sqlite);
        assert!(
            text.contains(r#"NOT "audit_events"."tenant_id" IN (SELECT"#),
            "{text}"
        );
    }

    #[test]
    fn a_bound_partner_comparison_is_a_constant() {
        let node = parse(r#"partner_id = "p-*" OR action = "a""#).unwrap().unwrap();
        let bound = node.bind_partner(Some("p-7"));
        assert!(!bound.names_partner());
        let text = Entity::find()
            .filter(condition(&bound, DbBackend::Sqlite))
            .build(DbBackend::Sqlite)
            .to_string();
        assert!(!text.contains("tenants"), "{text}");
        assert!(text.contains("1 = 1"), "{text}");
    }
}
