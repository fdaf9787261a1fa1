import { useCallback, useEffect, useRef, useState } from "react";
import { io } from "socket.io-client";
import DOMPurify from "dompurify";
import { api, login } from "./api.js";

const SESSION = "mail-bridge-session";
const LAST_EVENT = "mail-bridge-last-event";

const FILTERS = {
  "": () => true,
  unread: (m) => m.unread,
  starred: (m) => (m.flags || []).includes("\\Flagged"),
  attachments: (m) => m.hasAttachments,
};
const TABS = { "": () => true, primary: (m) => !["social", "promotions"].includes(m.category), social: (m) => m.category === "social", promotions: (m) => m.category === "promotions" };

function matches(view, m) {
  return !view.q && FILTERS[view.filter](m) && TABS[view.tab](m);
}

function merge(fetched, live, mailbox, view, gone) {
  const byId = new Map();
  // The index may answer before it has applied a deletion the socket already reported.
  for (const m of fetched) if (!gone.has(m.id)) byId.set(m.id, m);
  for (const m of live) if (m.mailbox === mailbox && (byId.has(m.id) || matches(view, m))) byId.set(m.id, { ...byId.get(m.id), ...m });
  return [...byId.values()].sort((a, b) => new Date(b.timestamp) - new Date(a.timestamp) || b.uid - a.uid);
}

function Login({ onLogin }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const submit = async (e) => {
    e.preventDefault();
    setError("");
    try {
      const { token } = await login(email, password);
      onLogin({ token, email });
    } catch (err) {
      setError(err.message);
    }
  };
  return (
    <form className="login" onSubmit={submit} aria-label="Sign in">
      <h1>mail-bridge</h1>
      <label>Email <input name="email" type="email" value={email} onChange={(e) => setEmail(e.target.value)} required /></label>
      <label>Password <input name="password" type="password" value={password} onChange={(e) => setPassword(e.target.value)} required /></label>
      <button type="submit">Sign in</button>
      {error && <p role="alert" className="error">{error}</p>}
    </form>
  );
}

function initials(name) {
  const parts = (name || "?").replace(/<.*>/, "").trim().split(/\s+/);
  return (parts[0][0] + (parts[1] ? parts[1][0] : "")).toUpperCase();
}

function colour(address) {
  let h = 0;
  for (const c of address || "") h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 55% 42%)`;
}

async function download(token, attachment) {
  // The link needs the token, so fetch it and hand the browser a local copy.
  const r = await fetch(attachment.url, { headers: { Authorization: `Bearer ${token}` } });
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = attachment.filename || "attachment";
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function quoted(body) {
  const lines = (body.text || "").split("\n").map((l) => `> ${l}`).join("\n");
  return `\n\nOn ${body.date}, ${body.from} wrote:\n${lines}`;
}

// Labels are IMAP keywords (flags without a backslash, RFC 3501 2.3.2); $-keywords are the client's own.
const labelsOf = (flags) => (flags || []).filter((f) => !f.startsWith("\\") && !f.startsWith("$"));

function Labels({ flags }) {
  const labels = labelsOf(flags);
  if (!labels.length) return null;
  return (
    <span className="labels" aria-label="Labels">
      {labels.map((l) => <span key={l} className="label">{l}</span>)}
    </span>
  );
}

function Preview({ session, email, onAction, typing }) {
  const [body, setBody] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    setBody(null);
    setError("");
    api(session.token, `/api/v1/email/${email.id}`).then(setBody, (e) => setError(e.message));
  }, [email.id, session.token]);
  if (error) return <section className="preview"><p role="alert">{error}</p></section>;
  if (!body) return <section className="preview"><p>Loading…</p></section>;
  // The bridge sanitises HTML already; sanitising again here costs little and guards the frame.
  const html = body.html ? DOMPurify.sanitize(body.html) : null;
  return (
    <section className="preview" aria-label="Message">
      <h2>{body.subject || "(no subject)"}</h2>
      {typing && <p className="typing" role="status">{typing} is replying…</p>}
      <Labels flags={email.flags} />
      <form className="add-label" onSubmit={(e) => { e.preventDefault(); const v = e.target.label.value.trim(); if (v) onAction("label", v); e.target.reset(); }}>
        <input name="label" aria-label="Add label" placeholder="Add label" pattern="[A-Za-z0-9_.-]{1,64}" />
      </form>
      <div className="actions">
        <button onClick={() => onAction("archive")} title="Archive (e)">Archive</button>
        <button onClick={() => onAction("delete")} title="Delete (#)">Delete</button>
        <button onClick={() => onAction("unread")} title="Mark unread (u)">Mark unread</button>
        <button onClick={() => onAction("reply", body)} title="Reply (r)">Reply</button>
        <button onClick={() => onAction("forward", body)}>Forward</button>
      </div>
      <p className="meta">{body.from} · {body.date}</p>
      {html ? (
        <iframe title="Message body" sandbox="" srcDoc={html} className="body-frame" />
      ) : (
        <pre className="body-text" data-testid="body-text">{body.text}</pre>
      )}
      {body.attachments.length > 0 && (
        <ul className="attachments" aria-label="Attachments">
          {body.attachments.map((a) => (
            <li key={a.part_id}>
              <button onClick={() => download(session.token, a)}>{a.filename}</button> ({a.size} bytes)
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

// A short, quiet chime for new mail (Web Audio; browsers allow it once the page had a user gesture).
function chime() {
  try {
    const ctx = chime.ctx || (chime.ctx = new AudioContext());
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.05, ctx.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.3);
    osc.connect(gain).connect(ctx.destination);
    osc.start();
    osc.stop(ctx.currentTime + 0.3);
  } catch {
    // No audio here: the list and the notification still tell.
  }
}

const addresses = (value) => value.split(",").map((s) => s.trim()).filter(Boolean);

function Compose({ socket, onClose, initial = {} }) {
  const [to, setTo] = useState(initial.to || "");
  const [cc, setCc] = useState("");
  const [bcc, setBcc] = useState("");
  const [subject, setSubject] = useState(initial.subject || "");
  const [text, setText] = useState(initial.body || "");
  const [status, setStatus] = useState("");
  const lastTyping = useRef(0);
  const typed = (value) => {
    setText(value);
    // Tell the account's other sessions someone is replying (at most every 2 s).
    if (initial.emailId && Date.now() - lastTyping.current > 2000) {
      lastTyping.current = Date.now();
      socket.emit("typing", { emailId: initial.emailId }, () => {});
    }
  };
  const send = (e) => {
    e.preventDefault();
    setStatus("Sending…");
    const mail = { to: addresses(to), cc: addresses(cc), bcc: addresses(bcc), subject, body: text };
    if (initial.inReplyTo) mail.inReplyTo = initial.inReplyTo;
    socket.emit("send_email", mail, (ack) => {
      if (ack && ack.ok) onClose("Sent");
      else setStatus((ack && ack.error) || "Not sent");
    });
  };
  return (
    <form className="compose" onSubmit={send} aria-label="Compose">
      <label>To <input name="to" value={to} onChange={(e) => setTo(e.target.value)} required /></label>
      <label>Cc <input name="cc" value={cc} onChange={(e) => setCc(e.target.value)} /></label>
      <label>Bcc <input name="bcc" value={bcc} onChange={(e) => setBcc(e.target.value)} /></label>
      <label>Subject <input name="subject" value={subject} onChange={(e) => setSubject(e.target.value)} /></label>
      <textarea name="body" aria-label="Message text" value={text} onChange={(e) => typed(e.target.value)} rows={8} />
      <div>
        <button type="submit">Send</button> <button type="button" onClick={() => onClose("")}>Cancel</button>
      </div>
      {status && <p role="status">{status}</p>}
    </form>
  );
}

function Mail({ session, onLogout }) {
  const [mailbox, setMailbox] = useState("INBOX");
  const [mailboxes, setMailboxes] = useState([]);
  const [emails, setEmails] = useState([]);
  const [selected, setSelected] = useState(null);
  const [live, setLive] = useState(false);
  const [composing, setComposing] = useState(null);
  const [toast, setToast] = useState("");
  const [view, setView] = useState({ q: "", filter: "", tab: "" });
  const [query, setQuery] = useState("");
  const socketRef = useRef(null);
  const searchRef = useRef(null);
  const notifications = useRef(new Map());
  const gone = useRef(new Set());
  const [typing, setTyping] = useState({});
  const mailboxRef = useRef(mailbox);
  mailboxRef.current = mailbox;
  const viewRef = useRef(view);
  viewRef.current = view;

  const reload = useCallback(async () => {
    const v = viewRef.current;
    const params = new URLSearchParams({ mailbox: mailboxRef.current, limit: "100" });
    const filters = [v.filter, v.tab].filter(Boolean).join(",");
    if (filters) params.set("filter", filters);
    if (v.q) params.set("q", v.q);
    const [list, boxes] = await Promise.all([
      api(session.token, `/api/v1/email/inbox?${params}`),
      api(session.token, "/api/v1/mailboxes"),
    ]);
    // Mail that arrived live while the listing was on its way is newer than the listing: keep it.
    setEmails((current) => merge(list.emails, current, mailboxRef.current, v, gone.current));
    setMailboxes(boxes.mailboxes);
  }, [session.token]);

  useEffect(() => { reload().catch((e) => setToast(e.message)); }, [mailbox, view, reload]);

  useEffect(() => {
    const socket = io({
      transports: ["websocket"],
      auth: (cb) => cb({ token: session.token, lastEventId: sessionStorage.getItem(LAST_EVENT) || undefined }),
    });
    socketRef.current = socket;
    const seen = (e) => e && e.eventId && sessionStorage.setItem(LAST_EVENT, e.eventId);
    // Listed after the socket is live: what came before is in the listing, what comes after arrives
    // live (and merge() keeps both), so nothing falls between the two.
    socket.on("connect", () => { setLive(true); reload().catch(() => {}); });
    socket.on("disconnect", () => setLive(false));
    socket.on("connect_error", (err) => { setLive(false); if (/token/.test(err.message)) onLogout(); });
    socket.on("new_email", (mail) => {
      seen(mail);
      if (mail.unread && mail.source === "delivered") chime();
      if (mail.unread && mail.source === "delivered" && window.Notification && Notification.permission === "granted") {
        notifications.current.set(mail.id, new Notification(mail.from, { body: mail.subject, tag: mail.id }));
      }
      if (mail.mailbox !== mailboxRef.current || !matches(viewRef.current, mail)) return;
      setEmails((list) => (list.some((m) => m.id === mail.id) ? list : [mail, ...list]));
    });
    socket.on("email_read", (e) => {
      seen(e);
      // Read anywhere: its notification goes away on every device.
      notifications.current.get(e.emailId)?.close();
      notifications.current.delete(e.emailId);
      setEmails((l) => l.map((m) => (m.id === e.emailId ? { ...m, unread: false } : m)));
    });
    socket.on("email_flags", (e) => {
      seen(e);
      setEmails((l) =>
        l.map((m) => {
          if (m.id !== e.emailId) return m;
          const flags = [...new Set([...(m.flags || []).filter((f) => !e.removed.includes(f)), ...e.added])];
          return { ...m, flags, unread: e.unread === undefined ? m.unread : e.unread };
        }),
      );
    });
    socket.on("email_deleted", (e) => { seen(e); gone.current.add(e.emailId); setEmails((l) => l.filter((m) => m.id !== e.emailId)); });
    socket.on("unread_count", (e) => {
      seen(e);
      setMailboxes((boxes) => boxes.map((b) => (b.name === e.mailbox ? { ...b, unread: e.unread, total: e.total } : b)));
    });
    socket.on("mailbox_updated", (e) => { seen(e); reload(); });
    socket.on("email_sent", (e) => { seen(e); setToast(`Sent: ${e.subject || e.messageId}`); });
    socket.on("user_typing", (e) => {
      setTyping((t) => ({ ...t, [e.emailId]: e.user }));
      setTimeout(() => setTyping((t) => { const next = { ...t }; delete next[e.emailId]; return next; }), 5000);
    });
    socket.on("resync", () => { sessionStorage.removeItem(LAST_EVENT); reload(); });
    return () => socket.disconnect();
  }, [session.token, onLogout, reload]);

  const unread = emails.filter((m) => m.unread).length;
  useEffect(() => {
    document.title = `${unread ? `(${unread}) ` : ""}${mailbox} — mail-bridge`;
  }, [unread, mailbox]);

  const open = (mail) => {
    setSelected(mail);
    if (mail.unread) socketRef.current?.emit("mark_read", { emailId: mail.id }, () => {});
  };

  const act = async (action, mail = selected, body = null) => {
    if (!mail) return;
    if (action === "label") {
      await api(session.token, `/api/v1/email/${mail.id}/flags`, { method: "POST", body: JSON.stringify({ add: [body] }) }).catch((err) => setToast(err.message));
      return;
    }
    if (action === "reply" || action === "forward") {
      const subject = body.subject || "";
      setComposing(
        action === "reply"
          ? {
              to: body.from,
              subject: /^re:/i.test(subject) ? subject : `Re: ${subject}`,
              body: quoted(body),
              inReplyTo: body.messageId,
              emailId: mail.id,
            }
          : { subject: `Fwd: ${subject}`, body: quoted(body) },
      );
      return;
    }
    try {
      if (action === "unread") {
        socketRef.current?.emit("mark_read", { emailId: mail.id, read: false }, () => {});
        return;
      }
      const path = action === "archive" ? `/api/v1/email/${mail.id}/archive` : `/api/v1/email/${mail.id}`;
      await api(session.token, path, { method: action === "archive" ? "POST" : "DELETE" });
      setSelected(null);
      setToast(action === "archive" ? "Archived" : "Deleted");
    } catch (err) {
      setToast(err.message);
    }
  };

  // Keyboard: j/k next/previous, o or Enter open, e archive, # delete, u unread, c compose, / search.
  const keys = useRef({});
  keys.current = { emails, selected, open, act };
  useEffect(() => {
    const onKey = (e) => {
      if (e.target.closest && e.target.closest("input, textarea, select")) return;
      const { emails: list, selected: current, open: openMail, act: doAct } = keys.current;
      const index = current ? list.findIndex((m) => m.id === current.id) : -1;
      if (e.key === "j" && list.length) openMail(list[Math.min(list.length - 1, index + 1)]);
      else if (e.key === "k" && list.length) openMail(list[Math.max(0, index - 1)]);
      else if ((e.key === "o" || e.key === "Enter") && list.length && !current) openMail(list[0]);
      else if (e.key === "e") doAct("archive");
      else if (e.key === "#") doAct("delete");
      else if (e.key === "u") doAct("unread");
      else if (e.key === "c") setComposing({});
      else if (e.key === "/") { e.preventDefault(); searchRef.current?.focus(); }
      else return;
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);

  return (
    <div className="app">
      <header>
        <strong>mail-bridge</strong>
        <span className={live ? "live on" : "live off"} role="status" aria-live="polite">{live ? "● Live" : "○ Reconnecting"}</span>
        <span>{session.email}</span>
        <button onClick={() => setComposing({})}>Compose</button>
        {window.Notification && Notification.permission === "default" && (
          <button onClick={() => Notification.requestPermission()}>Enable notifications</button>
        )}
        <button onClick={onLogout}>Sign out</button>
      </header>
      <nav aria-label="Mailboxes">
        {(mailboxes.length ? mailboxes : [{ name: "INBOX", unread: 0 }]).map((b) => (
          <button key={b.name} className={b.name === mailbox ? "box current" : "box"} onClick={() => { setEmails([]); setMailbox(b.name); setSelected(null); }}>
            {b.name}{b.unread ? ` (${b.unread})` : ""}
          </button>
        ))}
      </nav>
      <div className="listing">
      <form role="search" className="search" onSubmit={(e) => { e.preventDefault(); setEmails([]); setView({ ...view, q: query.trim() }); }}>
        <input ref={searchRef} aria-label="Search mail" placeholder="Search (from: subject: is:unread …)" value={query} onChange={(e) => setQuery(e.target.value)} />
      </form>
      <div role="tablist" aria-label="Categories" className="tabs">
        {[["", "All"], ["primary", "Primary"], ["social", "Social"], ["promotions", "Promotions"]].map(([key, label]) => (
          <button key={key} role="tab" aria-selected={view.tab === key} onClick={() => { setEmails([]); setView({ ...view, tab: key }); }}>{label}</button>
        ))}
      </div>
      <div className="filters" aria-label="Quick filters">
        {[["unread", "Unread"], ["starred", "Starred"], ["attachments", "Attachments"]].map(([key, label]) => (
          <button key={key} aria-pressed={view.filter === key} onClick={() => { setEmails([]); setView({ ...view, filter: view.filter === key ? "" : key }); }}>{label}</button>
        ))}
      </div>
      <ul className="list" aria-label="Messages">
        {emails.length === 0 && <li className="empty">No messages</li>}
        {emails.map((m) => (
          <li key={m.id} className={m.unread ? "item unread" : "item"} aria-selected={selected?.id === m.id}>
            <button onClick={() => open(m)}>
              <span className="avatar" style={{ background: colour(m.fromAddress) }} aria-hidden="true">{initials(m.fromName || m.fromAddress)}</span>
              <span className="from">{m.fromName || m.fromAddress}</span>
              <span className="subject">{m.subject || "(no subject)"}</span>
              <span className="snippet">{m.preview}</span>
              <Labels flags={m.flags} />
            </button>
          </li>
        ))}
      </ul>
      </div>
      {selected ? <Preview session={session} email={emails.find((m) => m.id === selected.id) || selected} typing={typing[selected.id]} onAction={(a, body) => act(a, selected, body)} /> : <section className="preview empty">Select a message</section>}
      {composing && <Compose socket={socketRef.current} initial={composing} onClose={(msg) => { setComposing(null); setToast(msg); }} />}
      {toast && <div className="toast" role="status" onClick={() => setToast("")}>{toast}</div>}
    </div>
  );
}

export function App() {
  const [session, setSession] = useState(() => JSON.parse(sessionStorage.getItem(SESSION) || "null"));
  const onLogin = (s) => { sessionStorage.setItem(SESSION, JSON.stringify(s)); setSession(s); };
  const onLogout = useCallback(() => { sessionStorage.removeItem(SESSION); sessionStorage.removeItem(LAST_EVENT); setSession(null); }, []);
  return session ? <Mail session={session} onLogout={onLogout} /> : <Login onLogin={onLogin} />;
}
