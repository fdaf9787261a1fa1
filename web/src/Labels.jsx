import { colour } from "./avatar.js";
import { X } from "./icons.js";

// Labels are IMAP keywords (flags without a backslash, RFC 3501 2.3.2); $-keywords are clients' own.
export const labelsOf = (flags) => (flags || []).filter((f) => !f.startsWith("\\") && !f.startsWith("$"));

// Each label keeps one colour everywhere (from its name, as avatars from an address). With
// `onRemove`, each has a button that takes it off the message.
export function Labels({ flags, onRemove }) {
  const labels = labelsOf(flags);
  if (!labels.length) return null;
  return (
    <span className="labels" aria-label="Labels">
      {labels.map((l) => (
        <span key={l} className="label" style={{ borderLeftColor: colour(l) }}>
          {l}
          {onRemove && (
            <button type="button" className="label-remove" aria-label={`Remove label ${l}`} title={`Remove label ${l}`} onClick={() => onRemove(l)}>
              <X />
            </button>
          )}
        </span>
      ))}
    </span>
  );
}
