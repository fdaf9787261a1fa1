// Built files go to web/dist, which the bridge serves at "/". JSX is compiled by esbuild directly.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";
import { defineConfig } from "vite";

// Compressed copies of the built text files, beside them: the bridge's file responses (aiohttp's
// FileResponse) send the .br or .gz copy to a browser that accepts it, compressed once here
// rather than on every request.
function precompress() {
  return {
    name: "precompress",
    apply: "build",
    writeBundle(options, bundle) {
      for (const name of Object.keys(bundle)) {
        if (!/\.(js|css|html|svg)$/.test(name)) continue;
        const path = join(options.dir, name);
        const data = readFileSync(path);
        if (data.length < 1024) continue; // a header's worth: not worth a second request path
        writeFileSync(`${path}.gz`, gzipSync(data, { level: 9 }));
        writeFileSync(`${path}.br`, brotliCompressSync(data, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
      }
    },
  };
}

export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", emptyOutDir: true },
  plugins: [precompress()],
});
