// mail-bridge service worker: the app shell and recently read mail stay readable offline.
// Shell: cached at install (the page and the hashed assets it names), served network-first for the
// page so a new deploy shows at once, cache-first for assets (their names change with content).
// Mail: GETs under /api/v1/ (message bodies, mailboxes, settings) go to the network and a copy is
// kept; offline, the copy answers. Socket.IO, non-GET requests, listings and attachments are never
// cached.
const SHELL = "mail-bridge-shell-v1";
const DATA = "mail-bridge-data";
// Listings are not kept here: the page keeps the list it last showed (fresher than any listing,
// since live events update it), and a stale listing from here would undo that. Attachments can be
// large and are fetched on demand.
const NOT_CACHED = /^\/api\/v1\/email\/(inbox|search)$|\/attachments\//;

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(SHELL);
      const page = await fetch("/", { cache: "no-cache" });
      const html = await page.clone().text();
      const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]);
      await cache.put("/", page);
      await cache.addAll(assets);
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) if (name.startsWith("mail-bridge-shell") && name !== SHELL) await caches.delete(name);
      await self.clients.claim();
    })(),
  );
});

async function networkFirst(request, cacheName, key = request) {
  const cache = await caches.open(cacheName);
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(key, response.clone());
    return response;
  } catch (err) {
    const cached = await cache.match(key, { ignoreVary: true });
    if (cached) return cached;
    throw err;
  }
}

async function cacheFirst(request) {
  const cache = await caches.open(SHELL);
  // ignoreVary: the bridge answers with Vary: Origin, and a module script's request carries an
  // Origin header where the worker's own install-time fetch did not.
  const cached = await cache.match(request, { ignoreVary: true });
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok) await cache.put(request, response.clone());
  return response;
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (request.mode === "navigate") event.respondWith(networkFirst(request, SHELL, "/"));
  else if (url.pathname.startsWith("/assets/")) event.respondWith(cacheFirst(request));
  else if (url.pathname.startsWith("/api/v1/") && !NOT_CACHED.test(url.pathname)) {
    event.respondWith(networkFirst(request, DATA));
  }
});

// Web Push (the bridge's bridge/push_sender.py): new mail while no tab is open. The notice holds the
// mail's id, account, mailbox, sender and subject, never its body; shown as the page shows new mail
// (src/notify.js: the sender as title, the subject as body, tagged by the mail's id).
self.addEventListener("push", (event) => {
  let mail = {};
  try {
    mail = event.data ? event.data.json() : {};
  } catch {
    // Not a notice of ours: still shown, as a push must be (userVisibleOnly).
  }
  const from = mail.fromName || mail.fromAddress || "someone";
  event.waitUntil(
    self.registration.showNotification(from, {
      body: mail.subject || "(no subject)",
      tag: mail.id || "mail-bridge",
      data: { id: mail.id || null },
      icon: "/icon.svg",
    }),
  );
});

// A click opens the mail: in an open tab (told by a message, src/Mail.jsx), or in a new one at
// /#open=<id>, which opens it once signed in.
async function openMail(id) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const tab = windows.find((c) => new URL(c.url).origin === self.location.origin);
  if (tab) {
    tab.postMessage({ type: "open-email", id });
    await tab.focus().catch(() => {});
    return;
  }
  await self.clients.openWindow(id ? `/#open=${encodeURIComponent(id)}` : "/");
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(openMail(event.notification.data && event.notification.data.id));
});
