// Unit tests of the verification code, run in Node (its WebCrypto is the
// browser's API): the canonical bytes against the leaf the service pins,
// RFC 9162 inclusion proofs, and signed notes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { AuditEventSchema } from "../../src/gen/audit/v1/audit_pb";
import { canonicalBytes, compareBytes } from "../../src/verify/canonical";
import { hex, leafHash, nodeHash, rootFromInclusionProof } from "../../src/verify/merkle";
import { parseCheckpoint, parseVerifierKey, verifyNote } from "../../src/verify/note";

// The event of src/integrity/canonical.rs's `the_encoding_is_pinned`, as
// the service returns it.
const pinnedEvent = () =>
  create(AuditEventSchema, {
    id: "01900000-0000-7000-8000-000000000001",
    tenantId: "acme",
    seq: 7n,
    occurredAt: { seconds: 1_700_000_000n },
    recordedAt: { seconds: 1_700_000_000n, nanos: 500_000_000 },
    actor: { id: "alice", type: 1 },
    action: "user.login",
    resource: {},
    outcome: 2,
    request: { clientIp: "10.0.0.1" },
    source: "sso",
    metadata: { b: 1, a: [true, "x"], c: { z: null } },
  });

test("the leaf of the service's pinned event is the pinned leaf", async () => {
  const leaf = await leafHash(canonicalBytes(pinnedEvent()));
  assert.equal(hex(leaf), "9f8884765b9c1db882d35623c41d3d1fb8d0318db9cee6a5f3059b08c6a2dfe6");
});

test("metadata keys are written in byte order, integer-like keys too", () => {
  const a = create(AuditEventSchema, { metadata: { "10": 1, "2": 2, b: 3, "é": 4, Z: 5 } });
  const b = create(AuditEventSchema, { metadata: { Z: 5, "é": 4, b: 3, "2": 2, "10": 1 } });
  assert.deepEqual(canonicalBytes(a), canonicalBytes(b));
  assert.deepEqual(["b", "10", "é", "Z", "2"].sort(compareBytes), ["10", "2", "Z", "b", "é"]);
});

test("every content change changes the leaf", async () => {
  const base = hex(await leafHash(canonicalBytes(pinnedEvent())));
  const edits: ((e: ReturnType<typeof pinnedEvent>) => void)[] = [
    (e) => (e.seq = 8n),
    (e) => (e.tenantId = "other"),
    (e) => (e.action = "user.logon"),
    (e) => (e.outcome = 3),
    (e) => (e.metadata = { b: 2 }),
    (e) => (e.recordedAt!.nanos += 1000),
  ];
  for (const edit of edits) {
    const e = pinnedEvent();
    edit(e);
    assert.notEqual(hex(await leafHash(canonicalBytes(e))), base);
  }
});

// A tree built the slow way (RFC 9162 2.1.1), and its inclusion paths
// (2.1.3.1), as the oracle for the verifier.
async function mth(leaves: Uint8Array[]): Promise<Uint8Array> {
  if (leaves.length === 1) return leaves[0];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(await mth(leaves.slice(0, k)), await mth(leaves.slice(k)));
}
async function path(m: number, leaves: Uint8Array[]): Promise<Uint8Array[]> {
  if (leaves.length === 1) return [];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return m < k
    ? [...(await path(m, leaves.slice(0, k))), await mth(leaves.slice(k))]
    : [...(await path(m - k, leaves.slice(k))), await mth(leaves.slice(0, k))];
}

test("inclusion proofs lead to the root for every leaf of trees of 1 to 9 leaves", async () => {
  for (let n = 1; n <= 9; n++) {
    const leaves = await Promise.all(Array.from({ length: n }, (_, i) => leafHash(Uint8Array.of(i))));
    const root = await mth(leaves);
    for (let m = 0; m < n; m++) {
      const p = await path(m, leaves);
      assert.equal(hex(await rootFromInclusionProof(BigInt(m), BigInt(n), leaves[m], p)), hex(root), `${m} of ${n}`);
      if (p.length > 0) {
        const bad = p.map((h) => h.slice());
        bad[0][0] ^= 1;
        assert.notEqual(hex(await rootFromInclusionProof(BigInt(m), BigInt(n), leaves[m], bad)), hex(root));
        await assert.rejects(rootFromInclusionProof(BigInt(m), BigInt(n), leaves[m], p.slice(1)));
      }
    }
  }
});

// A note signed here with a fresh Ed25519 key, as a signed-note signer writes it.
async function signedNote(name: string, text: string) {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const keyMaterial = Uint8Array.of(1, ...pub);
  const hash = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new Uint8Array([...new TextEncoder().encode(`${name}\n`), ...keyMaterial])),
  ).slice(0, 4);
  const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, new TextEncoder().encode(text)));
  const b64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));
  return {
    key: `${name}+${hex(hash)}+${b64(keyMaterial)}`,
    note: `${text}\n\u2014 ${name} ${b64(new Uint8Array([...hash, ...sig]))}\n`,
  };
}

test("a signed checkpoint verifies with its key, and not once edited or with another key", async () => {
  const root = btoa(String.fromCharCode(...new Uint8Array(32).fill(7)));
  const text = `audit-service/acme\n3\n${root}\nTimestamp: 1\n`;
  const { key, note } = await signedNote("audit-service", text);
  const verified = await verifyNote(note, await parseVerifierKey(key));
  assert.equal(verified, text);
  const body = parseCheckpoint(verified);
  assert.equal(body.origin, "audit-service/acme");
  assert.equal(body.treeSize, 3n);
  await assert.rejects(verifyNote(note.replace("\n3\n", "\n4\n"), await parseVerifierKey(key)));
  const other = await signedNote("audit-service", text);
  await assert.rejects(verifyNote(note, await parseVerifierKey(other.key)));
  await assert.rejects(parseVerifierKey(key.replace(/\+[0-9a-f]{8}\+/, "+00000000+")));
});
