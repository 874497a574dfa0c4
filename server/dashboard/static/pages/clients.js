// Clients: every enrolled device with its state, rank, contributions and last contact (paged).
import {
  api, badge, crumbs, debounce, empty, failure, fmtAgo, fmtNum, fmtTime, h, liveJob, pager,
  section, setContent, shortId, table,
} from "../common.js";

const LIMIT = 50;
// The coordinator writes a client's last-seen time at most once a minute
// (FLAAS_LAST_SEEN_INTERVAL_S), so a client seen seconds ago may read up to a minute old.
const SEEN_PRECISION_S = 60;

function fmtSeen(iso) {
  if (iso && (Date.now() - Date.parse(iso)) / 1000 < 2 * SEEN_PRECISION_S) return "< 2 min ago";
  return fmtAgo(iso);
}

export async function render(root, { jobId }) {
  let job;
  try {
    job = await api(`/jobs/${jobId}`);
  } catch (error) {
    setContent(root, failure(error, () => location.reload()));
    return;
  }
  crumbs({ text: "Jobs", href: "/dashboard/jobs" }, { text: job.name, href: `/dashboard/jobs/${jobId}` }, { text: "Clients" });
  document.title = `Clients · ${job.name} · FLaaS dashboard`;
  const state = { offset: Number(new URLSearchParams(location.search).get("offset")) || 0 };
  const body = h("div", { "data-testid": "clients" });
  setContent(root,
    h("div.toolbar", {}, h("h1", {}, `Clients of ${job.name}`), badge(job.status)),
    h("p.muted.small", {}, "enrolled: never sampled yet · training: update expected in the open round · active: last update accepted · straggling: missed the last round it was sampled in"),
    body);

  const load = (quiet = false) => section(body, async () => {
    const page = await api(`/jobs/${jobId}/clients/activity`, { limit: LIMIT, offset: state.offset });
    if (!page.items.length) return empty("No clients enrolled yet.", "Clients enrol with the job's join token.");
    return [
      table([
        { title: "Client", cell: (c) => h("span", { title: c.id }, c.name || shortId(c.id)) },
        { title: "State", cell: (c) => badge(c.state) },
        { title: "Rank", num: true, cell: (c) => c.rank ?? "–" },
        { title: "Closeness", num: true, cell: (c) => fmtNum(c.closeness, 3) },
        { title: "Samples", num: true, cell: (c) => fmtNum(c.stats.n_samples) },
        { title: "Rounds contributed", num: true, cell: (c) => c.rounds_contributed },
        { title: "Missed", num: true, cell: (c) => c.rounds_missed },
        { title: "Last round", num: true, cell: (c) => c.last_round ?? "–" },
        { title: "Last seen", cell: (c) => h("span", { title: fmtTime(c.last_seen_at) }, fmtSeen(c.last_seen_at)) },
        { title: "Enrolled", cell: (c) => fmtTime(c.enrolled_at) },
      ], page.items, { testid: "clients-table" }),
      pager(page, (offset) => {
        state.offset = offset;
        history.replaceState(null, "", `${location.pathname}?offset=${offset}`);
        load();
      }),
    ];
  }, { quiet });

  await load();
  liveJob(jobId, debounce(() => load(true), 500));
}
