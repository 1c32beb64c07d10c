// RTIM dashboard: reads GET /v1/reports/* with the key kept in sessionStorage and
// draws plain SVG charts. No framework, no build step, no network beyond this server.
// Every drawn mark carries its value in data-* attributes (and a <title> tooltip).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 10000;
  const KEY = "rtimKey";
  const PALETTE = ["#2f6fde", "#e0692a", "#2a9d5c", "#b8369a", "#c9a400", "#17a2b8",
                   "#8c564b", "#d6336c", "#5c6bc0", "#7f7f7f"];
  const colors = new Map();
  let timer = null;
  let updates = 0;

  const $ = (id) => document.getElementById(id);
  function color(key) {
    if (!colors.has(key)) colors.set(key, PALETTE[colors.size % PALETTE.length]);
    return colors.get(key);
  }
  function el(name, attrs, parent, ns) {
    const node = ns === false ? document.createElement(name) : document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }
  function html(name, text, parent, cls) {
    const node = document.createElement(name);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    if (parent) parent.appendChild(node);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function fmt(v, d = 3) {
    if (v === null || v === undefined) return "–";
    const s = Number(v).toFixed(d);
    return d > 0 ? s.replace(/\.?0+$/, "") : s;
  }
  // A round axis maximum: 1, 2 or 5 times a power of ten, at least ``v``.
  function niceMax(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 4, 5, 10].map((m) => m * p).find((m) => m >= v);
  }
  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");
  const hour = (ts) => { const d = new Date(ts * 1000); return `${String(d.getHours()).padStart(2, "0")}:00`; };
  const offerName = (o) => (o === null ? "(no message)" : o);

  function empty(container, text) {
    clear(container);
    html("div", text, container, "empty");
  }

  function legend(container, keys) {
    const box = html("div", null, container, "legend");
    for (const k of keys) {
      const item = html("span", null, box);
      const sw = html("i", null, item);
      sw.style.background = color(k);
      item.appendChild(document.createTextNode(k));
    }
  }

  // series: [{key, points: [[ts, value, n?], ...]}]; x spans [since, until].
  function lineChart(container, series, since, until, opts) {
    clear(container);
    const pts = series.flatMap((s) => s.points);
    if (!pts.length) return empty(container, opts.empty || "no data in this range");
    const W = 640, H = 170, L = 44, R = 8, T = 8, B = 22;
    const yMax = opts.yMax || niceMax(Math.max(1, ...pts.map((p) => p[1])) * 1.05);
    const x = (ts) => L + ((ts - since) / Math.max(1, until - since)) * (W - L - R);
    const y = (v) => T + (1 - v / yMax) * (H - T - B);
    legend(container, series.map((s) => s.key));
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, "data-chart": opts.name }, container);
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
      el("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = opts.yFormat(v);
    }
    const step = Math.max(3600, Math.ceil((until - since) / 3600 / 8) * 3600);
    for (let t = Math.ceil(since / step) * step; t <= until; t += step) {
      el("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, svg).textContent = hour(t);
    }
    el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }, svg);
    el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, svg);
    for (const s of series) {
      const c = color(s.key);
      const sorted = s.points.slice().sort((a, b) => a[0] - b[0]);
      el("polyline", { points: sorted.map((p) => `${x(p[0] + 1800)},${y(p[1])}`).join(" "),
                       class: "line", stroke: c, "data-key": s.key }, svg);
      for (const p of sorted) {
        const dot = el("circle", { cx: x(p[0] + 1800), cy: y(p[1]), r: 2.5, fill: c,
                                   "data-key": s.key, "data-ts": p[0], "data-value": p[1] }, svg);
        el("title", {}, dot).textContent = `${s.key} ${hour(p[0])}: ${opts.yFormat(p[1])}`;
      }
    }
  }

  // rows: [{key, value, label}], horizontal bars from 0 to max (or 1).
  function barChart(container, rows, opts) {
    clear(container);
    if (!rows.length) return empty(container, opts.empty || "no data");
    const W = 640, rowH = 18, L = 170, R = 60, H = rows.length * rowH + 8;
    const max = opts.max || Math.max(1, ...rows.map((r) => r.value));
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, "data-chart": opts.name }, container);
    rows.forEach((r, i) => {
      const yy = 4 + i * rowH;
      el("text", { x: L - 6, y: yy + 12, "text-anchor": "end" }, svg).textContent = r.key;
      const bar = el("rect", { x: L, y: yy + 2, height: rowH - 6,
                               width: Math.max(1, ((W - L - R) * r.value) / max),
                               fill: r.color || color(r.key), "data-key": r.key,
                               "data-value": r.value }, svg);
      el("title", {}, bar).textContent = `${r.key}: ${r.label}`;
      el("text", { x: L + ((W - L - R) * r.value) / max + 4, y: yy + 12 }, svg).textContent = r.label;
    });
  }

  function renderVolumes(body) {
    const since = body.since, until = body.until;
    const byKey = new Map();
    for (const s of body.series) {
      const key = `${s.channel}/${offerName(s.offer_id)}`;
      if (!byKey.has(key)) byKey.set(key, { decisions: [], success: [] });
      byKey.get(key).decisions.push([s.ts, s.decisions]);
      if (s.success_rate !== null) byKey.get(key).success.push([s.ts, s.success_rate]);
    }
    const keys = [...byKey.keys()].sort();
    lineChart($("chart-decisions"), keys.map((k) => ({ key: k, points: byKey.get(k).decisions })),
              since, until, { name: "decisions", yFormat: (v) => fmt(v, 0) });
    lineChart($("chart-success"), keys.map((k) => ({ key: k, points: byKey.get(k).success })),
              since, until, { name: "success", yMax: 1, yFormat: pct });
    const tbody = clear($("table-volumes").tBodies[0]);
    for (const t of body.totals) {
      const tr = html("tr", null, tbody);
      tr.dataset.key = `${t.channel}/${offerName(t.offer_id)}`;
      for (const v of [t.channel, offerName(t.offer_id), t.decisions, t.impressions, t.positives,
                       pct(t.success_rate), fmt(t.value, 2), fmt(t.cost, 2)]) html("td", v, tr);
    }
    const select = $("channel");
    for (const ch of new Set(body.totals.map((t) => t.channel))) {
      if (![...select.options].some((o) => o.value === ch)) {
        const o = html("option", ch, select); o.value = ch;
      }
    }
  }

  // One chart per experiment: each arm's relative lift of success rate with its CI bar.
  function renderExperiments(body) {
    const box = clear($("experiment-charts"));
    if (!body.experiments.length) return empty(box, "no experiment has decisions in this range");
    for (const exp of body.experiments) {
      html("h2", `${exp.name} (control: ${exp.control})`, box);
      const rows = exp.arms.filter((a) => a.arm !== exp.control);
      const W = 640, rowH = 26, L = 200, R = 30, H = rows.length * rowH + 26;
      const lifts = rows.map((a) => a.lift && a.lift.success_rate).filter(Boolean);
      const span = Math.max(0.1, ...lifts.map((l) => Math.max(Math.abs(l.ci_low), Math.abs(l.ci_high)))) * 1.1;
      const x = (v) => L + ((v + span) / (2 * span)) * (W - L - R);
      const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, "data-chart": "lift",
                              "data-experiment": exp.name }, html("div", null, box, "chart"));
      el("line", { x1: x(0), x2: x(0), y1: 2, y2: H - 18, class: "zero" }, svg);
      for (const v of [-span, -span / 2, span / 2, span]) {
        el("text", { x: x(v), y: H - 4, "text-anchor": "middle" }, svg).textContent = pct(v);
      }
      rows.forEach((a, i) => {
        const yy = 6 + i * rowH + rowH / 2;
        el("text", { x: L - 6, y: yy + 3, "text-anchor": "end" }, svg).textContent =
          `${a.arm} (${a.policy}) ${pct(a.success_rate)} of ${a.decisions}`;
        const l = a.lift && a.lift.success_rate;
        if (!l) {
          el("text", { x: x(0) + 6, y: yy + 3, "data-arm": a.arm }, svg).textContent = "not enough data";
          return;
        }
        const c = l.significant ? (l.estimate > 0 ? "#2a9d5c" : "#d33") : "#889";
        const g = el("g", { "data-arm": a.arm, "data-estimate": l.estimate, "data-ci-low": l.ci_low,
                            "data-ci-high": l.ci_high, "data-significant": l.significant }, svg);
        el("line", { x1: x(l.ci_low), x2: x(l.ci_high), y1: yy, y2: yy, stroke: c, class: "ci" }, g);
        for (const v of [l.ci_low, l.ci_high]) {
          el("line", { x1: x(v), x2: x(v), y1: yy - 5, y2: yy + 5, stroke: c, class: "ci" }, g);
        }
        el("circle", { cx: x(l.estimate), cy: yy, r: 4, fill: c }, g);
        el("title", {}, g).textContent =
          `${a.arm}: lift ${pct(l.estimate)} [${pct(l.ci_low)}, ${pct(l.ci_high)}]` +
          (l.significant ? " significant" : " not significant");
      });
    }
  }

  function renderModels(body) {
    const models = body.models;
    barChart($("chart-maturity"), models.filter((m) => m.adaptive).map((m) => ({
      key: m.key, value: m.maturity, label: `${pct(m.maturity)} (${m.evidence} responses)` })),
      { name: "maturity", max: 1, empty: "no adaptive model in the catalogue" });
    const withAuc = models.filter((m) => m.auc_series.some((s) => s.auc !== null));
    lineChart($("chart-auc"), withAuc.map((m) => ({
      key: m.key, points: m.auc_series.filter((s) => s.auc !== null).map((s) => [s.ts, s.auc]) })),
      body.since, body.until, { name: "auc", yMax: 1, yFormat: (v) => fmt(v, 2),
                                empty: "no AUC yet (needs positive and negative outcomes)" });
  }

  function renderHealth(body) {
    const box = clear($("shards"));
    for (const s of body.shards) {
      const card = html("div", null, box, s.alive ? "shard" : "shard down");
      card.dataset.shard = s.name;
      card.dataset.alive = s.alive;
      html("b", `${s.name} ${s.alive ? (s.degraded ? "degraded" : "up") : "DOWN"}`, card);
      html("div", `${s.profiles} profiles`, card);
      html("div", `${s.decisions} decisions`, card);
      html("div", `${s.events_applied} events`, card);
    }
    const f = body.fallbacks;
    const series = [{ key: "fallbacks", points: f.series.map((p) => [p.ts, p.fallbacks]) },
                    { key: "all decisions", points: f.series.map((p) => [p.ts, p.decisions]) }];
    lineChart($("chart-fallbacks"), series, body.since, body.until,
              { name: "fallbacks", yFormat: (v) => fmt(v, 0) });
  }

  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params)) if (v) url.searchParams.set(k, v);
    const r = await fetch(url, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` } });
    const body = await r.json();
    if (!r.ok) throw new Error(`${r.status}: ${(body.error && body.error.message) || r.statusText}`);
    return body;
  }

  async function refresh() {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
    const status = $("status");
    if (!sessionStorage.getItem(KEY)) {
      status.textContent = "enter an API key with the reports:read scope";
      return;
    }
    const until = Math.floor(Date.now() / 1000);
    const range = { since: until - Number($("range").value), until };
    try {
      const [vol, exp, mod, hea] = await Promise.all([
        api("/v1/reports/volumes", { ...range, channel: $("channel").value }),
        api("/v1/reports/experiments", range),
        api("/v1/reports/models", range),
        api("/v1/reports/health", range),
      ]);
      renderVolumes(vol);
      renderExperiments(exp);
      renderModels(mod);
      renderHealth(hea);
      updates += 1;
      document.body.dataset.updates = String(updates);
      status.className = "";
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      status.className = "error";
      status.textContent = `could not load reports: ${err.message}`;
    }
  }

  window.RTIM = { refresh, renderVolumes, renderExperiments, renderModels, renderHealth };
  document.addEventListener("DOMContentLoaded", () => {
    $("keyform").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("key").value.trim();
      if (key) sessionStorage.setItem(KEY, key);
      $("key").value = "";
      refresh();
    });
    $("range").addEventListener("change", refresh);
    $("channel").addEventListener("change", refresh);
    refresh();
  });
})();
