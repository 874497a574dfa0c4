// The join page: what the job is and what leaves the device, a choice of data, a join button,
// then this device's rounds live. The token comes from the link's fragment (#t=...), which the
// browser never sends to a server; training runs in this tab (flaas-client.js).
import { badge, failure, fmtBytes, fmtNum, fmtSeconds, h, loading, setContent, table } from "/dashboard/static/common.js";
import { digitsSample, joinJob, parseDataFile } from "./flaas-client.js";

const JOB_ID = (location.pathname.match(/^\/join\/([0-9a-f-]{36})\/?$/i) || [])[1];
const SAMPLE_DEVICES = 10; // the bundled sample is cut into this many devices by default
const MAX_KEPT_FILE = 2_000_000; // characters of a picked file kept to resume after a reload
const PAGE_KEY = `flaas-join-page:${JOB_ID}`; // this page's own record (the client keeps its own)
const PARTS = {
  lora_A: "the LoRA A factors",
  lora_B: "the LoRA B factors",
  vera_lambda_d: "the VeRA λd vectors",
  vera_lambda_b: "the VeRA λb vectors",
};

const root = document.getElementById("main");
const token = () => new URLSearchParams(location.hash.slice(1)).get("t");

function record() {
  try { return JSON.parse(localStorage.getItem(PAGE_KEY)) || null; } catch { return null; }
}
function remember(value) {
  localStorage.setItem(PAGE_KEY, JSON.stringify(value));
}

/** Ask the coordinator about the job with the join token: public facts only. */
async function joinFacts(joinToken) {
  const response = await fetch(`/api/v1/jobs/${JOB_ID}/join`, {
    headers: { Authorization: `Bearer ${joinToken}`, Accept: "application/json" },
  });
  if (response.status === 401) throw new Error("this link's token does not open this job: ask the operator for a new link");
  if (!response.ok) throw new Error(`${response.status}: ${(await response.json().catch(() => ({}))).detail || response.statusText}`);
  return response.json();
}

function partsText(parts, facts) {
  const adapter = parts.filter((p) => p !== "extra").map((p) => PARTS[p] || p);
  return parts.includes("extra") ? [...adapter, `the head (${facts.extra_tensors.join(", ")})`] : adapter;
}

function describe(facts) {
  const shared = partsText(facts.shared_parts, facts);
  const kept = ["your data: only its size and four statistics of its labels and losses are sent, once, to choose your rank",
    ...partsText(facts.private_parts, facts)];
  return [
    h("div.toolbar", {}, h("h1", {}, facts.name, " ", badge(facts.status))),
    h("dl.facts", { "data-testid": "join-facts" },
      h("dt", {}, "Task"), h("dd", {}, facts.model ? facts.model.source : "a hand-written adapter layout"),
      h("dt", {}, "Strategy"), h("dd", { "data-testid": "fact-strategy" }, facts.strategy),
      h("dt", {}, "Rounds"), h("dd", {}, `${facts.current_round} / ${facts.total_rounds}`),
      h("dt", {}, "Ranks"), h("dd", {}, `${facts.r_min}–${facts.r_max}, chosen for your data`)),
    h("p", {}, "Each round this device downloads its slice of the global adapter, trains it on the data below, and uploads:"),
    h("ul.leaves", { "data-testid": "shared" }, shared.map((s) => h("li", {}, s))),
    h("p", {}, "Stays on this device:"),
    h("ul.leaves", { "data-testid": "private" }, kept.map((s) => h("li", {}, s))),
  ];
}

/** The data picker; ``choice()`` reads it as the record the page keeps. */
function dataPicker(saved) {
  const sample = saved?.kind !== "file";
  const index = h("input", { type: "number", id: "sample-index", min: 0, value: saved?.index ?? 0, "aria-label": "device index" });
  const of = h("input", { type: "number", id: "sample-devices", min: 1, value: saved?.of ?? SAMPLE_DEVICES, "aria-label": "number of devices" });
  const file = h("input", { type: "file", id: "data-file", accept: ".csv,text/csv" });
  const useSample = h("input", { type: "radio", name: "data", id: "data-sample", checked: sample });
  const useFile = h("input", { type: "radio", name: "data", id: "data-upload", checked: !sample });
  file.addEventListener("change", () => { useFile.checked = true; });
  const el = h("fieldset", { "data-testid": "data-choice" }, h("legend", {}, "Data to train on"),
    h("label", {}, useSample, " The bundled digits sample: device ", index, " of ", of),
    h("label", {}, useFile, " A CSV file from this device: 64 pixel columns (0–16), then the label ", file),
    saved?.kind === "file" ? h("p.muted.small", {}, `Last used: ${saved.name}`) : null);
  async function choice() {
    if (useSample.checked) {
      const n = Number(of.value), i = Number(index.value);
      if (!Number.isInteger(n) || n < 1 || !Number.isInteger(i) || i < 0 || i >= n) throw new Error(`choose a device index from 0 to ${n - 1}`);
      return { kind: "sample", index: i, of: n };
    }
    const picked = file.files[0];
    if (picked) return { kind: "file", name: picked.name, text: await picked.text() };
    if (saved?.kind === "file" && saved.text) return saved;
    throw new Error(saved?.kind === "file" ? `pick ${saved.name} again to resume` : "pick a CSV file, or use the bundled sample");
  }
  return { el, choice, disable: (off) => el.toggleAttribute("disabled", off) };
}

/** Run ``work`` while no other tab of this browser runs this job (they share one client's
 * storage). Web Locks exist in secure contexts only; elsewhere the page trusts the person. */
async function oneTabAtATime(work) {
  if (!navigator.locks) return work();
  return navigator.locks.request(PAGE_KEY, { ifAvailable: true }, (lock) => {
    if (!lock) throw new Error("this job is already training in another tab of this browser");
    return work();
  });
}

async function deviceData(choice) {
  return choice.kind === "sample" ? digitsSample(choice.index, choice.of) : parseDataFile(choice.text);
}

/** The live view of this device's part in the job. */
function progressView(facts, saved) {
  const els = {
    status: h("p.status-line", { role: "status", "data-testid": "status" }),
    client: h("code", { "data-testid": "client-id" }, saved?.clientId || "–"),
    rank: h("strong", { "data-testid": "rank" }, saved?.rank ?? "–"),
    done: h("strong", { "data-testid": "rounds-done" }, "0"),
    bytes: h("strong", { "data-testid": "bytes-sent" }, "0 B"),
    rounds: h("div", { "data-testid": "device-rounds" }),
  };
  const rows = saved?.rounds || [];
  function render() {
    els.done.textContent = `${rows.length} / ${facts.total_rounds}`;
    els.bytes.textContent = fmtBytes(rows.reduce((sum, r) => sum + r.bytesSent, 0));
    setContent(els.rounds, rows.length ? table([
      { title: "Round", num: true, cell: (r) => r.round },
      { title: "Rank", num: true, cell: (r) => r.rank },
      { title: "Local loss", num: true, cell: (r) => fmtNum(r.loss, 4) },
      { title: "Accuracy", num: true, cell: (r) => fmtNum(r.accuracy, 3) },
      { title: "Sent", num: true, cell: (r) => fmtBytes(r.bytesSent) },
      { title: "Time", num: true, cell: (r) => fmtSeconds(r.seconds) },
    ], [...rows].reverse(), { testid: "rounds-table" }) : h("p.muted", {}, "No round trained on this device yet."));
  }
  render();
  const el = h("section", { "data-testid": "progress" }, h("h2", {}, "This device"), els.status,
    h("dl.facts", {},
      h("dt", {}, "Client"), h("dd", {}, els.client),
      h("dt", {}, "Rank"), h("dd", {}, els.rank),
      h("dt", {}, "Rounds trained"), h("dd", {}, els.done),
      h("dt", {}, "Bytes sent"), h("dd", {}, els.bytes)),
    els.rounds);
  function status(text, error = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", error);
  }
  /** Apply one client event; returns the fields of the page's record it changed. */
  function apply(e) {
    if (e.type === "status") status(e.message);
    else if (e.type === "error") status(e.retrying ? `${e.message} (retrying)` : e.message, !e.retrying);
    else if (e.type === "enrolled") { // a resumed client says its id again, not its rank
      els.client.textContent = e.clientId;
      const rank = e.rank ?? saved?.rank ?? null;
      els.rank.textContent = rank ?? "assigned when enrolment closes";
      return { clientId: e.clientId, rank };
    } else if (e.type === "round") {
      const row = { round: e.round, rank: e.rank, loss: e.loss, accuracy: e.accuracy, bytesSent: e.bytesSent, seconds: e.seconds };
      const at = rows.findIndex((r) => r.round === e.round); // a round re-sent after a reload
      if (at >= 0) rows[at] = row; else rows.push(row);
      els.rank.textContent = e.rank;
      render();
      return { rank: e.rank, rounds: rows };
    } else if (e.type === "done") {
      status(`The job has ended (${e.jobStatus}). Thank you: nothing more will be sent.`);
      return { done: e.jobStatus };
    }
    return null;
  }
  return { el, apply, status };
}

async function showJob(joinToken) {
  setContent(root, loading("Asking the coordinator about this job…"));
  let facts;
  try {
    facts = await joinFacts(joinToken);
  } catch (error) {
    setContent(root, failure(error, () => showJob(joinToken)));
    return;
  }
  document.title = `Join ${facts.name} · FLaaS`;
  let saved = record();
  const picker = dataPicker(saved?.data);
  const progress = progressView(facts, saved);
  const join = h("button", { id: "join", "data-testid": "join-button" }, saved?.data ? "Resume" : "Join");
  const stop = h("button.link", { id: "stop", hidden: true }, "Stop on this device");
  let controller = null;

  async function start() {
    let data, choice;
    try {
      choice = await picker.choice();
      data = await deviceData(choice);
    } catch (error) {
      progress.status(String(error.message || error), true);
      return;
    }
    // A picked file is kept (if small) so that a reload resumes on the same data.
    const kept = choice.kind === "file" && choice.text.length > MAX_KEPT_FILE ? { ...choice, text: null } : choice;
    saved = { ...(saved || {}), data: kept, stopped: false };
    remember(saved);
    controller = new AbortController();
    join.disabled = true; stop.hidden = false; picker.disable(true);
    progress.status(`Training on ${data.y.length.toLocaleString()} samples…`);
    try {
      const result = await oneTabAtATime(() => joinJob({
        baseUrl: location.origin, jobId: JOB_ID, joinToken, data, signal: controller.signal,
        onEvent: (e) => {
          const changed = progress.apply(e);
          if (changed) { saved = { ...saved, ...changed }; remember(saved); }
        },
      }));
      if (result.jobStatus === "stopped") throw new Error("stopped");
      saved = { ...saved, done: result.jobStatus }; remember(saved);
      stop.hidden = true; join.textContent = "Done";
    } catch (error) {
      if (controller.signal.aborted) {
        saved = { ...saved, stopped: true }; remember(saved); // a reload does not restart it
        progress.status("Stopped. Press Resume to carry on as the same client.");
      } else {
        console.error(error);
        progress.status(String(error.message || error), true);
      }
      join.disabled = false; join.textContent = "Resume"; stop.hidden = true; picker.disable(false);
    }
  }
  join.addEventListener("click", start);
  stop.addEventListener("click", () => controller?.abort());

  setContent(root,
    h("section", {}, describe(facts)),
    h("section", {}, h("h2", {}, "Join"), picker.el, h("div.actions", {}, join, stop)),
    progress.el);
  if (saved?.done) {
    progress.apply({ type: "done", jobStatus: saved.done });
    join.disabled = true; join.textContent = "Done"; picker.disable(true);
  } else if (saved?.data && !saved.stopped) {
    progress.status("Resuming after a reload…");
    start(); // the client continues as the same client, from its own saved state
  } else if (["finished", "cancelled", "failed"].includes(facts.status)) {
    progress.status(`This job has ended (${facts.status}): there is nothing left to join.`, true);
    join.disabled = true;
  }
}

function askForToken() {
  const input = h("input", { id: "token", autocomplete: "off", spellcheck: "false", placeholder: "flj_…", "aria-label": "join token" });
  const form = h("form.token-form", {
    onsubmit: (event) => {
      event.preventDefault();
      if (!input.value.trim()) return;
      location.hash = new URLSearchParams({ t: input.value.trim() }).toString();
    },
  }, h("p", {}, "This link has no join token. Paste the one the operator gave you:"), input, " ", h("button", {}, "Open"));
  setContent(root, h("section", {}, h("h1", {}, "Join a job"), form));
}

function main() {
  if (!JOB_ID) { setContent(root, failure(new Error(`no job in ${location.pathname}`))); return; }
  const joinToken = token();
  if (joinToken) showJob(joinToken); else askForToken();
}

window.addEventListener("hashchange", () => location.reload()); // a new token: start afresh
main();
