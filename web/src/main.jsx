import "./early.js"; // first: see there
import { createRoot } from "react-dom/client";
import { App } from "./App.jsx";
import "./styles.css";
import { applyDensity, storedDensity } from "./density.js";
import { followSystem } from "./theme.js";

followSystem(); // before the first render: no flash of the other theme
applyDensity(storedDensity()); // nor of the other density

createRoot(document.getElementById("root")).render(<App />);
