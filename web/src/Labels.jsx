// Labels are IMAP keywords (flags without a backslash, RFC 3501 2.3.2); $-keywords are clients' own.
export const labelsOf = (flags) => (flags || []).filter((f) => !f.startsWith("\\") && !f.startsWith("$"));

export function Labels({ flags }) {
  const labels = labelsOf(flags);
  if (!labels.length) return null;
  return (
    <span className="labels" aria-label="Labels">
      {labels.map((l) => <span key={l} className="label">{l}</span>)}
    </span>
  );
}
