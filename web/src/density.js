// How much of the list a screen shows: "comfortable" (two lines a message) or "compact" (one),
// chosen with the Density button and remembered in this browser, as the theme is. styles.css keys
// its row sizes on <html data-density>; a phone keeps 44 px targets in either.
const KEY = "mail-bridge-density";
export const DENSITIES = ["comfortable", "compact"];

export function storedDensity() {
  const found = localStorage.getItem(KEY);
  return DENSITIES.includes(found) ? found : "comfortable";
}

export function applyDensity(choice) {
  document.documentElement.dataset.density = choice;
}

export function chooseDensity(choice) {
  localStorage.setItem(KEY, choice);
  applyDensity(choice);
}
