// What the dashboard's browser tests share: a `sluice serve` on a free loopback port with a
// fresh state directory, and Debian's Chromium driven by playwright-core with a fresh profile.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export const root = path.resolve(import.meta.dirname, "../..");
export const screenshots = process.env.SLUICE_SCREENSHOTS || path.join(root, "target/dashboard-screenshots");

/** Runs `command`; resolves with the child and the first match of `pattern` on its stdout. */
function startPrinting(command, args, env, pattern, stderr = "inherit") {
  const child = spawn(command, args, { env, stdio: ["pipe", "pipe", stderr] });
  const found = new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(pattern);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`${command} exited with ${code}: ${out}`)));
  });
  return { child, found };
}

async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.on("exit", resolve));
  child.kill("SIGINT");
  await exited;
}

/**
 * Starts `sluice serve --port 0` with a fresh state directory; resolves once it prints its
 * address. With `{ aws: true }` the jobs live in moto server (the AWS-API emulator, from
 * .venv: scripts/python-env) and the server runs `--backend aws` against it.
 */
export async function startServer({ aws = false } = {}) {
  const bin = process.env.SLUICE_BIN || path.join(root, "target/debug/sluice");
  const state = mkdtempSync(path.join(tmpdir(), "sluice-dashboard-"));
  const env = { ...process.env, SLUICE_STATE_DIR: state };
  const args = ["serve", "--port", "0"];
  let moto = null;
  if (aws) {
    moto = startPrinting(path.join(root, ".venv/bin/python"), [path.join(root, "scripts/moto-server")], process.env, /(http:\/\/127\.0\.0\.1:\d+)/, "ignore");
    Object.assign(env, {
      AWS_ENDPOINT_URL: await moto.found,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "testing",
      AWS_SECRET_ACCESS_KEY: "testing",
    });
    args.push("--backend", "aws", "--aws-prefix", "dash");
  }
  const server = startPrinting(bin, args, env, /sluice serving on (http:\/\/127\.0\.0\.1:\d+)/);
  const url = await server.found;
  return {
    url,
    async stop() {
      await stopChild(server.child);
      if (moto) await stopChild(moto.child);
      rmSync(state, { recursive: true, force: true });
    },
  };
}

/** Headless Chromium with a fresh profile: no network but loopback is ever asked for. */
export async function startBrowser() {
  const profile = mkdtempSync(path.join(tmpdir(), "sluice-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.SLUICE_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
    viewport: { width: 1280, height: 900 },
    locale: "en-GB",
  });
  return {
    context,
    async stop() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * A new page at `url`, recording what would mean the page is broken: uncaught exceptions,
 * console errors (a 4xx the test provokes is the API answering, not the page failing),
 * 5xx answers, and requests to anywhere but the server.
 */
export async function openPage(context, base, pathname) {
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 4\d\d/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 500) problems.push(`${r.status()} from ${r.url()}`);
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith("data:")) problems.push(`request to ${r.url()}`);
  });
  await page.goto(base + pathname);
  return { page, problems };
}

export async function screenshot(page, name) {
  mkdirSync(screenshots, { recursive: true });
  const file = path.join(screenshots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}
