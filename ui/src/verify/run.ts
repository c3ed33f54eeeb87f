// "Verify": that the event the viewer shows, as it shows it, is in the
// tenant's signed log, checked here rather than taken from the service.
// Each step reports what it compared; the event is verified only when
// every step passed.
import type { Client } from "@connectrpc/connect";
import type { AuditEvent } from "../gen/audit/v1/audit_pb";
import type { IntegrityService } from "../gen/audit/v1/integrity_pb";
import { canonicalBytes } from "./canonical";
import { equalBytes, hex, leafHash, rootFromInclusionProof } from "./merkle";
import { parseCheckpoint, parseVerifierKey, verifyNote } from "./note";

/** One step's outcome. */
export interface Step {
  name: string;
  ok: boolean;
  detail: string;
}

/** Everything the verification needs from outside. */
export interface VerifyInput {
  /** The event as shown (from Query or Watch). */
  event: AuditEvent;
  pinnedKey: string;
  integrity: Client<typeof IntegrityService>;
  onStep: (step: Step) => void;
}

/** Runs every step in order, stopping at the first that fails; true when all passed. */
export async function verifyEvent(input: VerifyInput): Promise<boolean> {
  const steps: Step[] = [];
  const report = (name: string, ok: boolean, detail: string): boolean => {
    const step = { name, ok, detail };
    steps.push(step);
    input.onStep(step);
    return ok;
  };
  const attempt = async <T>(name: string, body: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await body();
    } catch (error) {
      report(name, false, error instanceof Error ? error.message : String(error));
      return undefined;
    }
  };

  const key = await attempt("Pinned verifier key", () => parseVerifierKey(input.pinnedKey));
  if (!key) return false;
  report("Pinned verifier key", true, `${key.name}, key hash ${hex(key.keyHash)}`);

  const event = input.event;

  const checkpoint = await attempt("Fetch the signed checkpoint", () => input.integrity.getCheckpoint({}));
  if (!checkpoint) return false;
  report("Fetch the signed checkpoint", true, `tree size ${checkpoint.treeSize}`);

  const signedText = await attempt("Checkpoint signature (Ed25519)", () => verifyNote(checkpoint.note, key));
  if (signedText === undefined) return false;
  report("Checkpoint signature (Ed25519)", true, `signed by ${key.name}`);

  const body = await attempt("Checkpoint names this log", async () => parseCheckpoint(signedText));
  if (!body) return false;
  if (!report("Checkpoint names this log", body.origin.endsWith(`/${event.tenantId}`), `origin ${body.origin}`)) {
    return false;
  }

  const proof = await attempt("Fetch the inclusion proof", () =>
    input.integrity.getInclusionProof({ target: { case: "seq", value: event.seq }, treeSize: body.treeSize }),
  );
  if (!proof) return false;
  const proofMatches = proof.treeSize === body.treeSize && proof.leafIndex === event.seq - 1n;
  if (
    !report(
      "Fetch the inclusion proof",
      proofMatches,
      `leaf ${proof.leafIndex} of ${proof.treeSize}, ${proof.hashes.length} hashes` +
        (proofMatches ? "" : ` (expected leaf ${event.seq - 1n} of ${body.treeSize})`),
    )
  ) {
    return false;
  }

  const leaf = await leafHash(canonicalBytes(event));
  report("Leaf from the event's canonical bytes", true, `seq ${event.seq}: SHA-256(0x00 || event) = ${hex(leaf)}`);

  const root = await attempt("Root from the proof (RFC 9162)", () =>
    rootFromInclusionProof(proof.leafIndex, proof.treeSize, leaf, proof.hashes),
  );
  if (!root) return false;
  report("Root from the proof (RFC 9162)", true, hex(root));

  return report(
    "Root matches the signed checkpoint",
    equalBytes(root, body.rootHash),
    equalBytes(root, body.rootHash)
      ? `${hex(root)} at size ${body.treeSize}`
      : `computed ${hex(root)}, signed ${hex(body.rootHash)}`,
  );
}
