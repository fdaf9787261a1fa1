import { useEffect, useState } from "react";
import { api } from "./api.js";

const TABS = [["", "All"], ["primary", "Primary"], ["social", "Social"], ["promotions", "Promotions"]];

/**
 * The Inbox's category tabs, each with its unread count. The counts come from the bridge's index
 * (GET /api/v1/mailboxes/categories) and are asked again whenever the Inbox's own counts change
 * (`countsKey`: its unread count and version, which every device hears of live), so they stay live
 * without a request per event.
 */
export function CategoryTabs({ token, account, countsKey, tab, onSelect, listed }) {
  const [unread, setUnread] = useState({});
  useEffect(() => {
    // After the list: on the embedded store each count reads the mailbox, and the first rows must
    // not wait behind it.
    if (!account || !listed) return undefined;
    let current = true;
    // A burst of deliveries changes the counts many times: ask once it settles.
    const timer = setTimeout(() => {
      api(token, `/api/v1/mailboxes/categories?${new URLSearchParams({ account, mailbox: "INBOX" })}`)
        .then((r) => { if (current) setUnread(r.unread || {}); })
        .catch(() => {}); // offline or a store outage: the tabs show no counts rather than old ones
    }, 250);
    return () => { current = false; clearTimeout(timer); };
  }, [token, account, countsKey, listed]);
  useEffect(() => setUnread({}), [account]);

  return (
    <div role="tablist" aria-label="Categories" className="tabs">
      {TABS.map(([key, label]) => {
        const count = key ? unread[key] || 0 : 0;
        return (
          // The name is the visible text and what it means: "Social 3 unread" (WCAG 2.5.3).
          <button key={key} role="tab" aria-selected={tab === key} onClick={() => onSelect(key)}>
            {label}
            {count > 0 && <span className="tab-count"> {count}<span className="sr-only"> unread</span></span>}
          </button>
        );
      })}
    </div>
  );
}
