// A failed call as the viewer shows it: the status, the ErrorInfo reason
// and each BadRequest violation, and where an expression error lies.
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb";

/** One offending field. */
export interface Violation {
  field: string;
  description: string;
}

/** What went wrong with a call. */
export interface CallFailure {
  code: string;
  message: string;
  reason?: string;
  violations: Violation[];
}

export function describe(error: unknown): CallFailure {
  const e = ConnectError.from(error);
  const info = e.findDetails(ErrorInfoSchema)[0];
  const bad = e.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations);
  return {
    code: Code[e.code] ?? String(e.code),
    message: e.rawMessage,
    reason: info?.reason || undefined,
    violations: bad.map((v) => ({ field: v.field, description: v.description })),
  };
}

/** A one-line summary. */
export function summary(f: CallFailure): string {
  return `${f.code}${f.reason ? ` (${f.reason})` : ""}: ${f.message}`;
}

/**
 * The service reports an expression error as `at <byte offset>: <what>` on
 * the field `filter.expression`; this is that offset as a string index of
 * `source`, and the text.
 */
export function expressionError(f: CallFailure, source: string): { index: number; byte: number; text: string } | undefined {
  const v = f.violations.find((x) => x.field === "filter.expression" || x.field.endsWith(".expression"));
  if (!v) return undefined;
  const m = /^at (\d+): ([\s\S]*)$/.exec(v.description);
  if (!m) return { index: 0, byte: 0, text: v.description };
  const byte = Number(m[1]);
  return { index: indexOfByte(source, byte), byte, text: m[2] };
}

/** The string index at UTF-8 byte `byte` of `s` (its length past the end). */
export function indexOfByte(s: string, byte: number): number {
  const enc = new TextEncoder();
  let bytes = 0;
  let index = 0;
  for (const ch of s) {
    if (bytes >= byte) return index;
    bytes += enc.encode(ch).length;
    index += ch.length;
  }
  return s.length;
}
