// The signed-in credential: in sessionStorage only (gone when the tab
// closes), never in a URL or localStorage. The pinned verifier key is not
// a secret and is kept in localStorage, so it stays pinned.

/** How the credential is sent. */
export type CredentialKind = "api-key" | "bearer";

/** What a call needs to be authorised. */
export interface Session {
  kind: CredentialKind;
  credential: string;
  tenant: string;
}

const SESSION_KEY = "audit-viewer.session";
const PINNED_KEY = "audit-viewer.verifier-key";

export function loadSession(): Session | undefined {
  const raw = sessionStorage.getItem(SESSION_KEY);
  if (!raw) return undefined;
  try {
    const s = JSON.parse(raw) as Session;
    if ((s.kind === "api-key" || s.kind === "bearer") && s.credential && s.tenant) return s;
  } catch {
    // A damaged entry signs the user out.
  }
  sessionStorage.removeItem(SESSION_KEY);
  return undefined;
}

export function saveSession(s: Session): void {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
}

export function clearSession(): void {
  sessionStorage.removeItem(SESSION_KEY);
}

export function loadPinnedKey(): string {
  return localStorage.getItem(PINNED_KEY) ?? "";
}

export function savePinnedKey(key: string): void {
  if (key.trim() === "") localStorage.removeItem(PINNED_KEY);
  else localStorage.setItem(PINNED_KEY, key.trim());
}
