// Measures how fast the jobs list paints with 1,000 jobs in the store (not a test: a number
// for people, printed as JSON). Usage, after a build:
//   node tests/dashboard/first-paint.mjs [jobs=1000] [runs=5] [wait_s=1800]
// It starts its own `sluice serve` (SLUICE_BIN, default target/debug/sluice) and Chromium,
// submits the jobs (wordcount, distinct small --messages), then loads `/` `runs` times per
// page size and reports the medians from the browser's performance API:
// first-contentful-paint, and `jobs-rendered` (the dashboard's mark when the table is drawn);
// once right after submitting (the engine busy running them) and once all have ended (or
// wait_s has passed), one JSON line each.

import { openPage, screenshot, startBrowser, startServer } from "./harness.mjs";

const jobs = Number(process.argv[2] || 1000);
const runs = Number(process.argv[3] || 5);
const waitS = Number(process.argv[4] || 1800);
const server = await startServer();
const browser = await startBrowser();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  const t0 = performance.now();
  let next = 0;
  const submitOne = async () => {
    while (next < jobs) {
      const i = next++;
      const r = await fetch(`${server.url}/jobs`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ type: "wordcount", params: { messages: i + 1 } }),
      });
      if (r.status !== 202) throw new Error(`job ${i}: ${r.status} ${await r.text()}`);
    }
  };
  await Promise.all(Array.from({ length: 16 }, submitOne));
  const submitS = (performance.now() - t0) / 1000;

  const measure = async (label) => {
    const out = { label };
    for (const limit of [50, 100]) {
      const fcp = [];
      const rendered = [];
      const listMs = [];
      for (let i = 0; i < runs; i++) {
        const { page, problems } = await openPage(browser.context, server.url, `/#/jobs?limit=${limit}`);
        await page.waitForSelector("body[data-jobs-rendered]", { timeout: 120_000 });
        const m = await page.evaluate(() => ({
          fcp: performance.getEntriesByName("first-contentful-paint")[0]?.startTime,
          rendered: performance.getEntriesByName("jobs-rendered")[0]?.startTime,
          list: performance.getEntriesByType("resource").find((e) => e.name.includes("/jobs?"))?.duration,
          rows: document.querySelectorAll("#jobs tbody tr").length,
        }));
        if (problems.length || m.rows !== limit) throw new Error(`broken page: ${problems} rows=${m.rows}`);
        fcp.push(m.fcp);
        rendered.push(m.rendered);
        listMs.push(m.list);
        await page.close();
      }
      out[`limit_${limit}`] = {
        first_contentful_paint_ms: +median(fcp).toFixed(1),
        table_rendered_ms: +median(rendered).toFixed(1),
        list_request_ms: +median(listMs).toFixed(1),
      };
    }
    // Paging through every job, 100 a page, with the Next button.
    const { page } = await openPage(browser.context, server.url, "/#/jobs?limit=100");
    await page.waitForSelector("body[data-jobs-rendered]");
    await screenshot(page, `jobs-${jobs}-${label.startsWith("all") ? "done" : "running"}`);
    const start = performance.now();
    let seen = await page.locator("#jobs tbody tr[data-id]").count();
    for (let n = 2; ; n++) {
      const nextButton = page.getByRole("button", { name: "Next page" });
      if (await nextButton.isDisabled()) break;
      await nextButton.click();
      // The new page is drawn when its caption names it.
      await page.locator("#jobs caption", { hasText: `page ${n},` }).waitFor();
      seen += await page.locator("#jobs tbody tr[data-id]").count();
    }
    out.all_pages = { jobs_seen: seen, ms: +(performance.now() - start).toFixed(0) };
    await page.close();
    return out;
  };

  const whileRunning = await measure("just submitted (the engine is running them)");
  console.log(JSON.stringify({ jobs, runs, submit_s: +submitS.toFixed(2), ...whileRunning }));
  // Then again once every job has ended, or after `wait` seconds.
  const guard = performance.now();
  let ended = false;
  while (performance.now() - guard < waitS * 1000) {
    const pending = await (await fetch(`${server.url}/jobs?status=pending&limit=1`)).json();
    const running = await (await fetch(`${server.url}/jobs?status=running&limit=1`)).json();
    if (!pending.jobs.length && !running.jobs.length) {
      ended = true;
      break;
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
  const afterS = (performance.now() - t0) / 1000;
  const later = await measure(ended ? "all done" : `still running after ${waitS} s`);
  console.log(JSON.stringify({ jobs, runs, after_s: +afterS.toFixed(1), ...later }));
} finally {
  await browser.stop();
  await server.stop();
}
