// Imported first by main.jsx, so it runs before React and the rest of the client are set up: the
// first listing the page will ask for (its first account's INBOX, as Mail.jsx starts) is asked
// now, and the date formatters its rows need are made while it is on its way.
import { askEarly } from "./api.js";
import { warmDates } from "./dates.js";
import { DEFAULT_VIEW, listingQuery } from "./listing.js";
import { accountsIn, readSession } from "./session.js";

const session = readSession();
const first = session && (session.accounts || accountsIn(session.token))[0];
if (first) {
  askEarly(session.token, listingQuery(first, "INBOX", DEFAULT_VIEW));
  warmDates();
}
