// The viewer: sign-in, then the filters over a log, charts and settings.
import "./style.css";
import { clientsFor, type Clients } from "./client";
import { clear, h } from "./dom";
import { describe, summary, type CallFailure } from "./errors";
import { chartsView } from "./views/charts";
import { filterForm, type Selection } from "./views/filters";
import { logView } from "./views/log";
import { policyView } from "./views/policy";
import { settingsView } from "./views/settings";
import { signInForm } from "./views/signin";
import { clearSession, loadSession, saveSession, type Session } from "./session";

const root = document.getElementById("app") as HTMLElement;

function start(): void {
  const session = loadSession();
  clear(root);
  if (!session) {
    root.append(
      signInForm(async (s) => {
        try {
          // A cheap call that needs audit:read proves the credential.
          await clientsFor(s).audit.getFilterMetadata({});
        } catch (error) {
          return summary(describe(error));
        }
        saveSession(s);
        start();
        return undefined;
      }),
    );
    return;
  }
  signedIn(session);
}

/**
 * The tenants a platform credential reads (`Stats` by `tenant_id` with
 * `x-tenant-id: *`); undefined for a tenant's credential, which `*` refuses.
 */
async function platformTenants(s: Session): Promise<string[] | undefined> {
  try {
    const all = clientsFor(s, "*").audit;
    const stats = await all.stats({ groupBy: ["tenant_id"], limit: 1000 });
    return stats.groups.map((g) => g.keys[0]);
  } catch {
    return undefined;
  }
}

/** The platform's own log (docs/platform.md). */
const PLATFORM_LOG = "_platform";

function signedIn(session: Session): void {
  let clients: Clients = clientsFor(session);
  const problem = h("p", { class: "problem", role: "alert", hidden: true });
  const onError = (f: CallFailure) => {
    if (!filters.showError(f)) {
      problem.textContent = summary(f);
      problem.hidden = false;
    }
  };
  const log = logView(() => clients, () => session.tenant, onError);
  const charts = chartsView(() => clients, onError);
  const settings = settingsView();
  const policy = policyView(() => clients, () => selection);
  const panels: Record<string, HTMLElement> = {
    Log: log.element,
    Charts: charts.element,
    Policy: policy.element,
    Settings: settings,
  };
  let active = "Log";
  let selection: Selection;
  // A platform credential reads one tenant as `*` narrowed by the filter's
  // tenant_ids: it may not name an ordinary tenant in x-tenant-id.
  let narrowTo: string | undefined;
  const scoped = (s: Selection): Selection =>
    narrowTo ? { ...s, filter: { ...s.filter, tenantIds: [narrowTo] } } : s;
  const refresh = () => {
    problem.hidden = true;
    if (active === "Log") void log.load(scoped(selection));
    else if (active === "Charts") void charts.load(scoped(selection));
    else if (active === "Policy") void policy.load();
  };
  const filters = filterForm((s) => {
    selection = s;
    refresh();
  });
  selection = filters.selection();

  const tabs = Object.keys(panels).map((name) =>
    h("button", { type: "button", role: "tab", id: `tab-${name}`, "aria-controls": `panel-${name}` }, name),
  );
  // Policy is for audit:admin: its tab shows once a read of the policy
  // succeeds with this credential and tenant.
  const policyTab = tabs.find((t) => t.textContent === "Policy") as HTMLButtonElement;
  const checkAdmin = () => {
    policyTab.hidden = true;
    if (session.tenant === "*" || session.tenant === PLATFORM_LOG) return;
    clients.policy.getRetention({}).then(
      () => (policyTab.hidden = false),
      () => undefined,
    );
  };
  checkAdmin();
  const select = (name: string, focus = false) => {
    active = name;
    tabs.forEach((t) => {
      const on = t.textContent === name;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      if (on && focus) t.focus();
    });
    Object.entries(panels).forEach(([n, p]) => (p.hidden = n !== name));
    if (name !== "Log") log.stopLive();
    refresh();
  };
  tabs.forEach((t) => {
    t.addEventListener("click", () => select(t.textContent ?? "Log"));
    t.addEventListener("keydown", (e) => {
      const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const visible = tabs.filter((x) => !x.hidden);
      const at = visible.indexOf(t);
      select(visible[(at + step + visible.length) % visible.length].textContent ?? "Log", true);
    });
  });

  const tenantBox = h("span", { class: "tenant" }, "Tenant ", h("strong", {}, session.tenant));
  void platformTenants(session).then((tenants) => {
    if (tenants === undefined) return;
    // A text box with suggestions: any tenant can be typed, not only the
    // (at most 1000) that Stats lists.
    const choice = h("input", {
      id: "tenant-select",
      type: "text",
      list: "tenant-options",
      value: session.tenant,
      autocomplete: "off",
      spellcheck: "false",
    });
    const options = h(
      "datalist",
      { id: "tenant-options" },
      h("option", { value: "*" }, "every tenant"),
      h("option", { value: PLATFORM_LOG }, "the platform's own log"),
      ...tenants.filter((t) => t !== PLATFORM_LOG).map((t) => h("option", { value: t })),
    );
    choice.addEventListener("change", () => {
      const value = choice.value.trim() || "*";
      narrowTo = value === "*" || value === PLATFORM_LOG ? undefined : value;
      session.tenant = narrowTo ? "*" : value;
      saveSession(session);
      clients = clientsFor(session);
      checkAdmin();
      if (active === "Policy") select("Log");
      else refresh();
    });
    clear(tenantBox);
    tenantBox.append(h("label", { for: "tenant-select" }, "Tenant "), choice, options);
  });

  clear(root);
  root.append(
    h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, "Audit log"),
      tenantBox,
      h("button", { type: "button", onclick: () => (clearSession(), log.stopLive(), start()) }, "Sign out"),
    ),
    h(
      "main",
      {},
      filters.element,
      problem,
      h("div", { role: "tablist", "aria-label": "Views" }, ...tabs),
      ...Object.entries(panels).map(([n, p]) => {
        p.id = `panel-${n}`;
        p.setAttribute("role", "tabpanel");
        p.setAttribute("aria-labelledby", `tab-${n}`);
        return p;
      }),
    ),
  );
  select("Log");
}

start();
