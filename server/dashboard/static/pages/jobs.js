// Jobs: every job with status, strategy, rank policy, progress and activity; filter, pages.
import { api, badge, crumbs, empty, fmtAgo, fmtTime, h, pager, section, setContent, table } from "../common.js";

const STATUSES = ["", "enrolling", "running", "finished", "cancelled", "failed"];
const LIMIT = 25;
const REFRESH_MS = 5000;

export async function render(root) {
  crumbs({ text: "Jobs" });
  const params = new URLSearchParams(location.search);
  const state = { status: params.get("status") || "", offset: Number(params.get("offset")) || 0 };
  const body = h("div", { "data-testid": "jobs" });
  const filter = h(
    "select",
    { id: "status-filter", "aria-label": "Filter by status", onchange: (e) => go({ status: e.target.value, offset: 0 }) },
    STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s || "all statuses")),
  );
  setContent(root, h("div.toolbar", {}, h("h1", {}, "Jobs"), h("label", {}, "Status ", filter)), body);

  function go(next) {
    Object.assign(state, next);
    const query = new URLSearchParams(Object.entries(state).filter(([, v]) => v));
    history.replaceState(null, "", `${location.pathname}${query.size ? `?${query}` : ""}`);
    load();
  }

  const load = (quiet = false) => section(body, async () => {
    const page = await api("/jobs", { status: state.status, limit: LIMIT, offset: state.offset });
    if (!page.items.length) {
      return empty(
        state.status ? `No ${state.status} jobs.` : "No jobs yet.",
        state.status ? "Choose another status." : "Create one with `flaas job create job.yaml` or POST /api/v1/jobs.",
      );
    }
    return [
      table([
        { title: "Job", cell: (j) => h("a", { href: `/dashboard/jobs/${j.id}` }, j.name) },
        { title: "Status", cell: (j) => badge(j.status) },
        { title: "Strategy", cell: (j) => j.strategy },
        { title: "Ranks", cell: (j) => `${j.rank_policy} ${j.r_min}–${j.r_max}` },
        { title: "Round", num: true, cell: (j) => `${j.current_round} / ${j.total_rounds}` },
        { title: "Clients", num: true, cell: (j) => j.enrolled_clients.toLocaleString() },
        { title: "Started", cell: (j) => fmtTime(j.started_at) },
        { title: "Last activity", cell: (j) => h("span", { title: fmtTime(j.updated_at) }, fmtAgo(j.updated_at)) },
      ], page.items, { testid: "jobs-table" }),
      pager(page, (offset) => go({ offset })),
    ];
  }, { quiet });

  await load();
  setInterval(() => { if (!document.hidden) load(true); }, REFRESH_MS);
}
