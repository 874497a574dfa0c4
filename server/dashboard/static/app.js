// The dashboard's entry point: pick the page from the URL and render it into <main>.
import { failure, setContent } from "./common.js";

const ROUTES = [
  [/^\/dashboard\/jobs\/?$/, () => import("./pages/jobs.js"), () => ({})],
  [/^\/dashboard\/jobs\/([0-9a-f-]{36})\/?$/, () => import("./pages/job.js"), (m) => ({ jobId: m[1] })],
  [/^\/dashboard\/jobs\/([0-9a-f-]{36})\/clients\/?$/, () => import("./pages/clients.js"), (m) => ({ jobId: m[1] })],
  [/^\/dashboard\/jobs\/([0-9a-f-]{36})\/rounds\/(\d+)\/?$/, () => import("./pages/round.js"), (m) => ({ jobId: m[1], number: Number(m[2]) })],
];

async function main() {
  const root = document.getElementById("main");
  for (const [pattern, load, params] of ROUTES) {
    const match = location.pathname.match(pattern);
    if (!match) continue;
    try {
      const page = await load();
      await page.render(root, params(match));
    } catch (error) {
      console.error(error);
      setContent(root, failure(error, () => location.reload()));
    }
    return;
  }
  setContent(root, failure(new Error(`no page at ${location.pathname}`)));
}

main();
