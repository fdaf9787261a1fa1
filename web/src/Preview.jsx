import { useEffect, useState } from "react";
import DOMPurify from "dompurify";
import { api, download } from "./api.js";
import { Labels } from "./Labels.jsx";
import { PreviewSkeleton } from "./Skeleton.jsx";
import { Archive, ArrowLeft, Forward, Mail, OctagonAlert, Paperclip, Pencil, Reply, ReplyAll, ShieldCheck, Star, Trash2 } from "./icons.js";
import { longDate } from "./dates.js";

// Every link of a mail opens in a new tab that learns nothing of us: no opener, no referrer (the
// bridge's sanitiser says so too; this holds whatever it sent).
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// One message: its sanitised body in a frame that may run nothing (no scripts, forms or top
// navigation; only its links may open, in a new tab outside the sandbox), remote images blocked by
// the bridge until the reader asks, attachments, and the actions on it.
export function Preview({ token, email, typing, onAction, onBack, onError, folders = [] }) {
  const [body, setBody] = useState(null);
  const [error, setError] = useState("");
  const [remote, setRemote] = useState(false);
  useEffect(() => setRemote(false), [email.id]);
  useEffect(() => {
    let current = true;
    setError("");
    if (!remote) setBody(null);
    api(token, `/api/v1/email/${email.id}${remote ? "?remoteImages=1" : ""}`).then(
      (b) => current && setBody(b),
      (e) => current && setError(e.message),
    );
    return () => { current = false; };
  }, [email.id, token, remote]);
  if (error) return <section className="preview" aria-label="Message"><p role="alert">{error}</p></section>;
  if (!body) {
    return (
      <section className="preview" aria-label="Message" aria-busy="true">
        <p className="sr-only">Loading…</p>
        <PreviewSkeleton />
      </section>
    );
  }
  // The bridge sanitises HTML already; sanitising again here costs little and guards the frame.
  const html = body.html ? DOMPurify.sanitize(body.html, { ADD_ATTR: ["target"] }) : null;
  const isDraft = email.mailbox === "Drafts";
  const starred = (email.flags || []).includes("\\Flagged");
  return (
    <section className="preview" aria-label="Message">
      <button className="back" onClick={onBack}><ArrowLeft />Back to list</button>
      <h2>{body.subject || "(no subject)"}</h2>
      {typing && <p className="typing" role="status">{typing} is replying…</p>}
      <Labels flags={email.flags} onRemove={(label) => onAction("unlabel", label)} />
      <div className="actions">
        {isDraft && <button onClick={() => onAction("edit", body)}><Pencil />Edit draft</button>}
        <button onClick={() => onAction("reply", body)} title="Reply (r)"><Reply />Reply</button>
        <button onClick={() => onAction("replyall", body)} title="Reply all (a)"><ReplyAll />Reply all</button>
        <button onClick={() => onAction("forward", body)}><Forward />Forward</button>
        <button onClick={() => onAction(starred ? "unstar" : "star")} title="Star (s)" aria-pressed={starred}><Star fill={starred ? "currentColor" : "none"} />{starred ? "Starred" : "Star"}</button>
        <button onClick={() => onAction("archive")} title="Archive (e)"><Archive />Archive</button>
        <button onClick={() => onAction("delete")} title="Delete (#)"><Trash2 />Delete</button>
        {email.mailbox === "Junk" ? (
          <button onClick={() => onAction("notspam")}><ShieldCheck />Not spam</button>
        ) : (
          <button onClick={() => onAction("spam")} title="Report spam (!)"><OctagonAlert />Report spam</button>
        )}
        <button onClick={() => onAction("unread")} title="Mark unread (u)"><Mail />Mark unread</button>
        <label className="move-to">
          <span className="sr-only">Move to folder</span>
          <select value="" onChange={(e) => e.target.value && onAction("move", e.target.value)}>
            <option value="">Move to…</option>
            {folders.filter((f) => f !== email.mailbox).map((f) => <option key={f} value={f}>{f}</option>)}
          </select>
        </label>
        <form className="add-label" onSubmit={(e) => { e.preventDefault(); const v = e.target.label.value.trim(); if (v) onAction("label", v); e.target.reset(); }}>
          <input name="label" aria-label="Add label" placeholder="Add label" pattern="[A-Za-z0-9_.\-]{1,64}" title="Letters, digits, _ . -" />
        </form>
      </div>
      <p className="meta">{body.from} · <time dateTime={body.date}>{longDate(body.date)}</time></p>
      {body.blockedRemoteImages > 0 && !remote && (
        <p className="remote-notice" role="note">
          {body.blockedRemoteImages} remote image{body.blockedRemoteImages > 1 ? "s" : ""} blocked (they would tell the sender when you read this).{" "}
          <button onClick={() => setRemote(true)}>Load remote images</button>
        </p>
      )}
      {html ? (
        <iframe title="Message body" sandbox="allow-popups allow-popups-to-escape-sandbox" srcDoc={html} className="body-frame" referrerPolicy="no-referrer" />
      ) : (
        <pre className="body-text" data-testid="body-text">{body.text}</pre>
      )}
      {body.attachments.length > 0 && (
        <ul className="attachments" aria-label="Attachments">
          {body.attachments.map((a) => (
            <li key={a.part_id}>
              <button onClick={() => download(token, a).catch((e) => onError(e.message))}><Paperclip />{a.filename}</button>{" "}
              <span className="size">{formatSize(a.size)}</span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
