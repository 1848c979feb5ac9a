// A real agentwire process on a loopback port for the node tests (dev mode, embedded store).
import { spawn } from "node:child_process";
import { createReadStream, existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";

const root = new URL("../..", import.meta.url).pathname;
export const BIN = process.env.AGENTWIRE_BIN ?? join(root, "target/debug/agentwire");
export const WAIT = 20_000;

export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Debian's Chromium, headless, with the flags this machine needs (no sandbox as root, no background networking). */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript" };

/** The repository's files over HTTP on a loopback port: where the example pages live. */
export function serveFiles(port) {
  const files = createHttpServer((request, response) => {
    const path = normalize(join(root, decodeURIComponent(new URL(request.url, "http://x").pathname)));
    if (!path.startsWith(root) || !existsSync(path)) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
    createReadStream(path).pipe(response);
  });
  return new Promise((resolve) => files.listen(port, "127.0.0.1", () => resolve(files)));
}

/**
 * The example pages' bench: the repository's files on a loopback port of their
 * own (another origin than agentwire's, as a team's frontend would be), an
 * agentwire that allows that origin, and Chromium. `close()` stops all three.
 */
export async function examplePages(stepDelay) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const files = await serveFiles(port);
  const server = await Agentwire.create(stepDelay, ["--allowed-origins", base]);
  const browser = await launchChromium();
  const close = async () => {
    await browser.close();
    await server.stop();
    files.close();
  };
  return { base, server, browser, close };
}

/** The environment without any AGENTWIRE_* setting that would leave dev mode. */
function devEnv() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AGENTWIRE_")));
  return { ...env, AGENTWIRE_LOG: "warn" };
}

/** An agentwire that can be killed and started again on the same port and data. */
export class Agentwire {
  /** `extraArgs` go to `agentwire serve` after the test's own (`--allowed-origins …`, say). */
  static async create(stepDelay = "80ms", extraArgs = []) {
    const node = new Agentwire(await freePort(), mkdtempSync(join(tmpdir(), "agentwire-node-")), stepDelay, extraArgs);
    await node.start();
    return node;
  }

  constructor(port, dataDir, stepDelay, extraArgs = []) {
    this.port = port;
    this.dataDir = dataDir;
    this.stepDelay = stepDelay;
    this.extraArgs = extraArgs;
    this.base = `http://127.0.0.1:${port}`;
  }

  start() {
    return new Promise((resolve, reject) => {
      const args = ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir, "--demo-step-delay", this.stepDelay, ...this.extraArgs];
      const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "inherit"], env: devEnv() });
      const timer = setTimeout(() => reject(new Error("agentwire did not start")), WAIT);
      child.stdout.on("data", (chunk) => {
        if (String(chunk).includes("agentwire is listening on")) {
          clearTimeout(timer);
          this.child = child;
          resolve();
        }
      });
      child.once("exit", (code) => reject(new Error(`agentwire exited with ${code}`)));
    });
  }

  kill() {
    return new Promise((resolve) => {
      this.child.once("exit", resolve);
      this.child.kill("SIGKILL");
    });
  }

  async stop() {
    this.child?.kill("SIGKILL");
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  async token(user) {
    return (await (await fetch(`${this.base}/dev/token?user=${user}`)).json()).token;
  }

  async publish(path, body) {
    const resp = await fetch(`${this.base}${path}`, {
      method: "POST",
      headers: { authorization: "Bearer dev-publish-key", "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: resp.status, body: await resp.json() };
  }

  /** Every event the server holds for `thread`, asked as `user`. */
  async history(thread, user) {
    const headers = { authorization: `Bearer ${await this.token(user)}` };
    return (await (await fetch(`${this.base}/v1/threads/${thread}/events?limit=10000`, { headers })).json()).events;
  }
}
