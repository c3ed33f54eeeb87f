import { defineConfig } from "vite";

// Served by the service at /ui/. The build is committed (ui/dist) and CI
// rebuilds it to check it is current, so it must be deterministic: content
// hashes in names, no source maps, no build time anywhere.
export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
    modulePreload: { polyfill: false },
  },
});
