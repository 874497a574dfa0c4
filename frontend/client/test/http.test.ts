import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { ApiError, Coordinator, RETRY, retryAfterSeconds, retryDelay } from "../src/http.js";
import { startingAdapter, upload, type TrainTask } from "../src/protocol.js";

/** A real HTTP server answering each request with the next of `answers`; records requests. */
async function serve(answers: ((req: IncomingMessage, res: ServerResponse, body: Buffer) => void)[]) {
  const seen: { method: string; url: string; headers: IncomingMessage["headers"]; body: Buffer }[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      answers[Math.min(seen.length - 1, answers.length - 1)](req, res, body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, seen, close: () => new Promise((resolve) => server.close(resolve)) };
}

const json = (status: number, value: unknown, headers: Record<string, string> = {}) =>
  (_req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(status, { "Content-Type": "application/json", ...headers }).end(JSON.stringify(value));
  };

test("429 and 503 are retried after Retry-After, then the answer is returned", async () => {
  const server = await serve([
    json(503, { detail: "busy" }, { "Retry-After": "0" }),
    json(429, { detail: "slow down" }, { "Retry-After": "0" }),
    json(200, { action: "wait", retry_after: 1, reason: "r" }),
  ]);
  try {
    const api = new Coordinator(server.url + "/");
    api.token = "cred";
    const answer = await api.json<{ action: string }>("GET", "/api/v1/clients/me/task");
    assert.equal(answer.action, "wait");
    assert.equal(server.seen.length, 3);
    assert.ok(server.seen.every((r) => r.headers.authorization === "Bearer cred"));
  } finally {
    await server.close();
  }
});

test("a 4xx is not retried and carries the coordinator's detail", async () => {
  const server = await serve([json(409, { detail: "a different update was already accepted" })]);
  try {
    const api = new Coordinator(server.url);
    await assert.rejects(api.request("PUT", "/x", { body: "b" }), (error: unknown) => {
      assert.ok(error instanceof ApiError);
      assert.equal(error.status, 409);
      assert.equal(error.detail, "a different update was already accepted");
      return true;
    });
    assert.equal(server.seen.length, 1);
  } finally {
    await server.close();
  }
});

test("an upload sends the update with its sample count, metrics and SHA-256", async () => {
  const server = await serve([json(201, { status: "accepted" })]);
  try {
    const api = new Coordinator(server.url);
    const status = await upload(api, "/api/v1/rounds/r/update", Uint8Array.of(1, 2, 3), "ab".repeat(32), 17, { train_loss: 0.5 });
    assert.equal(status, 201);
    const [request] = server.seen;
    assert.equal(request.method, "PUT");
    assert.deepEqual([...request.body], [1, 2, 3]);
    assert.equal(request.headers["flaas-num-samples"], "17");
    assert.equal(request.headers["flaas-content-sha256"], "ab".repeat(32));
    assert.equal(request.headers["flaas-metrics"], '{"train_loss":0.5}');
    assert.equal(request.headers["content-type"], "application/octet-stream");
  } finally {
    await server.close();
  }
});

test("a task that carries its adapter is trained from it, one that does not downloads it", async () => {
  const served = Uint8Array.of(7, 8, 9, 250);
  const server = await serve([(_req, res) => res.writeHead(200).end(Buffer.from(served))]);
  try {
    const api = new Coordinator(server.url);
    const t = { adapter_url: "/api/v1/rounds/r/adapter", adapter: null } as unknown as TrainTask;
    const carried = await startingAdapter(api, { ...t, adapter: Buffer.from([1, 2, 255]).toString("base64") });
    assert.deepEqual([...carried], [1, 2, 255]);
    assert.equal(server.seen.length, 0);
    assert.deepEqual([...(await startingAdapter(api, t))], [...served]);
    assert.deepEqual(server.seen.map((r) => `${r.method} ${r.url}`), ["GET /api/v1/rounds/r/adapter"]);
  } finally {
    await server.close();
  }
});

test("backoff doubles from 0.5 s with jitter, capped at 30 s; Retry-After wins", () => {
  assert.equal(retryDelay(0, null, () => 1), 0.5);
  assert.equal(retryDelay(3, null, () => 1), 4);
  assert.equal(retryDelay(3, null, () => 0), 2);
  assert.equal(retryDelay(10, null, () => 1), RETRY.maxS);
  assert.equal(retryDelay(0, 7), 7);
  assert.equal(retryDelay(0, 600), RETRY.maxS);
  assert.equal(retryAfterSeconds("2.5"), 2.5);
  assert.equal(retryAfterSeconds(null), null);
  assert.equal(retryAfterSeconds("soon"), null);
  const inTenSeconds = new Date(Date.now() + 10_000).toUTCString();
  assert.ok(Math.abs(retryAfterSeconds(inTenSeconds)! - 10) < 1.5);
});
