// Built files go to web/dist, which the bridge serves at "/". JSX is compiled by esbuild directly.
import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", emptyOutDir: true },
});
