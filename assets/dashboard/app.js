// sluice dashboard: plain JavaScript over the job API (the same origin), no build step.
// Pages are hash routes: #/jobs, #/jobs/{id}, #/submit, #/workload. Charts are uPlot
// (vendored); every chart has its numbers in a table beside it.
"use strict";

const TERMINAL = ["done", "failed", "cancelled"];
const STATUSES = ["pending", "running", "done", "failed", "cancelled"];
// Okabe–Ito: told apart with the common colour-vision deficiencies.
const COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000"];
const POLL_MS = 1000;

// ---- helpers ----------------------------------------------------------------------------

/** An element: h("a", {href: "#/"}, "text", child, [children]). on* attributes listen. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, path, body) {
  const init = { method, headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  return { status: response.status, ok: response.ok, data };
}

/** The API's error as one line. */
function errorText(r) {
  const e = (r.data && r.data.error) || {};
  return `${r.status} ${e.code || "error"}: ${e.message || "no message"}${e.field ? ` (${e.field})` : ""}`;
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en")),
  s: (ms) => (ms === null || ms === undefined ? "–" : (ms / 1000).toFixed(3) + " s"),
  usd: (x) => (x === null || x === undefined ? "–" : "$" + x.toFixed(x < 0.01 ? 6 : 4)),
  time: (ms) => (ms ? new Date(ms).toLocaleString("en-GB", { hour12: false }) : "–"),
  short: (id) => id.slice(0, 12),
};

function statusBadge(status) {
  return h("span", { class: `badge s-${status}` }, status);
}

function announce(text) {
  document.getElementById("announce").textContent = text;
}

function progressOf(reduced, total) {
  if (total === null || total === undefined) return h("span", { class: "empty" }, "planning");
  const label = `${fmt.int(reduced || 0)} of ${fmt.int(total)} partitions`;
  return h("span", {}, h("progress", { max: Math.max(total, 1), value: reduced || 0, "aria-label": label }), " ", label);
}

/** A table: columns [{label, num}] and rows of cells (nodes or text). */
function table(caption, columns, rows, attrs) {
  return h(
    "table",
    attrs || {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((cell, i) => h("td", { class: columns[i].num ? "num" : null }, cell))))),
  );
}

/** A scrollable region that keyboard users can scroll too. */
function scrollRegion(label, child) {
  return h("div", { class: "scroll", role: "region", "aria-label": label, tabindex: 0 }, child);
}

// ---- charts -----------------------------------------------------------------------------

/**
 * A chart of series over a shared x, with its numbers as a table and a text summary.
 * update(xs, series: [{label, values}]) redraws in place.
 */
function chart({ title, xLabel, yLabel, summary }) {
  const box = h("div", { class: "chart", role: "img" });
  const empty = h("p", { class: "empty" }, "No data yet.");
  const numbers = h("div");
  const details = h("details", {}, h("summary", {}, `Numbers: ${title}`), numbers);
  const figure = h("figure", {}, h("figcaption", {}, title), empty, box, details);
  let plot = null;
  let labels = "";
  const width = () => Math.max(320, Math.min(figure.clientWidth || 600, 1200));
  const update = (xs, series) => {
    const hasData = xs.length > 0 && series.length > 0;
    empty.hidden = hasData;
    box.hidden = !hasData;
    box.setAttribute("aria-label", `${title}. ${hasData ? summary(series) : "No data yet."} The numbers are in the table below.`);
    numbers.replaceChildren(
      scrollRegion(
        `${title}: numbers`,
        table(null, [{ label: xLabel, num: true }, ...series.map((s) => ({ label: s.label, num: true }))],
          xs.map((x, i) => [x.toFixed(2), ...series.map((s) => (s.values[i] === null ? "–" : +s.values[i].toFixed(2)))])),
      ),
    );
    if (!hasData || typeof uPlot === "undefined") return;
    const data = [xs, ...series.map((s) => s.values)];
    const key = series.map((s) => s.label).join("|");
    if (plot && key === labels) {
      plot.setData(data);
      return;
    }
    if (plot) plot.destroy();
    labels = key;
    plot = new uPlot(
      {
        width: width(),
        height: 240,
        // Counts and times: from zero.
        scales: { x: { time: false }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        axes: [{ label: xLabel }, { label: yLabel }],
        series: [
          { label: xLabel },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: COLOURS[i % COLOURS.length],
            width: 2,
            // Steps for levels over time; points alone for one value per request.
            ...(s.points ? { points: { show: true, size: 8 }, paths: () => null } : { paths: uPlot.paths.stepped({ align: 1 }) }),
          })),
        ],
      },
      data,
      box,
    );
  };
  const resize = () => plot && plot.setSize({ width: width(), height: 240 });
  return { element: figure, update, resize };
}

// ---- router -----------------------------------------------------------------------------

let page = null; // the current page's { stop() }

function route() {
  if (page && page.stop) page.stop();
  page = null;
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  const main = document.getElementById("main");
  main.replaceChildren();
  let nav = "jobs";
  if (parts[0] === "jobs" && parts[1]) {
    page = jobPage(main, parts[1]);
  } else if (parts[0] === "submit") {
    nav = "submit";
    page = submitPage(main, params);
  } else if (parts[0] === "workload") {
    nav = "workload";
    page = workloadPage(main);
  } else {
    page = jobsPage(main, params);
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

let jobTypesCache = null;
async function jobTypes() {
  if (!jobTypesCache) {
    const r = await api("GET", "/job-types");
    if (!r.ok) throw new Error(errorText(r));
    jobTypesCache = r.data.job_types;
  }
  return jobTypesCache;
}

/** Repeats fn every ms until stopped; fn returns false to stop itself. */
function poller(fn, ms) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    let again = true;
    try {
      again = (await fn()) !== false;
    } catch (e) {
      console.warn("poll failed", e);
    }
    if (!stopped && again) timer = setTimeout(tick, ms);
  };
  tick();
  return { stop: () => { stopped = true; clearTimeout(timer); } };
}

// ---- jobs list --------------------------------------------------------------------------

const listHistory = { key: "", cursors: [] }; // cursors of the pages before this one

function jobsPage(main, params) {
  const status = params.get("status") || "";
  const type = params.get("type") || "";
  const limit = params.get("limit") || "50";
  const cursor = params.get("cursor") || "";
  const filterKey = `${status}|${type}|${limit}`;
  if (listHistory.key !== filterKey) {
    listHistory.key = filterKey;
    listHistory.cursors = [];
  }
  const go = (changes) => {
    const q = new URLSearchParams({ status, type, limit, cursor, ...changes });
    for (const [k, v] of [...q]) if (!v) q.delete(k);
    location.hash = "#/jobs" + (q.toString() ? "?" + q : "");
  };
  const select = (id, label, value, options, onchange) =>
    h("div", {}, h("label", { for: id }, label),
      h("select", { id, onchange }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))));
  const typeSelect = select("filter-type", "Type", type, [["", "any type"]], (e) => go({ type: e.target.value, cursor: "" }));
  jobTypes().then((types) => {
    for (const t of types) typeSelect.querySelector("select").append(h("option", { value: t.name, selected: t.name === type }, t.name));
  }).catch((e) => console.warn(e));
  const body = h("tbody");
  const pager = h("nav", { class: "pager", "aria-label": "Pages of jobs" });
  const caption = h("caption");
  main.append(
    h("h1", {}, "Jobs"),
    h("form", { class: "filters", role: "search", "aria-label": "Filter jobs", onsubmit: (e) => e.preventDefault() },
      select("filter-status", "Status", status, [["", "any status"], ...STATUSES.map((s) => [s, s])], (e) => go({ status: e.target.value, cursor: "" })),
      typeSelect,
      select("filter-limit", "Per page", limit, ["20", "50", "100"].map((n) => [n, n]), (e) => go({ limit: e.target.value, cursor: "" })),
    ),
    h("table", { id: "jobs" },
      caption,
      h("thead", {}, h("tr", {}, [
        ["Job"], ["Type"], ["Params"], ["Status"], ["Progress"], ["Created"], ["Job time", true], ["Lambda cost", true],
      ].map(([label, num]) => h("th", { scope: "col", class: num ? "num" : null }, label)))),
      body),
    pager,
  );
  let first = true;
  const load = async () => {
    const q = new URLSearchParams({ limit });
    if (status) q.set("status", status);
    if (type) q.set("type", type);
    if (cursor) q.set("cursor", cursor);
    const r = await api("GET", "/jobs?" + q);
    if (!r.ok) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "form-error", role: "alert" }, errorText(r))));
      return false;
    }
    const focused = document.activeElement && document.activeElement.dataset.id;
    const jobs = r.data.jobs;
    body.replaceChildren(...jobs.map((j) => h("tr", { "data-id": j.job_id, "data-status": j.status },
      h("td", {}, h("a", { href: `#/jobs/${j.job_id}`, class: "mono", "data-id": j.job_id, title: j.job_id }, fmt.short(j.job_id))),
      h("td", {}, j.type),
      h("td", { class: "params mono", title: JSON.stringify(j.params) }, JSON.stringify(j.params)),
      h("td", {}, statusBadge(j.status)),
      h("td", {}, progressOf(j.reduced_partitions, j.total_partitions)),
      h("td", {}, fmt.time(j.created_ms)),
      h("td", { class: "num" }, j.started_ms && j.finished_ms ? fmt.s(j.finished_ms - j.started_ms) : "–"),
      h("td", { class: "num" }, fmt.usd(j.lambda_usd)),
    )));
    if (!jobs.length) {
      // A full page's cursor may lead to an empty one: the API cannot know no job follows.
      const none = cursor ? "No more jobs." : status || type ? "No jobs match." : "No jobs. Submit one from the Submit page.";
      body.append(h("tr", {}, h("td", { colspan: 8, class: "empty" }, none)));
    }
    if (focused) {
      const again = body.querySelector(`a[data-id="${focused}"]`);
      if (again) again.focus();
    }
    const page = listHistory.cursors.length + 1;
    caption.textContent = `Jobs in creation order, oldest first: page ${page}, ${jobs.length} shown` +
      (status ? `, status ${status}` : "") + (type ? `, type ${type}` : "") + ".";
    pager.replaceChildren(
      h("button", { type: "button", class: "secondary", disabled: !cursor, onclick: () => {
        const prev = listHistory.cursors.pop();
        go({ cursor: prev || "" });
      } }, "Previous page"),
      h("span", {}, `Page ${page}`),
      h("button", { type: "button", class: "secondary", disabled: !r.data.next_cursor, onclick: () => {
        listHistory.cursors.push(cursor);
        go({ cursor: r.data.next_cursor });
      } }, "Next page"),
    );
    if (first) {
      first = false;
      performance.mark("jobs-rendered");
      document.body.dataset.jobsRendered = "true";
    }
    // Refresh while any job shown has not ended.
    return jobs.some((j) => !TERMINAL.includes(j.status));
  };
  return poller(load, 2 * POLL_MS);
}

// ---- job page ---------------------------------------------------------------------------

function jobPage(main, id) {
  const statusLine = h("span", { role: "status", "aria-live": "polite", id: "job-status" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel", hidden: true }, "Cancel job");
  const cancelNote = h("span", { role: "status" });
  const facts = h("dl", { class: "facts" });
  const stages = h("div");
  const fig5 = chart({
    title: "Concurrent invocations per stage (paper fig. 5)",
    xLabel: "time since start, s",
    yLabel: "invocations running",
    summary: (series) => "Peak: " + series.map((s) => `${s.label} ${s.peak}`).join(", ") + ".",
  });
  const fig6 = chart({
    title: "Queue depth per stage, visible + in flight, at each tick (paper fig. 6)",
    xLabel: "time since start, s",
    yLabel: "messages",
    summary: (series) => "Peak: " + series.map((s) => `${s.label} ${Math.max(0, ...s.values)}`).join(", ") + ".",
  });
  const leversChart = chart({
    title: "Maximum concurrency per stage, as the policy set it at each tick",
    xLabel: "time since start, s",
    yLabel: "max concurrency",
    summary: (series) => "Last: " + series.map((s) => `${s.label} ${s.values[s.values.length - 1]}`).join(", ") + ".",
  });
  const levers = h("div");
  const dead = h("div");
  const result = h("div", { id: "result" }, h("p", { class: "empty" }, "The result is shown when the job ends."));
  const cost = h("div", { id: "cost" });
  const fig5note = h("p", { class: "note" });
  main.append(
    h("div", { class: "head" }, h("h1", {}, "Job ", h("span", { class: "mono", title: id }, fmt.short(id))), statusLine, cancel, cancelNote),
    facts,
    h("h2", {}, "Progress per stage"), stages,
    h("div", { class: "grid2" },
      h("section", { "aria-label": "Concurrency" }, fig5.element, fig5note),
      h("section", { "aria-label": "Queues" }, fig6.element)),
    h("h2", {}, "The policy's levers at each tick"), leversChart.element, levers,
    h("h2", {}, "Dead-lettered partitions"), dead,
    h("h2", {}, "Result"), result,
    h("h2", {}, "Cost model"), cost,
  );
  const onResize = () => [fig5, fig6, leversChart].forEach((c) => c.resize());
  window.addEventListener("resize", onResize);
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const r = await api("DELETE", `/jobs/${id}`);
    cancelNote.textContent = r.ok ? "Cancelling…" : errorText(r);
    if (!r.ok) cancel.disabled = false;
  });
  const ticks = [];
  let resultShown = false;
  let lastStatus = null;
  const refresh = async () => {
    const r = await api("GET", `/jobs/${id}`);
    if (!r.ok) {
      facts.replaceChildren(h("p", { class: "form-error", role: "alert" }, errorText(r)));
      return false;
    }
    const v = r.data;
    const t0 = v.timings.started_ms || v.timings.created_ms;
    if (v.status !== lastStatus) {
      statusLine.replaceChildren("Status: ", statusBadge(v.status));
      if (lastStatus) announce(`Job ${fmt.short(id)} is ${v.status}`);
      lastStatus = v.status;
    }
    cancel.hidden = TERMINAL.includes(v.status);
    if (cancel.hidden) cancelNote.textContent = "";
    facts.replaceChildren(...[
      ["Job id", h("code", {}, v.job_id)],
      ["Type", v.type],
      ["Params", h("code", {}, JSON.stringify(v.params))],
      ["Policy", v.policy],
      ["Min coverage", v.min_coverage],
      ["Attempt", v.attempt],
      ["Partitions", progressOf(v.reduced_partitions, v.total_partitions)],
      ["Created", fmt.time(v.timings.created_ms)],
      ["Started", fmt.time(v.timings.started_ms)],
      ["Finished", fmt.time(v.timings.finished_ms)],
      ["Job time", v.timings.run_ms === null ? "–" : fmt.s(v.timings.run_ms) + " (first tick to result)"],
      v.error ? ["Error", h("span", { class: "form-error" }, v.error)] : null,
      v.parts && v.parts.length ? ["Parts", v.parts.map((p) => h("span", {}, h("a", { href: `#/jobs/${p.job_id}`, class: "mono" }, fmt.short(p.job_id)), p.computed ? " (computed) " : " (cached) "))] : null,
    ].filter(Boolean).flatMap(([k, val]) => [h("dt", {}, k), h("dd", {}, val)]));
    stages.replaceChildren(v.stages.length ? table("Per stage: the last stage's done count is the ledger's.", [
      { label: "Stage" }, { label: "Component" }, { label: "Function" }, { label: "Done" }, { label: "Dead-lettered", num: true },
      { label: "Queued", num: true }, { label: "In flight", num: true }, { label: "Invocations", num: true },
      { label: "Failed messages", num: true }, { label: "Throttles", num: true }, { label: "Billed", num: true },
    ], v.stages.map((s) => [
      s.stage, s.component, s.function,
      s.total === null ? fmt.int(s.done) + " handled" : progressOf(s.done, s.total),
      fmt.int(s.dead_lettered), fmt.int(s.visible), fmt.int(s.in_flight), fmt.int(s.invocations),
      fmt.int(s.failed_messages), fmt.int(s.throttles), fmt.s(s.billed_ms),
    ]), { id: "stages" }) : h("p", { class: "empty" }, "No stages yet (or a composite job: see its parts)."));

    const tl = await api("GET", `/jobs/${id}/timeline` + (ticks.length ? `?after=${ticks[ticks.length - 1].t_ms}` : ""));
    if (tl.ok) {
      ticks.push(...tl.data.ticks);
      const conc = tl.data.concurrency;
      const cxs = conc.stages.length ? conc.stages[0].points.map((p) => (p[0] - t0) / 1000) : [];
      fig5.update(cxs, conc.stages.map((s) => ({ label: s.stage, peak: s.peak, values: s.points.map((p) => p[1]) })));
      fig5note.textContent = conc.stages.length
        ? `Mean invocations running in each ${conc.bucket_ms} ms; peaks: ${conc.stages.map((s) => `${s.stage} ${s.peak}`).join(", ")}.`
        : "No invocation records (a deployment keeps them in CloudWatch, which the API does not read).";
      const names = ticks.length ? ticks[ticks.length - 1].stages.map((s) => s.stage) : [];
      const txs = ticks.map((t) => (t.t_ms - t0) / 1000);
      const stageAt = (t, name) => t.stages.find((s) => s.stage === name);
      fig6.update(txs, names.map((n) => ({ label: n, values: ticks.map((t) => { const s = stageAt(t, n); return s ? s.visible + s.in_flight : null; }) })));
      leversChart.update(txs, names.map((n) => ({ label: n, values: ticks.map((t) => { const s = stageAt(t, n); return s ? s.levers.max_concurrency : null; }) })));
      const lever = (l) => `${l.batch_size} / ${l.batching_window_secs} s / ${l.max_concurrency}` + (l.reserved_concurrency === null ? "" : ` / ${l.reserved_concurrency}`);
      levers.replaceChildren(ticks.length ? scrollRegion("Levers at each tick", table(
        `${ticks.length} ticks. Each cell: batch size / batching window / maximum concurrency (/ reserved concurrency, where a budget is set).`,
        [{ label: "time since start, s", num: true }, { label: "finished partitions", num: true }, ...names.map((n) => ({ label: n }))],
        ticks.map((t) => [((t.t_ms - t0) / 1000).toFixed(2), fmt.int(t.finished), ...names.map((n) => { const s = stageAt(t, n); return s ? lever(s.levers) : "–"; })]),
        { id: "levers" })) : h("p", { class: "empty" }, "No ticks recorded yet."));
    }

    const deadTotal = v.stages.reduce((a, s) => a + s.dead_lettered, 0);
    dead.replaceChildren(v.dead_partitions.length
      ? h("p", {}, `${v.dead_partitions.length} partitions were never reduced: `, h("code", {}, v.dead_partitions.join(", ")))
      : h("p", { class: deadTotal ? "" : "empty" }, deadTotal
        ? `${deadTotal} dead-lettered so far: ` + v.stages.filter((s) => s.dead_lettered).map((s) => `${s.stage} ${s.dead_lettered}`).join(", ")
        : "None."));

    renderCost(cost, v.cost, v.stages.map((s) => s.stage));
    if (TERMINAL.includes(v.status) && !resultShown) {
      const res = await api("GET", `/jobs/${id}/result`);
      if (res.ok) {
        renderResult(result, res.data);
        resultShown = true;
      }
    }
    // Once ended and torn down, nothing changes any more.
    return !(TERMINAL.includes(v.status) && resultShown);
  };
  const polling = poller(refresh, POLL_MS);
  return { stop: () => { polling.stop(); window.removeEventListener("resize", onResize); } };
}

function renderCost(el, c, order) {
  if (!c) {
    el.replaceChildren(h("p", { class: "empty" }, "No invocation statistics: nothing has run yet, or this deployment does not keep them."));
    return;
  }
  el.replaceChildren(
    table(`Lambda at list prices: ${fmt.usd(c.request_usd * 1e6)} per million requests, $${c.gb_s_usd} per GB-s. ` +
      "Measured billed time; the job's queue, table and bucket requests are not attributed per job (sluice run prints a lone job's whole bill).",
    [{ label: "Stage" }, { label: "Function" }, { label: "Memory, MB", num: true }, { label: "Requests", num: true },
      { label: "Billed time", num: true }, { label: "GB-s", num: true }, { label: "Cost", num: true }],
    [...[...c.stages].sort((a, b) => order.indexOf(a.stage) - order.indexOf(b.stage)).map((s) => [s.stage, s.function, s.memory_mb, fmt.int(s.requests), s.billed_s.toFixed(3) + " s", s.gb_s.toFixed(4), fmt.usd(s.usd)]),
      [h("strong", {}, "total"), "", "", fmt.int(c.requests), c.billed_s.toFixed(3) + " s", c.gb_s.toFixed(4), h("strong", { id: "cost-total" }, fmt.usd(c.usd))]],
    { id: "cost-table" }),
  );
}

/** The outcome; a keyed map (a per-word count, cities) as a sorted table in pages. */
function renderResult(el, r) {
  const out = [h("p", {}, "Status: ", statusBadge(r.status), r.coverage === null ? "" : ` · coverage ${(r.coverage * 100).toFixed(2)}%`, r.cached ? " · served from the cache" : "")];
  if (r.error) out.push(h("p", { class: "form-error" }, r.error));
  const value = r.result;
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const scalars = Object.entries(value).filter(([, v]) => v === null || typeof v !== "object");
    const maps = Object.entries(value).filter(([, v]) => v && typeof v === "object" && !Array.isArray(v));
    out.push(h("dl", { class: "facts", id: "result-values" }, scalars.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-key": k }, typeof v === "number" ? fmt.int(v) : String(v))])));
    for (const [name, map] of maps) out.push(map.keyed === true ? keyedPages(r.job_id, name, map) : keyedTable(name, map));
  } else if (value !== null && value !== undefined) {
    out.push(h("pre", {}, JSON.stringify(value, null, 2)));
  }
  out.push(h("details", {}, h("summary", {}, "The result as JSON"), h("pre", {}, JSON.stringify(r, null, 2))));
  el.replaceChildren(...out);
}

/** A keyed result of any size, paged by the API (GET /jobs/{id}/result?field=…&cursor=…). */
function keyedPages(jobId, name, summary) {
  const per = 20;
  let order = "value";
  let cursors = ["0"];
  let next = null;
  const holder = h("div");
  const status = h("span", { role: "status" });
  const prev = h("button", { type: "button", class: "secondary", onclick: () => { if (cursors.length > 1) { cursors.pop(); draw(); } } }, "Previous");
  const nextButton = h("button", { type: "button", class: "secondary", onclick: () => { if (next) { cursors.push(next); draw(); } } }, "Next");
  const oid = `order-${name}`;
  const draw = async () => {
    const cursor = cursors[cursors.length - 1];
    const r = await api("GET", `/jobs/${jobId}/result?field=${encodeURIComponent(name)}&order=${order}&limit=${per}&cursor=${cursor}`);
    if (!r.ok) {
      holder.replaceChildren(h("p", { class: "form-error" }, errorText(r)));
      return;
    }
    next = r.data.next_cursor;
    const first = (cursors.length - 1) * per;
    holder.replaceChildren(table(`${name}: ${fmt.int(summary.keys)} keys, by ${order === "value" ? "value, largest first" : "key"}`,
      [{ label: "key" }, { label: "value", num: true }],
      r.data.entries.map((e) => [e.key, typeof e.value === "number" ? fmt.int(e.value) : JSON.stringify(e.value)])));
    prev.disabled = cursors.length === 1;
    nextButton.disabled = !next;
    status.textContent = r.data.entries.length ? `${first + 1}–${first + r.data.entries.length} of ${fmt.int(summary.keys)}` : "none";
  };
  draw();
  const select = h("select", { id: oid, onchange: (e) => { order = e.target.value; cursors = ["0"]; draw(); } },
    h("option", { value: "value" }, "by value"), h("option", { value: "key" }, "by key"));
  const whole = h("a", { href: `/jobs/${jobId}/result?field=${encodeURIComponent(name)}&order=${order}&format=jsonl`, download: `${name}.jsonl` }, "download all (JSON lines)");
  return h("section", { "aria-label": name },
    h("h3", {}, name),
    h("p", {}, `${fmt.int(summary.keys)} keys`, summary.total !== undefined ? `, total ${fmt.int(summary.total)}` : "", " · ", whole),
    h("div", { class: "filters" }, h("div", {}, h("label", { for: oid }, `Order of ${name}`), select)),
    holder, h("div", { class: "pager" }, prev, status, nextButton));
}

function keyedTable(name, map) {
  const entries = Object.entries(map).sort((a, b) => (typeof b[1] === "number" && typeof a[1] === "number" ? b[1] - a[1] : 0) || (a[0] < b[0] ? -1 : 1));
  const per = 20;
  let at = 0;
  let filter = "";
  const holder = h("div");
  const status = h("span", { role: "status" });
  const prev = h("button", { type: "button", class: "secondary", onclick: () => { at = Math.max(0, at - per); draw(); } }, "Previous");
  const next = h("button", { type: "button", class: "secondary", onclick: () => { at += per; draw(); } }, "Next");
  const fid = `filter-${name}`;
  const draw = () => {
    const shown = filter ? entries.filter(([k]) => k.toLowerCase().includes(filter)) : entries;
    holder.replaceChildren(table(`${name}: ${fmt.int(shown.length)} keys, largest first`, [{ label: "key" }, { label: "value", num: true }],
      shown.slice(at, at + per).map(([k, v]) => [k, typeof v === "number" ? fmt.int(v) : JSON.stringify(v)])));
    prev.disabled = at === 0;
    next.disabled = at + per >= shown.length;
    status.textContent = shown.length ? `${at + 1}–${Math.min(at + per, shown.length)} of ${fmt.int(shown.length)}` : "none";
  };
  draw();
  return h("section", { "aria-label": name },
    h("h3", {}, name),
    h("div", { class: "filters" }, h("div", {}, h("label", { for: fid }, `Find a key in ${name}`),
      h("input", { type: "text", id: fid, oninput: (e) => { filter = e.target.value.toLowerCase(); at = 0; draw(); } }))),
    holder, h("div", { class: "pager" }, prev, status, next));
}

// ---- submit form ------------------------------------------------------------------------

function fieldId(name) {
  return "f-" + name.replace(/[^a-zA-Z0-9_-]/g, "-");
}

/** A labelled input for one schema property; its error shows beside it. */
function schemaField(name, prop, required) {
  const id = fieldId(name);
  const hintText = [prop.description, prop.default !== undefined ? `Default: ${Array.isArray(prop.default) ? prop.default.join(", ") : prop.default}.` : null,
    prop.minimum !== undefined ? `From ${fmt.int(prop.minimum)} to ${fmt.int(prop.maximum)}.` : null].filter(Boolean).join(" ");
  const described = `${id}-hint ${id}-error`;
  let input;
  if (prop.type === "boolean") {
    input = h("input", { type: "checkbox", id, name, checked: prop.default === true, "aria-describedby": described });
  } else if (prop.type === "array" || prop.type === "json") {
    input = h("textarea", { id, name, rows: 3, placeholder: prop.type === "json" ? "{}" : (prop.default || []).join("\n"), "aria-describedby": described });
  } else {
    input = h("input", {
      type: prop.type === "integer" ? "number" : "text", id, name, step: prop.type === "integer" ? 1 : null,
      placeholder: prop.default !== undefined ? String(prop.default) : (prop.examples ? String(prop.examples[0]) : null),
      "aria-describedby": described, "aria-required": required ? "true" : null,
    });
  }
  const shortName = name.replace(/^params\./, "");
  const label = h("label", { for: id }, shortName, required ? h("span", { class: "req" }, " (required)") : null,
    prop.type === "array" ? h("span", { class: "req" }, " (one per line)") : null);
  return h("div", { class: "field", "data-field": name },
    prop.type === "boolean" ? h("div", {}, input, " ", label) : [label, input],
    h("p", { class: "hint", id: `${id}-hint` }, hintText),
    h("p", { class: "error", id: `${id}-error`, hidden: true }));
}

/** The value of a generated field, or undefined when left empty (the default applies). */
function fieldValue(input, prop) {
  if (prop.type === "boolean") return input.checked === (prop.default === true) ? undefined : input.checked;
  if (prop.type === "array") {
    const items = input.value.split("\n").map((s) => s.trim()).filter(Boolean);
    return items.length ? items : undefined;
  }
  const raw = input.value.trim();
  if (raw === "") return undefined;
  // Numbers go as numbers; anything else as typed, for the API to name.
  if (prop.type === "integer") return Number.isFinite(Number(raw)) ? Number(raw) : raw;
  return raw;
}

function submitPage(main, params) {
  const form = h("form", { novalidate: true, id: "submit-form", "aria-describedby": "submit-intro" });
  const summary = h("div", { class: "error-summary", role: "alert", hidden: true, tabindex: -1, id: "error-summary" });
  main.append(h("h1", {}, "Submit a job"),
    h("p", { class: "note", id: "submit-intro" }, "Fields left empty take their defaults. The API checks the request; what it refuses is shown beside the field it names."),
    summary, form);
  jobTypes().then((types) => {
    const chosen = types.find((t) => t.name === params.get("type")) || types[0];
    const typeSelect = h("select", { id: "f-type", name: "type" }, types.map((t) => h("option", { value: t.name, selected: t === chosen }, t.name)));
    const paramsBox = h("fieldset", { id: "params" });
    const drawParams = () => {
      const t = types.find((x) => x.name === typeSelect.value);
      const schema = t.params;
      if (!schema.properties) {
        // A job type that describes no fields: its params as JSON.
        paramsBox.replaceChildren(h("legend", {}, `Parameters of ${t.name}`),
          schemaField("params", { type: "json", description: schema.description || "The params object, as JSON." }, false));
        return;
      }
      const required = new Set(schema.required || []);
      // Fields a request must have come first: the required, then those of which one is.
      const first = [...required, ...(schema.oneOf || []).flatMap((o) => o.required || [])];
      const rank = (k) => (first.includes(k) ? first.indexOf(k) : first.length);
      const names = Object.keys(schema.properties || {}).sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : 1));
      paramsBox.replaceChildren(h("legend", {}, `Parameters of ${t.name}`),
        h("p", { class: "note" }, schema.description || ""),
        ...names.map((k) => schemaField(`params.${k}`, schema.properties[k], required.has(k))));
    };
    typeSelect.addEventListener("change", drawParams);
    drawParams();
    const policies = h("datalist", { id: "policies" }, ["static-proportional:150", "always-one", "backlog", "backlog:target=60", "backlog:max-cost=0.05"].map((p) => h("option", { value: p })));
    form.append(
      h("fieldset", {}, h("legend", {}, "Job type"),
        h("div", { class: "field", "data-field": "type" }, h("label", { for: "f-type" }, "Job type"), typeSelect,
          h("p", { class: "error", id: "f-type-error", hidden: true }))),
      paramsBox,
      h("fieldset", {}, h("legend", {}, "Options"),
        schemaField("policy", { type: "string", description: "Scaling policy: always-one, static-proportional:M, backlog[:target=S,max-cost=USD]. Not part of the job's identity.", default: "static-proportional:150" }, false),
        schemaField("min_coverage", { type: "string", description: "Least fraction of partitions that must be reduced for success, 0 to 1.", default: "1" }, false),
        policies),
      h("button", { type: "submit", id: "submit" }, "Submit job"),
    );
    form.querySelector("#f-policy").setAttribute("list", "policies");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors(form, summary);
      const t = types.find((x) => x.name === typeSelect.value);
      const body = { type: t.name, params: {} };
      for (const [k, prop] of Object.entries(t.params.properties || {})) {
        const value = fieldValue(form.elements[`params.${k}`], prop);
        if (value !== undefined) body.params[k] = value;
      }
      if (!t.params.properties) {
        const raw = form.elements.params.value.trim();
        try {
          body.params = raw ? JSON.parse(raw) : {};
        } catch (err) {
          // Sent as typed: the API names the field.
          body.params = raw;
        }
      }
      const policy = form.elements.policy.value.trim();
      if (policy) body.policy = policy;
      const coverage = form.elements.min_coverage.value.trim();
      if (coverage) body.min_coverage = Number.isFinite(Number(coverage)) ? Number(coverage) : coverage;
      const button = form.querySelector("#submit");
      button.disabled = true;
      try {
        const r = await api("POST", "/jobs", body);
        if (r.ok && r.data.job_id) {
          announce(r.status === 200 ? "Served from the cache" : "Job submitted");
          location.hash = `#/jobs/${r.data.job_id}`;
          return;
        }
        showError(form, summary, r);
      } catch (err) {
        showError(form, summary, { status: 0, data: { error: { code: "network", message: String(err) } } });
      } finally {
        button.disabled = false;
      }
    });
  }).catch((e) => main.append(h("p", { class: "form-error", role: "alert" }, String(e))));
  return null;
}

function clearErrors(form, summary) {
  summary.hidden = true;
  summary.replaceChildren();
  for (const el of form.querySelectorAll(".field .error")) { el.hidden = true; el.textContent = ""; }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Shows the API's error beside the field it names (params.keywords[2] → keywords), and
 * in a summary at the top that links to it. */
function showError(form, summary, r) {
  const e = (r.data && r.data.error) || {};
  const field = (e.field || "").replace(/\[\d+\]$/, "");
  const box = field && form.querySelector(`.field[data-field="${CSS.escape(field)}"]`);
  summary.hidden = false;
  if (box) {
    const error = box.querySelector(".error");
    const input = box.querySelector("input, select, textarea");
    error.textContent = `${e.message} (${e.field})`;
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    summary.replaceChildren(h("p", {}, "The API refused the request: ",
      h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); input.focus(); } }, `${e.field}: ${e.message}`)));
    input.focus();
  } else {
    summary.replaceChildren(h("p", { class: "form-error" }, "The API refused the request: " + errorText(r)));
    summary.focus();
  }
}

// ---- workload ---------------------------------------------------------------------------

function workloadPage(main) {
  const timers = [];
  let polling = null;
  const form = h("form", { novalidate: true, id: "workload-form" });
  const rowsBody = h("tbody");
  const fig = chart({
    title: "Job time and billed time of each request",
    xLabel: "request offset, s",
    yLabel: "seconds",
    summary: (series) => series.map((s) => `${s.label}: mean ${(s.values.reduce((a, b) => a + (b || 0), 0) / Math.max(1, s.values.length)).toFixed(3)} s`).join("; ") + ".",
  });
  const state = h("p", { role: "status", id: "workload-state" });
  const field = (id, label, input, hint) => h("div", { class: "field", "data-field": id },
    h("label", { for: id }, label), input, h("p", { class: "hint", id: `${id}-hint` }, hint), h("p", { class: "error", id: `${id}-error`, hidden: true }));
  form.append(
    field("w-request", "Request (JSON, as POST /jobs takes it)",
      h("textarea", { id: "w-request", rows: 4, "aria-describedby": "w-request-hint w-request-error" },
        JSON.stringify({ type: "wordcount", params: { messages: 2000 }, policy: "static-proportional:150" })),
      "The paper's experiments: one request sent N times at chosen offsets."),
    field("w-count", "Number of requests", h("input", { type: "number", id: "w-count", min: 1, max: 200, value: 5, "aria-describedby": "w-count-hint w-count-error" }), "1 to 200."),
    field("w-offsets", "Offsets, seconds", h("input", { type: "text", id: "w-offsets", value: "0.5", "aria-describedby": "w-offsets-hint w-offsets-error" }),
      "One number: the gap between requests (request i at i × gap). Or a comma-separated offset for each request."),
    field("w-vary", "Make the requests distinct: add the request's index to this integer param",
      h("input", { type: "text", id: "w-vary", value: "messages", "aria-describedby": "w-vary-hint w-vary-error" }),
      "Leave empty to send identical requests: they are one job, answered from the cache once done."),
    h("button", { type: "submit", id: "w-run" }, "Schedule"),
  );
  main.append(h("h1", {}, "Workload"),
    h("p", { class: "note" }, "Schedule requests at chosen offsets from this browser, then compare each job's time with the Lambda time it was billed."),
    form, state,
    h("table", { id: "workload" }, h("caption", {}, "The requests, as they were sent and as their jobs ended."),
      h("thead", {}, h("tr", {}, ["#", "Offset", "HTTP", "Response", "Job", "Status", "Job time", "Billed time"].map((c, i) => h("th", { scope: "col", class: i === 0 || i > 1 && i !== 4 && i !== 5 ? "num" : null }, c)))),
      rowsBody),
    fig.element);
  const fail = (id, message) => {
    const box = form.querySelector(`.field[data-field="${id}"]`);
    box.querySelector(".error").textContent = message;
    box.querySelector(".error").hidden = false;
    const input = box.querySelector("input, textarea");
    input.setAttribute("aria-invalid", "true");
    input.focus();
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll(".error")) el.hidden = true;
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    let request;
    try {
      request = JSON.parse(form.querySelector("#w-request").value);
      if (!request || typeof request !== "object" || Array.isArray(request)) throw new Error("must be a JSON object");
    } catch (err) {
      return fail("w-request", `Not a JSON object: ${err.message}`);
    }
    const n = Number(form.querySelector("#w-count").value);
    if (!Number.isInteger(n) || n < 1 || n > 200) return fail("w-count", "Must be a whole number from 1 to 200.");
    const parts = form.querySelector("#w-offsets").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    if (!parts.length || parts.some((x) => !Number.isFinite(x) || x < 0)) return fail("w-offsets", "Must be numbers of seconds, 0 or more.");
    if (parts.length > 1 && parts.length !== n) return fail("w-offsets", `Give one gap, or ${n} offsets (got ${parts.length}).`);
    const offsets = parts.length === 1 ? Array.from({ length: n }, (_, i) => i * parts[0]) : parts;
    const vary = form.querySelector("#w-vary").value.trim();
    const base = vary ? (request.params || {})[vary] : undefined;
    if (vary && !Number.isInteger(base)) return fail("w-vary", `The request has no integer params.${vary} to add to.`);
    run(request, offsets, vary, base);
  });
  const run = (request, offsets, vary, base) => {
    form.querySelector("#w-run").disabled = true;
    const rows = offsets.map((offset, i) => ({ i, offset, cells: Array.from({ length: 8 }, () => h("td")) }));
    rowsBody.replaceChildren(...rows.map((r) => h("tr", {}, r.cells)));
    rows.forEach((r) => {
      r.cells[0].className = r.cells[1].className = r.cells[2].className = r.cells[3].className = r.cells[6].className = r.cells[7].className = "num";
      r.cells[0].textContent = r.i + 1;
      r.cells[1].textContent = r.offset.toFixed(2) + " s";
      r.cells[5].textContent = "scheduled";
    });
    state.textContent = `Scheduled ${offsets.length} requests.`;
    const t0 = performance.now();
    for (const r of rows) {
      timers.push(setTimeout(async () => {
        const body = JSON.parse(JSON.stringify(request));
        if (vary) body.params[vary] = base + r.i;
        const sent = performance.now();
        r.sentS = (sent - t0) / 1000;
        const resp = await api("POST", "/jobs", body);
        r.cells[2].textContent = resp.status;
        r.cells[3].textContent = ((performance.now() - sent) / 1000).toFixed(3) + " s";
        if (resp.data && resp.data.job_id) {
          r.id = resp.data.job_id;
          r.cells[4].replaceChildren(h("a", { href: `#/jobs/${r.id}`, class: "mono" }, fmt.short(r.id)));
          r.cells[5].replaceChildren(statusBadge(resp.data.status));
        } else {
          r.done = true;
          r.cells[5].textContent = errorText(resp);
          if (r.i === 0) fail("w-request", errorText(resp));
        }
      }, r.offset * 1000));
    }
    polling = poller(async () => {
      for (const r of rows.filter((x) => x.id && !x.done)) {
        const v = await api("GET", `/jobs/${r.id}`);
        if (!v.ok) continue;
        r.cells[5].replaceChildren(statusBadge(v.data.status));
        if (TERMINAL.includes(v.data.status)) {
          r.done = true;
          r.jobS = v.data.timings.run_ms === null ? null : v.data.timings.run_ms / 1000;
          r.billedS = v.data.cost ? v.data.cost.billed_s : v.data.stages.reduce((a, s) => a + s.billed_ms, 0) / 1000;
          r.cells[6].textContent = r.jobS === null ? "–" : r.jobS.toFixed(3) + " s";
          r.cells[7].textContent = r.billedS.toFixed(3) + " s";
        }
      }
      const finished = rows.filter((r) => r.done);
      state.textContent = `${finished.length} of ${rows.length} requests finished.`;
      const plotted = rows.filter((r) => r.done && r.jobS !== undefined);
      fig.update(plotted.map((r) => r.offset), [
        { label: "job time, s", points: true, values: plotted.map((r) => r.jobS) },
        { label: "billed time, s", points: true, values: plotted.map((r) => r.billedS) },
      ]);
      if (finished.length === rows.length) {
        form.querySelector("#w-run").disabled = false;
        announce("Every request of the workload has finished");
        document.body.dataset.workloadDone = "true";
        return false;
      }
      return true;
    }, POLL_MS);
  };
  return { stop: () => { timers.forEach(clearTimeout); if (polling) polling.stop(); } };
}

// ---- start ------------------------------------------------------------------------------

window.addEventListener("hashchange", () => {
  route();
  document.getElementById("main").focus({ preventScroll: true });
});
document.getElementById("skip").addEventListener("click", (e) => {
  e.preventDefault();
  document.getElementById("main").focus();
});
api("GET", "/health").then((r) => {
  if (r.ok) document.getElementById("server").textContent = `sluice ${r.data.version}`;
});
route();
