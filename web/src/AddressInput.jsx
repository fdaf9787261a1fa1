import { useEffect, useId, useRef, useState } from "react";
import { api } from "./api.js";

// A comma-separated address field that completes the address being typed from past correspondents
// (GET /api/v1/contacts). ARIA 1.2 combobox pattern: arrows move, Enter or Tab takes, Escape closes.
export function AddressInput({ label, value, onChange, token, account, required = false }) {
  const [options, setOptions] = useState([]);
  const [active, setActive] = useState(-1);
  const [open, setOpen] = useState(false);
  const listId = useId();
  const timer = useRef(null);
  const parts = value.split(",");
  const typed = parts[parts.length - 1].trim();

  useEffect(() => {
    clearTimeout(timer.current);
    if (!open || !typed) {
      setOptions([]);
      return undefined;
    }
    let current = true;
    timer.current = setTimeout(() => {
      const params = new URLSearchParams({ q: typed, account, limit: "8" });
      api(token, `/api/v1/contacts?${params}`).then(
        (r) => { if (current) { setOptions(r.contacts); setActive(-1); } },
        () => current && setOptions([]),
      );
    }, 120);
    return () => { current = false; clearTimeout(timer.current); };
  }, [typed, open, token, account]);

  const take = (contact) => {
    const chosen = contact.name ? `${contact.name} <${contact.address}>` : contact.address;
    const before = parts.slice(0, -1).map((p) => p.trim()).filter(Boolean);
    onChange([...before, chosen].join(", ") + ", ");
    setOptions([]);
  };
  const onKeyDown = (e) => {
    if (!options.length) return;
    if (e.key === "ArrowDown") { e.preventDefault(); setActive((a) => (a + 1) % options.length); }
    else if (e.key === "ArrowUp") { e.preventDefault(); setActive((a) => (a <= 0 ? options.length - 1 : a - 1)); }
    else if ((e.key === "Enter" || e.key === "Tab") && active >= 0) { e.preventDefault(); take(options[active]); }
    else if (e.key === "Escape") { e.preventDefault(); setOptions([]); } // the composer then stays open
  };
  const shown = open && options.length > 0;
  return (
    <div className="address">
      <label>
        {label}{" "}
        <input
          name={label.toLowerCase()}
          value={value}
          required={required}
          autoComplete="off"
          role="combobox"
          aria-autocomplete="list"
          aria-expanded={shown}
          aria-controls={listId}
          aria-activedescendant={shown && active >= 0 ? `${listId}-${active}` : undefined}
          onChange={(e) => { onChange(e.target.value); setOpen(true); }}
          onKeyDown={onKeyDown}
          onBlur={() => setTimeout(() => setOpen(false), 150)}
        />
      </label>
      <ul id={listId} role="listbox" aria-label="Address suggestions" className="suggestions" hidden={!shown}>
        {options.map((c, i) => (
          <li
            key={c.address}
            id={`${listId}-${i}`}
            role="option"
            aria-selected={i === active}
            onMouseDown={(e) => { e.preventDefault(); take(c); }}
          >
            {c.name ? `${c.name} <${c.address}>` : c.address}
          </li>
        ))}
      </ul>
    </div>
  );
}
