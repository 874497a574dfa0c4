// Shared helpers: API calls, DOM building, formatting, page states, pagination, live events.
// Vanilla ES modules, no build step. The dashboard reads only the public /api/v1 routes.

export const API = "/api/v1";

/** GET a JSON API route with the session cookie; a 401 sends the browser to the login page. */
export async function api(path, params = {}) {
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""),
  );
  const url = `${API}${path}${query.size ? `?${query}` : ""}`;
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    location.assign(`/dashboard/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new Error("session expired: log in again");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch { /* not JSON */ }
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

/** Fetch every page of a paged route (for bounded lists such as a job's rounds). */
export async function apiAll(path, params = {}, limit = 200) {
  const items = [];
  for (let offset = params.offset || 0; ; offset += limit) {
    const page = await api(path, { ...params, limit, offset });
    items.push(...page.items);
    if (page.items.length < limit || offset + limit >= page.total) return items;
  }
}

/** h("tag.class", {attr: value, onclick: fn}, ...children): a small, XSS-safe DOM builder. */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function setContent(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

// ---------------------------------------------------------------- formatting
export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function fmtNum(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number.isInteger(x) ? x.toLocaleString() : x.toFixed(digits);
}

export function fmtAgo(iso) {
  if (!iso) return "–";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 5) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

export function badge(status) {
  return h(`span.badge.s-${status}`, {}, status);
}

// ---------------------------------------------------------------- page states
export function loading(text = "Loading…") {
  return h("div.state.loading", { role: "status" }, text);
}

export function empty(title, hint = "") {
  return h("div.state.empty", {}, h("strong", {}, title), hint ? h("p.muted", {}, hint) : null);
}

export function failure(error, retry) {
  return h(
    "div.state.error",
    { role: "alert" },
    h("strong", {}, "Could not load this: "),
    String(error.message || error),
    retry ? h("button.small", { onclick: retry }, "Retry") : null,
  );
}

/** Render ``build()`` into ``el`` with loading and error states; keeps old content on refresh. */
export async function section(el, build, { quiet = false } = {}) {
  if (!quiet || !el.childElementCount) setContent(el, loading());
  try {
    setContent(el, await build());
  } catch (error) {
    console.error(error);
    if (!quiet) setContent(el, failure(error, () => section(el, build)));
  }
}

// ---------------------------------------------------------------- tables and paging
export function table(columns, rows, { testid } = {}) {
  return h(
    "table.grid",
    { "data-testid": testid },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)))),
    h("tbody", {}, rows.map((row) =>
      h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(row)))))),
  );
}

/** Previous / next controls for a Page {total, limit, offset}; ``go(offset)`` loads another. */
export function pager(page, go) {
  const { total, limit, offset } = page;
  if (total <= limit) return null;
  const last = Math.min(offset + limit, total);
  return h(
    "div.pager",
    {},
    h("button.small", { disabled: offset === 0, onclick: () => go(Math.max(0, offset - limit)) }, "‹ Prev"),
    h("span.muted", {}, `${offset + 1}–${last} of ${total.toLocaleString()}`),
    h("button.small", { disabled: last >= total, onclick: () => go(offset + limit) }, "Next ›"),
  );
}

// ---------------------------------------------------------------- live updates
/** Subscribe to a job's server-sent progress events; returns a function that stops it. */
export function liveJob(jobId, onProgress) {
  const indicator = document.getElementById("live");
  const source = new EventSource(`${API}/jobs/${jobId}/events`);
  source.addEventListener("progress", (message) => {
    const event = JSON.parse(message.data);
    indicator.hidden = false;
    onProgress(event);
    if (event.ended) {
      source.close();
      indicator.hidden = true;
    }
  });
  source.onerror = () => { indicator.hidden = true; };
  return () => source.close();
}

/** Run ``fn`` at most once per ``ms`` (trailing), for bursts of live events. */
export function debounce(fn, ms = 400) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function crumbs(...parts) {
  setContent(
    document.getElementById("crumbs"),
    parts.flatMap((p, i) => [i ? h("span.sep", {}, "/") : null, p.href ? h("a", { href: p.href }, p.text) : h("span", {}, p.text)]),
  );
}
