import { useCallback, useEffect, useRef, useState } from "react";
import { io } from "socket.io-client";
import { api, post } from "./api.js";
import { announce, askToNotify, mayAskToNotify, withdraw } from "./notify.js";
import { flushOutbox, outbox, registerServiceWorker, rememberList, rememberedList } from "./offline.js";
import { disablePush, enablePush, pushId } from "./push.js";
import { accountsIn, forgetEvents, lastEventIds, rememberEvent, rememberPoint, saveSession } from "./session.js";
import { CategoryTabs } from "./CategoryTabs.jsx";
import { Compose } from "./Compose.jsx";
import { FolderForm } from "./FolderForm.jsx";
import { KeyboardHelp } from "./KeyboardHelp.jsx";
import { NotificationButton, NotificationCenter } from "./NotificationCenter.jsx";
import { addNotice, noticeGone, noticeMoved, noticeRead } from "./notices.js";
import { Appearance } from "./Appearance.jsx";
import { FolderLabel } from "./FolderLabel.jsx";
import { BellPlus, FolderPlus, LogOut, SquarePen, Volume2, VolumeX } from "./icons.js";
import { DRAGGED_MAIL, MessageList } from "./MessageList.jsx";
import { Preview } from "./Preview.jsx";
import { longDate, warmDates } from "./dates.js";
import { DEFAULT_VIEW, listingQuery } from "./listing.js";

const FILTERS = {
  "": () => true,
  unread: (m) => m.unread,
  starred: (m) => (m.flags || []).includes("\\Flagged"),
  attachments: (m) => m.hasAttachments,
};
const TABS = {
  "": () => true,
  primary: (m) => !["social", "promotions"].includes(m.category),
  social: (m) => m.category === "social",
  promotions: (m) => m.category === "promotions",
};

// Does a mail pushed live belong in the current view? (Searches are answered by the bridge only.)
const matches = (view, m) => !view.q && FILTERS[view.filter](m) && TABS[view.tab](m);

const INDEX_LAG_MS = 10_000;
const STANDARD = ["INBOX", "Drafts", "Sent", "Archive", "Junk", "Trash"]; // bridge/mailbox_order.py
const isDefaultView = (v) => !v.q && !v.filter && !v.tab;

/**
 * The listing just fetched, merged with the list on screen. The listing is the truth as of when it
 * was asked for (`since`); a live event that came after that is newer still. So, per message: the
 * live copy wins if it changed after `since` (give or take the index's lag), else the listing's; a message the listing lacks stays
 * only if it arrived live after `since` (else it was deleted or moved meanwhile).
 */
function merge(fetched, current, where, view, gone, since, changedAt, flagEdits, partial = false) {
  const byId = new Map();
  // The index may answer before it has applied a deletion the socket already reported, or a flag
  // change: one that came live while the message was not on screen yet (the first listing still on
  // its way) has no live copy below to win, so it is applied to the listing's copy here.
  for (const m of fetched) {
    if (gone.has(m.id)) continue;
    const edits = (flagEdits.get(m.id) || []).filter((x) => x.at > since - INDEX_LAG_MS);
    byId.set(m.id, edits.reduce((copy, x) => withFlags(copy, x.e), m));
  }
  // A first page (more follow) says nothing of what sorts after its last message: pages loaded
  // further down stay as they are.
  const last = partial && fetched.length ? fetched[fetched.length - 1] : null;
  for (const m of current) {
    if (m.account !== where.account || m.mailbox !== where.mailbox) continue;
    if (last && !byId.has(m.id) && !gone.has(m.id) && newestFirst(m, last) > 0) {
      byId.set(m.id, m);
      continue;
    }
    // The index applies the same events in its own consumer group and may lag the live relay a
    // little: a live change from just before the listing was asked for still beats it.
    const newer = (changedAt.get(m.id) || 0) > since - INDEX_LAG_MS;
    if (byId.has(m.id)) byId.set(m.id, newer ? { ...byId.get(m.id), ...m } : { ...m, ...byId.get(m.id) });
    else if (newer && matches(view, m)) byId.set(m.id, m);
  }
  return [...byId.values()].sort(newestFirst);
}

// The listing's order (the server's too, which its cursor resumes): latest arrival first, ties by
// UID. Not the Date header: that is the sender's claim, and a mail that came last shows first.
// Parsed once per message (state never changes a message in place, so its object is the key): an
// appended page sorts the whole list, 10,000 rows compared ~140,000 times (bench/web.py).
const arrivals = new WeakMap();
const arrival = (m) => {
  if (!arrivals.has(m)) arrivals.set(m, new Date(m.arrived || m.timestamp).getTime());
  return arrivals.get(m);
};
const newestFirst = (a, b) => arrival(b) - arrival(a) || b.uid - a.uid;

const escapeHtml = (text) => text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

function quoted(body) {
  const lines = (body.text || "").split("\n").map((l) => `> ${l}`).join("\n");
  return `\n\nOn ${longDate(body.date)}, ${body.from} wrote:\n${lines}`;
}

const withFlags = (m, e) => {
  const flags = [...new Set([...(m.flags || []).filter((f) => !e.removed.includes(f)), ...e.added])];
  return { ...m, flags, unread: e.unread === undefined ? m.unread : e.unread };
};

export function Mail({ session, onLogout }) {
  const { token } = session;
  // Known from the last /me answer too, so the client opens offline with what it had.
  // Or, before the first /me answer, from the token's own claims (the first listing need not wait).
  const [accounts, setAccounts] = useState(() => session.accounts || accountsIn(token));
  const [account, setAccount] = useState(() => (session.accounts || accountsIn(token))[0] || null);
  const [inboxUnread, setInboxUnread] = useState({}); // account -> unread in its INBOX
  const [mailbox, setMailbox] = useState("INBOX");
  const [mailboxes, setMailboxes] = useState([]);
  const [emails, setEmails] = useState([]);
  const [selected, setSelected] = useState(null);
  const [live, setLive] = useState(false);
  const [everLive, setEverLive] = useState(false); // before the first connection it is not "Reconnecting"
  const [online, setOnline] = useState(navigator.onLine);
  const [composing, setComposing] = useState(null);
  const [help, setHelp] = useState(false); // the keyboard shortcuts dialog (`?`)
  const [noticesOpen, setNoticesOpen] = useState(false); // the notification center
  const [picked, setPicked] = useState(() => new Set()); // ids chosen for a bulk action
  const pick = (id) => setPicked((p) => { const next = new Set(p); if (next.has(id)) next.delete(id); else next.add(id); return next; });
  const [toasts, setToasts] = useState([]);
  // Toasts stack up (at most three) and each leaves after a while: one never hides another. One
  // may carry an action (Undo), offered as long as the toast shows.
  const setToast = useCallback((text, action = null) => {
    if (!text) return;
    const id = crypto.randomUUID();
    setToasts((ts) => [...ts.slice(-2), { id, text, action }]);
    setTimeout(() => setToasts((ts) => ts.filter((t) => t.id !== id)), action ? 8000 : 6000);
  }, []);
  const lastUndo = useRef(null); // what `z` undoes: the latest archive, delete or move
  const [view, setView] = useState(DEFAULT_VIEW);
  const [query, setQuery] = useState("");
  const [typing, setTyping] = useState({});
  const [settings, setSettings] = useState({ sound: true });
  const socketRef = useRef(null);
  const sentPush = useRef(undefined); // the Web Push id the socket connected with (src/push.js)
  const searchRef = useRef(null);
  const gone = useRef(new Set());
  // Mail that arrived live in a folder not on screen ("account\nmailbox" -> the latest 100): shown
  // at once when that folder is opened, whether or not the index has caught up with it yet.
  const offscreen = useRef(new Map());
  const changedAt = useRef(new Map()); // email id -> when a live event last changed it
  const changed = (id) => changedAt.current.set(id, performance.now());
  // email id -> the flag changes that came live in the last INDEX_LAG_MS, in order (merge()).
  const flagEdits = useRef(new Map());
  const editFlags = (e) => {
    const now = performance.now();
    const edits = flagEdits.current;
    const earlier = edits.get(e.emailId) || [];
    edits.delete(e.emailId); // re-added last: the map stays ordered by each id's latest change
    for (const [id, old] of edits) {
      if (old[old.length - 1].at >= now - INDEX_LAG_MS) break; // the rest are newer still
      edits.delete(id);
    }
    edits.set(e.emailId, [...earlier, { at: now, e }]);
  };
  // "account\nmailbox" -> the counts with the highest countsVersion seen. Counts are taken by
  // several writers on the server and can arrive out of order (a listing, a late unread_count): the
  // newest wins, also over a folder list that comes after them (an unread_count can come first).
  const countsVersion = useRef(new Map());
  const newestCounts = (acct, box) => {
    const key = `${acct}\n${box.name || box.mailbox}`;
    const version = Number(box.countsVersion) || 0;
    if (version < (countsVersion.current.get(key)?.countsVersion || 0)) return false;
    countsVersion.current.set(key, { unread: box.unread, total: box.total, countsVersion: version });
    return true;
  };
  const where = useRef({});
  where.current = { account, mailbox };
  const viewRef = useRef(view);
  viewRef.current = view;
  const settingsRef = useRef(settings);
  settingsRef.current = settings;

  // Who this token lets us read: the host website's tokens may grant several accounts.
  useEffect(() => {
    api(token, "/api/v1/me").then(
      (me) => {
        saveSession({ ...session, accounts: me.accounts });
        setAccounts((known) => (known.join() === me.accounts.join() ? known : me.accounts));
        setAccount((a) => (a && me.accounts.includes(a) ? a : me.accounts[0]));
      },
      (e) => (e.status === 401 ? onLogout() : setToast(e.message)),
    );
  }, [token, onLogout]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    if (!account) return;
    api(token, `/api/v1/settings?account=${encodeURIComponent(account)}`).then(
      (r) => setSettings({ sound: true, ...r.settings }),
      () => {},
    );
  }, [token, account]);

  const reloadBoxes = useCallback(async () => {
    const acct = where.current.account;
    if (!acct) return;
    const boxes = await api(token, `/api/v1/mailboxes?account=${encodeURIComponent(acct)}`);
    if (where.current.account !== acct) return; // switched meanwhile
    // Counts pushed live that are newer than the listing's stay.
    const fresh = new Set(boxes.mailboxes.filter((b) => newestCounts(acct, b)).map((b) => b.name));
    setMailboxes(() =>
      boxes.mailboxes.map((b) => {
        const live = countsVersion.current.get(`${acct}\n${b.name}`);
        return live && !fresh.has(b.name) ? { ...b, ...live } : b;
      }),
    );
    const inbox = boxes.mailboxes.find((b) => b.name === "INBOX");
    if (inbox && fresh.has("INBOX")) setInboxUnread((u) => ({ ...u, [acct]: inbox.unread }));
  }, [token]);

  // Where the next page starts ("" when the list is complete, null before the first answer), for
  // the view it was listed for: a page never lands in another view's list.
  const [paging, setPaging] = useState({ next: null, key: "" });
  const pagingRef = useRef(paging);
  pagingRef.current = paging;
  const loadingMore = useRef(false);
  const viewKey = (acct, box, v) => JSON.stringify([acct, box, v.q, v.filter, v.tab]);

  const listOnce = useCallback(async () => {
    const { account: acct, mailbox: box } = where.current;
    if (!acct) return;
    const v = viewRef.current;
    const since = performance.now();
    const asked = api(token, listingQuery(acct, box, v));
    warmDates(); // while it is on its way
    // The folders after it, not beside it: the rows show as soon as they come, and on a first load
    // the folders' counts (IMAP) would share the bridge and the machine with the listing.
    const boxes = asked.then(reloadBoxes, reloadBoxes);
    boxes.catch(() => {}); // awaited below: a failed listing must not leave its failure unhandled
    const list = await asked;
    if (where.current.account !== acct || where.current.mailbox !== box || viewRef.current !== v) return boxes; // switched meanwhile
    const partial = Boolean(list.nextCursor);
    setEmails((current) => merge(list.emails, current, { account: acct, mailbox: box }, v, gone.current, since, changedAt.current, flagEdits.current, partial));
    // Pages already loaded below the first stay, and so does where the next one starts.
    setPaging((p) => {
      const key = viewKey(acct, box, v);
      return p.key === key && p.next !== null && partial ? p : { next: list.nextCursor || "", key };
    });
    await boxes;
  }, [token, reloadBoxes]);

  // One listing of a view at a time. Asked again while one is in flight (the first load, the
  // socket's connect and the service worker's take-over come together), it is asked once more
  // after that one is answered, not beside it: the store may read the whole mailbox for each
  // (bench/web.py: three at once answered the first only when all three were done). Another
  // view (a search, a folder) is listed at once.
  const listing = useRef({ key: "", running: null, again: null });
  const reload = useCallback(() => {
    const key = viewKey(where.current.account, where.current.mailbox, viewRef.current);
    const l = listing.current;
    if (l.running && l.key === key) {
      l.again ??= l.running.catch(() => {}).then(() => { l.again = null; return reload(); });
      return l.again;
    }
    const running = listOnce().finally(() => { if (l.running === running) l.running = null; });
    Object.assign(l, { key, running, again: null });
    return running;
  }, [listOnce]);

  // The next page of the view on screen, appended below what is listed.
  const loadMore = useCallback(async () => {
    const { account: acct, mailbox: box } = where.current;
    const v = viewRef.current;
    const key = viewKey(acct, box, v);
    const { next, key: listed } = pagingRef.current;
    if (!acct || !next || listed !== key || loadingMore.current) return;
    loadingMore.current = true;
    try {
      const page = await api(token, listingQuery(acct, box, v, next));
      if (viewKey(where.current.account, where.current.mailbox, viewRef.current) !== key) return; // switched meanwhile
      setEmails((current) => {
        const known = new Set(current.map((m) => m.id));
        const added = page.emails.filter((m) => !known.has(m.id) && !gone.current.has(m.id));
        return [...current, ...added].sort(newestFirst);
      });
      setPaging({ next: page.nextCursor || "", key });
    } finally {
      loadingMore.current = false;
    }
  }, [token]);

  // The list last seen for this mailbox shows at once (and offline), then the listing updates it.
  useEffect(() => {
    const arrived = (offscreen.current.get(`${account}\n${mailbox}`) || []).filter((m) => !gone.current.has(m.id) && matches(view, m));
    const shown = account && isDefaultView(view) ? rememberedList(account, mailbox) : [];
    const byId = new Map([...shown, ...arrived].map((m) => [m.id, m]));
    setEmails([...byId.values()].sort(newestFirst));
    setPaging({ next: null, key: "" }); // not listed yet: the list says so rather than "No messages"
    setPicked(new Set());
  }, [account, mailbox, view]);
  useEffect(() => {
    if (account && isDefaultView(viewRef.current)) rememberList(account, mailbox, emails.filter((m) => m.account === account && m.mailbox === mailbox));
  }, [emails]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    reload().catch((e) => navigator.onLine && setToast(e.message));
  }, [account, mailbox, view, reload]);

  // Unread counts of the other accounts, for the switcher (the current one's come with its folders).
  useEffect(() => {
    if (accounts.length < 2) return; // no switcher
    for (const a of accounts) {
      if (a === where.current.account) continue;
      api(token, `/api/v1/mailboxes?account=${encodeURIComponent(a)}`).then(
        (r) => {
          const inbox = r.mailboxes.find((b) => b.name === "INBOX");
          if (inbox && newestCounts(a, inbox)) setInboxUnread((u) => ({ ...u, [a]: inbox.unread }));
        },
        () => {},
      );
    }
  }, [token, accounts]);

  useEffect(() => {
    const goOnline = () => setOnline(true);
    const goOffline = () => setOnline(false);
    window.addEventListener("online", goOnline);
    window.addEventListener("offline", goOffline);
    registerServiceWorker(() => reload().catch(() => {}));
    return () => { window.removeEventListener("online", goOnline); window.removeEventListener("offline", goOffline); };
  }, [reload]);

  useEffect(() => {
    if (!accounts.length) return undefined;
    const socket = io({
      transports: ["websocket"],
      reconnectionDelayMax: 10_000, // backoff from 1 s up to 10 s, with jitter
      auth: (cb) => {
        const ids = lastEventIds();
        sentPush.current = pushId();
        cb({ token, lastEventId: Object.keys(ids).length ? ids : undefined, push: sentPush.current });
      },
    });
    socketRef.current = socket;
    const here = (e) => e.account === where.current.account && e.mailbox === where.current.mailbox;
    // Listed after the socket is live: what came before is in the listing, what comes after arrives
    // live (and merge() keeps both), so nothing falls between the two.
    socket.on("connect", () => {
      setLive(true);
      setEverLive(true);
      reload().catch(() => {});
      flushOutbox(socket, accounts, {
        onSent: (m) => setToast(`Sent from the outbox: ${m.subject || "(no subject)"}`),
        onRefused: (m, error) => setToast(`Not sent: ${m.subject || "(no subject)"}: ${error}. Kept in Drafts.`),
        saveDraft: (body) => post(token, "/api/v1/drafts", body),
      });
    });
    socket.on("disconnect", () => setLive(false));
    socket.on("connect_error", (err) => { setLive(false); if (/token/.test(err.message)) onLogout(); });
    socket.on("new_email", (mail) => {
      rememberEvent(mail);
      changed(mail.id);
      if (mail.unread && mail.source === "delivered") {
        addNotice(mail);
        const line = announce(mail, { sound: settingsRef.current.sound !== false });
        if (line) setToast(line);
      }
      if (!here(mail)) {
        const key = `${mail.account}\n${mail.mailbox}`;
        offscreen.current.set(key, [mail, ...(offscreen.current.get(key) || [])].slice(0, 100));
        return;
      }
      if (!matches(viewRef.current, mail)) return;
      setEmails((list) => (list.some((m) => m.id === mail.id) ? list : [mail, ...list]));
    });
    socket.on("email_read", (e) => {
      rememberEvent(e);
      changed(e.emailId);
      withdraw(e.emailId); // read anywhere: its notification goes away on every device
      noticeRead(e.emailId, true);
      editFlags({ emailId: e.emailId, added: ["\\Seen"], removed: [], unread: false });
      setEmails((l) => l.map((m) => (m.id === e.emailId ? { ...m, unread: false } : m)));
    });
    socket.on("email_flags", (e) => {
      rememberEvent(e);
      changed(e.emailId);
      if (e.unread === false) withdraw(e.emailId);
      if (typeof e.unread === "boolean") noticeRead(e.emailId, !e.unread);
      editFlags(e);
      setEmails((l) => l.map((m) => (m.id === e.emailId ? withFlags(m, e) : m)));
    });
    socket.on("email_deleted", (e) => {
      rememberEvent(e);
      withdraw(e.emailId);
      noticeGone(e.emailId);
      gone.current.add(e.emailId);
      setEmails((l) => l.filter((m) => m.id !== e.emailId));
      setSelected((s) => (s && s.id === e.emailId ? null : s));
    });
    socket.on("email_moved", (e) => { rememberEvent(e); noticeMoved(e.emailId, e.newEmailId, e.toMailbox); gone.current.add(e.emailId); setEmails((l) => l.filter((m) => m.id !== e.emailId)); });
    socket.on("unread_count", (e) => {
      rememberEvent(e);
      if (!newestCounts(e.account, e)) return; // taken before counts already shown
      if (e.mailbox === "INBOX") setInboxUnread((u) => ({ ...u, [e.account]: e.unread }));
      if (e.account !== where.current.account) return;
      setMailboxes((boxes) => boxes.map((b) => (b.name === e.mailbox ? { ...b, unread: e.unread, total: e.total, countsVersion: e.countsVersion } : b)));
    });
    socket.on("mailbox_updated", (e) => {
      rememberEvent(e);
      if (e.account !== where.current.account) return;
      const onScreen = [e.mailbox, e.oldMailbox].includes(where.current.mailbox);
      (onScreen ? reload() : reloadBoxes()).catch(() => {});
    });
    socket.on("email_sent", (e) => { rememberEvent(e); setToast(`Sent: ${e.subject || e.messageId}`); });
    socket.on("user_typing", (e) => {
      setTyping((t) => ({ ...t, [e.emailId]: e.user }));
      setTimeout(() => setTyping((t) => { const next = { ...t }; delete next[e.emailId]; return next; }), 5000);
    });
    socket.on("resume_point", rememberPoint);
    socket.on("resync", (e) => { forgetEvents(e && e.account); reload().catch(() => {}); });
    return () => socket.disconnect();
  }, [token, accounts, onLogout, reload]);

  // Web Push once notifications are allowed; a socket that connected before this browser had an
  // id connects again with it, or its new mail would be pushed while this tab is open.
  const subscribePush = useCallback(() => {
    enablePush(token, accounts).then(
      (id) => {
        const socket = socketRef.current;
        if (id && socket && socket.connected && sentPush.current !== id) socket.disconnect().connect();
      },
      () => {}, // no push service here (or refused): notifications still come while a tab is open
    );
  }, [token, accounts]);
  useEffect(() => {
    if (accounts.length && "Notification" in window && Notification.permission === "granted") subscribePush();
  }, [accounts, subscribePush]);

  const unread = (mailboxes.find((b) => b.name === mailbox) || {}).unread ?? emails.filter((m) => m.unread).length;
  useEffect(() => {
    document.title = `${unread ? `(${unread}) ` : ""}${mailbox} — mail-bridge`;
  }, [unread, mailbox]);

  // Folders of one's own: made, renamed, deleted (the standard ones stay). Dovecot's events bring the
  // new list to every device (mailbox_updated); this one goes to the folder at once.
  const [folderForm, setFolderForm] = useState(null); // null, {mode: "new"} or {mode: "rename", name}
  const submitFolder = async (name) => {
    const form = folderForm;
    setFolderForm(null);
    if (!form || !name.trim()) return;
    try {
      const done = form.mode === "new"
        ? await post(token, "/api/v1/mailboxes", { account, name })
        : await api(token, "/api/v1/mailboxes", { method: "PATCH", body: JSON.stringify({ account, name: form.name, newName: name }) });
      await reloadBoxes();
      setSelected(null);
      setMailbox(done.name);
    } catch (err) {
      setToast(err.message);
    }
  };
  const deleteFolder = async () => {
    if (!window.confirm(`Delete the folder ${mailbox} and every message in it?`)) return;
    try {
      await api(token, `/api/v1/mailboxes?${new URLSearchParams({ account, name: mailbox })}`, { method: "DELETE" });
      setSelected(null);
      setMailbox("INBOX");
      setToast(`Folder ${mailbox} deleted`);
    } catch (err) {
      setToast(err.message);
    }
  };
  const ownFolder = !STANDARD.includes(mailbox);

  // Rows dropped on a folder move there: one row as "Move to…" moves it, several as the bulk move.
  const [dropTarget, setDropTarget] = useState(null);
  const dropOn = (name) => {
    const carries = (e) => e.dataTransfer.types.includes(DRAGGED_MAIL) && name !== mailbox;
    return {
      onDragOver: (e) => { if (carries(e)) { e.preventDefault(); e.dataTransfer.dropEffect = "move"; setDropTarget(name); } },
      onDragLeave: () => setDropTarget((t) => (t === name ? null : t)),
      onDrop: (e) => {
        setDropTarget(null);
        if (!carries(e)) return;
        e.preventDefault();
        let ids;
        try { ids = JSON.parse(e.dataTransfer.getData(DRAGGED_MAIL)); } catch { return; }
        const rows = emails.filter((m) => ids.includes(m.id));
        if (rows.length === 1) act("move", rows[0], name);
        else if (rows.length > 1) bulk("move", name, rows);
      },
    };
  };

  // One action on every picked message (or on `rows` when given), a few requests at a time; moves
  // (archive, delete, move) can be undone together. What failed is said, and stays picked.
  const bulk = async (action, target, rows = null) => {
    const chosen = rows || emails.filter((m) => picked.has(m.id));
    if (!chosen.length) return;
    const one = (m) => {
      if (action === "read" || action === "unread") {
        return post(token, `/api/v1/email/${m.id}/flags`, action === "read" ? { add: ["\\Seen"] } : { remove: ["\\Seen"] });
      }
      if (action === "archive") return post(token, `/api/v1/email/${m.id}/archive`, {});
      if (action === "delete") return api(token, `/api/v1/email/${m.id}`, { method: "DELETE" });
      return post(token, `/api/v1/email/${m.id}/move`, { mailbox: target });
    };
    const results = [];
    for (let i = 0; i < chosen.length; i += 4) results.push(...(await Promise.allSettled(chosen.slice(i, i + 4).map(one))));
    const failed = chosen.filter((_m, i) => results[i].status === "rejected");
    setPicked(new Set(failed.map((m) => m.id)));
    if (selected && chosen.some((m) => m.id === selected.id) && action !== "read" && action !== "unread") closeMessage();
    const moved = results.filter((r) => r.status === "fulfilled" && r.value && r.value.newEmailId).map((r) => r.value);
    const done = chosen.length - failed.length;
    const said = { archive: "archived", delete: "moved to Trash", read: "marked read", unread: "marked unread", move: `moved to ${target}` }[action];
    const undo = undoOf(moved);
    setToast(`${done} message${done === 1 ? "" : "s"} ${said}${failed.length ? `; ${failed.length} not: ${results.find((r) => r.status === "rejected").reason.message}` : ""}`, undo);
  };

  // Every message of the folder on screen read: one request; the counts and rows follow from the
  // events every device gets.
  // Back to the list: through the history when the message pushed an entry, so Back stays in step.
  const closeMessage = () => (opened() ? history.back() : setSelected(null));
  // Each folder opened from the list of folders is a history entry too, which says its folder: Back
  // walks message -> list -> the folder before (on a phone, the system gesture).
  useEffect(() => {
    const onPop = () => {
      setSelected(null);
      const state = history.state;
      setMailbox(state && state.mailBridge ? state.mailbox : "INBOX");
    };
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);
  // The entry on screen always says its folder, however the folder was changed (a new folder, a
  // notice, another account), so coming Back to it shows that folder.
  useEffect(() => {
    const state = history.state;
    if (!state || state.mailBridge === "folder") history.replaceState({ mailBridge: "folder", mailbox }, "");
  }, [mailbox]);
  const goToFolder = (name) => {
    setSelected(null);
    if (name !== "INBOX" && view.tab) setView({ ...view, tab: "" });
    if (name === mailbox) return;
    history.pushState({ mailBridge: "folder", mailbox: name }, "");
    setMailbox(name);
  };

  const markAllRead = () =>
    post(token, "/api/v1/mailboxes/read", { account, mailbox }).then(
      () => setToast(`All of ${mailbox} marked read`),
      (err) => setToast(`Not marked read: ${err.message}`),
    );

  // An open message is a history entry of its own: the phone's Back gesture (or the browser's Back)
  // returns to the list instead of leaving the app.
  const opened = () => history.state && history.state.mailBridge === "message";
  const open = (mail) => {
    if (!opened()) history.pushState({ mailBridge: "message", mailbox }, "");
    setSelected(mail);
    if (mail.unread) socketRef.current?.emit("mark_read", { emailId: mail.id }, () => {});
  };

  const act = async (action, mail = selected, body = null) => {
    if (!mail) return;
    if (action === "label" || action === "unlabel" || action === "star" || action === "unstar") {
      // The change comes back as email_flags from Dovecot, to this device and every other.
      const change = {
        label: { add: [body] },
        unlabel: { remove: [body] },
        star: { add: ["\\Flagged"] },
        unstar: { remove: ["\\Flagged"] },
      }[action];
      await post(token, `/api/v1/email/${mail.id}/flags`, change).catch((err) => setToast(err.message));
      return;
    }
    if (action === "reply" || action === "replyall" || action === "forward" || action === "edit") {
      const subject = body.subject || "";
      const re = /^re:/i.test(subject) ? subject : `Re: ${subject}`;
      if (action === "reply") {
        setComposing({ to: body.from, subject: re, body: quoted(body), inReplyTo: body.messageId, emailId: mail.id });
      } else if (action === "replyall") {
        // Everyone it was to and copied to, but not oneself (the account that received it).
        const me = mail.account.toLowerCase();
        const others = [...(body.to || []), ...(body.cc || [])].filter((a) => !a.toLowerCase().includes(me) && a !== body.from);
        setComposing({ to: body.from, cc: others.join(", "), subject: re, body: quoted(body), inReplyTo: body.messageId, emailId: mail.id });
      } else if (action === "forward") {
        // The whole mail goes on: its HTML under a forwarding note, and its attachments.
        const note = `---------- Forwarded message ----------\nFrom: ${body.from}\nDate: ${longDate(body.date)}\nSubject: ${subject}\n`;
        setComposing({
          subject: /^fwd:/i.test(subject) ? subject : `Fwd: ${subject}`,
          body: `\n\n${note}\n${body.text || ""}`,
          html: body.html ? `<p><br></p><p>${escapeHtml(note).replaceAll("\n", "<br>")}</p>${body.html}` : undefined,
          forwardAttachments: (body.attachments || [])
            .filter((a) => !a.inline)
            .map((a) => ({ emailId: mail.id, part: a.part_id, filename: a.filename, size: a.size })),
        });
      }
      else setComposing({ to: (body.to || []).join(", "), cc: (body.cc || []).join(", "), subject, body: body.text, draftId: mail.id });
      return;
    }
    if (action === "read" || action === "unread") {
      const ack = await socketRef.current?.timeout(15_000).emitWithAck("mark_read", { emailId: mail.id, read: action === "read" }).catch(() => null);
      if (!ack || !ack.ok) setToast(`Not changed: ${ack ? ack.error : "no answer from the bridge"}`);
      return;
    }
    if (action === "spam" || action === "notspam" || action === "move") {
      // Report spam moves it to Junk (made on first use); Not spam, back to the inbox.
      const target = action === "move" ? body : action === "spam" ? "Junk" : "INBOX";
      try {
        const moved = await post(token, `/api/v1/email/${mail.id}/move`, { mailbox: target });
        if (selected && selected.id === mail.id) closeMessage();
        const said = { spam: "Reported as spam: moved to Junk", notspam: "Not spam: moved to the inbox", move: `Moved to ${target}` };
        setToast(said[action], undoOf(moved));
      } catch (err) {
        setToast(err.message);
      }
      return;
    }
    try {
      const path = action === "archive" ? `/api/v1/email/${mail.id}/archive` : `/api/v1/email/${mail.id}`;
      const moved = await api(token, path, { method: action === "archive" ? "POST" : "DELETE" });
      if (selected && selected.id === mail.id) closeMessage();
      const done = action === "archive" ? "Archived" : moved.newEmailId ? "Moved to Trash" : "Deleted for good";
      setToast(done, undoOf(moved));
    } catch (err) {
      setToast(err.message);
    }
  };

  // Undo of a move (archive and delete are moves too): move it back to where it was. Nothing to undo
  // when it is gone for good.
  const undoOf = (moved) => {
    const all = (Array.isArray(moved) ? moved : [moved]).filter((m) => m && m.newEmailId);
    if (!all.length) return null;
    const undo = {
      label: "Undo",
      run: async () => {
        if (lastUndo.current === undo) lastUndo.current = null;
        try {
          for (const one of all) await post(token, `/api/v1/email/${one.newEmailId}/move`, { mailbox: one.fromMailbox });
          setToast(`Back in ${all[0].fromMailbox}`);
        } catch (err) {
          setToast(`Not undone: ${err.message}`);
        }
      },
    };
    lastUndo.current = undo;
    return undo;
  };

  // The list's keyboard cursor is the focused row: j/k move it without opening anything.
  // A long list draws only the rows near the screen (MessageList.jsx), enough either side for a step.
  const rows = () => [...document.querySelectorAll(".list .item .open")];
  const moveCursor = (step) => {
    const all = rows();
    const next = all[Math.min(all.length - 1, Math.max(0, all.indexOf(document.activeElement) + step))];
    next?.focus();
    next?.scrollIntoView({ block: "nearest" });
  };
  const cursorIndex = () => {
    const id = document.activeElement?.closest?.(".item")?.dataset.id;
    return id === undefined ? -1 : keys.current.emails.findIndex((m) => m.id === id);
  };

  // Keyboard: the shortcuts KeyboardHelp.jsx lists (`?` shows them); keep the two alike.
  const keys = useRef({});
  keys.current = { emails, selected, open, act, loadMore, closeMessage, help };

  // A notification's click (public/sw.js) opens its mail: told by a message when a tab is open, or
  // in a new tab at /#open=<id> (kept through the sign-in).
  useEffect(() => {
    const openId = (id) => id && keys.current.open(keys.current.emails.find((m) => m.id === id) || { id, unread: true });
    const asked = new URLSearchParams(window.location.hash.slice(1)).get("open");
    if (asked) {
      history.replaceState(null, "", window.location.pathname + window.location.search);
      openId(asked);
    }
    const onMessage = (e) => e.data && e.data.type === "open-email" && openId(e.data.id);
    navigator.serviceWorker?.addEventListener("message", onMessage);
    return () => navigator.serviceWorker?.removeEventListener("message", onMessage);
  }, []);
  useEffect(() => {
    const onKey = (e) => {
      if (e.target.closest && e.target.closest("input, textarea, select, [contenteditable], .compose")) return;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const { emails: list, selected: current, open: openMail, act: doAct, help: helping } = keys.current;
      if (helping) return; // the dialog has the keyboard
      if (e.key === "?") { e.preventDefault(); setHelp(true); return; }
      if (e.key === "Escape" && current) { keys.current.closeMessage(); return; }
      const index = current ? list.findIndex((m) => m.id === current.id) : -1;
      if ((e.key === "j" || e.key === "k") && list.length) {
        const step = e.key === "j" ? 1 : -1;
        if (current) openMail(list[Math.min(list.length - 1, Math.max(0, index + step))]); // reading: the next one
        else moveCursor(step); // in the list: a cursor that opens (and marks read) nothing
        const at = current ? index : cursorIndex();
        if (step > 0 && at + 1 >= list.length - 5) keys.current.loadMore().catch((err) => setToast(err.message));
      }
      else if ((e.key === "o" || (e.key === "Enter" && !e.target.closest("button"))) && list.length && !current) openMail(list[0]);
      else if (e.key === "e") doAct("archive");
      else if (e.key === "#") doAct("delete");
      else if (e.key === "!" && current) doAct(current.mailbox === "Junk" ? "notspam" : "spam");
      else if (e.key === "u") doAct("unread");
      else if (e.key === "s" && current) {
        const fresh = list.find((m) => m.id === current.id) || current;
        doAct((fresh.flags || []).includes("\\Flagged") ? "unstar" : "star", fresh);
      }
      else if ((e.key === "r" || e.key === "a") && current) {
        const how = e.key === "r" ? "reply" : "replyall";
        api(token, `/api/v1/email/${current.id}`).then((body) => doAct(how, current, body), (err) => setToast(err.message));
      } else if (e.key === "z" && lastUndo.current) lastUndo.current.run();
      else if (e.key === "x") {
        const at = current ? index : cursorIndex();
        if (list[at]) pick(list[at].id);
      }
      else if (e.key === "c") {
        e.preventDefault(); // the composer takes the focus at once: the "c" must not land in its To field
        setComposing({});
      }
      else if (e.key === "/") { e.preventDefault(); searchRef.current?.focus(); }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [token]);

  const queued = outbox().length;
  const status = live ? "Live" : !online ? "Offline" : everLive ? "Reconnecting…" : "Connecting…";
  const switchTo = (a) => { setSelected(null); setMailbox("INBOX"); setAccount(a); };
  const toggleSound = () => {
    const sound = settings.sound === false;
    setSettings({ ...settings, sound });
    api(token, `/api/v1/settings?account=${encodeURIComponent(account)}`, { method: "PUT", body: JSON.stringify({ sound }) }).catch(() => {});
  };
  return (
    <div className={selected ? "app reading" : "app"}>
      <header>
        <h1 className="brand">mail-bridge</h1>
        <span className={live ? "live on" : "live off"} role="status" aria-live="polite">{status}{queued ? ` · ${queued} queued` : ""}</span>
        {accounts.length > 1 ? (
          <label className="switcher">Account{" "}
            <select value={account || ""} onChange={(e) => switchTo(e.target.value)}>
              {accounts.map((a) => <option key={a} value={a}>{a}{inboxUnread[a] ? ` (${inboxUnread[a]})` : ""}</option>)}
            </select>
          </label>
        ) : (
          <span className="who">{account}</span>
        )}
        <span className="spacer" />
        <button className="primary" onClick={() => setComposing({})}><SquarePen /><span className="btn-text">Compose</span></button>
        <button onClick={toggleSound} aria-pressed={settings.sound !== false}>{settings.sound !== false ? <Volume2 /> : <VolumeX />}<span className="btn-text">Sound</span></button>
        <Appearance />
        {mayAskToNotify() && <button onClick={() => askToNotify().then((p) => { setToasts((ts) => [...ts]); if (p === "granted") subscribePush(); })}><BellPlus /><span className="btn-text">Enable notifications</span></button>}
        <NotificationButton onOpen={() => setNoticesOpen(true)} />
        <button onClick={() => { disablePush(token); onLogout(); }}><LogOut /><span className="btn-text">Sign out</span></button>
      </header>
      <nav aria-label="Mailboxes">
        {(mailboxes.length ? mailboxes : [{ name: "INBOX", unread: 0 }]).map((b) => (
          <button key={b.name} className={`box${b.name === mailbox ? " current" : ""}${dropTarget === b.name ? " drop-target" : ""}`} aria-current={b.name === mailbox ? "page" : undefined} onClick={() => goToFolder(b.name)}
            {...dropOn(b.name)}>
            <FolderLabel box={b} />
          </button>
        ))}
        {folderForm ? (
          <FolderForm
            label={folderForm.mode === "new" ? "New folder name" : `New name for ${folderForm.name}`}
            initial={folderForm.mode === "new" ? "" : folderForm.name}
            onSubmit={submitFolder}
            onCancel={() => setFolderForm(null)}
          />
        ) : (
          <button className="box new-folder" onClick={() => setFolderForm({ mode: "new" })}><FolderPlus />New folder</button>
        )}
      </nav>
      <main className="listing">
        <form role="search" className="search" onSubmit={(e) => { e.preventDefault(); setView({ ...view, q: query.trim() }); }}>
          <input ref={searchRef} type="search" aria-label="Search mail" placeholder="Search (from: subject: is:unread …)" value={query} onChange={(e) => setQuery(e.target.value)} />
        </form>
        {mailbox === "INBOX" && (
        <CategoryTabs token={token} account={account} tab={view.tab} onSelect={(tab) => setView({ ...view, tab })} listed={paging.next !== null}
          countsKey={(({ unread, countsVersion } = {}) => `${unread}/${countsVersion}`)(mailboxes.find((b) => b.name === "INBOX"))} />
        )}
        <div className="filters" role="group" aria-label="Quick filters">
          {[["unread", "Unread"], ["starred", "Starred"], ["attachments", "Attachments"]].map(([key, label]) => (
            <button key={key} aria-pressed={view.filter === key} onClick={() => setView({ ...view, filter: view.filter === key ? "" : key })}>{label}</button>
          ))}
          <span className="spacer" />
          {unread > 0 && <button className="mark-all" onClick={markAllRead}>Mark all read</button>}
          {ownFolder && <button onClick={() => setFolderForm({ mode: "rename", name: mailbox })}>Rename folder</button>}
          {ownFolder && <button onClick={deleteFolder}>Delete folder</button>}
        </div>
        {picked.size > 0 && (
          <div className="bulk" role="toolbar" aria-label="Selected messages">
            <span>{picked.size} selected</span>
            <button onClick={() => setPicked(new Set(emails.map((m) => m.id)))}>Select all {emails.length}</button>
            <button onClick={() => bulk("archive")}>Archive</button>
            <button onClick={() => bulk("delete")}>Delete</button>
            <button onClick={() => bulk("read")}>Mark read</button>
            <button onClick={() => bulk("unread")}>Mark unread</button>
            <label>
              <span className="sr-only">Move selected to folder</span>
              <select value="" onChange={(e) => e.target.value && bulk("move", e.target.value)}>
                <option value="">Move to…</option>
                {mailboxes.filter((b) => b.name !== mailbox).map((b) => <option key={b.name} value={b.name}>{b.name}</option>)}
              </select>
            </label>
            <button onClick={() => setPicked(new Set())}>Clear</button>
          </div>
        )}
        <MessageList
          picked={picked}
          onPick={pick}
          emails={emails}
          selectedId={selected?.id}
          onOpen={open}
          onAction={(a, m) => act(a, m)}
          listed={paging.next !== null}
          more={Boolean(paging.next)}
          onMore={() => loadMore().catch((err) => setToast(err.message))}
        />
      </main>
      {selected ? (
        <Preview
          token={token}
          email={emails.find((m) => m.id === selected.id) || selected}
          typing={typing[selected.id]}
          onAction={(a, body) => act(a, selected, body)}
          onBack={closeMessage}
          folders={mailboxes.map((b) => b.name)}
          onError={setToast}
        />
      ) : (
        <section className="preview empty" aria-label="Message">Select a message</section>
      )}
      {help && <KeyboardHelp onClose={() => setHelp(false)} />}
      {noticesOpen && (
        <NotificationCenter
          onClose={() => setNoticesOpen(false)}
          onMarkRead={(list) => { for (const n of list) socketRef.current?.emit("mark_read", { emailId: n.id }, () => {}); }}
          onOpenMail={(n) => {
            setNoticesOpen(false);
            if (n.account !== account) setAccount(n.account);
            setMailbox(n.mailbox);
            setView({ q: "", filter: "", tab: "" });
            open({ id: n.id, account: n.account, mailbox: n.mailbox, uid: n.uid, subject: n.subject, fromName: n.from, fromAddress: n.fromAddress, unread: n.unread });
          }}
        />
      )}
      {composing && account && (
        <Compose
          token={token}
          accounts={accounts}
          account={account}
          socket={socketRef.current}
          initial={composing}
          onClose={(msg) => { setComposing(null); setToast(msg); }}
        />
      )}
      <div className="toasts">
        {toasts.map((t) => {
          const dismiss = () => setToasts((ts) => ts.filter((x) => x.id !== t.id));
          return (
            <div key={t.id} className="toast" role="status" onClick={dismiss}>
              {t.text}
              {t.action && (
                <button className="toast-action" onClick={(e) => { e.stopPropagation(); dismiss(); t.action.run(); }}>
                  {t.action.label}
                </button>
              )}
            </div>
          );
        })}
      </div>
    </div>
  );
}
