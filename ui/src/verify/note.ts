// C2SP signed notes (https://c2sp.org/signed-note) carrying a tlog
// checkpoint (https://c2sp.org/tlog-checkpoint), as docs/integrity.md
// describes them, and their Ed25519 signatures checked with WebCrypto.

const utf8 = new TextEncoder();

/** A verifier key `<name>+<key hash>+<base64(0x01 || public key)>`. */
export interface VerifierKey {
  name: string;
  keyHash: Uint8Array;
  publicKey: Uint8Array;
}

/** The checkpoint a note's text states. */
export interface CheckpointBody {
  origin: string;
  treeSize: bigint;
  rootHash: Uint8Array;
  extensions: string[];
}

export function fromBase64(text: string): Uint8Array {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) throw new Error("not base64");
  const raw = atob(text);
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

async function keyHashOf(name: string, publicKey: Uint8Array): Promise<Uint8Array> {
  const name8 = utf8.encode(name);
  const data = new Uint8Array(name8.length + 2 + publicKey.length);
  data.set(name8, 0);
  data[name8.length] = 0x0a;
  data[name8.length + 1] = 0x01;
  data.set(publicKey, name8.length + 2);
  return new Uint8Array(await crypto.subtle.digest("SHA-256", data as BufferSource)).slice(0, 4);
}

/** Parses and checks a verifier key (its hash must match its name and key). */
export async function parseVerifierKey(text: string): Promise<VerifierKey> {
  // The key's base64 may itself hold "+": the name ends at the first one,
  // the hash is the next 8 hex digits.
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+(\S+)$/.exec(text.trim());
  if (!m) throw new Error("a verifier key reads <name>+<8 hex digits>+<key>");
  const [, name, hashHex, key] = m;
  const decoded = fromBase64(key);
  if (decoded.length !== 33 || decoded[0] !== 0x01) {
    throw new Error("the key is not an Ed25519 key (0x01 and 32 bytes)");
  }
  const publicKey = decoded.slice(1);
  const keyHash = await keyHashOf(name, publicKey);
  const stated = Uint8Array.from(hashHex.match(/../g) ?? [], (h) => parseInt(h, 16));
  if (!keyHash.every((b, i) => b === stated[i])) {
    throw new Error("the key hash does not match the name and key");
  }
  return { name, keyHash, publicKey };
}

/** The signed text of a note and its signature lines. */
export function splitNote(note: string): { text: string; signatures: { name: string; blob: Uint8Array }[] } {
  const at = note.indexOf("\n\n");
  if (at < 0) throw new Error("the note has no blank line before its signatures");
  const text = note.slice(0, at + 1);
  const signatures = [];
  for (const line of note.slice(at + 2).split("\n")) {
    if (line === "") continue;
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) throw new Error(`not a signature line: ${line}`);
    signatures.push({ name: m[1], blob: fromBase64(m[2]) });
  }
  return { text, signatures };
}

/** The checkpoint in a note's signed text. */
export function parseCheckpoint(text: string): CheckpointBody {
  const lines = text.split("\n");
  if (lines.length < 4 || lines[lines.length - 1] !== "") {
    throw new Error("a checkpoint has an origin, a size and a root, each on its line");
  }
  const [origin, size, root, ...rest] = lines.slice(0, -1);
  if (!/^(0|[1-9][0-9]*)$/.test(size)) throw new Error("the tree size is not a number");
  const rootHash = fromBase64(root);
  if (rootHash.length !== 32) throw new Error("the root hash is not 32 bytes");
  return { origin, treeSize: BigInt(size), rootHash, extensions: rest };
}

/**
 * Checks the note's signature by `key` (Ed25519, WebCrypto) and returns
 * its signed text; throws when no signature by that key verifies.
 */
export async function verifyNote(note: string, key: VerifierKey): Promise<string> {
  const { text, signatures } = splitNote(note);
  const mine = signatures.filter(
    (s) => s.name === key.name && s.blob.length === 68 && s.blob.slice(0, 4).every((b, i) => b === key.keyHash[i]),
  );
  if (mine.length === 0) throw new Error(`no signature by the pinned key ${key.name}`);
  const publicKey = await crypto.subtle.importKey("raw", key.publicKey as BufferSource, { name: "Ed25519" }, false, ["verify"]);
  for (const s of mine) {
    if (await crypto.subtle.verify({ name: "Ed25519" }, publicKey, s.blob.slice(4) as BufferSource, utf8.encode(text) as BufferSource)) {
      return text;
    }
  }
  throw new Error("the signature does not verify with the pinned key");
}
