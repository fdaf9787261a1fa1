import { useCallback, useEffect, useRef, useState } from "react";
import { io } from "socket.io-client";
import DOMPurify from "dompurify";
import { api, login } from "./api.js";

const SESSION = "mail-bridge-session";
const LAST_EVENT = "mail-bridge-last-event";

function merge(fetched, live, mailbox) {
  const byId = new Map();
  for (const m of [...fetched, ...live]) if (m.mailbox === mailbox) byId.set(m.id, { ...byId.get(m.id), ...m });
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

function Preview({ session, email }) {
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
      <p className="meta">{body.from} · {body.date}</p>
      {html ? (
        <iframe title="Message body" sandbox="" srcDoc={html} className="body-frame" />
      ) : (
        <pre className="body-text" data-testid="body-text">{body.text}</pre>
      )}
      {body.attachments.length > 0 && (
        <ul className="attachments" aria-label="Attachments">
          {body.attachments.map((a) => <li key={a.part_id}>{a.filename} ({a.size} bytes)</li>)}
        </ul>
      )}
    </section>
  );
}

function Compose({ socket, onClose }) {
  const [to, setTo] = useState("");
  const [subject, setSubject] = useState("");
  const [text, setText] = useState("");
  const [status, setStatus] = useState("");
  const send = (e) => {
    e.preventDefault();
    setStatus("Sending…");
    socket.emit("send_email", { to: to.split(",").map((s) => s.trim()).filter(Boolean), subject, body: text }, (ack) => {
      if (ack && ack.ok) onClose("Sent");
      else setStatus((ack && ack.error) || "Not sent");
    });
  };
  return (
    <form className="compose" onSubmit={send} aria-label="Compose">
      <label>To <input name="to" value={to} onChange={(e) => setTo(e.target.value)} required /></label>
      <label>Subject <input name="subject" value={subject} onChange={(e) => setSubject(e.target.value)} /></label>
      <textarea name="body" aria-label="Message text" value={text} onChange={(e) => setText(e.target.value)} rows={8} />
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
  const [composing, setComposing] = useState(false);
  const [toast, setToast] = useState("");
  const socketRef = useRef(null);
  const mailboxRef = useRef(mailbox);
  mailboxRef.current = mailbox;

  const reload = useCallback(async () => {
    const [list, boxes] = await Promise.all([
      api(session.token, `/api/v1/email/inbox?mailbox=${encodeURIComponent(mailboxRef.current)}&limit=100`),
      api(session.token, "/api/v1/mailboxes"),
    ]);
    // Mail that arrived live while the listing was on its way is newer than the listing: keep it.
    setEmails((current) => merge(list.emails, current, mailboxRef.current));
    setMailboxes(boxes.mailboxes);
  }, [session.token]);

  useEffect(() => { reload().catch((e) => setToast(e.message)); }, [mailbox, reload]);

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
      if (mail.mailbox !== mailboxRef.current) return;
      setEmails((list) => (list.some((m) => m.id === mail.id) ? list : [mail, ...list]));
      if (mail.unread && document.hidden && window.Notification && Notification.permission === "granted") {
        new Notification(mail.from, { body: mail.subject, tag: mail.id });
      }
    });
    socket.on("email_read", (e) => { seen(e); setEmails((l) => l.map((m) => (m.id === e.emailId ? { ...m, unread: false } : m))); });
    socket.on("email_flags", (e) => {
      seen(e);
      if (e.unread === undefined) return;
      setEmails((l) => l.map((m) => (m.id === e.emailId ? { ...m, unread: e.unread } : m)));
    });
    socket.on("email_deleted", (e) => { seen(e); setEmails((l) => l.filter((m) => m.id !== e.emailId)); });
    socket.on("unread_count", (e) => {
      seen(e);
      setMailboxes((boxes) => boxes.map((b) => (b.name === e.mailbox ? { ...b, unread: e.unread, total: e.total } : b)));
    });
    socket.on("mailbox_updated", (e) => { seen(e); reload(); });
    socket.on("email_sent", (e) => { seen(e); setToast(`Sent: ${e.subject || e.messageId}`); });
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

  return (
    <div className="app">
      <header>
        <strong>mail-bridge</strong>
        <span className={live ? "live on" : "live off"} role="status" aria-live="polite">{live ? "● Live" : "○ Reconnecting"}</span>
        <span>{session.email}</span>
        <button onClick={() => setComposing(true)}>Compose</button>
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
      <ul className="list" aria-label="Messages">
        {emails.length === 0 && <li className="empty">No messages</li>}
        {emails.map((m) => (
          <li key={m.id} className={m.unread ? "item unread" : "item"} aria-selected={selected?.id === m.id}>
            <button onClick={() => open(m)}>
              <span className="avatar" style={{ background: colour(m.fromAddress) }} aria-hidden="true">{initials(m.fromName || m.fromAddress)}</span>
              <span className="from">{m.fromName || m.fromAddress}</span>
              <span className="subject">{m.subject || "(no subject)"}</span>
              <span className="snippet">{m.preview}</span>
            </button>
          </li>
        ))}
      </ul>
      {selected ? <Preview session={session} email={selected} /> : <section className="preview empty">Select a message</section>}
      {composing && <Compose socket={socketRef.current} onClose={(msg) => { setComposing(false); setToast(msg); }} />}
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
