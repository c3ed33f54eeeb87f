// The canonical bytes of an event, which its Merkle leaf commits to
// (docs/integrity.md, "Canonical bytes of an event"): the deterministic
// protobuf encoding of the AuditEvent the service returned. Written here
// field by field, as the service's encoder (prost) writes it, rather than
// with toBinary: a JS object orders integer-like keys ("2" before "10")
// before the others, whereas the leaf wants a Struct's keys in byte order.
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Actor, AuditEvent, RequestContext, Resource } from "../gen/audit/v1/audit_pb";

const utf8 = new TextEncoder();

function str(w: BinaryWriter, field: number, value: string): void {
  if (value !== "") w.tag(field, WireType.LengthDelimited).string(value);
}

function enumOrInt32(w: BinaryWriter, field: number, value: number): void {
  if (value !== 0) w.tag(field, WireType.Varint).int32(value);
}

function message(w: BinaryWriter, field: number, body: (w: BinaryWriter) => void): void {
  w.tag(field, WireType.LengthDelimited).fork();
  body(w);
  w.join();
}

function timestamp(w: BinaryWriter, t: Timestamp): void {
  if (t.seconds !== 0n) w.tag(1, WireType.Varint).int64(t.seconds);
  if (t.nanos !== 0) w.tag(2, WireType.Varint).int32(t.nanos);
}

function actor(w: BinaryWriter, a: Actor): void {
  str(w, 1, a.id);
  enumOrInt32(w, 2, a.type);
  str(w, 3, a.name);
  str(w, 4, a.email);
}

function resource(w: BinaryWriter, r: Resource): void {
  str(w, 1, r.type);
  str(w, 2, r.id);
  str(w, 3, r.name);
}

function request(w: BinaryWriter, r: RequestContext): void {
  str(w, 1, r.method);
  str(w, 2, r.path);
  enumOrInt32(w, 3, r.statusCode);
  str(w, 4, r.clientIp);
  str(w, 5, r.userAgent);
  str(w, 6, r.requestId);
  str(w, 7, r.clientIdentity);
}

/** Compares two strings by their UTF-8 bytes (a Rust BTreeMap's order). */
export function compareBytes(a: string, b: string): number {
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

// google.protobuf.Struct: map<string, Value> fields = 1. A map entry omits
// a default key (""), as prost writes it; a Value always has its kind.
function struct(w: BinaryWriter, object: JsonObject): void {
  for (const key of Object.keys(object).sort(compareBytes)) {
    message(w, 1, (entry) => {
      str(entry, 1, key);
      message(entry, 2, (v) => value(v, object[key]));
    });
  }
}

// google.protobuf.Value: a oneof, so the chosen member is written even at
// its default (0, "", false).
function value(w: BinaryWriter, v: JsonValue): void {
  if (v === null) {
    w.tag(1, WireType.Varint).int32(0);
  } else if (typeof v === "number") {
    // The service stores -0 as 0.
    w.tag(2, WireType.Bit64).double(Object.is(v, -0) ? 0 : v);
  } else if (typeof v === "string") {
    w.tag(3, WireType.LengthDelimited).string(v);
  } else if (typeof v === "boolean") {
    w.tag(4, WireType.Varint).bool(v);
  } else if (Array.isArray(v)) {
    message(w, 6, (list) => {
      for (const item of v) message(list, 1, (iv) => value(iv, item));
    });
  } else {
    message(w, 5, (s) => struct(s, v));
  }
}

/** The bytes the event's Merkle leaf hashes. */
export function canonicalBytes(e: AuditEvent): Uint8Array {
  const w = new BinaryWriter();
  str(w, 1, e.id);
  str(w, 2, e.tenantId);
  if (e.seq !== 0n) w.tag(3, WireType.Varint).uint64(e.seq);
  if (e.occurredAt) message(w, 4, (m) => timestamp(m, e.occurredAt as Timestamp));
  if (e.recordedAt) message(w, 5, (m) => timestamp(m, e.recordedAt as Timestamp));
  if (e.actor) message(w, 6, (m) => actor(m, e.actor as Actor));
  str(w, 7, e.action);
  if (e.resource) message(w, 8, (m) => resource(m, e.resource as Resource));
  enumOrInt32(w, 9, e.outcome);
  if (e.request) message(w, 10, (m) => request(m, e.request as RequestContext));
  str(w, 11, e.source);
  str(w, 12, e.reasoning);
  if (e.metadata) message(w, 13, (m) => struct(m, e.metadata as JsonObject));
  return w.finish();
}
