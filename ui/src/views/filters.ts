// The filter form: structured filters, the expression box (with the
// service's error shown at its offset), and the order.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import { EventFilterSchema, Outcome, type EventFilter } from "../gen/audit/v1/audit_pb";
import { clear, field, h } from "../dom";
import { expressionError, type CallFailure } from "../errors";
import { OUTCOMES, outcome } from "../format";

/** What a query asks for. */
export interface Selection {
  filter: EventFilter;
  order: string;
}

export const ORDERS = ["seq desc", "seq asc", "occurred_at desc", "occurred_at asc"];

const list = (text: string): string[] =>
  text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");

export interface FilterForm {
  element: HTMLFormElement;
  selection(): Selection;
  /** Shows a failed call; true when it was about the expression. */
  showError(f: CallFailure): boolean;
  clearError(): void;
}

export function filterForm(onApply: (s: Selection) => void): FilterForm {
  const actions = h("input", { name: "actions", type: "text", placeholder: "user.login, user.logout" });
  const actors = h("input", { name: "actors", type: "text", placeholder: "alice" });
  const resources = h("input", { name: "resource-types", type: "text", placeholder: "document" });
  const sources = h("input", { name: "sources", type: "text", placeholder: "sso" });
  const start = h("input", { name: "start", type: "datetime-local", step: 1 });
  const end = h("input", { name: "end", type: "datetime-local", step: 1 });
  const outcomes = OUTCOMES.map((o) =>
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "outcome", value: o }), outcome(o)),
  );
  const expression = h("textarea", {
    name: "expression",
    rows: 2,
    spellcheck: "false",
    placeholder: "action = \"user.login\" AND outcome = OUTCOME_FAILURE",
  });
  const expressionProblem = h("div", { id: "expression-error", class: "problem", role: "alert", hidden: true });
  expression.setAttribute("aria-errormessage", expressionProblem.id);
  const order = h("select", { name: "order" }, ...ORDERS.map((o) => h("option", { value: o }, o)));
  const problem = h("p", { class: "problem", role: "alert", hidden: true });

  const form = h(
    "form",
    { class: "filters", "aria-label": "Filters" },
    h(
      "div",
      { class: "grid" },
      field("Actions", actions, "comma-separated"),
      field("Actor ids", actors),
      field("Resource types", resources),
      field("Sources", sources),
      field("From (UTC)", start),
      field("To (UTC)", end),
      field("Order", order),
      h("fieldset", { class: "outcomes" }, h("legend", {}, "Outcomes"), ...outcomes),
    ),
    field("Expression", expression),
    expressionProblem,
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Apply")),
  );

  const utc = (v: string) => (v ? timestampFromDate(new Date(`${v}Z`)) : undefined);
  const selection = (): Selection => ({
    filter: create(EventFilterSchema, {
      actions: list(actions.value),
      actorIds: list(actors.value),
      resourceTypes: list(resources.value),
      sources: list(sources.value),
      outcomes: outcomes
        .map((l) => l.querySelector("input") as HTMLInputElement)
        .filter((i) => i.checked)
        .map((i) => Number(i.value) as Outcome),
      startTime: utc(start.value),
      endTime: utc(end.value),
      expression: expression.value,
    }),
    order: order.value,
  });

  const clearError = () => {
    expressionProblem.hidden = true;
    problem.hidden = true;
    expression.removeAttribute("aria-invalid");
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    clearError();
    onApply(selection());
  });
  // Ctrl/Cmd+Enter in the expression box applies.
  expression.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });

  return {
    element: form,
    selection,
    clearError,
    showError(f) {
      const source = expression.value;
      const where = expressionError(f, source);
      if (where) {
        clear(expressionProblem);
        expressionProblem.append(
          h("span", {}, `Expression error at byte ${where.byte}: ${where.text}`),
          h(
            "pre",
            { class: "caret", "aria-hidden": "true" },
            source.slice(0, where.index),
            h("mark", {}, source.slice(where.index, where.index + 1) || " "),
            source.slice(where.index + 1),
          ),
        );
        expressionProblem.hidden = false;
        expression.setAttribute("aria-invalid", "true");
        expression.focus();
        expression.setSelectionRange(where.index, Math.min(where.index + 1, source.length));
        return true;
      }
      problem.textContent = [
        `${f.code}${f.reason ? ` (${f.reason})` : ""}: ${f.message}`,
        ...f.violations.map((v) => `${v.field}: ${v.description}`),
      ].join(" — ");
      problem.hidden = false;
      return false;
    },
  };
}
