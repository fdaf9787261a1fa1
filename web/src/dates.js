// Dates as people read them, in the browser's own locale and time zone.
const valid = (d) => !Number.isNaN(d.getTime());

/** In a list: the time for today's mail, else the day (and the year when not this year). */
export function shortDate(value) {
  const d = new Date(value);
  if (!value || !valid(d)) return "";
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const sameYear = d.getFullYear() === now.getFullYear();
  return d.toLocaleDateString([], sameYear ? { day: "numeric", month: "short" } : { day: "numeric", month: "short", year: "numeric" });
}

/** In a message: the full date and time. */
export function longDate(value) {
  const d = new Date(value);
  if (!value || !valid(d)) return value || "";
  return d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}
