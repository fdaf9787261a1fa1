// What every modal dialog here does (WAI-ARIA's dialog pattern): focus moves in when it opens and
// back where it was when it closes; Esc closes; Tab goes round its own controls, never to the page
// behind it.
import { useEffect } from "react";

/** Focus `first` (a ref) when the dialog opens, and what had focus before when it closes. */
export function useDialogFocus(first) {
  useEffect(() => {
    const before = document.activeElement;
    first.current?.focus();
    return () => before?.focus?.();
  }, [first]);
}

/** The dialog's keydown handler. */
export const dialogKeys = (onClose) => (e) => {
  if (e.key === "Escape") {
    e.preventDefault();
    e.stopPropagation();
    onClose();
  } else if (e.key === "Tab") {
    const controls = [...e.currentTarget.querySelectorAll("button:not(:disabled), input, select, textarea, a[href]")];
    const at = controls.indexOf(document.activeElement);
    const next = e.shiftKey ? (at <= 0 ? controls.length - 1 : at - 1) : (at + 1) % controls.length;
    e.preventDefault();
    controls[next]?.focus();
  }
};
