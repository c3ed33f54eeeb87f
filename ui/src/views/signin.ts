// Sign-in: an API key or a bearer token, and a tenant.
import { field, h } from "../dom";
import type { CredentialKind, Session } from "../session";

export function signInForm(onSignIn: (s: Session) => Promise<string | undefined>): HTMLElement {
  const kind = h(
    "select",
    { name: "kind" },
    h("option", { value: "api-key" }, "API key"),
    h("option", { value: "bearer" }, "Bearer token (JWT)"),
  );
  const credential = h("input", { name: "credential", type: "password", autocomplete: "off", required: true });
  const tenant = h("input", { name: "tenant", type: "text", required: true, autocomplete: "off" });
  const problem = h("p", { class: "problem", role: "alert", hidden: true });
  const submit = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Audit log viewer"),
    h("p", {}, "The credential stays in this tab only (sessionStorage) and is sent to this service alone."),
    field("Credential type", kind),
    field("Credential", credential),
    field("Tenant", tenant, "a tenant id; * for every tenant (platform credentials)"),
    problem,
    submit,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    problem.hidden = true;
    const error = await onSignIn({
      kind: kind.value as CredentialKind,
      credential: credential.value.trim(),
      tenant: tenant.value.trim(),
    });
    submit.disabled = false;
    if (error) {
      problem.textContent = error;
      problem.hidden = false;
    }
  });
  return h("main", { class: "signin-page" }, form);
}
