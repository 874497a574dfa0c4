// One browser client, run by Node from the committed bundle, for the tests in this folder.
//
//   node run_client.mjs '<JSON options>'
//
// Options: bundle (path of flaas-client.js), baseUrl, jobId, joinToken, device, devices,
// name, stateFile (the Storage, a JSON file written at every setItem: it outlives the process
// as localStorage outlives a page), exitOn (a status message prefix: exit(3) as it is emitted,
// the process dying at that point as a closed tab does). The digits assets are served over
// HTTP from beside the bundle, as the coordinator serves them. Prints every event as a line
// of JSON, then {"result": ...}.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const options = JSON.parse(process.argv[2]);
const client = await import(pathToFileURL(options.bundle).href);
const staticDir = dirname(options.bundle);

class FileStorage {
  constructor(path) {
    this.path = path;
    this.items = existsSync(path) ? JSON.parse(readFileSync(path, "utf8")) : {};
  }
  get length() { return Object.keys(this.items).length; }
  key(i) { return Object.keys(this.items)[i] ?? null; }
  getItem(k) { return k in this.items ? this.items[k] : null; }
  setItem(k, v) { this.items[k] = String(v); writeFileSync(this.path, JSON.stringify(this.items)); }
  removeItem(k) { delete this.items[k]; writeFileSync(this.path, JSON.stringify(this.items)); }
  clear() { this.items = {}; writeFileSync(this.path, "{}"); }
}

const server = createServer((request, response) => {
  const path = join(staticDir, decodeURIComponent(new URL(request.url, "http://x").pathname));
  if (!path.startsWith(staticDir) || !existsSync(path)) {
    response.writeHead(404).end();
    return;
  }
  response.writeHead(200).end(readFileSync(path));
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const assets = `http://127.0.0.1:${server.address().port}/digits/`;

try {
  const data = await client.digitsSample(options.device, options.devices, assets);
  const result = await client.joinJob({
    baseUrl: options.baseUrl,
    jobId: options.jobId,
    joinToken: options.joinToken,
    data,
    storage: new FileStorage(options.stateFile),
    deviceName: options.name,
    assets,
    onEvent: (event) => {
      console.log(JSON.stringify(event));
      if (options.exitOn && event.type === "status" && event.message.startsWith(options.exitOn)) {
        process.exit(3);
      }
    },
  });
  console.log(JSON.stringify({ result }));
} finally {
  server.close();
}
