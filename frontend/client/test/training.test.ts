import assert from "node:assert/strict";
import { test } from "node:test";
import { accumulateGradients, observe, parameters } from "../src/model.js";
import type { ModelSpec, TrainTask } from "../src/protocol.js";
import { generator } from "../src/random.js";
import { decode, encode, type Tensors } from "../src/safetensors.js";
import { baseModel, buildModel, layerModes, trainRound, type Base, type Samples } from "../src/training.js";

const DIMS = { fc1: [6, 5], fc2: [6, 6], fc3: [3, 6] } as const; // (out, in)
const SPEC: ModelSpec = {
  source: "flaas:digits", task_type: "SEQ_CLS", target_modules: ["fc1", "fc2"], modules_to_save: ["fc3"],
  lora_dropout: 0, config_sha256: null,
};

function randomArray(n: number, next: () => number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => (next() * 2 - 1) * scale);
}

function tinyBase(seed = 1): Base {
  const next = generator(seed);
  const tensors: Tensors = {};
  for (const [name, [out, inp]] of Object.entries(DIMS)) {
    tensors[`${name}.weight`] = { shape: [out, inp], data: randomArray(out * inp, next, 0.6) };
    tensors[`${name}.bias`] = { shape: [out], data: randomArray(out, next, 0.1) };
  }
  return { tensors };
}

function task(overrides: Partial<TrainTask> = {}): TrainTask {
  return {
    action: "train", job_id: "j", round_id: "r", round_number: 1, deadline_at: "", rank: 2, lora_alpha: 4,
    use_rslora: false, adapter_type: "lora", strategy: "rbla", shared_parts: ["lora_A", "lora_B", "extra"],
    frozen_parts: [], model: SPEC, seed: 0, adapter_url: "", adapter: null, upload_url: "",
    training: { epochs: 5, steps: null, lr: 0.05, batch_size: 4, gradient_accumulation_steps: 1, optimizer: "adam" },
    ...overrides,
  };
}

/** What the coordinator sends in round 1: A drawn once, B zero, rank `rank`. */
function roundOneAdapter(rank: number, withB = true): Uint8Array {
  const next = generator(9);
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const name of ["fc1", "fc2"] as const) {
    const [out, inp] = DIMS[name];
    tensors[`base_model.model.${name}.lora_A.weight`] = { shape: [rank, inp], data: randomArray(rank * inp, next, 0.4) };
    if (withB) tensors[`base_model.model.${name}.lora_B.weight`] = { shape: [out, rank], data: new Float32Array(out * rank) };
  }
  return encode(tensors);
}

function samples(n: number, seed = 2): Samples {
  const next = generator(seed);
  const x = randomArray(n * 5, next);
  const y = Int32Array.from({ length: n }, (_, i) => (x[i * 5] > 0 ? 1 : 0) + (x[i * 5 + 1] > 0.5 ? 1 : 0));
  return { x, y, features: 5 };
}

test("gradients equal finite differences of the loss, for LoRA factors and a trained head", () => {
  const model = buildModel(tinyBase(), layerModes(SPEC), task(), decode(roundOneAdapter(2)).tensors, {});
  const next = generator(4);
  for (const p of parameters(model)) p.value.set(randomArray(p.value.length, next, 0.5)); // B != 0
  const data = samples(7);
  const grads = new Map(parameters(model).map((p) => [p.key, new Float32Array(p.value.length)]));
  accumulateGradients(model, data.x, data.y, data.y.length, grads);
  const meanLoss = () => observe(model, data.x, data.y).losses.reduce((a, b) => a + b, 0) / data.y.length;
  for (const p of parameters(model)) {
    for (const i of [0, Math.floor(p.value.length / 2), p.value.length - 1]) {
      const kept = p.value[i];
      p.value[i] = kept + 1e-3;
      const up = meanLoss();
      p.value[i] = kept - 1e-3;
      const down = meanLoss();
      p.value[i] = kept;
      const numeric = (up - down) / 2e-3;
      assert.ok(Math.abs(numeric - grads.get(p.key)![i]) < 2e-3 + 1e-2 * Math.abs(numeric), `${p.key}[${i}]: ${numeric} vs ${grads.get(p.key)![i]}`);
    }
  }
});

test("with B zero the adapted model is the base model", () => {
  const base = tinyBase();
  const data = samples(5);
  const frozen = observe(baseModel(base, { fc1: "frozen", fc2: "frozen", fc3: "frozen" }, 0, 0), data.x, data.y);
  const adapted = observe(buildModel(base, layerModes(SPEC), task({ rank: 3 }), decode(roundOneAdapter(3)).tensors, {}), data.x, data.y);
  assert.deepEqual(adapted.losses, frozen.losses);
});

test("an RBLA round uploads A, B and the head, learns, and is the same bytes for the same seed", () => {
  const data = samples(40);
  const first = trainRound(tinyBase(), task(), roundOneAdapter(2), null, data, null, 11);
  const { tensors, metadata } = decode(first.update);
  assert.deepEqual(Object.keys(tensors).sort(), [
    "base_model.model.fc1.lora_A.weight", "base_model.model.fc1.lora_B.weight", "base_model.model.fc2.lora_A.weight",
    "base_model.model.fc2.lora_B.weight", "base_model.model.fc3.bias", "base_model.model.fc3.weight",
  ]);
  assert.deepEqual(metadata, { adapter_type: "lora", lora_alpha: "4.0", n_samples: "40", parts: "extra,lora_A,lora_B", rank: "2", use_rslora: "false" });
  assert.equal(first.private, null);
  assert.equal(first.metrics.steps, 50); // 5 epochs of 10 batches
  const before = observe(baseModel(tinyBase(), { fc1: "frozen", fc2: "frozen", fc3: "frozen" }, 0, 0), data.x, data.y);
  assert.ok(first.evaluation.loss < before.losses.reduce((a, b) => a + b, 0) / 40);
  const again = trainRound(tinyBase(), task(), roundOneAdapter(2), null, data, null, 11);
  assert.deepEqual(again.update, first.update);
  assert.notDeepEqual(trainRound(tinyBase(), task(), roundOneAdapter(2), null, data, null, 12).update, first.update);
});

test("FedSA uploads only A and keeps B and the head private, reloading them at the same rank", () => {
  const fedsa = task({ strategy: "fedsa", shared_parts: ["lora_A"] });
  const data = samples(30);
  const one = trainRound(tinyBase(), fedsa, roundOneAdapter(2, false), null, data, null, 1);
  assert.deepEqual(Object.keys(decode(one.update).tensors).sort(), ["base_model.model.fc1.lora_A.weight", "base_model.model.fc2.lora_A.weight"]);
  const kept = decode(one.private!);
  assert.deepEqual(Object.keys(kept.tensors).sort(), [
    "base_model.model.fc1.lora_B.weight", "base_model.model.fc2.lora_B.weight", "base_model.model.fc3.bias", "base_model.model.fc3.weight",
  ]);
  assert.equal(kept.metadata.strategy, "fedsa");
  // Round 2 starts from the private B: its model differs from one started afresh.
  const two = fedsa.round_number + 1;
  const resumed = trainRound(tinyBase(), { ...fedsa, round_number: two }, roundOneAdapter(2, false), one.private, data, null, 1);
  const fresh = trainRound(tinyBase(), { ...fedsa, round_number: two }, roundOneAdapter(2, false), null, data, null, 1);
  assert.notDeepEqual(resumed.private, fresh.private);
  // Private tensors of another rank are not loaded: that round starts afresh.
  const rank3 = { ...fedsa, rank: 3 };
  assert.deepEqual(
    trainRound(tinyBase(), rank3, roundOneAdapter(3, false), one.private, data, null, 1).update,
    trainRound(tinyBase(), rank3, roundOneAdapter(3, false), null, data, null, 1).update,
  );
});

test("FFA keeps A frozen: it is neither trained nor uploaded nor kept", () => {
  const ffa = task({ strategy: "ffa", shared_parts: ["lora_B", "extra"], frozen_parts: ["lora_A"] });
  const result = trainRound(tinyBase(), ffa, roundOneAdapter(2), null, samples(20), null, 1);
  assert.ok(Object.keys(decode(result.update).tensors).every((k) => !k.includes("lora_A")));
  assert.equal(result.private, null);
});

test("an adapter for another rank, a missing A or an unknown module is refused", () => {
  const base = tinyBase();
  assert.throws(() => trainRound(base, task({ rank: 3 }), roundOneAdapter(2), null, samples(8), null, 1), /wrong rank/);
  const noA = encode({ "base_model.model.fc1.lora_B.weight": { shape: [6, 2], data: new Float32Array(12) } });
  assert.throws(() => trainRound(base, task(), noA, null, samples(8), null, 1), /sent no base_model.model.fc1.lora_A.weight/);
  assert.throws(() => layerModes({ ...SPEC, target_modules: ["q_proj"] }), /no module q_proj/);
  assert.throws(() => layerModes({ ...SPEC, target_modules: "all-linear" }), /in a list/);
  assert.throws(() => trainRound(base, task({ adapter_type: "vera" }), roundOneAdapter(2), null, samples(8), null, 1), /not vera/);
});
