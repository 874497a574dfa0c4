import assert from "node:assert/strict";
import { test } from "node:test";
import { crc32, permutation, trainingSeed } from "../src/random.js";

test("crc32 and the training seed are zlib's and client_sdk.rounds'", () => {
  assert.equal(crc32("hello"), 907060870); // zlib.crc32(b"hello")
  assert.equal(trainingSeed(5, 2, "ignored", "web-0"), 1210220080); // zlib.crc32(b"5:2:name:web-0")
  assert.equal(trainingSeed(5, 2, "abc", null), 1287920307); // zlib.crc32(b"5:2:abc")
});

test("a permutation holds every index once and depends only on its seed", () => {
  const order = permutation(100, 3);
  assert.deepEqual([...order].sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => i));
  assert.deepEqual(order, permutation(100, 3));
  assert.notDeepEqual(order, permutation(100, 4));
});
