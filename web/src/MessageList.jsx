import { colour, initials } from "./avatar.js";
import { Labels } from "./Labels.jsx";
import { shortDate, longDate } from "./dates.js";

// The listing: one row per message, newest first, with quick actions shown on hover or focus
// (named "… this message": the row they sit in says which).
export function MessageList({ emails, selectedId, onOpen, onAction }) {
  return (
    <ul className="list" aria-label="Messages">
      {emails.length === 0 && <li className="empty">No messages</li>}
      {emails.map((m) => {
        const from = m.fromName || m.fromAddress;
        const subject = m.subject || "(no subject)";
        const starred = (m.flags || []).includes("\\Flagged");
        return (
          <li key={m.id} className={m.unread ? "item unread" : "item"}>
            <button className="open" onClick={() => onOpen(m)} aria-current={selectedId === m.id ? "true" : undefined}>
              <span className="avatar" style={{ background: colour(m.fromAddress) }} aria-hidden="true">{initials(from)}</span>
              <span className="from">
                {starred && <span className="star" title="Starred">★<span className="sr-only"> (starred)</span> </span>}
                {from}{m.unread && <span className="sr-only"> (unread)</span>}
              </span>
              <span className="subject">{subject}</span>
              <time className="when" dateTime={m.timestamp} title={longDate(m.timestamp)}>{shortDate(m.timestamp)}</time>
              <span className="snippet">{m.preview}</span>
              <Labels flags={m.flags} />
            </button>
            <span className="quick">
              <button title={starred ? "Unstar" : "Star"} onClick={() => onAction(starred ? "unstar" : "star", m)}>
                <span aria-hidden="true">{starred ? "★" : "☆"}</span><span className="sr-only">{starred ? "Unstar this message" : "Star this message"}</span>
              </button>
              <button title="Archive" onClick={() => onAction("archive", m)}><span aria-hidden="true">🗄</span><span className="sr-only">Archive this message</span></button>
              <button title="Delete" onClick={() => onAction("delete", m)}><span aria-hidden="true">🗑</span><span className="sr-only">Delete this message</span></button>
              <button title={m.unread ? "Mark read" : "Mark unread"} onClick={() => onAction(m.unread ? "read" : "unread", m)}>
                <span aria-hidden="true">{m.unread ? "✉" : "📩"}</span><span className="sr-only">{m.unread ? "Mark this message read" : "Mark this message unread"}</span>
              </button>
            </span>
          </li>
        );
      })}
    </ul>
  );
}
