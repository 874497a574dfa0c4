// Job detail: progress, round timeline, metric charts, ranks and AutoRank, coverage, bytes,
// and the join link with its QR code.
import { bytesChart, coverageHeatmap, rankHistogram, spreadChart } from "../charts.js";
import { inviteSection } from "../invite.js";
import {
  api, apiAll, badge, crumbs, debounce, empty, failure, fmtAgo, fmtBytes, fmtNum, fmtSeconds,
  fmtTime, h, liveJob, loading, pager, section, setContent, shortId, table,
} from "../common.js";

const EVAL_METRICS = ["val_accuracy", "accuracy", "eval_accuracy", "val_loss", "eval_loss"];
const TIMELINE_PAGE = 20;
const AUTORANK_PAGE = 20;
const FINAL = ["closed", "failed"];

export async function render(root, { jobId }) {
  const els = {
    header: h("div", {}, loading()),
    states: h("div.cards"),
    strip: h("div.strip", { "data-testid": "timeline-strip" }),
    timeline: h("div", { "data-testid": "timeline" }),
    evalChart: h("div.chart", { "data-testid": "eval-chart" }),
    lossChart: h("div.chart", { "data-testid": "loss-chart" }),
    bytesChart: h("div.chart", { "data-testid": "bytes-chart" }),
    histogram: h("div", { "data-testid": "rank-histogram" }),
    autorank: h("div", { "data-testid": "autorank" }),
    coverage: h("div", { "data-testid": "coverage" }),
  };
  setContent(root,
    els.header, els.states,
    h("details.card", { "data-testid": "invite-details" }, h("summary", {}, h("strong", {}, "Invite devices: the join link and its QR code")), inviteSection(jobId)),
    h("section", {}, h("h2", {}, "Rounds"), els.strip, els.timeline),
    h("div.two", {},
      h("section", {}, h("h2", { id: "eval-title" }, "Evaluation metric"), els.evalChart),
      h("section", {}, h("h2", {}, "Training loss"), els.lossChart)),
    h("div.two", {},
      h("section", {}, h("h2", {}, "Bytes per round"), els.bytesChart),
      h("section", {}, h("h2", {}, "Coverage of the global adapter's rank slices"),
        h("p.muted.small", {}, "Samples that trained each slice per round: the upper slices only see high-rank clients, which is what RBLA weighs for."),
        els.coverage)),
    h("div.two", {},
      h("section", {}, h("h2", {}, "Rank distribution"), els.histogram),
      h("section", {}, h("h2", {}, "AutoRank"), els.autorank)),
  );

  const state = { job: null, metrics: [], timelineOffset: 0, autorankOffset: 0, summary: null };

  async function loadJob() {
    state.job = await api(`/jobs/${jobId}`);
    crumbs({ text: "Jobs", href: "/dashboard/jobs" }, { text: state.job.name });
    document.title = `${state.job.name} · FLaaS dashboard`;
    renderHeader();
  }

  function renderHeader() {
    const j = state.job;
    setContent(els.header,
      h("div.toolbar", {},
        h("h1", {}, j.name, " ", badge(j.status)),
        h("span.counter", {}, "Round ", h("strong", { id: "round-counter", "data-testid": "round-counter" }, `${j.current_round} / ${j.total_rounds}`))),
      j.failure_reason ? h("div.state.error", {}, j.failure_reason) : null,
      h("dl.facts", {},
        fact("Strategy", j.strategy),
        fact("Ranks", `${j.rank_policy}, r ${j.r_min}–${j.r_max}`),
        fact("Clients", h("a", { href: `/dashboard/jobs/${jobId}/clients` }, `${j.enrolled_clients.toLocaleString()} →`)),
        fact("Created", fmtTime(j.created_at)),
        fact("Started", fmtTime(j.started_at)),
        fact("Last activity", fmtAgo(j.updated_at)),
        fact("Job id", h("code", {}, j.id))));
  }

  async function loadSummary() {
    const s = (state.summary = await api(`/jobs/${jobId}/summary`));
    setContent(els.states, Object.entries(s.client_states).map(([name, n]) =>
      h(`div.card.stat.c-${name}`, {}, h("div.big", {}, n.toLocaleString()), h("div.muted", {}, `${name} clients`))));
    if (!s.rank_histogram.length) setContent(els.histogram, empty("No clients enrolled yet."));
    else rankHistogram(els.histogram, s.rank_histogram);
  }

  async function loadMetrics() {
    let from = state.metrics.findIndex((r) => !FINAL.includes(r.status));
    if (from < 0) from = state.metrics.length;
    const fresh = await apiAll(`/jobs/${jobId}/metrics`, { offset: from });
    state.metrics.splice(from, state.metrics.length - from, ...fresh);
    renderRounds();
    renderCharts();
  }

  function renderRounds() {
    const rows = state.metrics;
    if (!rows.length) {
      setContent(els.strip);
      setContent(els.timeline, empty("No rounds yet.", "Round 1 opens once enrolment closes."));
      return;
    }
    setContent(els.strip, rows.map((r) => h("a", {
      class: `tick s-${r.status}`, href: `/dashboard/jobs/${jobId}/rounds/${r.number}`,
      title: `round ${r.number}: ${r.status}; open ${fmtSeconds(r.open_seconds)}, aggregating ${fmtSeconds(r.aggregating_seconds)}`,
    })));
    const newestFirst = [...rows].reverse();
    const page = { total: rows.length, limit: TIMELINE_PAGE, offset: state.timelineOffset };
    setContent(els.timeline,
      table([
        { title: "Round", cell: (r) => h("a", { href: `/dashboard/jobs/${jobId}/rounds/${r.number}` }, `#${r.number}`) },
        { title: "Status", cell: (r) => badge(r.status) },
        { title: "Accepted / sampled", num: true, cell: (r) => `${r.accepted} / ${r.participants}` },
        { title: "Stragglers", num: true, cell: (r) => r.stragglers },
        { title: "Rejected", num: true, cell: (r) => r.rejected_uploads },
        { title: "Open", num: true, cell: (r) => fmtSeconds(r.open_seconds) },
        { title: "Aggregating", num: true, cell: (r) => fmtSeconds(r.aggregating_seconds) },
        { title: "Up / down", num: true, cell: (r) => `${fmtBytes(r.bytes_up)} / ${fmtBytes(r.bytes_down_estimate)}` },
        { title: "Global adapter", cell: (r) => r.global_adapter_bytes === null ? "–"
          : h("a", { href: `/api/v1/jobs/${jobId}/adapter?round=${r.number}`, download: `${shortId(jobId)}-round-${r.number}.safetensors` }, `download (${fmtBytes(r.global_adapter_bytes)})`) },
      ], newestFirst.slice(state.timelineOffset, state.timelineOffset + TIMELINE_PAGE), { testid: "rounds-table" }),
      pager(page, (offset) => { state.timelineOffset = offset; renderRounds(); }));
  }

  function renderCharts() {
    const trained = state.metrics.filter((r) => r.number > 0);
    if (!trained.length) {
      for (const el of [els.evalChart, els.lossChart, els.bytesChart, els.coverage]) setContent(el, empty("No rounds trained yet."));
      return;
    }
    const names = new Set(trained.flatMap((r) => Object.keys(r.metrics)));
    const evalName = EVAL_METRICS.find((m) => names.has(m)) || [...names].find((m) => m !== "train_loss");
    const rounds = trained.map((r) => r.number);
    const pick = (name, key) => trained.map((r) => r.metrics[name]?.[key] ?? null);
    const line = (name) => ({ label: name, mean: pick(name, "mean"), min: pick(name, "min"), max: pick(name, "max") });
    document.getElementById("eval-title").textContent = evalName ? `Evaluation: ${evalName}` : "Evaluation metric";
    if (evalName) spreadChart(els.evalChart, "eval", { rounds, series: [line(evalName)], yLabel: evalName, format: (v) => fmtNum(v, 4) });
    else setContent(els.evalChart, empty("No evaluation metric reported.", "Clients send metrics in the Flaas-Metrics header."));
    if (names.has("train_loss")) spreadChart(els.lossChart, "loss", { rounds, series: [line("train_loss")], yLabel: "train_loss", format: (v) => fmtNum(v, 4) });
    else setContent(els.lossChart, empty("No training loss reported."));
    bytesChart(els.bytesChart, "bytes", { rounds, up: trained.map((r) => r.bytes_up), down: trained.map((r) => r.bytes_down_estimate) });
    if (!coverageHeatmap(els.coverage, trained)) setContent(els.coverage, empty("No round aggregated yet."));
  }

  const budgetNote = (b) => {
    if (!b) return "";
    const what = b.kind === "mean_rank" ? `mean rank ≤ ${fmtNum(b.limit)}` : `${fmtNum(b.limit)} bytes up per round`;
    const how = { met: "met", below_minimum: "unmet: every client at r_min", above_maximum: "unspent: every client at r_max" }[b.status] || b.status;
    return ` Budget ${what}: ${fmtNum(b.spent)} (${how}).`;
  };

  const loadAutorank = () => section(els.autorank, async () => {
    const page = await api(`/jobs/${jobId}/clients/activity`, { limit: AUTORANK_PAGE, offset: state.autorankOffset });
    const s = state.summary || (await api(`/jobs/${jobId}/summary`));
    if (!page.items.length) return empty("No clients enrolled yet.");
    const criteria = s.criteria.length ? s.criteria : Object.keys(page.items[0].stats);
    const weights = s.critic_weights;
    return [
      h("p.muted.small", {}, s.autorank_policy === "autorank"
        ? `CRITIC weighs each complexity metric; TOPSIS closeness (against the ${s.autorank_reference === "bounds" ? "metrics' bounds" : "cohort's best and worst client"}) maps to the rank.${budgetNote(s.rank_budget)}`
        : `Rank policy: ${s.autorank_policy || state.job?.rank_policy} (no AutoRank scoring).`),
      table([
        { title: "Client", cell: (c) => c.name || shortId(c.id) },
        ...criteria.map((name, i) => ({
          title: weights ? h("span", {}, name, h("br"), h("small.muted", {}, `w=${fmtNum(weights[i], 3)}`)) : name,
          num: true, cell: (c) => fmtNum(c.stats[name]),
        })),
        { title: "Closeness", num: true, cell: (c) => fmtNum(c.closeness, 3) },
        { title: "Rank", num: true, cell: (c) => c.rank ?? "–" },
      ], page.items, { testid: "autorank-table" }),
      pager(page, (offset) => { state.autorankOffset = offset; loadAutorank(); }),
    ];
  });

  try {
    await loadJob();
  } catch (error) {
    setContent(root, failure(error, () => location.reload()));
    return;
  }
  await Promise.all([
    loadSummary().catch((e) => setContent(els.states, failure(e))),
    loadMetrics().catch((e) => setContent(els.timeline, failure(e, loadMetrics))),
  ]);
  await loadAutorank();

  const refresh = debounce(async () => {
    await Promise.all([loadJob(), loadSummary(), loadMetrics()]).catch(console.error);
  }, 300);
  liveJob(jobId, (event) => {
    const counter = document.getElementById("round-counter");
    if (counter) counter.textContent = `${event.current_round} / ${event.total_rounds}`;
    refresh();
  });
}

function fact(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}
