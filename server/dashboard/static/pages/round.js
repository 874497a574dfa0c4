// Round detail: timings, participation, and every sampled client's update (paged, filterable).
import {
  api, badge, crumbs, debounce, empty, failure, fmtBytes, fmtSeconds, fmtTime, h, liveJob,
  pager, section, setContent, shortId, table,
} from "../common.js";

const LIMIT = 50;
const FILTERS = [["", "all"], ["accepted", "accepted"], ["pending", "waiting"], ["missed", "stragglers"]];

export async function render(root, { jobId, number }) {
  const state = { status: "", offset: 0 };
  const header = h("div");
  const cards = h("div.cards");
  const updates = h("div", { "data-testid": "updates" });
  const filter = h("select", { "aria-label": "Filter updates", onchange: (e) => { state.status = e.target.value; state.offset = 0; loadUpdates(); } },
    FILTERS.map(([value, label]) => h("option", { value }, label)));
  setContent(root, header, cards, h("section", {}, h("div.toolbar", {}, h("h2", {}, "Participants"), h("label", {}, "Show ", filter)), updates));

  async function loadRound() {
    const [job, metricsPage] = await Promise.all([
      api(`/jobs/${jobId}`),
      api(`/jobs/${jobId}/metrics`, { offset: number, limit: 1 }),
    ]);
    const r = metricsPage.items[0];
    if (!r || r.number !== number) throw new Error(`job ${job.name} has no round ${number}`);
    crumbs({ text: "Jobs", href: "/dashboard/jobs" }, { text: job.name, href: `/dashboard/jobs/${jobId}` }, { text: `Round ${number}` });
    document.title = `Round ${number} · ${job.name} · FLaaS dashboard`;
    setContent(header,
      h("div.toolbar", {}, h("h1", {}, `Round ${number} `, badge(r.status)),
        r.global_adapter_bytes !== null
          ? h("a.button", { href: `/api/v1/jobs/${jobId}/adapter?round=${number}` }, `Download global adapter (${fmtBytes(r.global_adapter_bytes)})`)
          : null),
      h("dl.facts", {},
        fact("Opened", fmtTime(r.opened_at)),
        fact("Open for", fmtSeconds(r.open_seconds)),
        fact("Aggregating for", fmtSeconds(r.aggregating_seconds)),
        fact("Closed", fmtTime(r.closed_at)),
        fact("Quorum", `${r.quorum} of ${r.sampled} sampled`),
        fact("Bytes up / down", `${fmtBytes(r.bytes_up)} / ${fmtBytes(r.bytes_down_estimate)} (est.)`)));
    setContent(cards, [
      ["accepted", r.accepted], ["pending", r.pending], ["stragglers", r.stragglers],
      ["rejected uploads", r.rejected_uploads],
    ].map(([label, n]) => h("div.card.stat", {}, h("div.big", { "data-testid": `round-${label.replace(" ", "-")}` }, n.toLocaleString()), h("div.muted", {}, label))));
    return r;
  }

  const loadUpdates = (quiet = false) => section(updates, async () => {
    const page = await api(`/jobs/${jobId}/rounds/${number}/updates`, { status: state.status, limit: LIMIT, offset: state.offset });
    if (!page.items.length) {
      return empty(number === 0 ? "Round 0 holds the initial adapter; nobody trains in it." : "No updates match.");
    }
    return [
      table([
        { title: "Client", cell: (u) => h("code", { title: u.client_id }, shortId(u.client_id)) },
        { title: "Status", cell: (u) => badge(u.status === "missed" ? "straggler" : u.status) },
        { title: "Rank", num: true, cell: (u) => u.rank },
        { title: "Samples", num: true, cell: (u) => u.n_samples?.toLocaleString() ?? "–" },
        { title: "Size", num: true, cell: (u) => fmtBytes(u.size_bytes) },
        { title: "Upload", num: true, cell: (u) => fmtSeconds(u.upload_seconds) },
        { title: "Accepted at", cell: (u) => fmtTime(u.accepted_at) },
        { title: "Metrics", cell: (u) => u.metrics ? Object.entries(u.metrics).map(([k, v]) => h("span.kv", {}, `${k}=${typeof v === "number" ? v.toFixed(4) : v}`)) : "–" },
        { title: "Rejected uploads", cell: (u) => u.rejections ? h("span.reject", { title: u.last_rejection || "" }, `${u.rejections}× — ${u.last_rejection || ""}`) : "–" },
      ], page.items, { testid: "updates-table" }),
      pager(page, (offset) => { state.offset = offset; loadUpdates(); }),
    ];
  }, { quiet });

  let round;
  try {
    round = await loadRound();
  } catch (error) {
    setContent(root, failure(error, () => location.reload()));
    return;
  }
  await loadUpdates();
  if (!["closed", "failed"].includes(round.status)) {
    const refresh = debounce(async () => {
      round = await loadRound().catch(() => round);
      loadUpdates(true);
    });
    liveJob(jobId, refresh);
  }
}

function fact(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}
