// The dashboard in a real browser: `sluice serve` + Debian's Chromium, driven by Playwright.
// Run by scripts/test (after `cargo test` has built target/debug/sluice):
//   node --test tests/dashboard/dashboard.test.mjs
// Screenshots of every page go to target/dashboard-screenshots/.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { openPage, screenshot, startBrowser, startServer } from "./harness.mjs";

// Hang guards for jobs, not timing checks.
const JOB_GUARD_MS = 180_000;
let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await startBrowser();
});

after(async () => {
  await browser?.stop();
  await server?.stop();
});

async function jobCount() {
  let n = 0;
  let cursor = "";
  for (;;) {
    const r = await fetch(`${server.url}/jobs?limit=100${cursor ? `&cursor=${cursor}` : ""}`);
    const body = await r.json();
    n += body.jobs.length;
    if (!body.next_cursor) return n;
    cursor = body.next_cursor;
  }
}

test("submit a job from the form, watch it finish, read its result", { timeout: JOB_GUARD_MS }, async () => {
  const { page, problems } = await openPage(browser.context, server.url, "/");
  await page.waitForSelector("body[data-jobs-rendered]");
  await page.getByRole("link", { name: "Submit" }).click();
  await page.getByLabel("Job type").selectOption("wordcount");
  await page.locator("#f-params-messages").fill("3000");
  await page.locator("#f-params-per_word").check();
  await screenshot(page, "submit");
  await page.getByRole("button", { name: "Submit job" }).click();
  await page.waitForURL(/#\/jobs\/[0-9a-f]{64}$/);
  const id = page.url().split("/").pop();

  // Live while it runs, then done: the status, the result, and every panel's numbers.
  await page.locator("#job-status", { hasText: "done" }).waitFor({ timeout: JOB_GUARD_MS });
  const total = page.locator('#result-values dd[data-key="total_words"]');
  await total.waitFor();
  assert.equal(await total.textContent(), "15,000"); // 3,000 × "the quick brown fox {i}"
  const perWord = page.locator("#result section[aria-label=per_word] tbody tr").first();
  assert.deepEqual(await perWord.locator("td").allTextContents(), ["brown", "3,000"]);
  // feed, filter, count, reduce, and the merge of the keyed per_word.
  assert.equal(await page.locator("#stages tbody tr").count(), 5);
  assert.ok((await page.locator("#levers tbody tr").count()) >= 1, "no tick recorded");
  const fig5 = page.getByRole("img", { name: /Concurrent invocations per stage/ });
  assert.match(await fig5.getAttribute("aria-label"), /Peak: feed \d+, filter \d+, count \d+, reduce \d+/);
  // One row per time bucket (at least 50 ms): a short job may fit in one.
  assert.ok((await page.locator("details", { hasText: "Numbers: Concurrent" }).locator("tbody tr").count()) >= 1);
  assert.match(await page.locator("#cost-total").textContent(), /^\$\d/);
  assert.equal(await page.locator("canvas").count() >= 3, true, "the charts did not draw");
  await screenshot(page, "job-done");

  // The list shows it done, with its cost.
  await page.getByRole("link", { name: "Jobs" }).click();
  const row = page.locator(`#jobs tr[data-id="${id}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute("data-status"), "done");
  assert.match(await row.locator("td").last().textContent(), /^\$\d/);
  await screenshot(page, "jobs");
  assert.deepEqual(problems, []);
  await page.close();
});

test("bad input: the API's error is shown beside the field it names", { timeout: JOB_GUARD_MS }, async () => {
  const before = await jobCount();
  const { page, problems } = await openPage(browser.context, server.url, "/#/submit");
  await page.locator("#f-params-messages").fill("0");
  await page.getByRole("button", { name: "Submit job" }).click();
  const error = page.locator("#f-params-messages-error");
  await error.waitFor({ state: "visible" });
  assert.equal(await error.textContent(), "must be from 1 to 100000000, got 0 (params.messages)");
  const input = page.locator("#f-params-messages");
  assert.equal(await input.getAttribute("aria-invalid"), "true");
  assert.equal(await input.evaluate((el) => el === document.activeElement), true, "the field is not focused");
  assert.match(await page.locator("#f-params-messages").getAttribute("aria-describedby"), /f-params-messages-error/);
  await screenshot(page, "submit-error");

  // A bad option is named too, and the previous error is gone.
  await input.fill("10");
  await page.locator("#f-policy").fill("fastest");
  await page.getByRole("button", { name: "Submit job" }).click();
  await page.locator("#f-policy-error").waitFor({ state: "visible" });
  assert.match(await page.locator("#f-policy-error").textContent(), /unknown policy `fastest`/);
  assert.equal(await page.locator("#f-params-messages-error").isVisible(), false);

  // And an item of another job type's list.
  await page.locator("#f-policy").fill("");
  await page.getByLabel("Job type").selectOption("fire-tweets");
  await page.locator("#f-params-country").fill("gb");
  await page.locator("#f-params-from").fill("2018-11-01");
  await page.locator("#f-params-to").fill("2018-11-01");
  await page.getByRole("button", { name: "Submit job" }).click();
  await page.locator("#f-params-country-error").waitFor({ state: "visible" });
  assert.match(await page.locator("#f-params-country-error").textContent(), /two uppercase letters/);
  assert.equal(await jobCount(), before, "a refused request created a job");
  assert.deepEqual(problems, []);
  await page.close();
});

test("cancel a running job from its page", { timeout: JOB_GUARD_MS }, async () => {
  const { page, problems } = await openPage(browser.context, server.url, "/#/submit");
  // Large and held to one invocation per stage: still running when the button is pressed.
  await page.locator("#f-params-messages").fill("5000000");
  await page.locator("#f-policy").fill("always-one");
  await page.getByRole("button", { name: "Submit job" }).click();
  await page.waitForURL(/#\/jobs\/[0-9a-f]{64}$/);
  await page.locator("#job-status", { hasText: "running" }).waitFor({ timeout: JOB_GUARD_MS });
  const cancel = page.getByRole("button", { name: "Cancel job" });
  await cancel.click();
  await page.locator("#job-status", { hasText: "cancelled" }).waitFor({ timeout: JOB_GUARD_MS });
  assert.equal(await cancel.isHidden(), true);
  await page.locator("#result", { hasText: "cancelled" }).waitFor();
  await screenshot(page, "job-cancelled");
  assert.deepEqual(problems, []);
  await page.close();
});

test("workload: requests at chosen offsets, then job and billed time plotted", { timeout: JOB_GUARD_MS }, async () => {
  const { page, problems } = await openPage(browser.context, server.url, "/#/workload");
  await page.getByLabel("Request (JSON, as POST /jobs takes it)").fill('{"type": "wordcount", "params": {"messages": 500}}');
  await page.getByLabel("Number of requests").fill("3");
  await page.getByLabel("Offsets, seconds").fill("0, 0.3, 0.6");
  await page.getByRole("button", { name: "Schedule" }).click();
  await page.waitForSelector("body[data-workload-done]", { timeout: JOB_GUARD_MS });
  const rows = page.locator("#workload tbody tr");
  assert.equal(await rows.count(), 3);
  for (let i = 0; i < 3; i++) {
    const cells = await rows.nth(i).locator("td").allTextContents();
    assert.equal(cells[2], "202");
    assert.equal(cells[5], "done");
    assert.match(cells[6], /^\d+\.\d{3} s$/);
    assert.match(cells[7], /^\d+\.\d{3} s$/);
  }
  assert.match(await page.getByRole("img", { name: /Job time and billed time/ }).getAttribute("aria-label"), /job time, s: mean \d/);
  await screenshot(page, "workload");

  // A malformed request is named beside its field and sends nothing.
  await page.getByLabel("Request (JSON, as POST /jobs takes it)").fill("{nope");
  await page.getByRole("button", { name: "Schedule" }).click();
  await page.locator("#w-request-error").waitFor({ state: "visible" });
  assert.deepEqual(problems, []);
  await page.close();
});

test("keyboard and labels: every control is labelled and reachable", { timeout: JOB_GUARD_MS }, async () => {
  const { page, problems } = await openPage(browser.context, server.url, "/");
  await page.waitForSelector("body[data-jobs-rendered]");
  // The first Tab reaches the skip link; Enter moves focus to the content.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "skip");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");
  // The navigation works from the keyboard.
  await page.getByRole("link", { name: "Workload" }).focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/workload$/);
  // The route renders after the URL changes: wait for the navigation to mark it.
  await page.waitForFunction(() =>
    [...document.querySelectorAll("a[aria-current=page]")].some((a) => a.textContent.trim() === "Workload"));
  assert.equal(await page.getByRole("link", { name: "Workload" }).getAttribute("aria-current"), "page");
  for (const route of ["/#/jobs", "/#/submit", "/#/workload"]) {
    await page.goto(server.url + route);
    await page.waitForSelector("main input, main select, main textarea");
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll("main input, main select, main textarea")]
        .filter((el) => el.labels.length === 0 && !el.getAttribute("aria-label"))
        .map((el) => el.id || el.outerHTML));
    assert.deepEqual(unlabelled, [], `${route}: controls without a label`);
  }
  assert.deepEqual(problems, []);
  await page.close();
});
