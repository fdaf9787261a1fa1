import { useEffect, useRef, useState } from "react";
import DOMPurify from "dompurify";
import { post, upload } from "./api.js";
import { AddressInput } from "./AddressInput.jsx";
import { RichEditor } from "./RichEditor.jsx";
import { formatSize } from "./Preview.jsx";
import { enqueue } from "./offline.js";
import { useFileDrop } from "./drop.js";
import { Paperclip, Send, X } from "./icons.js";

const AUTOSAVE_MS = 2000;
const addresses = (value) => value.split(",").map((s) => s.trim()).filter(Boolean);

// The composer. Nothing written is lost: it is saved to Drafts while being written (each save
// replaces the previous one), a failed send keeps it open with the error, and without a connection
// the mail waits in the outbox. Files are attached with the button or dropped onto the composer.
export function Compose({ token, accounts, account: initialAccount, socket, initial = {}, onClose }) {
  const [account, setAccount] = useState(initialAccount);
  const [to, setTo] = useState(initial.to || "");
  const [cc, setCc] = useState(initial.cc || "");
  const [bcc, setBcc] = useState("");
  const [copies, setCopies] = useState(Boolean(initial.cc)); // Cc and Bcc shown on demand (or when filled)
  const [subject, setSubject] = useState(initial.subject || "");
  // Files attached here (uploaded) and, when forwarding, the forwarded mail's own (read by the bridge
  // from that mail when it sends: nothing is uploaded again).
  const [files, setFiles] = useState(() =>
    (initial.forwardAttachments || []).map((a) => ({ key: `${a.emailId}/${a.part}`, name: a.filename, size: a.size, forward: a })),
  );
  const [status, setStatus] = useState("");
  const [error, setError] = useState("");
  const [sending, setSending] = useState(false);
  const [edits, setEdits] = useState(0);
  const content = useRef({ text: "", html: "" });
  const draftId = useRef(initial.draftId || null);
  const saving = useRef(Promise.resolve());
  const lastTyping = useRef(0);

  const mail = () => {
    const m = {
      account,
      to: addresses(to),
      cc: addresses(cc),
      bcc: addresses(bcc),
      subject,
      body: content.current.text,
      html: content.current.html,
      attachments: files
        .filter((f) => f.uploadId || f.forward)
        .map((f) => (f.forward ? { forwardOf: f.forward.emailId, part: f.forward.part } : { uploadId: f.uploadId })),
    };
    if (initial.inReplyTo) m.inReplyTo = initial.inReplyTo;
    return m;
  };

  const touch = () => setEdits((n) => n + 1);
  const onEditor = (node, byUser) => {
    // What the writer pasted may carry script or tracking: only formatting goes out.
    content.current = { text: node.innerText, html: DOMPurify.sanitize(node.innerHTML) };
    if (!byUser) return;
    touch();
    if (initial.emailId && Date.now() - lastTyping.current > 2000) {
      lastTyping.current = Date.now();
      socket?.emit("typing", { emailId: initial.emailId }, () => {});
    }
  };

  // Autosave, 2 s after the last change; saves run one after another so `replaces` is always the
  // latest, and closing the composer saves what the timer has not yet.
  const saved = useRef(0);
  const saveNow = () => {
    if (edits === saved.current) return saving.current;
    const body = mail();
    saved.current = edits; // queued: the next change starts a new save, a repeat click does not
    saving.current = saving.current.then(() =>
      post(token, "/api/v1/drafts", { ...body, replaces: draftId.current || undefined }).then(
        (r) => {
          draftId.current = r.emailId || draftId.current;
          setStatus(`Draft saved ${new Date().toLocaleTimeString()}`);
        },
        (e) => {
          saved.current = -1; // try again on the next change or on Close
          setStatus(`Draft not saved: ${e.message}`);
        },
      ),
    );
    return saving.current;
  };
  const save = useRef(saveNow);
  save.current = saveNow;
  useEffect(() => {
    if (edits === 0) return undefined; // nothing written yet: no draft
    const timer = setTimeout(() => save.current(), AUTOSAVE_MS);
    return () => clearTimeout(timer);
  }, [edits]);

  const attach = (list) => {
    for (const file of list) {
      const key = crypto.randomUUID();
      setFiles((fs) => [...fs, { key, name: file.name, size: file.size, progress: 0 }]);
      const update = (change) => setFiles((fs) => fs.map((f) => (f.key === key ? { ...f, ...change } : f)));
      upload(token, account, file, (progress) => update({ progress })).then(
        (r) => { update({ uploadId: r.id, progress: 1 }); touch(); },
        (e) => update({ error: e.message }),
      );
    }
  };

  const send = async (e) => {
    e.preventDefault();
    setError("");
    saved.current = edits; // sending supersedes any pending autosave
    await saving.current; // the draft to remove after sending is the latest one
    const body = { ...mail(), draftId: draftId.current || undefined };
    if (!socket || !socket.connected) {
      enqueue(body);
      onClose("Offline: queued, it will be sent when the connection is back");
      return;
    }
    setSending(true);
    setStatus("Sending…");
    const ack = await socket.timeout(60_000).emitWithAck("send_email", body).catch(() => null);
    setSending(false);
    if (ack && ack.ok) onClose("Sent");
    else {
      setStatus("");
      saved.current = -1; // not sent: keep it in Drafts as well
      saveNow();
      setError(`Not sent: ${ack ? ack.error : "no answer from the bridge"}. Your message is kept.`);
    }
  };

  const discard = async () => {
    saved.current = edits;
    await saving.current;
    if (draftId.current) {
      await fetch(`/api/v1/email/${draftId.current}`, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
    }
    onClose("Draft discarded");
  };

  // Focus goes where writing starts: the To field, or the text when replying (To is filled).
  const form = useRef(null);
  useEffect(() => {
    const f = form.current;
    if (!f) return;
    const start = initial.to ? f.querySelector("[contenteditable]") : f.elements.namedItem("to");
    start?.focus();
  }, []); // eslint-disable-line react-hooks/exhaustive-deps

  // Ctrl+Enter (⌘+Enter) sends; Esc closes, keeping what was written in Drafts. An open list of
  // address suggestions takes Esc first.
  const onKeyDown = (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      if (!sending && !uploading) form.current?.requestSubmit();
    } else if (e.key === "Escape" && !e.defaultPrevented) {
      e.preventDefault();
      close();
    }
  };
  const close = () => saveNow().then(() => onClose(draftId.current ? "Saved to Drafts" : ""));

  // A refusal shows above the buttons, scrolled into view however long the message is.
  const errorRef = useRef(null);
  useEffect(() => {
    if (error) errorRef.current?.scrollIntoView({ block: "nearest" });
  }, [error]);

  const { dragging, handlers: dropHandlers } = useFileDrop(attach);
  const uploading = files.some((f) => !f.uploadId && !f.forward && !f.error);
  return (
    <form className={dragging ? "compose dropping" : "compose"} onSubmit={send} aria-label="Compose" ref={form} onKeyDown={onKeyDown} {...dropHandlers}>
      {dragging && <div className="drop-hint" aria-hidden="true"><Paperclip />Drop files to attach them</div>}
      {accounts.length > 1 && (
        <label>From{" "}
          <select value={account} onChange={(e) => { setAccount(e.target.value); touch(); }}>
            {accounts.map((a) => <option key={a}>{a}</option>)}
          </select>
        </label>
      )}
      <AddressInput label="To" value={to} onChange={(v) => { setTo(v); touch(); }} token={token} account={account} required />
      {copies ? (
        <>
          <AddressInput label="Cc" value={cc} onChange={(v) => { setCc(v); touch(); }} token={token} account={account} />
          <AddressInput label="Bcc" value={bcc} onChange={(v) => { setBcc(v); touch(); }} token={token} account={account} />
        </>
      ) : (
        <button type="button" className="link-button" onClick={() => setCopies(true)}>Cc / Bcc</button>
      )}
      <label>Subject <input name="subject" value={subject} onChange={(e) => { setSubject(e.target.value); touch(); }} /></label>
      <RichEditor initialText={initial.body} initialHtml={initial.html} onInput={onEditor} />
      <div className="files">
        <label className="attach"><Paperclip />Attach files <input type="file" multiple className="sr-only" onChange={(e) => { attach([...e.target.files]); e.target.value = ""; }} /></label>
        <span className="drop-note">or drop them here</span>
        <ul aria-label="Attached files">
          {files.map((f) => (
            <li key={f.key}>
              {f.name} <span className="size">{formatSize(f.size)}</span>{" "}
              {f.error ? <span role="alert" className="error">{f.error}</span>
                : f.forward ? <span className="done">forwarded</span>
                : !f.uploadId ? <progress aria-label={`Uploading ${f.name}`} value={f.progress} max={1} />
                : <span className="done">uploaded</span>}{" "}
              <button type="button" aria-label={`Remove ${f.name}`} onClick={() => { setFiles((fs) => fs.filter((x) => x.key !== f.key)); touch(); }}><X /></button>
            </li>
          ))}
        </ul>
      </div>
      {error && <p role="alert" className="error" ref={errorRef}>{error}</p>}
      <div className="compose-actions">
        <button type="submit" disabled={sending || uploading} title="Send (Ctrl+Enter)"><Send />Send</button>
        <button type="button" onClick={close} title="Close (Esc): kept in Drafts">Close</button>
        <button type="button" onClick={discard}>Discard</button>
      </div>
      {status && <p role="status">{status}</p>}
    </form>
  );
}
