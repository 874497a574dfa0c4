import assert from "node:assert/strict";
import { test } from "node:test";
import { complexityStats, lossEntropy } from "../src/stats.js";

const close = (a: number | null, b: number) => assert.ok(a !== null && Math.abs(a - b) < 1e-12, `${a} != ${b}`);

test("balanced labels and uniform losses", () => {
  const losses = Array.from({ length: 20 }, (_, i) => i / 19);
  const stats = complexityStats([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3], losses, 4);
  assert.equal(stats.n_samples, 20);
  close(stats.label_entropy, 1);
  close(stats.gini_simpson, 0.75);
  close(stats.loss_entropy, 1); // two losses in each of ten bins
});

test("skewed labels counted against more classes", () => {
  const stats = complexityStats([5, 5, 5, 2], null, 3);
  close(stats.label_entropy, -(0.75 * Math.log(0.75) + 0.25 * Math.log(0.25)) / Math.log(3));
  close(stats.gini_simpson, 1 - 0.75 ** 2 - 0.25 ** 2);
  assert.equal(stats.loss_entropy, null);
});

test("degenerate inputs", () => {
  const one = complexityStats([7, 7, 7], [0.5, 0.5, 0.5]);
  assert.deepEqual(one, { n_samples: 3, label_entropy: 0, gini_simpson: 0, loss_entropy: 0 });
  assert.throws(() => complexityStats([0, 1], [0.1]), /2 labels but 1 losses/);
  assert.throws(() => complexityStats([0, 1], [0.1, NaN]), /finite/);
  assert.throws(() => complexityStats([0, 1, 2], null, 2), /3 distinct labels/);
  assert.throws(() => complexityStats([], null), /no training samples/);
});

test("a loss on a bin edge goes where numpy.histogram puts it", () => {
  // 0, 0.1, ..., 1.0 over [0, 1]: numpy counts [1 1 2 0 1 2 1 0 1 2] (edges are i * 0.1, so
  // 0.3 < 3 * 0.1 falls below its edge) and client_sdk.profile.loss_entropy gives this value.
  const losses = Array.from({ length: 11 }, (_, i) => i / 10);
  close(lossEntropy(losses), 0.8771945057051443);
});
