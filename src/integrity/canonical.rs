//! The canonical bytes of an event, which its Merkle leaf commits to.
//!
//! They are the deterministic protobuf encoding of the `audit.v1.AuditEvent`
//! the service returns for the event: fields in field-number order, fields
//! at their default value omitted, `metadata` (a `google.protobuf.Struct`)
//! with its keys in byte order. Because the leaf is computed from the stored
//! row through the same conversion `Get` and `Query` use, anyone holding an
//! event as the API returned it can recompute its leaf:
//! `SHA-256(0x00 || AuditEvent.encode())`.

use prost::Message as _;

use super::merkle::{Hash, leaf_hash};
use crate::convert::event_to_proto;
use crate::entity::audit_event;

/// The bytes the event's leaf hashes.
pub fn canonical_bytes(event: &audit_event::Model) -> Vec<u8> {
    event_to_proto(event.clone()).encode_to_vec()
}

/// The event's Merkle leaf hash.
pub fn event_leaf(event: &audit_event::Model) -> Hash {
    leaf_hash(&canonical_bytes(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantId;

    fn event() -> audit_event::Model {
        audit_event::Model {
            tenant_id: TenantId::parse("acme", "tenant").unwrap(),
            seq: 7,
            id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            occurred_at: Some(1_700_000_000_000_000),
            recorded_at: 1_700_000_000_500_000,
            actor_id: Some("alice".into()),
            actor_type: Some(1),
            actor_name: Some(String::new()),
            actor_email: None,
            action: Some("user.login".into()),
            resource_type: None,
            resource_id: None,
            resource_name: None,
            outcome: Some(2),
            request_method: None,
            request_path: None,
            request_status_code: None,
            request_client_ip: Some("10.0.0.1".into()),
            request_user_agent: None,
            request_id: None,
            request_client_identity: None,
            source: Some("sso".into()),
            reasoning: None,
            metadata: Some(serde_json::json!({"b": 1, "a": [true, "x"], "c": {"z": null}})),
            idempotency_key: Some("k".into()),
            deleted_at: None,
        }
    }

    #[test]
    fn metadata_key_order_does_not_change_the_bytes() {
        let mut reordered = event();
        reordered.metadata = Some(serde_json::json!({"c": {"z": null}, "a": [true, "x"], "b": 1}));
        assert_eq!(canonical_bytes(&event()), canonical_bytes(&reordered));
    }

    #[test]
    fn empty_text_and_absent_text_encode_alike() {
        let mut absent = event();
        absent.actor_name = None;
        assert_eq!(event_leaf(&event()), event_leaf(&absent));
    }

    type Edit = Box<dyn Fn(&mut audit_event::Model)>;

    #[test]
    fn every_content_field_changes_the_leaf() {
        let base = event_leaf(&event());
        let edits: Vec<Edit> = vec![
            Box::new(|e| e.seq = 8),
            Box::new(|e| e.tenant_id = TenantId::parse("other", "tenant").unwrap()),
            Box::new(|e| e.occurred_at = Some(1)),
            Box::new(|e| e.recorded_at += 1),
            Box::new(|e| e.actor_id = Some("mallory".into())),
            Box::new(|e| e.action = Some("user.logout".into())),
            Box::new(|e| e.outcome = Some(3)),
            Box::new(|e| e.request_client_ip = Some("10.0.0.2".into())),
            Box::new(|e| e.metadata = Some(serde_json::json!({"b": 2}))),
        ];
        for edit in edits {
            let mut edited = event();
            edit(&mut edited);
            assert_ne!(event_leaf(&edited), base, "{edited:?}");
        }
    }

    #[test]
    fn the_encoding_is_pinned() {
        // A change here changes every leaf ever written: it must never happen
        // without a new, documented leaf version.
        let hex: String = event_leaf(&event()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED_LEAF);
    }

    const PINNED_LEAF: &str = "9f8884765b9c1db882d35623c41d3d1fb8d0318db9cee6a5f3059b08c6a2dfe6";
}
