// Web Push: new mail while no tab of this browser is open (the bridge sends it; public/sw.js shows
// it). Once notifications are allowed, the browser subscribes with the bridge's VAPID key and the
// bridge keeps the subscription for each account; its id goes with the socket (`auth.push`), so the
// bridge pushes nothing while a tab is open. Signing out drops it.
import { api, post } from "./api.js";

const KEY = "mail-bridge-push"; // localStorage: this browser's subscription id at the bridge

export const pushId = () => localStorage.getItem(KEY) || undefined;

const bytes = (b64url) => Uint8Array.from(atob(b64url.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
const sameKey = (buffer, b64url) => {
  const a = new Uint8Array(buffer || []);
  const b = bytes(b64url);
  return a.length === b.length && a.every((x, i) => x === b[i]);
};

// A subscription starts with every tab, so a sign-out can come while one is on its way: its POST
// may land after the sign-out's DELETE, and the bridge would push to a browser that signed out.
// So a subscription that finds its token signed out undoes itself, and stores no id.
const signedOut = new Set();

/** Subscribe (or renew the subscription) for these accounts; the id, or null where push is not to be had. */
export async function enablePush(token, accounts) {
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || Notification.permission !== "granted") return null;
  if (signedOut.has(token)) return null;
  const registration = await navigator.serviceWorker.ready;
  const { publicKey } = await api(token, "/api/v1/push/key");
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription.options.applicationServerKey, publicKey)) {
    await subscription.unsubscribe(); // made for another key: the bridge could not push to it
    subscription = null;
  }
  subscription ||= await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: bytes(publicKey) });
  let id = null;
  for (const account of accounts) {
    if (signedOut.has(token)) break;
    ({ id } = await post(token, "/api/v1/push/subscriptions", { account, ...subscription.toJSON() }));
  }
  if (signedOut.has(token)) {
    if (id) await api(token, `/api/v1/push/subscriptions/${id}`, { method: "DELETE" }).catch(() => {});
    return null;
  }
  if (id) localStorage.setItem(KEY, id);
  return id;
}

/** Signing out: the bridge forgets this browser, and the browser its subscription. */
export async function disablePush(token) {
  signedOut.add(token);
  const id = pushId();
  localStorage.removeItem(KEY);
  if (id) await api(token, `/api/v1/push/subscriptions/${id}`, { method: "DELETE" }).catch(() => {});
  const registration = "serviceWorker" in navigator ? await navigator.serviceWorker.getRegistration() : null;
  const subscription = registration && registration.pushManager ? await registration.pushManager.getSubscription() : null;
  if (subscription) await subscription.unsubscribe().catch(() => {});
}
