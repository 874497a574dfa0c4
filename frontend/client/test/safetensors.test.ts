import assert from "node:assert/strict";
import { test } from "node:test";
import { decode, encode } from "../src/safetensors.js";

test("encode then decode gives the tensors and metadata back", () => {
  const a = Float32Array.from([1, -2.5, 3e-38, 0]);
  const bytes = encode({ "x.lora_A.weight": { shape: [2, 2], data: a } }, { rank: "2", b: "é" });
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(headerLength % 8, 0);
  const { tensors, metadata } = decode(bytes);
  assert.deepEqual(metadata, { b: "é", rank: "2" });
  assert.deepEqual(tensors["x.lora_A.weight"].shape, [2, 2]);
  assert.deepEqual([...tensors["x.lora_A.weight"].data], [...a]);
});

test("keys are written sorted, data contiguous in key order", () => {
  const bytes = encode({ b: { shape: [1], data: Float32Array.of(2) }, a: { shape: [1], data: Float32Array.of(1) } });
  const text = new TextDecoder().decode(bytes.subarray(8));
  assert.ok(text.indexOf('"a"') < text.indexOf('"b"'));
  assert.ok(text.startsWith('{"__metadata__":{},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'));
});

test("F16 and BF16 tensors decode as float32", () => {
  const header = JSON.stringify({
    h: { dtype: "F16", shape: [3], data_offsets: [0, 6] },
    b: { dtype: "BF16", shape: [2], data_offsets: [6, 10] },
  });
  const bytes = new Uint8Array(8 + header.length + 10);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(header.length), true);
  bytes.set(new TextEncoder().encode(header), 8);
  const at = 8 + header.length;
  [0x3c00, 0xc000, 0x0001].forEach((bits, i) => view.setUint16(at + 2 * i, bits, true)); // 1, -2, 2^-24
  [0x3f80, 0x4049].forEach((bits, i) => view.setUint16(at + 6 + 2 * i, bits, true)); // 1, ~3.14
  const { tensors } = decode(bytes);
  assert.deepEqual([...tensors.h.data], [1, -2, 2 ** -24]);
  assert.equal(tensors.b.data[0], 1);
  assert.ok(Math.abs(tensors.b.data[1] - 3.140625) < 1e-7);
});

test("a truncated file or a lying shape is refused", () => {
  const bytes = encode({ a: { shape: [2], data: Float32Array.of(1, 2) } });
  assert.throws(() => decode(bytes.subarray(0, bytes.length - 1)), /do not fit/);
  assert.throws(() => decode(bytes.subarray(0, 5)), /shorter/);
  assert.throws(() => encode({ a: { shape: [3], data: Float32Array.of(1, 2) } }), /2 values for shape/);
});
