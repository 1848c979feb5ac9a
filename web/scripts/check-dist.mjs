// The built scripts in dist/ are committed so that a Rust toolchain alone builds the
// server. This check rebuilds them into a temporary directory and fails if they differ.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const web = new URL("..", import.meta.url).pathname;
const out = mkdtempSync(join(tmpdir(), "agentwire-dist-"));
try {
  execFileSync(join(web, "node_modules/.bin/tsc"), ["-p", join(web, "tsconfig.json"), "--outDir", out], { stdio: "inherit" });
  const built = readdirSync(out).sort();
  const committed = readdirSync(join(web, "dist")).sort();
  const stale = built.filter((f) => !committed.includes(f) || readFileSync(join(out, f), "utf8") !== readFileSync(join(web, "dist", f), "utf8"));
  const extra = committed.filter((f) => !built.includes(f));
  if (stale.length || extra.length) {
    console.error(`web/dist is out of date (${[...stale, ...extra].join(", ")}): run \`npm run build\` in web/ and commit dist/.`);
    process.exit(1);
  }
  console.log(`web/dist matches web/src (${built.length} files)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
