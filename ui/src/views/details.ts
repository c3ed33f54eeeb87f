// One event: its fields, its raw JSON, and "Verify".
import { toJsonString } from "@bufbuild/protobuf";
import type { JsonValue } from "@bufbuild/protobuf";
import { AuditEventSchema, type AuditEvent } from "../gen/audit/v1/audit_pb";
import type { Clients } from "../client";
import { clear, h } from "../dom";
import { actorType, outcome, time } from "../format";
import { loadPinnedKey } from "../session";
import { verifyEvent } from "../verify/run";

const dialog = h("dialog", { id: "event-dialog", "aria-labelledby": "event-title" });
document.body.append(dialog);

function rows(e: AuditEvent): [string, string][] {
  const r: [string, string][] = [
    ["Seq", String(e.seq)],
    ["Id", e.id],
    ["Tenant", e.tenantId],
    ["Occurred", time(e.occurredAt)],
    ["Recorded", time(e.recordedAt)],
    ["Action", e.action],
    ["Outcome", outcome(e.outcome)],
    ["Actor", [e.actor?.id, e.actor?.name, e.actor?.email].filter(Boolean).join(" · ")],
    ["Actor type", e.actor ? actorType(e.actor.type) : ""],
    ["Resource", [e.resource?.type, e.resource?.id, e.resource?.name].filter(Boolean).join(" · ")],
    ["Source", e.source],
    ["Reasoning", e.reasoning],
    ["Client IP", e.request?.clientIp ?? ""],
    ["Request", [e.request?.method, e.request?.path, e.request?.statusCode || ""].filter(Boolean).join(" ")],
    ["Request id", e.request?.requestId ?? ""],
    ["User agent", e.request?.userAgent ?? ""],
    ["Client identity", e.request?.clientIdentity ?? ""],
  ];
  return r.filter(([, v]) => v !== "");
}

function metadataRows(value: JsonValue | undefined, prefix = ""): [string, string][] {
  if (value === undefined) return [];
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    return Object.entries(value).flatMap(([k, v]) => metadataRows(v, prefix ? `${prefix}.${k}` : k));
  }
  return [[prefix || "metadata", JSON.stringify(value)]];
}

/** Opens the event's details in a modal dialog. */
export function openDetails(event: AuditEvent, clients: Clients): void {
  clear(dialog);
  const steps = h("ol", { class: "steps", "aria-live": "polite" });
  const verdict = h("p", { class: "verdict", role: "status" });
  const verifyButton = h("button", { type: "button", class: "verify" }, "Verify");
  verifyButton.addEventListener("click", async () => {
    verifyButton.disabled = true;
    clear(steps);
    verdict.textContent = "Verifying…";
    verdict.className = "verdict";
    const ok = await verifyEvent({
      event,
      pinnedKey: loadPinnedKey(),
      integrity: clients.integrity,
      onStep: (s) =>
        steps.append(
          h(
            "li",
            { class: s.ok ? "pass" : "fail" },
            h("strong", {}, `${s.ok ? "✓ passed" : "✗ failed"}: ${s.name}`),
            h("br"),
            h("code", {}, s.detail),
          ),
        ),
    }).catch((e: unknown) => {
      steps.append(h("li", { class: "fail" }, `✗ failed: ${e instanceof Error ? e.message : String(e)}`));
      return false;
    });
    verdict.textContent = ok
      ? "Verified: this event is in the log the pinned key signed."
      : "Verification FAILED: do not rely on this event as shown.";
    verdict.className = `verdict ${ok ? "pass" : "fail"}`;
    verifyButton.disabled = false;
  });
  const pinned = loadPinnedKey();
  dialog.append(
    h(
      "header",
      {},
      h("h2", { id: "event-title" }, `Event ${event.seq}: ${event.action}`),
      h("button", { type: "button", class: "close", "aria-label": "Close", onclick: () => dialog.close() }, "×"),
    ),
    h("dl", { class: "fields" }, ...rows(event).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    ...(event.metadata
      ? [
          h("h3", {}, "Metadata"),
          h("dl", { class: "fields" }, ...metadataRows(event.metadata).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        ]
      : []),
    h("details", {}, h("summary", {}, "Raw JSON"), h("pre", { class: "json" }, toJsonString(AuditEventSchema, event, { prettySpaces: 2 }))),
    h(
      "section",
      { class: "verification", "aria-label": "Verification" },
      h("h3", {}, "Verification"),
      pinned
        ? h("p", {}, "Checks against the pinned verifier key ", h("code", {}, pinned.split("+")[0]), ".")
        : h("p", { class: "problem" }, "No verifier key pinned: pin one under Settings first."),
      verifyButton,
      verdict,
      steps,
    ),
  );
  dialog.showModal();
}
