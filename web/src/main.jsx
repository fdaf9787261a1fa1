import { createRoot } from "react-dom/client";
import { App } from "./App.jsx";
import "./styles.css";
import { followSystem } from "./theme.js";

followSystem(); // before the first render: no flash of the other theme

createRoot(document.getElementById("root")).render(<App />);
