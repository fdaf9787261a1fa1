// Dates as people read them, in the browser's own locale and time zone.
const valid = (d) => !Number.isNaN(d.getTime());

// One formatter per style, made once: toLocaleString(locales, options) builds a new
// Intl.DateTimeFormat on every call, and a list renders two dates a row (bench/web.py: most of the
// first rows' render time).
const formats = new Map();
const format = (options) => {
  const key = JSON.stringify(options);
  if (!formats.has(key)) formats.set(key, new Intl.DateTimeFormat([], options));
  return formats.get(key);
};
const TIME = { hour: "2-digit", minute: "2-digit" };
const DAY = { day: "numeric", month: "short" };
const DAY_AND_YEAR = { day: "numeric", month: "short", year: "numeric" };
const FULL = { dateStyle: "medium", timeStyle: "short" };

/** Make the list's formatters now: the first one costs tens of ms (the browser loads its locale
 * data), better spent while a listing is on its way than between its answer and its rows. */
export function warmDates() {
  for (const options of [TIME, DAY, DAY_AND_YEAR, FULL]) format(options);
}

/** In a list: the time for today's mail, else the day (and the year when not this year). */
export function shortDate(value) {
  const d = new Date(value);
  if (!value || !valid(d)) return "";
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return format(TIME).format(d);
  return format(d.getFullYear() === now.getFullYear() ? DAY : DAY_AND_YEAR).format(d);
}

/** In a message: the full date and time. */
export function longDate(value) {
  const d = new Date(value);
  if (!value || !valid(d)) return value || "";
  return format(FULL).format(d);
}
