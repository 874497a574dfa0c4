// Invite devices: the job's join link and its QR code, for an operator who holds the join token.
// The coordinator keeps only the token's hash (it is shown once, when the job is created), so
// the operator pastes it here; it is checked against the job and kept in this tab only.
import { encode } from "./vendor/uqr.mjs";
import { h, setContent } from "./common.js";

const MODULE_PX = 6; // a QR module's side on screen: big enough for a phone camera at arm's length

function joinLink(jobId, token) {
  return `${location.origin}/join/${jobId}#t=${encodeURIComponent(token)}`;
}

/** A canvas with ``text`` as a QR code (error correction M, a 4-module quiet zone). */
function qrCanvas(text) {
  const qr = encode(text, { ecc: "M", border: 4 });
  const canvas = h("canvas", { width: qr.size * MODULE_PX, height: qr.size * MODULE_PX, "data-testid": "join-qr", "data-version": qr.version });
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#000";
  qr.data.forEach((row, y) => row.forEach((dark, x) => {
    if (dark) ctx.fillRect(x * MODULE_PX, y * MODULE_PX, MODULE_PX, MODULE_PX);
  }));
  return canvas;
}

async function tokenOpens(jobId, token) {
  const response = await fetch(`/api/v1/jobs/${jobId}/join`, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 401) return false;
  if (!response.ok) throw new Error(`${response.status}: ${response.statusText}`);
  return true;
}

/** The invite section of a job's page. */
export function inviteSection(jobId) {
  const key = `flaas-invite:${jobId}`;
  const body = h("div", { "data-testid": "invite" });
  const input = h("input", { id: "invite-token", autocomplete: "off", spellcheck: "false", placeholder: "flj_…", "aria-label": "join token" });
  const message = h("p.muted.small", { "data-testid": "invite-message" },
    "Paste the job's join token (shown once, when the job was created) to show its join link and QR code.");

  function show(token) {
    const link = joinLink(jobId, token);
    const copy = h("button.small", { onclick: () => navigator.clipboard?.writeText(link) }, "Copy link");
    setContent(body,
      h("p.small", {}, "Devices scan this, or open the link: the page shows what the job shares, and its browser trains."),
      qrCanvas(link),
      h("p.small", {}, h("a", { href: link, "data-testid": "join-link", target: "_blank", rel: "noreferrer" }, link), " ", copy),
      h("button.link", { onclick: () => { sessionStorage.removeItem(key); ask(); } }, "Hide"));
  }

  function ask() {
    const form = h("form", {
      onsubmit: async (event) => {
        event.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        try {
          if (!(await tokenOpens(jobId, token))) {
            message.textContent = "That token does not open this job.";
            message.classList.add("reject");
            return;
          }
        } catch (error) {
          message.textContent = `Could not check the token: ${error.message}`;
          return;
        }
        sessionStorage.setItem(key, token);
        show(token);
      },
    }, input, " ", h("button.small", {}, "Show link"));
    setContent(body, message, form);
  }

  const known = sessionStorage.getItem(key);
  if (known) show(known); else ask();
  return body;
}
