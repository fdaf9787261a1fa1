// The listing requests of a view (a mailbox with its search, quick filter and category tab), as
// Mail.jsx pages them and main.jsx asks for the first one early.

// Messages per listing request: a view's first page holds a tall screen's worth (it shows sooner:
// half the documents to read and rows to draw of a 100), each further page, as the list is
// scrolled, 100.
export const FIRST_PAGE = 50;
export const PAGE = 100;

export const DEFAULT_VIEW = Object.freeze({ q: "", filter: "", tab: "" });

// The listing's query for a view of a mailbox, from `cursor` on when given.
export function listingQuery(acct, box, v, cursor) {
  const params = new URLSearchParams({ account: acct, mailbox: box, limit: String(cursor ? PAGE : FIRST_PAGE) });
  const filters = [v.filter, v.tab].filter(Boolean).join(",");
  if (filters) params.set("filter", filters);
  if (v.q) params.set("q", v.q);
  if (cursor) params.set("cursor", cursor);
  return `/api/v1/email/inbox?${params}`;
}
