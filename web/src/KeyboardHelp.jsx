import { useRef } from "react";
import { dialogKeys, useDialogFocus } from "./dialog.js";

// The keyboard shortcuts, as `?` shows them. The list is the handler's in Mail.jsx: keep both alike.
export const SHORTCUTS = [
  ["j / k", "Next / previous message (in the list: move without opening)"],
  ["o or Enter", "Open"],
  ["Esc", "Back to the list; in the composer, close it (kept in Drafts)"],
  ["x", "Select the message (for a bulk action)"],
  ["e", "Archive"],
  ["#", "Delete (to Trash)"],
  ["!", "Report spam (in Junk: not spam)"],
  ["z", "Undo the last archive, delete or move"],
  ["r / a", "Reply / reply all"],
  ["u", "Mark unread"],
  ["s", "Star or unstar"],
  ["c", "Compose"],
  ["Ctrl+Enter", "Send (in the composer)"],
  ["/", "Search"],
  ["?", "This list"],
];

// A modal dialog: focus moves into it when it opens and back where it was when it closes (Esc or
// the button).
export function KeyboardHelp({ onClose }) {
  const close = useRef(null);
  useDialogFocus(close);
  return (
    <div className="dialog-backdrop" onClick={onClose}>
      <div role="dialog" aria-modal="true" aria-labelledby="keys-title" className="dialog" onClick={(e) => e.stopPropagation()} onKeyDown={dialogKeys(onClose)}>
        <h2 id="keys-title">Keyboard shortcuts</h2>
        <table className="shortcuts">
          <tbody>
            {SHORTCUTS.map(([keys, what]) => (
              <tr key={keys}><th scope="row"><kbd>{keys}</kbd></th><td>{what}</td></tr>
            ))}
          </tbody>
        </table>
        <button ref={close} onClick={onClose}>Close</button>
      </div>
    </div>
  );
}
