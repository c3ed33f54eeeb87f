// Policy (audit:admin): the tenant's retention period, legal holds and
// access auditing. Every change asks for a reason and is itself an event
// in the log.
import { toJsonString } from "@bufbuild/protobuf";
import type { Clients } from "../client";
import { clear, field, h } from "../dom";
import { describe, summary } from "../errors";
import { EventFilterSchema } from "../gen/audit/v1/audit_pb";
import type { LegalHold } from "../gen/audit/v1/policy_pb";
import { time } from "../format";
import type { Selection } from "./filters";

const DAY = 86_400n;

function days(seconds: bigint): string {
  return seconds % DAY === 0n ? `${seconds / DAY} days` : `${seconds} seconds`;
}

export function policyView(clientsNow: () => Clients, selectionNow: () => Selection) {
  const element = h("section", { class: "policy", "aria-label": "Policy" });
  const status = h("p", { role: "status", class: "status" });
  const say = (text: string, failed = false) => {
    status.textContent = text;
    status.className = failed ? "problem" : "status";
  };
  const attempt = async (body: () => Promise<string>) => {
    try {
      say(await body());
      await load();
    } catch (error) {
      say(summary(describe(error)), true);
    }
  };

  async function load(): Promise<void> {
    const { policy } = clientsNow();
    const [retention, holds, access] = await Promise.all([
      policy.getRetention({}),
      policy.listLegalHolds({ includeReleased: true }),
      policy.getAccessAudit({}),
    ]);
    const keep = retention.period ? days(retention.period.seconds) : "forever";
    const period = h("input", { type: "number", min: 1, step: 1, value: retention.period ? String(retention.period.seconds / DAY) : "" });
    const locked = h("input", { type: "checkbox", checked: retention.locked });
    const retentionReason = h("input", { type: "text", required: true });
    const retentionForm = h(
      "form",
      { "aria-labelledby": "retention-title" },
      h("h2", { id: "retention-title" }, "Retention"),
      h(
        "p",
        { class: "current" },
        `Events are kept ${keep}${retention.locked ? " (locked: the period can only grow)" : ""}.`,
        retention.updatedBy ? ` Last set by ${retention.updatedBy} at ${time(retention.updateTime)}.` : "",
      ),
      field("Keep events for (days; empty: forever)", period),
      h("label", { class: "check" }, locked, "Lock (compliance mode: cannot be shortened or removed)"),
      field("Reason", retentionReason),
      h("button", { type: "submit" }, "Set retention"),
    );
    retentionForm.addEventListener("submit", (e) => {
      e.preventDefault();
      void attempt(async () => {
        const value = period.value.trim();
        await policy.setRetention({
          period: value ? { seconds: BigInt(value) * DAY } : undefined,
          locked: locked.checked,
          reason: retentionReason.value,
        });
        return "Retention set.";
      });
    });

    const holdReason = h("input", { type: "text", required: true });
    const holdForm = h(
      "form",
      { "aria-labelledby": "holds-title" },
      h("h2", { id: "holds-title" }, "Legal holds"),
      h("p", {}, "A hold keeps every event its filter matches from retention and Delete. New holds take the current filters above."),
      field("Reason for a new hold", holdReason),
      h("button", { type: "submit" }, "Create a hold from the current filters"),
    );
    holdForm.addEventListener("submit", (e) => {
      e.preventDefault();
      void attempt(async () => {
        const created = await policy.createLegalHold({ filter: selectionNow().filter, reason: holdReason.value });
        return `Hold ${created.hold?.id ?? ""} created.`;
      });
    });

    const accessReason = h("input", { type: "text", required: true });
    const accessForm = h(
      "form",
      { "aria-labelledby": "access-title" },
      h("h2", { id: "access-title" }, "Access auditing"),
      h("p", { class: "current" }, `Reads of this log are ${access.enabled ? "" : "not "}recorded in it.`),
      field("Reason", accessReason),
      h("button", { type: "submit" }, access.enabled ? "Stop recording reads" : "Record every read"),
    );
    accessForm.addEventListener("submit", (e) => {
      e.preventDefault();
      void attempt(async () => {
        await policy.setAccessAudit({ enabled: !access.enabled, reason: accessReason.value });
        return `Access auditing ${access.enabled ? "off" : "on"}.`;
      });
    });

    clear(element);
    element.append(status, retentionForm, holdForm, holdTable(holds.holds, (hold, reason) =>
      attempt(async () => {
        await policy.releaseLegalHold({ id: hold.id, reason });
        return `Hold ${hold.id} released.`;
      }),
    ), accessForm);
  }

  return {
    element,
    async load() {
      try {
        await load();
      } catch (error) {
        clear(element);
        element.append(status);
        say(summary(describe(error)), true);
      }
    },
  };
}

function holdTable(holds: LegalHold[], release: (hold: LegalHold, reason: string) => Promise<void>): HTMLElement {
  if (holds.length === 0) return h("p", {}, "No legal holds.");
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "log holds" },
      h("caption", { class: "sr-only" }, "Legal holds"),
      h("thead", {}, h("tr", {}, ...["Hold", "Filter", "Reason", "Created", "State"].map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        ...holds.map((hold) => {
          const reason = h("input", { type: "text", "aria-label": `Reason to release hold ${hold.id}` });
          const button = h("button", { type: "button" }, "Release");
          button.addEventListener("click", () => {
            if (reason.value.trim() === "") {
              reason.focus();
              return;
            }
            void release(hold, reason.value);
          });
          return h(
            "tr",
            { "data-hold": hold.id },
            h("td", {}, h("code", {}, hold.id)),
            h("td", {}, h("code", {}, hold.filter ? toJsonString(EventFilterSchema, hold.filter) : "{}")),
            h("td", {}, hold.reason),
            h("td", {}, `${time(hold.createTime)} by ${hold.createdBy}`),
            h(
              "td",
              {},
              hold.releaseTime
                ? `released ${time(hold.releaseTime)} by ${hold.releasedBy}: ${hold.releaseReason}`
                : h("span", { class: "release" }, reason, button),
            ),
          );
        }),
      ),
    ),
  );
}
