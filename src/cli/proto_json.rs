//! The protobuf JSON mapping of the service's own messages, by the
//! maintained `prost-reflect` over the descriptor set the service serves
//! through reflection: a prost message is transcoded to a `DynamicMessage`
//! (through its encoding) and serialized; read back the other way.
//!
//! Reading back goes JSON → `DynamicMessage` → encoding → prost message, so
//! re-encoding the result with prost gives the deterministic bytes a leaf
//! hashes (map entries such as `Struct` fields in key order), whatever order
//! the JSON had.

use std::io::Write;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::proto::{AuditEvent, ExportResponse, FILE_DESCRIPTOR_SET};

/// JSON of `AuditEvent` and `ExportResponse`, the messages of an export.
#[derive(Debug, Clone)]
pub struct ProtoJson {
    event: MessageDescriptor,
    response: MessageDescriptor,
    metadata: MessageDescriptor,
    filter: MessageDescriptor,
    options: SerializeOptions,
}

impl ProtoJson {
    /// Loads the descriptors of `audit.v1` (and the well-known types it
    /// imports) from the service's descriptor set.
    pub fn new() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)?;
        let message = |name: &str| {
            pool.get_message_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("the descriptor set has no {name}"))
        };
        Ok(Self {
            event: message("audit.v1.AuditEvent")?,
            response: message("audit.v1.ExportResponse")?,
            metadata: message("google.protobuf.Struct")?,
            filter: message("audit.v1.EventFilter")?,
            // The canonical mapping: lowerCamelCase names, enums by name,
            // 64-bit integers as strings, fields at their default omitted.
            options: SerializeOptions::new(),
        })
    }

    /// Writes `event` as one JSON object (no newline).
    pub fn write_event(&self, out: &mut dyn Write, event: &AuditEvent) -> anyhow::Result<()> {
        self.write(out, &self.event, event)
    }

    /// Writes `response` as one JSON object (no newline): `{"header": ..}`,
    /// `{"chunk": ..}` or `{"checkpoint": ..}`, as its part is.
    pub fn write_response(&self, out: &mut dyn Write, response: &ExportResponse) -> anyhow::Result<()> {
        self.write(out, &self.response, response)
    }

    /// Writes an event's `metadata` as its JSON object, as it stands in the
    /// event's JSON.
    pub fn write_metadata(&self, out: &mut dyn Write, metadata: &prost_types::Struct) -> anyhow::Result<()> {
        self.write(out, &self.metadata, metadata)
    }

    /// Writes an `EventFilter` as its JSON object.
    pub fn write_filter(
        &self,
        out: &mut dyn Write,
        filter: &crate::proto::EventFilter,
    ) -> anyhow::Result<()> {
        self.write(out, &self.filter, filter)
    }

    /// An `AuditEvent` from its JSON.
    pub fn event(&self, json: serde_json::Value) -> Result<AuditEvent, String> {
        Self::read(&self.event, json)
    }

    /// An `ExportResponse` from its JSON.
    pub fn response(&self, json: serde_json::Value) -> Result<ExportResponse, String> {
        Self::read(&self.response, json)
    }

    fn write<M: prost::Message>(
        &self,
        out: &mut dyn Write,
        descriptor: &MessageDescriptor,
        message: &M,
    ) -> anyhow::Result<()> {
        let mut dynamic = DynamicMessage::new(descriptor.clone());
        dynamic.transcode_from(message)?;
        let mut serializer = serde_json::Serializer::new(out);
        dynamic.serialize_with_options(&mut serializer, &self.options)?;
        Ok(())
    }

    fn read<M: prost::Message + Default>(
        descriptor: &MessageDescriptor,
        json: serde_json::Value,
    ) -> Result<M, String> {
        let dynamic = DynamicMessage::deserialize(descriptor.clone(), json).map_err(|e| e.to_string())?;
        dynamic.transcode_to().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::proto::{Actor, ExportHeader, export_response::Part};

    fn event() -> AuditEvent {
        AuditEvent {
            id: "0190a000-0000-7000-8000-000000000001".into(),
            tenant_id: "acme".into(),
            seq: 9_007_199_254_740_993,
            recorded_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000,
            }),
            actor: Some(Actor {
                id: "alice".into(),
                r#type: 2,
                ..Default::default()
            }),
            action: "user.login".into(),
            metadata: Some(crate::convert::json_to_struct(serde_json::json!({
                "z": 0.098_009_800_000_000_01, "a": [null, true, "x"], "m": {}
            }))),
            ..Default::default()
        }
    }

    fn text(json: &ProtoJson, event: &AuditEvent) -> String {
        let mut out = Vec::new();
        json.write_event(&mut out, event).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn events_are_written_in_the_canonical_mapping() {
        let json = ProtoJson::new().unwrap();
        let value: serde_json::Value = serde_json::from_str(&text(&json, &event())).unwrap();
        assert_eq!(value["seq"], "9007199254740993", "64-bit integers as strings");
        assert_eq!(value["tenantId"], "acme", "lowerCamelCase names");
        assert_eq!(value["actor"]["type"], "ACTOR_TYPE_API_KEY", "enums by name");
        assert_eq!(value["recordedAt"], "2023-11-14T22:13:20.123456Z");
        assert!(value.get("source").is_none(), "defaults omitted");
        assert_eq!(value["metadata"]["a"], serde_json::json!([null, true, "x"]));
    }

    #[test]
    fn events_read_back_encode_to_the_same_bytes() {
        let json = ProtoJson::new().unwrap();
        let original = event();
        let value: serde_json::Value = serde_json::from_str(&text(&json, &original)).unwrap();
        let back = json.event(value).unwrap();
        assert_eq!(back.encode_to_vec(), original.encode_to_vec());
    }

    #[test]
    fn responses_are_one_object_named_by_their_part() {
        let json = ProtoJson::new().unwrap();
        let header = ExportResponse {
            part: Some(Part::Header(ExportHeader {
                after_seq: 3,
                tree_size: 5,
                ..Default::default()
            })),
        };
        let mut out = Vec::new();
        json.write_response(&mut out, &header).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"header": {"afterSeq": "3", "treeSize": "5"}})
        );
        assert_eq!(json.response(value).unwrap(), header);
        assert!(
            json.response(serde_json::json!({"headr": {}})).is_err(),
            "unknown fields refused"
        );
    }
}
