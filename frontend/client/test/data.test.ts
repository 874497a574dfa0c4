import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { digitsSample, holdout, parseDataFile } from "../src/data.js";

// build/test/ -> the repository's server/join/static/digits/
const DIGITS = fileURLToPath(new URL("../../../../server/join/static/digits/", import.meta.url));

test("the bundled samples cut the pool into disjoint devices covering it", async () => {
  const server = createServer((req, res) => res.end(readFileSync(DIGITS + req.url!.split("/").pop())));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const assets = `http://127.0.0.1:${(server.address() as AddressInfo).port}/digits/`;
  try {
    const devices = await Promise.all([0, 1, 2].map((i) => digitsSample(i, 3, assets)));
    assert.equal(devices.reduce((n, d) => n + d.y.length, 0), 1149);
    for (const d of devices) {
      assert.equal(d.features, 64);
      assert.equal(d.x.length, d.y.length * 64);
      assert.ok(d.x.every((v) => v >= 0 && v <= 1 && Number.isInteger(v * 16)));
      assert.ok(d.y.every((v) => v >= 0 && v < 10));
    }
    assert.notDeepEqual(devices[0].y, devices[1].y);
    assert.equal((await digitsSample(0, 1, assets)).y.length, 1149);
    await assert.rejects(digitsSample(3, 3, assets), /not in 0..2/);
    await assert.rejects(digitsSample(0, 17, assets), /1 to 16 devices/);
  } finally {
    server.close();
  }
});

test("a CSV of 64 pixels and a label per line reads as features in [0, 1]", () => {
  const row = (label: number) => [...Array(64).keys()].map((i) => i % 17).join(",") + `,${label}`;
  const data = parseDataFile(`\uFEFF${[...Array(64).keys()].map((i) => `p${i}`).join(",")},label\r\n${row(3)}\n\n${row(9)}\n`);
  assert.deepEqual([...data.y], [3, 9]);
  assert.equal(data.x[16], 1);
  assert.equal(data.x[1], 1 / 16);
  assert.throws(() => parseDataFile(row(3) + ",1"), /line 1: 66 values/);
  assert.throws(() => parseDataFile(row(10)), /label "10"/);
  assert.throws(() => parseDataFile(row(1).replace(/^0/, "17")), /pixel 1 is "17"/);
  assert.throws(() => parseDataFile("\n\n"), /no samples/);
});

test("a fifth of the samples is held out, none under ten samples", () => {
  const data = parseDataFile(Array.from({ length: 23 }, (_, i) => Array(64).fill(0).join(",") + `,${i % 10}`).join("\n"));
  const { train, val } = holdout(data);
  assert.equal(val!.y.length, 5);
  assert.equal(train.y.length, 18);
  const small = parseDataFile(Array(64).fill(0).join(",") + ",1");
  assert.equal(holdout(small).val, null);
});
