import { useRef } from "react";
import { dialogKeys, useDialogFocus } from "./dialog.js";
import { Bell } from "./icons.js";
import { clearNotices, useNotices } from "./notices.js";
import { longDate, shortDate } from "./dates.js";

/** The header's button: how many notices are unread, and the center behind it. */
export function NotificationButton({ onOpen }) {
  const unread = useNotices().filter((n) => n.unread && !n.gone).length;
  return (
    <button onClick={onOpen} aria-haspopup="dialog">
      <Bell /><span className="btn-text">Notifications</span>{unread > 0 && <span className="tab-count"> {unread}<span className="sr-only"> unread</span></span>}
    </button>
  );
}

/**
 * The notification center: recent new mail, unread ones marked as their mails are. Opening one
 * opens its mail (wherever it is now); "Mark all read" reads the mails themselves, so every device
 * and this list agree. A modal dialog: focus moves in, and back where it was on close (Esc).
 */
export function NotificationCenter({ onOpenMail, onMarkRead, onClose }) {
  const notices = useNotices();
  const first = useRef(null);
  useDialogFocus(first);
  const unread = notices.filter((n) => n.unread && !n.gone);
  const firstOpen = notices.findIndex((n) => !n.gone); // focus goes to it, else to Close
  return (
    <div className="dialog-backdrop" onClick={onClose}>
      <div role="dialog" aria-modal="true" aria-labelledby="notices-title" className="dialog notices" onClick={(e) => e.stopPropagation()} onKeyDown={dialogKeys(onClose)}>
        <h2 id="notices-title">Notifications</h2>
        {notices.length === 0 ? (
          <p>No notifications yet: new mail shows here as it arrives.</p>
        ) : (
          <ul aria-label="Recent notifications">
            {notices.map((n, i) => (
              <li key={n.id} className={n.unread && !n.gone ? "notice unread" : "notice"}>
                <button ref={i === firstOpen ? first : undefined} disabled={n.gone} onClick={() => onOpenMail(n)}>
                  <span className="from">{n.from}{n.unread && !n.gone && <span className="sr-only"> (unread)</span>}</span>
                  <span className="subject">{n.subject}</span>
                  <time dateTime={n.at} title={longDate(n.at)}>{shortDate(n.at)}</time>
                  {n.gone && <span className="gone"> (no longer in the mailbox)</span>}
                  {n.mailbox !== "INBOX" && !n.gone && <span className="where"> in {n.mailbox}</span>}
                </button>
              </li>
            ))}
          </ul>
        )}
        <div className="dialog-actions">
          {unread.length > 0 && <button onClick={() => onMarkRead(unread)}>Mark all read</button>}
          {notices.length > 0 && <button onClick={clearNotices}>Clear list</button>}
          <button ref={firstOpen === -1 ? first : undefined} onClick={onClose}>Close</button>
        </div>
      </div>
    </div>
  );
}
