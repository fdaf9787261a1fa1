// Where the signed-in session lives: this tab's sessionStorage (gone when the tab closes).
// A host website that issues its own tokens opens the client as /#token=<jwt>; the token is taken
// from the fragment (never sent to any server as part of a URL) and the fragment is cleared.
const SESSION = "mail-bridge-session";
const LAST_EVENT = "mail-bridge-last-event";

export function readSession() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    history.replaceState(null, "", window.location.pathname + window.location.search);
    const session = { token };
    saveSession(session);
    sessionStorage.removeItem(LAST_EVENT);
    return session;
  }
  return JSON.parse(sessionStorage.getItem(SESSION) || "null");
}

// The accounts a token grants, read from its claims without checking it (the bridge checks it on
// every call): the first listing need not wait for /api/v1/me, which then confirms or corrects
// them. As the bridge names them (bridge/auth.py canonical_account): ASCII letters lowercased.
export function accountsIn(token) {
  try {
    const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    const accounts = Array.isArray(payload.accounts) ? payload.accounts : [payload.sub];
    const named = accounts.filter((a) => typeof a === "string" && a.includes("@"));
    return [...new Set(named.map((a) => a.replace(/[A-Z]/g, (c) => c.toLowerCase())))];
  } catch {
    return []; // not a JWT we can read: /api/v1/me says
  }
}

export function saveSession(session) {
  sessionStorage.setItem(SESSION, JSON.stringify(session));
}

export function clearSession() {
  sessionStorage.removeItem(SESSION);
  sessionStorage.removeItem(LAST_EVENT);
  // Mail kept for offline reading belongs to this session only.
  if (window.caches) caches.delete("mail-bridge-data").catch(() => {});
}

// The resume point for the bridge's lastEventId, one per account (event ids are per-account logs).
export function lastEventIds() {
  return JSON.parse(sessionStorage.getItem(LAST_EVENT) || "{}");
}

export function rememberEvent(event) {
  if (!event || !event.eventId || !event.account) return;
  const ids = lastEventIds();
  ids[event.account] = event.eventId;
  sessionStorage.setItem(LAST_EVENT, JSON.stringify(ids));
}

// Where this session's view of an account begins, given by the bridge when it had no position yet.
export function rememberPoint(point) {
  if (point && point.account && !lastEventIds()[point.account]) rememberEvent(point);
}

export function forgetEvents(account) {
  const ids = lastEventIds();
  if (account) delete ids[account];
  sessionStorage.setItem(LAST_EVENT, JSON.stringify(account ? ids : {}));
}

// Tabs of one browser share the sign-in: a new tab asks the open ones (BroadcastChannel reaches this
// origin's tabs only) and takes a session one of them answers with; signing out in one signs out
// all. Without an answer (no other tab signed in), the new tab shows the sign-in form.
const CHANNEL = "mail-bridge-session";

export function shareSession({ onShared, onSignedOut }) {
  if (typeof BroadcastChannel === "undefined") return () => {};
  const channel = new BroadcastChannel(CHANNEL);
  channel.onmessage = ({ data }) => {
    const mine = JSON.parse(sessionStorage.getItem(SESSION) || "null");
    if (data === "ask" && mine) channel.postMessage({ session: mine });
    else if (data && data.session && !mine) onShared(data.session);
    else if (data === "signed-out" && mine) onSignedOut();
  };
  return () => channel.close();
}

export function askOtherTabs() {
  if (typeof BroadcastChannel === "undefined") return;
  const channel = new BroadcastChannel(CHANNEL);
  channel.postMessage("ask");
  channel.close();
}

export function tellSignedOut() {
  if (typeof BroadcastChannel === "undefined") return;
  const channel = new BroadcastChannel(CHANNEL);
  channel.postMessage("signed-out");
  channel.close();
}
