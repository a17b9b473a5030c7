// The same dashboard against the AWS backend: `sluice serve --backend aws` over moto server
// (the AWS-API emulator), where jobs live in DynamoDB, SQS and S3 through the AWS SDK. The
// pages talk only to the job API, so submitting, watching and reading a result work the same.
// Run by scripts/test after scripts/python-env has made .venv.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { openPage, screenshot, startBrowser, startServer } from "./harness.mjs";

let server;
let browser;

before(async () => {
  server = await startServer({ aws: true });
  browser = await startBrowser();
});

after(async () => {
  await browser?.stop();
  await server?.stop();
});

test("against --backend aws: submit, watch it finish, read the result", { timeout: 300_000 }, async () => {
  const { page, problems } = await openPage(browser.context, server.url, "/#/submit");
  // Small: moto's SQS is slow as queues grow (README).
  await page.locator("#f-params-messages").fill("400");
  await page.getByRole("button", { name: "Submit job" }).click();
  await page.waitForURL(/#\/jobs\/[0-9a-f]{64}$/);
  await page.locator("#job-status", { hasText: "done" }).waitFor({ timeout: 240_000 });
  const total = page.locator('#result-values dd[data-key="total_words"]');
  await total.waitFor();
  assert.equal(await total.textContent(), "2,000");
  assert.equal(await page.locator("#stages tbody tr").count(), 4);
  assert.ok((await page.locator("#levers tbody tr").count()) >= 1, "no tick recorded in DynamoDB");
  await screenshot(page, "aws-job-done");
  await page.getByRole("link", { name: "Jobs" }).click();
  await page.locator("#jobs tr[data-status=done]").waitFor();
  assert.deepEqual(problems, []);
  await page.close();
});
