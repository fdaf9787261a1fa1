import { useEffect, useRef, useState } from "react";

// A folder's name, asked in place (a new folder, or a new name for one): Enter takes it, Esc leaves.
export function FolderForm({ label, initial = "", onSubmit, onCancel }) {
  const [name, setName] = useState(initial);
  const input = useRef(null);
  useEffect(() => { input.current?.focus(); input.current?.select(); }, []);
  return (
    <form className="folder-form" onSubmit={(e) => { e.preventDefault(); onSubmit(name.trim()); }}>
      <input
        ref={input}
        aria-label={label}
        value={name}
        maxLength={200}
        onChange={(e) => setName(e.target.value)}
        onKeyDown={(e) => { if (e.key === "Escape") { e.preventDefault(); onCancel(); } }}
      />
      <button type="submit">Save</button>
      <button type="button" onClick={onCancel}>Cancel</button>
    </form>
  );
}
