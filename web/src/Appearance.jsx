import { useState } from "react";
import { DENSITIES, chooseDensity, storedDensity } from "./density.js";
import { Monitor, Moon, Rows3, Rows4, Sun } from "./icons.js";
import { THEMES, chooseTheme, storedTheme } from "./theme.js";

const THEME_ICONS = { system: Monitor, light: Sun, dark: Moon };
const DENSITY_ICONS = { comfortable: Rows3, compact: Rows4 };
const title = (word) => word[0].toUpperCase() + word.slice(1);

// The header's two look-and-feel buttons: each steps through its choices and remembers the one
// taken in this browser (theme.js, density.js); the button's name says the one in force.
export function Appearance() {
  const [theme, setTheme] = useState(storedTheme);
  const [density, setDensity] = useState(storedDensity);
  const next = (all, current) => all[(all.indexOf(current) + 1) % all.length];
  const ThemeIcon = THEME_ICONS[theme];
  const DensityIcon = DENSITY_ICONS[density];
  return (
    <>
      <button onClick={() => { const t = next(THEMES, theme); chooseTheme(t); setTheme(t); }} title="Light, dark, or as the system is">
        <ThemeIcon /><span className="btn-text">Theme: {title(theme)}</span>
      </button>
      <button onClick={() => { const d = next(DENSITIES, density); chooseDensity(d); setDensity(d); }} title="Two lines a message, or one">
        <DensityIcon /><span className="btn-text">Density: {title(density)}</span>
      </button>
    </>
  );
}
