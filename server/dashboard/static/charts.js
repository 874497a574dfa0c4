// Charts: uPlot (vendored, global `uPlot`) for per-round series, a canvas heatmap for
// coverage, and plain HTML bars for the rank histogram. Each chart records how many points
// it drew in data-points, and uPlot instances are kept on window.__charts for inspection.
import { fmtBytes, h } from "./common.js";

window.__charts = window.__charts || {};
// Rounds are whole numbers: no tick at round 1.5.
const ROUND_AXIS = { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] };
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"];

function width(el) {
  return Math.max(280, (el.clientWidth || el.parentElement.clientWidth || 600) - 8);
}

function finiteCount(values) {
  return values.filter((v) => v !== null && v !== undefined && Number.isFinite(v)).length;
}

/** Mean per round with its min–max spread as a band; ``series`` = [{label, mean, min, max}]. */
export function spreadChart(el, name, { rounds, series, yLabel, format }) {
  const data = [rounds];
  const specs = [{}];
  const bands = [];
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const base = data.length;
    data.push(s.mean, s.min, s.max);
    specs.push(
      { label: `${s.label} (mean)`, stroke: color, width: 2, points: { size: 5 }, value: (u, v) => format(v) },
      { label: `${s.label} min`, stroke: `${color}55`, width: 1, dash: [4, 4], points: { show: false }, value: (u, v) => format(v) },
      { label: `${s.label} max`, stroke: `${color}55`, width: 1, dash: [4, 4], points: { show: false }, value: (u, v) => format(v) },
    );
    bands.push({ series: [base + 2, base + 1], fill: `${color}22` });
  });
  return draw(el, name, data, {
    series: specs,
    bands,
    axes: [ROUND_AXIS, { label: yLabel, size: 60 }],
  }, finiteCount(series.flatMap((s) => s.mean)));
}

/** Bytes up and down per round. */
export function bytesChart(el, name, { rounds, up, down }) {
  const value = (u, v) => (v === null ? "–" : fmtBytes(v));
  return draw(el, name, [rounds, up, down], {
    series: [
      {},
      { label: "up (accepted updates)", stroke: COLORS[0], width: 2, value },
      { label: "down (estimate)", stroke: COLORS[2], width: 2, value },
    ],
    axes: [ROUND_AXIS, { size: 70, values: (u, ticks) => ticks.map(fmtBytes) }],
  }, finiteCount(up) + finiteCount(down));
}

function draw(el, name, data, options, points) {
  el.dataset.points = String(points);
  const existing = window.__charts[name];
  if (existing && existing.root.isConnected && existing.series.length === options.series.length) {
    existing.setData(data);
    return existing;
  }
  if (existing) existing.destroy();
  el.replaceChildren();
  const chart = new uPlot({ width: width(el), height: 220, scales: { x: { time: false } }, ...options }, data, el);
  window.__charts[name] = chart;
  return chart;
}

/** Per-slice coverage: rows = rank slices (1 at top), columns = rounds, darker = more data. */
export function coverageHeatmap(el, rows) {
  const withCoverage = rows.filter((r) => Array.isArray(r.coverage) && r.coverage.length);
  el.dataset.points = String(withCoverage.length);
  if (!withCoverage.length) return false;
  const slices = Math.max(...withCoverage.map((r) => r.coverage.length));
  const peak = Math.max(1, ...withCoverage.flatMap((r) => r.coverage));
  const cell = Math.max(2, Math.min(24, Math.floor(width(el) / withCoverage.length)));
  const rowHeight = Math.max(4, Math.min(18, Math.floor(200 / slices)));
  const canvas = h("canvas", { width: cell * withCoverage.length, height: rowHeight * slices, "data-testid": "coverage-canvas" });
  const ctx = canvas.getContext("2d");
  withCoverage.forEach((r, x) => {
    for (let s = 0; s < slices; s++) {
      const v = r.coverage[s] || 0;
      ctx.fillStyle = v ? `rgba(37, 99, 235, ${0.12 + 0.88 * (v / peak)})` : "#f3f4f6";
      ctx.fillRect(x * cell, s * rowHeight, cell - (cell > 3 ? 1 : 0), rowHeight - 1);
    }
  });
  const tip = h("div.muted.tip", {}, "Hover a cell: round, rank slice and the samples that trained it.");
  canvas.addEventListener("mousemove", (e) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.floor((e.clientX - box.left) / cell);
    const s = Math.floor((e.clientY - box.top) / rowHeight);
    const r = withCoverage[x];
    if (r && s < slices) tip.textContent = `round ${r.number}, slice ${s + 1}: ${(r.coverage[s] || 0).toLocaleString()} samples`;
  });
  el.replaceChildren(
    h("div.heatmap", {}, h("div.axis-y.muted", {}, `slice 1 … ${slices}`), canvas),
    h("div.muted.small", {}, `rounds ${withCoverage[0].number}–${withCoverage.at(-1).number}; peak ${peak.toLocaleString()} samples`),
    tip,
  );
  return true;
}

/** The rank distribution as horizontal bars: [{rank, clients}]. */
export function rankHistogram(el, bins) {
  const peak = Math.max(1, ...bins.map((b) => b.clients));
  el.dataset.points = String(bins.length);
  el.replaceChildren(...bins.map((b) =>
    h("div.hbar", {}, h("span.hbar-label", {}, b.rank === null ? "unranked" : `r=${b.rank}`),
      h("span.hbar-track", {}, h("span.hbar-fill", { style: `width:${(100 * b.clients) / peak}%` })),
      h("span.hbar-value", {}, b.clients.toLocaleString()))));
}
