// The log: a table of the selected events, paged by tokens as the user
// scrolls, and a live mode that follows Watch.
import type { AuditEvent } from "../gen/audit/v1/audit_pb";
import type { Clients } from "../client";
import { clear, h } from "../dom";
import { describe, type CallFailure } from "../errors";
import { outcome, time } from "../format";
import type { Selection } from "./filters";
import { openDetails } from "./details";

export const PAGE_SIZE = 50;

export interface LogView {
  element: HTMLElement;
  load(s: Selection): Promise<void>;
  stopLive(): void;
}

export function logView(clientsNow: () => Clients, tenantNow: () => string, onError: (f: CallFailure) => void): LogView {
  const body = h("tbody");
  const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
  const more = h("button", { type: "button", class: "more", hidden: true }, "Load more");
  const sentinel = h("div", { class: "sentinel", "aria-hidden": "true" });
  const live = h("input", { type: "checkbox", id: "live" });
  const liveStatus = h("span", { class: "heartbeat", role: "status", "aria-live": "polite" });
  const table = h(
    "table",
    { class: "log" },
    h("caption", { class: "sr-only" }, "Audit events"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Time", "Actor", "Action", "Resource", "Outcome", "Source"].map((t) => h("th", { scope: "col" }, t)),
      ),
    ),
    body,
  );
  const element = h(
    "section",
    { class: "log-view", "aria-label": "Log" },
    h("div", { class: "toolbar" }, h("label", { class: "check" }, live, "Live (follow new events)"), liveStatus),
    h("div", { class: "table-wrap" }, table),
    sentinel,
    more,
    status,
  );

  let selection: Selection | undefined;
  let nextToken = "";
  let loading = false;
  let generation = 0;
  let liveAbort: AbortController | undefined;
  let shown = 0;
  // Ids in the table: a live event that a page already showed is not added twice.
  const ids = new Set<string>();
  // The highest matching seq when the table was loaded: live mode resumes
  // after it, so nothing appended since the load is missed.
  let headAtLoad: Promise<bigint | undefined> = Promise.resolve(undefined);

  const row = (e: AuditEvent, fresh = false) => {
    const open = h(
      "button",
      { type: "button", class: "link", "aria-label": `Open event ${e.seq}: ${e.action} at ${time(e.occurredAt)}` },
      time(e.occurredAt),
    );
    open.addEventListener("click", () => openDetails(e, clientsNow()));
    return h(
      "tr",
      { class: fresh ? "fresh" : undefined, "data-seq": String(e.seq), "data-id": e.id },
      h("td", {}, open),
      h("td", {}, e.actor?.id ?? ""),
      h("td", {}, e.action),
      h("td", {}, [e.resource?.type, e.resource?.id].filter(Boolean).join(":")),
      h("td", { class: `outcome ${outcome(e.outcome)}` }, outcome(e.outcome)),
      h("td", {}, e.source),
    );
  };

  const setStatus = () => {
    status.textContent = `${shown} event${shown === 1 ? "" : "s"} shown${nextToken ? "; more below" : ""}.`;
    more.hidden = nextToken === "";
  };

  const nextPage = async () => {
    if (!selection || loading) return;
    loading = true;
    const mine = generation;
    try {
      const page = await clientsNow().audit.query({
        filter: selection.filter,
        orderBy: selection.order,
        pageSize: PAGE_SIZE,
        pageToken: nextToken,
      });
      if (mine !== generation) return;
      for (const e of page.events) {
        if (ids.has(e.id)) continue;
        ids.add(e.id);
        body.append(row(e));
        shown += 1;
      }
      nextToken = page.nextPageToken;
      setStatus();
    } catch (error) {
      if (mine === generation) {
        status.textContent = "";
        onError(describe(error));
      }
    } finally {
      loading = false;
    }
    // A short page that leaves the sentinel in view asks for the next.
    if (mine === generation && nextToken && inView()) void nextPage();
  };

  const inView = () => {
    const r = sentinel.getBoundingClientRect();
    return r.top < window.innerHeight && r.bottom >= 0;
  };

  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && nextToken) void nextPage();
  }).observe(sentinel);
  more.addEventListener("click", () => void nextPage());

  const stopLive = () => {
    liveAbort?.abort();
    liveAbort = undefined;
  };

  const startLive = async () => {
    stopLive();
    if (!selection) return;
    if (tenantNow() === "*") {
      liveStatus.textContent = "Live mode follows one tenant: choose a tenant.";
      live.checked = false;
      return;
    }
    const abort = new AbortController();
    liveAbort = abort;
    liveStatus.textContent = "Live: connecting…";
    try {
      const afterSeq = await headAtLoad;
      const request = { filter: selection.filter, afterSeq };
      for await (const message of clientsNow().audit.watch(request, { signal: abort.signal })) {
        if (message.kind.case === "event") {
          const e = message.kind.value;
          if (ids.has(e.id)) continue;
          ids.add(e.id);
          const r = row(e, true);
          if (selection.order.endsWith("asc")) body.append(r);
          else body.prepend(r);
          shown += 1;
          setStatus();
          liveStatus.textContent = `Live: received seq ${e.seq}`;
        } else if (message.kind.case === "heartbeat") {
          const hb = message.kind.value;
          liveStatus.textContent = `Live: heartbeat, log head at seq ${hb.headSeq} (${time(hb.time)})`;
          liveStatus.dataset.headSeq = String(hb.headSeq);
        }
      }
    } catch (error) {
      if (!abort.signal.aborted) {
        const f = describe(error);
        liveStatus.textContent = `Live stopped: ${f.code}: ${f.message}`;
        live.checked = false;
      }
    }
  };

  live.addEventListener("change", () => {
    if (live.checked) void startLive();
    else {
      stopLive();
      liveStatus.textContent = "";
    }
  });

  return {
    element,
    stopLive,
    async load(s) {
      generation += 1;
      selection = s;
      nextToken = "";
      shown = 0;
      ids.clear();
      clear(body);
      headAtLoad =
        tenantNow() === "*"
          ? Promise.resolve(undefined)
          : clientsNow()
              .audit.query({ filter: s.filter, orderBy: "seq desc", pageSize: 1 })
              .then((page) => page.events[0]?.seq ?? 0n)
              .catch(() => undefined);
      status.textContent = "Loading…";
      await nextPage();
      if (live.checked) void startLive();
    },
  };
}
