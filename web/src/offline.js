// Offline support: the service worker (public/sw.js) keeps the shell and recently fetched mail
// readable, the last list shown is kept per mailbox; mail written while offline waits in an outbox in localStorage (it survives a reload or
// a closed tab) and is sent when the socket is back.
const OUTBOX = "mail-bridge-outbox";

export function registerServiceWorker(onReady) {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.register("/sw.js").catch(() => {
    // Without it the client works online exactly the same.
  });
  // Once the worker controls the page, fetch the listing again so it passes through its cache.
  navigator.serviceWorker.addEventListener("controllerchange", onReady);
}

// The list last shown for a mailbox, for this tab's session (sessionStorage: gone with the tab,
// like the session itself): shown at once on the next load, and the only list there is offline.
const listKey = (account, mailbox) => `mail-bridge-list:${account}\n${mailbox}`;

export function rememberList(account, mailbox, emails) {
  try {
    sessionStorage.setItem(listKey(account, mailbox), JSON.stringify(emails.slice(0, 100)));
  } catch {
    // Storage full: the next load waits for the listing, nothing else changes.
  }
}

export function rememberedList(account, mailbox) {
  return JSON.parse(sessionStorage.getItem(listKey(account, mailbox)) || "[]");
}

export function outbox() {
  return JSON.parse(localStorage.getItem(OUTBOX) || "[]");
}

export function enqueue(mail) {
  const queued = { ...mail, queuedAt: Date.now(), key: crypto.randomUUID() };
  localStorage.setItem(OUTBOX, JSON.stringify([...outbox(), queued]));
  return queued;
}

export function dequeue(key) {
  localStorage.setItem(OUTBOX, JSON.stringify(outbox().filter((m) => m.key !== key)));
}

/**
 * Send what waits in the outbox for `accounts`, one at a time, in order. A mail the bridge refuses
 * (bad address, say) is not dropped: it is saved as a draft and reported through onRefused.
 */
export async function flushOutbox(socket, accounts, { onSent, onRefused, saveDraft }) {
  for (const mail of outbox()) {
    if (!accounts.includes(mail.account) || !socket.connected) continue;
    const { key, queuedAt, ...body } = mail;
    const ack = await socket.timeout(60_000).emitWithAck("send_email", body).catch(() => null);
    if (ack === null) return; // no answer: keep it, try again on the next connect
    dequeue(key);
    if (ack.ok) onSent(mail);
    else {
      await saveDraft(body).catch(() => {});
      onRefused(mail, ack.error);
    }
  }
}
