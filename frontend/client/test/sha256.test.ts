import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { sha256Hex } from "../src/encoding.js";
import { generator } from "../src/random.js";
import { sha256 } from "../src/sha256.js";

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");
const nodeSha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
const ascii = (text: string) => new TextEncoder().encode(text);

/** `length` bytes drawn from `seed`, so that a failure names a buffer that can be made again. */
function randomBytes(length: number, seed: number): Uint8Array {
  const next = generator(seed);
  return Uint8Array.from({ length }, () => Math.floor(next() * 256));
}

test("the FIPS 180-4 example messages give their published digests, and Node's", () => {
  const examples: [Uint8Array, string][] = [
    [ascii(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    [ascii("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"],
    [ascii("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), // 448 bits
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"],
    [ascii("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"), // 896 bits
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"],
    [new Uint8Array(1_000_000).fill(0x61), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"], // a million 'a'
  ];
  for (const [message, digest] of examples) {
    assert.equal(hex(sha256(message)), digest, `${message.length} bytes`);
    assert.equal(nodeSha256(message), digest, `${message.length} bytes`);
  }
});

test("random messages of every length from 0 to 300 bytes (one, two and more padding blocks) hash as Node's", () => {
  for (let length = 0; length <= 300; length++) {
    const message = randomBytes(length, length);
    assert.equal(hex(sha256(message)), nodeSha256(message), `${length} bytes, seed ${length}`);
  }
});

test("messages of a few MB hash as Node's", () => {
  for (const length of [3 << 20, (5 << 20) + 55]) {
    const message = randomBytes(length, 7);
    assert.equal(hex(sha256(message)), nodeSha256(message), `${length} bytes`);
  }
});

test("a view into a larger buffer hashes only its own bytes", () => {
  const buffer = randomBytes(200, 11);
  const view = buffer.subarray(13, 150);
  assert.equal(hex(sha256(view)), nodeSha256(view));
});

test("sha256Hex gives the same hex with and without SubtleCrypto", async () => {
  const message = randomBytes(4097, 3);
  const withSubtle = await sha256Hex(message);
  const descriptor = Object.getOwnPropertyDescriptor(globalThis, "crypto")!;
  Object.defineProperty(globalThis, "crypto", { value: undefined, configurable: true });
  try {
    assert.equal(await sha256Hex(message), withSubtle); // as in a page served over plain http
  } finally {
    Object.defineProperty(globalThis, "crypto", descriptor);
  }
  assert.ok(globalThis.crypto.subtle);
  assert.equal(withSubtle, nodeSha256(message));
});
