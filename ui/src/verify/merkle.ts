// RFC 9162 section 2.1: leaf and node hashes, and the inclusion proof
// verification of 2.1.3.2, computed with WebCrypto's SHA-256.

async function sha256(...parts: Uint8Array[]): Promise<Uint8Array> {
  const length = parts.reduce((n, p) => n + p.length, 0);
  const joined = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", joined as BufferSource));
}

/** SHA-256(0x00 || data). */
export function leafHash(data: Uint8Array): Promise<Uint8Array> {
  return sha256(Uint8Array.of(0), data);
}

/** SHA-256(0x01 || left || right). */
export function nodeHash(left: Uint8Array, right: Uint8Array): Promise<Uint8Array> {
  return sha256(Uint8Array.of(1), left, right);
}

/**
 * The root an inclusion proof leads to from `leaf` at `index` in a tree of
 * `size` leaves (RFC 9162 2.1.3.2), or an error saying why the proof
 * cannot belong to such a tree.
 */
export async function rootFromInclusionProof(
  index: bigint,
  size: bigint,
  leaf: Uint8Array,
  path: Uint8Array[],
): Promise<Uint8Array> {
  if (index >= size) throw new Error(`leaf index ${index} is outside a tree of ${size}`);
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of path) {
    if (p.length !== 32) throw new Error("a proof hash is not 32 bytes");
    if (sn === 0n) throw new Error("the proof is longer than the tree is deep");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("the proof is shorter than the tree is deep");
  return r;
}

/** Whether two byte strings are equal. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Lowercase hex. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
