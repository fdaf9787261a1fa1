// Light or dark: the system's (prefers-color-scheme, followed as it changes) unless the Theme button
// chose one, remembered in this browser. styles.css keys its colours on <html data-theme>.
const KEY = "mail-bridge-theme";
export const THEMES = ["system", "light", "dark"];
const systemDark = () => window.matchMedia("(prefers-color-scheme: dark)").matches;

export function storedTheme() {
  const found = localStorage.getItem(KEY);
  return THEMES.includes(found) ? found : "system";
}

export function applyTheme(choice) {
  const dark = choice === "dark" || (choice === "system" && systemDark());
  document.documentElement.dataset.theme = dark ? "dark" : "light";
}

export function chooseTheme(choice) {
  localStorage.setItem(KEY, choice);
  applyTheme(choice);
}

export function followSystem() {
  applyTheme(storedTheme());
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme(storedTheme()));
}
