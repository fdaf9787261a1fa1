// The notification center's list: the new mail this browser was told of, newest first, kept across
// reloads (localStorage, per browser, the last LIMIT). A notice is read exactly when its mail is:
// the same events that mark the mail read or unread on every device update it, and opening a
// notice opens (so reads) the mail. A mail moved elsewhere takes its notice with it; one expunged
// is marked gone.
import { useSyncExternalStore } from "react";

const KEY = "mail-bridge-notices";
const LIMIT = 50;
const listeners = new Set();
let notices = load();

function load() {
  try {
    const kept = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(kept) ? kept.slice(0, LIMIT) : [];
  } catch {
    return [];
  }
}

function save(next) {
  notices = next;
  try {
    localStorage.setItem(KEY, JSON.stringify(notices));
  } catch {
    // Storage full or refused: the center still shows this session's notices.
  }
  for (const listener of listeners) listener();
}

// Another tab's changes (it heard the same events, or the user cleared the list there).
window.addEventListener("storage", (e) => {
  if (e.key !== KEY) return;
  notices = load();
  for (const listener of listeners) listener();
});

const update = (emailId, change) => {
  if (notices.some((n) => n.id === emailId)) save(notices.map((n) => (n.id === emailId ? { ...n, ...change } : n)));
};

/** A new mail (a `new_email` event of a delivered, unread mail). */
export function addNotice(mail) {
  if (notices.some((n) => n.id === mail.id)) return;
  const notice = {
    id: mail.id,
    account: mail.account,
    mailbox: mail.mailbox,
    uid: mail.uid,
    from: mail.fromName || mail.fromAddress || mail.from || "someone",
    fromAddress: mail.fromAddress || "",
    subject: mail.subject || "(no subject)",
    at: mail.arrived || mail.timestamp || new Date().toISOString(),
    unread: mail.unread !== false,
    gone: false,
  };
  save([notice, ...notices].slice(0, LIMIT));
}

export const noticeRead = (emailId, read) => update(emailId, { unread: !read });
export const noticeMoved = (emailId, newEmailId, mailbox) =>
  newEmailId ? update(emailId, { id: newEmailId, mailbox, gone: false }) : update(emailId, { gone: true });
export const noticeGone = (emailId) => update(emailId, { gone: true });
export const clearNotices = () => save([]);
/** Signing out forgets them: the next person at this browser must not read them. */
export function forgetNotices() {
  notices = [];
  try {
    localStorage.removeItem(KEY);
  } catch {
    // Nothing kept to forget.
  }
  for (const listener of listeners) listener();
}

export function useNotices() {
  return useSyncExternalStore(
    (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    () => notices,
  );
}
