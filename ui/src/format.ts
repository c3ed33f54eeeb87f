// How values of events read on screen.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ActorType, Outcome } from "./gen/audit/v1/audit_pb";

export function time(t: Timestamp | undefined): string {
  if (!t) return "";
  // ISO 8601 in UTC, to the millisecond: the same for every reader.
  return timestampDate(t).toISOString().replace("T", " ").replace("Z", " UTC");
}

export function outcome(o: Outcome): string {
  return (Outcome[o] ?? String(o)).replace(/^OUTCOME_/, "").toLowerCase();
}

export function actorType(t: ActorType): string {
  return (ActorType[t] ?? String(t)).replace(/^ACTOR_TYPE_/, "").toLowerCase();
}

/** Outcomes a filter may select. */
export const OUTCOMES: Outcome[] = [Outcome.INTENT, Outcome.SUCCESS, Outcome.FAILURE, Outcome.UNSPECIFIED];
