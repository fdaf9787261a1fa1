import { memo, useEffect, useLayoutEffect, useRef, useState } from "react";
import { colour, initials } from "./avatar.js";
import { Archive, Mail, MailOpen, Star, Trash2 } from "./icons.js";
import { Labels } from "./Labels.jsx";
import { SkeletonRows } from "./Skeleton.jsx";
import { shortDate, longDate } from "./dates.js";

const OUTGOING = ["Sent", "Drafts"];
// A list longer than this draws only the rows near the screen (with spacers for the rest): 10,000
// rows in the DOM made every page appended and every re-render a long task (bench/web.py). Shorter
// lists draw every row, so a find-in-page and the tests see them all.
export const WINDOW_FROM = 200;
const OVERSCAN = 15; // rows drawn above and below the screen: arrow keys always land on a drawn row

// The listing: one row per message, newest first, with quick actions shown on hover or focus
// (named "… this message": the row they sit in says which). `listed`: the bridge has answered for
// this view (before that an empty list shows skeleton rows, busy, not "No messages"); `more`: older messages
// follow, loaded by `onMore` when the end of the list scrolls into view or its button is pressed.
// `picked` (a Set of ids) and `onPick` make the rows selectable for bulk actions: a checkbox over the
// avatar, shown on hover or focus, and on every row once one is picked.
// A row dragged onto a folder moves there (with the other picked rows when it is one of them); the
// keyboard and the "Move to…" menu do the same without a mouse.
export const DRAGGED_MAIL = "application/x-mail-bridge-ids";

function dragMail(event, ids, subject) {
  event.dataTransfer.setData(DRAGGED_MAIL, JSON.stringify(ids));
  event.dataTransfer.setData("text/plain", ids.length > 1 ? `${ids.length} messages` : subject);
  event.dataTransfer.effectAllowed = "move";
}

// One row. Memoised: a page appended to a long list renders its own rows, not every row again (10,000
// rows re-rendered per page were long tasks of up to seconds: bench/web.py). What a row does goes
// through `on`, a ref holding the list's current handlers, so the row's props change only with it.
const Row = memo(function Row({ m, tab, isPicked, selected, on, position, size }) {
  // Sent and Drafts hold one's own mail: the row names whom it is to.
  const outgoing = OUTGOING.includes(m.mailbox);
  const from = outgoing ? `To: ${m.to || "(no recipient)"}` : m.fromName || m.fromAddress;
  const subject = m.subject || "(no subject)";
  const starred = (m.flags || []).includes("\\Flagged");
  return (
    <li className={`item${m.unread ? " unread" : ""}${isPicked ? " picked" : ""}`} onFocus={() => on.current.setCursorId(m.id)}
      aria-posinset={position} aria-setsize={size} data-id={m.id}
      draggable onDragStart={(e) => dragMail(e, isPicked ? [...on.current.picked] : [m.id], subject)}>
      <input type="checkbox" className="pick" tabIndex={tab} aria-label={`Select ${subject}`} checked={isPicked} onChange={() => on.current.onPick(m.id)} />
      <button className="open" tabIndex={tab} onClick={() => on.current.onOpen(m)} aria-current={selected ? "true" : undefined}>
        <span className="avatar" style={{ background: colour(outgoing ? m.to : m.fromAddress) }} aria-hidden="true">{initials(outgoing ? m.to || "?" : from)}</span>
        <span className="from">
          {starred && <span className="star" title="Starred"><Star fill="currentColor" /><span className="sr-only"> (starred) </span></span>}
          {from}{m.unread && <span className="sr-only"> (unread)</span>}
        </span>
        <time className="when" dateTime={m.timestamp} title={longDate(m.timestamp)}>{shortDate(m.timestamp)}</time>
        <span className="line">
          <span className="subject">{subject}</span>
          <span className="snippet">{m.preview}</span>
          <Labels flags={m.flags} />
        </span>
      </button>
      <span className="quick">
        <button tabIndex={tab} title={starred ? "Unstar" : "Star"} onClick={() => on.current.onAction(starred ? "unstar" : "star", m)}>
          <Star fill={starred ? "currentColor" : "none"} /><span className="sr-only">{starred ? "Unstar this message" : "Star this message"}</span>
        </button>
        <button tabIndex={tab} title="Archive" onClick={() => on.current.onAction("archive", m)}><Archive /><span className="sr-only">Archive this message</span></button>
        <button tabIndex={tab} title="Delete" onClick={() => on.current.onAction("delete", m)}><Trash2 /><span className="sr-only">Delete this message</span></button>
        <button tabIndex={tab} title={m.unread ? "Mark read" : "Mark unread"} onClick={() => on.current.onAction(m.unread ? "read" : "unread", m)}>
          {m.unread ? <MailOpen /> : <Mail />}<span className="sr-only">{m.unread ? "Mark this message read" : "Mark this message unread"}</span>
        </button>
      </span>
    </li>
  );
});

export function MessageList({
  emails,
  selectedId,
  onOpen,
  onAction,
  listed = true,
  more = false,
  onMore = () => {},
  picked = new Set(),
  onPick = () => {},
}) {
  const end = useRef(null);
  // One tab stop for the whole list (a roving tabindex): the row the keyboard is on, with its
  // checkbox and quick actions; the arrows, Home and End move between rows (as j/k do).
  const [cursorId, setCursorId] = useState(null);
  const ids = emails.map((m) => m.id);
  const current = ids.includes(cursorId) ? cursorId : ids.includes(selectedId) ? selectedId : ids[0];
  const listRef = useRef(null);
  const windowed = emails.length > WINDOW_FROM;
  // The window: which rows are near the screen, from the list's scroll position and a row's height
  // (measured from the rows drawn: a density, a phone's taller targets).
  const [view, setView] = useState({ top: 0, height: 800 });
  const [rowHeight, setRowHeight] = useState(53);
  const first = windowed ? Math.max(0, Math.floor(view.top / rowHeight) - OVERSCAN) : 0;
  const last = windowed ? Math.min(emails.length, Math.ceil((view.top + view.height) / rowHeight) + OVERSCAN) : emails.length;
  // The list's one tab stop: the cursor's row, or the first drawn if it is scrolled out of the window.
  const drawnIds = ids.slice(first, last);
  const tabStop = drawnIds.includes(current) ? current : drawnIds[0];
  const onScroll = useRef(null);
  onScroll.current = () => {
    const list = listRef.current;
    if (list) setView((v) => (v.top === list.scrollTop && v.height === list.clientHeight ? v : { top: list.scrollTop, height: list.clientHeight }));
  };
  useLayoutEffect(() => {
    if (!windowed || !listRef.current) return;
    // One row's whole pixels (an average over the drawn rows moved with the window drawn, and the
    // window with it: an update loop).
    const height = listRef.current.querySelector(":scope > .item")?.offsetHeight || 0;
    if (height > 0 && height !== rowHeight) setRowHeight(height);
  });
  // Where the list is, when it becomes long and whenever it is resized; scrolling says the rest.
  useEffect(() => {
    const list = listRef.current;
    if (!windowed || !list) return undefined;
    onScroll.current();
    if (typeof ResizeObserver === "undefined") return undefined;
    const resized = new ResizeObserver(() => onScroll.current());
    resized.observe(list);
    return () => resized.disconnect();
  }, [windowed]);
  // A row the keyboard goes to that is not drawn yet: scrolled to, then focused once drawn.
  const [pendingFocus, setPendingFocus] = useState(null);
  useEffect(() => {
    if (!pendingFocus || !listRef.current) return;
    const row = listRef.current.querySelector(`:scope > .item[data-id="${CSS.escape(pendingFocus)}"] .open`);
    if (row) {
      row.focus();
      row.scrollIntoView({ block: "nearest" });
      setPendingFocus(null);
    }
  });
  const goTo = (index) => {
    const id = ids[index];
    if (id === undefined) return;
    const row = listRef.current?.querySelector(`:scope > .item[data-id="${CSS.escape(id)}"] .open`);
    if (row) {
      row.focus();
      row.scrollIntoView({ block: "nearest" });
      return;
    }
    listRef.current.scrollTop = index * rowHeight;
    onScroll.current();
    setPendingFocus(id);
  };
  const onKeyDown = (e) => {
    const step = { ArrowDown: 1, ArrowUp: -1 }[e.key];
    if (step === undefined && e.key !== "Home" && e.key !== "End") return;
    if (!e.target.closest || !e.target.closest(".item")) return;
    e.preventDefault();
    const at = ids.indexOf(e.target.closest(".item").dataset.id);
    goTo(e.key === "Home" ? 0 : e.key === "End" ? ids.length - 1 : Math.min(ids.length - 1, Math.max(0, at + step)));
  };
  const on = useRef(null);
  on.current = { onOpen, onAction, onPick, picked, setCursorId };
  const onMoreRef = useRef(onMore);
  onMoreRef.current = onMore;
  useEffect(() => {
    if (!more || !end.current || typeof IntersectionObserver === "undefined") return undefined;
    // Asked a screenful ahead, so scrolling down does not wait at the bottom.
    const seen = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && onMoreRef.current(), {
      rootMargin: "0px 0px 600px 0px",
    });
    seen.observe(end.current);
    return () => seen.disconnect();
  }, [more, emails.length]);
  return (
    <ul className={picked.size ? "list picking" : "list"} aria-label="Messages" aria-busy={!listed} onKeyDown={onKeyDown}
      ref={listRef} onScroll={windowed ? () => onScroll.current() : undefined}>
      {emails.length === 0 && (listed ? <li className="empty">No messages</li> : <SkeletonRows />)}
      {first > 0 && <li className="spacer" aria-hidden="true" style={{ height: first * rowHeight }} />}
      {emails.slice(first, last).map((m, i) => (
        <Row key={m.id} m={m} tab={m.id === tabStop ? 0 : -1} isPicked={picked.has(m.id)} selected={selectedId === m.id} on={on}
          position={windowed ? first + i + 1 : undefined} size={windowed ? emails.length : undefined} />
      ))}
      {last < emails.length && <li className="spacer" aria-hidden="true" style={{ height: (emails.length - last) * rowHeight }} />}
      {more && (
        <li className="more" ref={end}>
          <button onClick={() => onMoreRef.current()}>Load older messages</button>
        </li>
      )}
    </ul>
  );
}
