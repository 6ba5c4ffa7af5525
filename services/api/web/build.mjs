// Bundles src/ into ../heartvec_api/static/ (served by the API at /). Run by `make web`.
import { copyFileSync, mkdirSync } from "node:fs";
import { build } from "esbuild";

const out = new URL("../heartvec_api/static/", import.meta.url).pathname;
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  outfile: `${out}app.js`,
  logLevel: "info",
});
for (const file of ["index.html", "style.css"]) copyFileSync(`src/${file}`, `${out}${file}`);
