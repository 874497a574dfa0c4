/**
 * One round of local training, as client_sdk.lora_round and client_sdk.trainer run it: load the
 * adapter the coordinator sent and the device's private tensors (FedSA's B and head) when they
 * were trained at the same rank and kind, give every other part peft's initial value (B = 0,
 * a fully trained module the base's weights), train the parts that are not frozen, and return
 * the shared parts as the update and the rest as the new private tensors.
 */

import { accumulateGradients, observe, parameters, type Layer, type LayerMode, type Mlp } from "./model.js";
import { makeOptimizer } from "./optimizer.js";
import type { ModelSpec, TrainTask, Training } from "./protocol.js";
import { permutation } from "./random.js";
import { decode, encode, type Tensors } from "./safetensors.js";

export const LAYERS = ["fc1", "fc2", "fc3"] as const;

/** Rows of features and their labels. */
export interface Samples {
  x: Float32Array;
  y: Int32Array;
  features: number;
}

export interface Base {
  tensors: Tensors;
}

export interface RoundResult {
  update: Uint8Array;
  private: Uint8Array | null;
  nSamples: number;
  /** What goes to the coordinator in Flaas-Metrics (the Python SDK's names). */
  metrics: Record<string, number>;
  /** Loss and accuracy after training: on the validation part, or the training data without one. */
  evaluation: { loss: number; accuracy: number };
}

/** The mode of each MLP layer under a job's model spec (LoRA targets, modules_to_save). */
export function layerModes(spec: ModelSpec): Record<string, LayerMode> {
  const targets = spec.target_modules;
  if (!Array.isArray(targets)) {
    throw new Error(`this client adapts modules named in a list (of ${LAYERS.join(", ")}), not ${JSON.stringify(targets)}`);
  }
  if (spec.lora_dropout > 0) throw new Error("this client trains without LoRA dropout; the job asks for some");
  const modes: Record<string, LayerMode> = {};
  for (const name of LAYERS) {
    const lora = targets.includes(name);
    const full = spec.modules_to_save.includes(name);
    if (lora && full) throw new Error(`${name} is both a LoRA target and a module to save`);
    modes[name] = lora ? "lora" : full ? "full" : "frozen";
  }
  const unknown = [...targets, ...spec.modules_to_save].filter((n) => !(LAYERS as readonly string[]).includes(n));
  if (unknown.length) throw new Error(`the digits MLP has no module ${unknown.join(", ")} (it has ${LAYERS.join(", ")})`);
  return modes;
}

/** The part (client_sdk.adapter_parts.part_of) a state-dict key belongs to. */
export function partOf(key: string): string {
  if (key.endsWith(".lora_A.weight")) return "lora_A";
  if (key.endsWith(".lora_B.weight")) return "lora_B";
  return "extra";
}

export function loraScale(task: Pick<TrainTask, "rank" | "lora_alpha" | "use_rslora">): number {
  return task.lora_alpha / (task.use_rslora ? Math.sqrt(task.rank) : task.rank);
}

/** The base model: every layer frozen at the base's weights, LoRA factors of `rank` on the
 * layers `modes` adapts (A and B zero: the base's output), fully trained layers copied. */
export function baseModel(base: Base, modes: Record<string, LayerMode>, rank: number, scale: number): Mlp {
  const layers: Layer[] = LAYERS.map((name) => {
    const weight = base.tensors[`${name}.weight`];
    const [dOut, dIn] = weight.shape;
    const lora = modes[name] === "lora";
    return {
      name, dIn, dOut, mode: modes[name],
      weight: Float32Array.from(weight.data), bias: Float32Array.from(base.tensors[`${name}.bias`].data),
      a: lora ? new Float32Array(rank * dIn) : null, b: lora ? new Float32Array(dOut * rank) : null,
    };
  });
  return { layers, rank, scale };
}

/** The model at the task's rank: the base, then `incoming` and `kept` (checked); the rest keeps
 * peft's initial values (B = 0, a module to save the base's). A LoRA A must be received: every
 * client starts from the coordinator's seeded one. */
export function buildModel(base: Base, modes: Record<string, LayerMode>, task: TrainTask,
  incoming: Tensors, kept: Tensors): Mlp {
  const model = baseModel(base, modes, task.rank, loraScale(task));
  const expected = new Map(parameters(model).map((p) => [p.key, p]));
  const given = new Set<string>();
  for (const [label, tensors] of [["incoming", incoming], ["private", kept]] as const) {
    for (const [key, tensor] of Object.entries(tensors)) {
      const target = expected.get(key);
      if (target === undefined) throw new Error(`${label}: the adapter has no tensor ${key}`);
      if (tensor.shape.join() !== target.shape.join()) {
        throw new Error(`${label}: ${key} has shape [${tensor.shape}], the adapter expects [${target.shape}] (wrong rank?)`);
      }
      if (given.has(key)) throw new Error(`${key} is both received and private (ambiguous)`);
      if (!(tensor.data instanceof Float32Array) || !tensor.data.every(Number.isFinite)) {
        throw new Error(`${label}: ${key} is not finite float data`);
      }
      target.value.set(tensor.data);
      given.add(key);
    }
  }
  const missingA = [...expected.keys()].filter((k) => partOf(k) === "lora_A" && !given.has(k));
  if (missingA.length) throw new Error(`the coordinator sent no ${missingA.join(", ")}: every client must start from its A`);
  return model;
}

/** Optimiser steps of one round: `steps`, or `epochs` passes of accumulated batches. */
export function totalSteps(n: number, t: Training): number {
  if (t.steps != null) return t.steps;
  return (t.epochs ?? 1) * Math.ceil(Math.ceil(n / t.batch_size) / t.gradient_accumulation_steps);
}

export function selectRows(data: Samples, index: Int32Array | number[]): Samples {
  const x = new Float32Array(index.length * data.features);
  const y = new Int32Array(index.length);
  index.forEach((row, i) => {
    x.set(data.x.subarray(row * data.features, (row + 1) * data.features), i * data.features);
    y[i] = data.y[row];
  });
  return { x, y, features: data.features };
}

/** Train the model's unfrozen parameters in place; (mean train loss, steps). Batches are
 * reshuffled every pass from `seed + pass`; a step sums `gradient_accumulation_steps` batches. */
export function fit(model: Mlp, data: Samples, t: Training, seed: number, frozenParts: string[],
  onStep?: (done: number, total: number) => void): { loss: number; steps: number } {
  const trainable = parameters(model).filter((p) => !frozenParts.includes(partOf(p.key)));
  if (trainable.length === 0) throw new Error("nothing to train: every trainable part is frozen");
  const grads = new Map(trainable.map((p) => [p.key, new Float32Array(p.value.length)]));
  const optimizer = makeOptimizer(t.optimizer, t.lr);
  const total = totalSteps(data.y.length, t);
  let lossSum = 0;
  let seen = 0;
  let step = 0;
  for (let pass = 0; step < total; pass++) {
    const order = permutation(data.y.length, seed + pass);
    const batches: Samples[] = [];
    for (let at = 0; at < order.length; at += t.batch_size) batches.push(selectRows(data, order.subarray(at, at + t.batch_size)));
    for (let at = 0; at < batches.length && step < total; at += t.gradient_accumulation_steps) {
      const group = batches.slice(at, at + t.gradient_accumulation_steps);
      const weight = group.reduce((sum, b) => sum + b.y.length, 0);
      for (const g of grads.values()) g.fill(0);
      for (const batch of group) lossSum += accumulateGradients(model, batch.x, batch.y, weight, grads);
      seen += weight;
      optimizer.step(trainable.map((p) => ({ value: p.value, grad: grads.get(p.key)! })));
      step += 1;
      onStep?.(step, total);
    }
  }
  const loss = lossSum / Math.max(seen, 1);
  if (!Number.isFinite(loss)) throw new Error(`training diverged (train_loss=${loss}); lower lr`);
  return { loss, steps: step };
}

/** Mean loss and accuracy of the model on `data`. */
export function evaluate(model: Mlp, data: Samples): { loss: number; accuracy: number } {
  const { losses, correct } = observe(model, data.x, data.y);
  return {
    loss: losses.reduce((a, b) => a + b, 0) / losses.length,
    accuracy: correct.reduce((a, b) => a + b, 0) / correct.length,
  };
}

/** The adapter's config as safetensors metadata (client_sdk.trainer_settings.AdapterConfig). */
export function adapterMetadata(task: TrainTask): Record<string, string> {
  return {
    rank: String(task.rank),
    lora_alpha: pythonFloat(task.lora_alpha),
    use_rslora: task.use_rslora ? "true" : "false",
    adapter_type: task.adapter_type,
  };
}

/** repr(float(x)) for the values a job's alpha takes (16 -> "16.0"). */
function pythonFloat(x: number): string {
  return Number.isInteger(x) && Math.abs(x) < 1e16 ? x.toFixed(1) : String(x);
}

/** Train one round: the update to upload, the private tensors to keep, n_k and the metrics. */
export function trainRound(base: Base, task: TrainTask, adapter: Uint8Array, privateBytes: Uint8Array | null,
  train: Samples, val: Samples | null, seed: number, onStep?: (done: number, total: number) => void): RoundResult {
  if (task.adapter_type !== "lora") throw new Error(`this client trains LoRA adapters, not ${task.adapter_type}`);
  if (task.model === null) throw new Error("the job names no model: this client trains flaas:digits");
  const modes = layerModes(task.model);
  const incoming = decode(adapter).tensors;
  let kept: Tensors = {};
  if (privateBytes !== null) {
    const stored = decode(privateBytes);
    // Private tensors of another rank or adapter type cannot be loaded: start those afresh.
    if (stored.metadata.rank === String(task.rank) && stored.metadata.adapter_type === task.adapter_type) {
      kept = Object.fromEntries(Object.entries(stored.tensors).filter(([k]) => !(k in incoming)));
    }
  }
  const model = buildModel(base, modes, task, incoming, kept);
  const started = performance.now();
  const { loss, steps } = fit(model, train, task.training, seed, task.frozen_parts, onStep);
  const metrics: Record<string, number> = {
    train_loss: loss, train_seconds: (performance.now() - started) / 1000, steps,
  };
  const evaluation = evaluate(model, val ?? train);
  if (val !== null) {
    metrics.val_loss = evaluation.loss;
    metrics.val_accuracy = evaluation.accuracy;
  }
  const shared: Record<string, { shape: number[]; data: Float32Array }> = {};
  const own: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const p of parameters(model)) {
    const part = partOf(p.key);
    if (task.shared_parts.includes(part)) shared[p.key] = { shape: p.shape, data: p.value };
    else if (!task.frozen_parts.includes(part)) own[p.key] = { shape: p.shape, data: p.value };
  }
  if (Object.keys(shared).length === 0) throw new Error(`shared_parts ${task.shared_parts} match no tensor of this adapter`);
  const meta = adapterMetadata(task);
  const update = encode(shared, { ...meta, n_samples: String(train.y.length), parts: [...task.shared_parts].sort().join(",") });
  const keptBytes = Object.keys(own).length
    ? encode(own, { ...meta, strategy: task.strategy, round: String(task.round_number) })
    : null;
  return { update, private: keptBytes, nSamples: train.y.length, metrics, evaluation };
}

