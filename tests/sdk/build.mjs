// Bundles entry.js (both SDKs) into <outdir>/sdk.js for the browser and copies index.html beside it.
// Usage: node build.mjs <outdir>
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(process.argv[2] ?? join(here, "dist"));
await mkdir(outdir, { recursive: true });
await esbuild.build({
  entryPoints: [join(here, "entry.js")],
  outfile: join(outdir, "sdk.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "chrome120",
  define: { "process.env.NODE_ENV": '"production"', global: "globalThis" },
  sourcemap: true, // sdk.js.map beside it: stack traces name the SDKs' own files
  logLevel: "warning",
});
await copyFile(join(here, "index.html"), join(outdir, "index.html"));
console.log(outdir);
