// Charts from Stats for the current filter: events over time, with a
// bucket chosen from the range, and the top actions, actors and outcomes.
import { TimestampSchema, timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Clients } from "../client";
import { clear, h } from "../dom";
import { describe, type CallFailure } from "../errors";
import { create } from "@bufbuild/protobuf";
import { EventFilterSchema } from "../gen/audit/v1/audit_pb";
import type { Selection } from "./filters";

/** Bucket sizes in seconds, smallest first. */
const BUCKETS: [number, string][] = [
  [1, "second"],
  [60, "minute"],
  [300, "5 minutes"],
  [900, "15 minutes"],
  [3600, "hour"],
  [6 * 3600, "6 hours"],
  [86400, "day"],
  [7 * 86400, "week"],
  [30 * 86400, "30 days"],
];
/** Most bars the time series should have. */
const MAX_BARS = 60;

/** The smallest bucket that draws `seconds` in at most MAX_BARS bars. */
export function bucketFor(seconds: number): [number, string] {
  return BUCKETS.find(([b]) => seconds / b <= MAX_BARS) ?? BUCKETS[BUCKETS.length - 1];
}

export function chartsView(clientsNow: () => Clients, onError: (f: CallFailure) => void) {
  const element = h("section", { class: "charts", "aria-label": "Charts" });

  /**
   * The filter's time bounds, with the open ones closed at the first and
   * last matching events (the end just past the last: end_time is
   * exclusive). Timestamps stay as the service sent them (microseconds; a
   * Date would round them to milliseconds).
   */
  async function bounds(s: Selection): Promise<[Timestamp, Timestamp] | undefined> {
    const edge = async (order: string) =>
      (await clientsNow().audit.query({ filter: s.filter, orderBy: order, pageSize: 1 })).events[0]?.occurredAt;
    const start = s.filter.startTime ?? (await edge("occurred_at asc"));
    const last = s.filter.endTime ? undefined : await edge("occurred_at desc");
    const end = s.filter.endTime ?? (last && justAfter(last));
    return start && end ? [start, end] : undefined;
  }

  async function load(s: Selection) {
    clear(element);
    element.append(h("p", { role: "status" }, "Counting…"));
    try {
      const audit = clientsNow().audit;
      const span = await bounds(s);
      const seconds = span ? Math.max(1, Number(span[1].seconds - span[0].seconds)) : 3600;
      const [bucketSeconds, bucketName] = bucketFor(seconds);
      const filter = span ? create(EventFilterSchema, { ...s.filter, startTime: span[0], endTime: span[1] }) : s.filter;
      const [series, actions, actors, outcomes] = await Promise.all([
        audit.stats({ filter, bucket: { seconds: BigInt(bucketSeconds) } }),
        audit.stats({ filter: s.filter, groupBy: ["action"], limit: 10 }),
        audit.stats({ filter: s.filter, groupBy: ["actor.id"], limit: 10 }),
        audit.stats({ filter: s.filter, groupBy: ["outcome"], limit: 10 }),
      ]);
      clear(element);
      const total = series.total;
      element.append(
        h("p", { class: "total", "data-total": String(total) }, `${total} matching event${total === 1n ? "" : "s"}`,
          series.partial ? ` (partial: counted through seq ${series.scannedThroughSeq})` : ""),
        timeChart(series.buckets.map((b) => [timestampDate(b.start ?? timestampFromDate(new Date(0))), Number(b.count)]), bucketName),
        h(
          "div",
          { class: "tops" },
          top("Top actions", actions.groups.map((g) => [g.keys[0], Number(g.count)])),
          top("Top actors", actors.groups.map((g) => [g.keys[0], Number(g.count)])),
          top(
            "Outcomes",
            // Enum groups are named by value name (OUTCOME_FAILURE).
            outcomes.groups.map((g) => [g.keys[0].replace(/^OUTCOME_/, "").toLowerCase(), Number(g.count)]),
          ),
        ),
      );
    } catch (error) {
      clear(element);
      onError(describe(error));
    }
  }

  return { element, load };
}

/** One microsecond after `t`. */
function justAfter(t: Timestamp): Timestamp {
  const nanos = t.nanos + 1000;
  return nanos >= 1_000_000_000
    ? create(TimestampSchema, { seconds: t.seconds + 1n, nanos: nanos - 1_000_000_000 })
    : create(TimestampSchema, { seconds: t.seconds, nanos });
}

function timeChart(points: [Date, number][], bucketName: string): HTMLElement {
  const max = Math.max(1, ...points.map(([, n]) => n));
  const sum = points.reduce((a, [, n]) => a + n, 0);
  const width = 600;
  const height = 160;
  // A few buckets make narrow bars rather than a wall.
  const barWidth = Math.min(width / Math.max(points.length, 1), 40);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${sum} events in ${points.length} buckets of one ${bucketName}; the largest holds ${max}`);
  svg.setAttribute("class", "series");
  points.forEach(([start, n], i) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const barHeight = (n / max) * (height - 4);
    rect.setAttribute("x", String(i * barWidth + 0.5));
    rect.setAttribute("y", String(height - barHeight));
    rect.setAttribute("width", String(Math.max(1, barWidth - 1)));
    rect.setAttribute("height", String(barHeight));
    rect.setAttribute("data-count", String(n));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${start.toISOString()}: ${n}`;
    rect.append(title);
    svg.append(rect);
  });
  return h(
    "figure",
    { class: "chart", "data-sum": String(sum) },
    h("figcaption", {}, `Events over time (one bar per ${bucketName}, UTC)`),
    svg,
    points.length ? h("p", { class: "axis" }, h("span", {}, points[0][0].toISOString()), h("span", {}, points[points.length - 1][0].toISOString())) : null,
  );
}

function top(title: string, rows: [string, number][]): HTMLElement {
  const max = Math.max(1, ...rows.map(([, n]) => n));
  return h(
    "table",
    { class: "top" },
    h("caption", {}, title),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Value"), h("th", { scope: "col" }, "Events"))),
    h(
      "tbody",
      {},
      ...rows.map(([k, n]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, k || "(none)"),
          h("td", {}, h("meter", { min: 0, max, value: n, "aria-hidden": "true" }), h("span", { class: "n" }, n)),
        ),
      ),
    ),
  );
}
