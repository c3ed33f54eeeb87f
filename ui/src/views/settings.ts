// Settings: the verifier key "Verify" checks checkpoints against.
import { field, h } from "../dom";
import { loadPinnedKey, savePinnedKey } from "../session";
import { parseVerifierKey } from "../verify/note";

export function settingsView(): HTMLElement {
  const key = h("input", { name: "verifier-key", type: "text", spellcheck: "false", value: loadPinnedKey() });
  const result = h("p", { role: "status" });
  const form = h(
    "form",
    { class: "settings", "aria-label": "Verifier key" },
    h("h2", {}, "Verifier key"),
    h(
      "p",
      {},
      "Verify checks each checkpoint's signature against this key. Take it from where you keep it, not from the service you are checking: " +
        "the service logs it at start (checkpoints are signed with this key), in the form name+hash+key.",
    ),
    field("Pinned verifier key", key),
    h("button", { type: "submit" }, "Pin"),
    result,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      if (key.value.trim() !== "") await parseVerifierKey(key.value);
      savePinnedKey(key.value);
      result.textContent = key.value.trim() ? "Pinned." : "No key pinned.";
    } catch (error) {
      result.textContent = `Not pinned: ${error instanceof Error ? error.message : String(error)}`;
    }
  });
  return h("section", { "aria-label": "Settings" }, form);
}
