/**
 * The digits MLP (fc1 -> ReLU -> fc2 -> ReLU -> fc3) with peft's LoRA on some of its layers,
 * forward and backward by hand on Float32Arrays: 64 inputs, 128 hidden, 10 classes is small
 * enough that a tensor library would only add weight to the page.
 *
 * A layer is frozen (the base's weights), adapted by LoRA (`z = x W^T + b + s (x A^T) B^T`, only
 * A and B train) or trained in full (peft's modules_to_save, e.g. the head). Matrices are
 * row-major in torch's layout: W is (out, in), A is (r, in), B is (out, r). Tensors are named by
 * their peft state-dict keys (`base_model.model.fc1.lora_A.weight`, `base_model.model.fc3.bias`),
 * the names the coordinator sends and expects.
 */

export type LayerMode = "frozen" | "lora" | "full";
export const KEY_PREFIX = "base_model.model.";

export interface Layer {
  name: string;
  dIn: number;
  dOut: number;
  mode: LayerMode;
  weight: Float32Array;
  bias: Float32Array;
  a: Float32Array | null;
  b: Float32Array | null;
}

export interface Mlp {
  layers: Layer[];
  rank: number;
  /** LoRA's scale s: alpha / r, or alpha / sqrt(r) with rsLoRA. */
  scale: number;
}

/** A state-dict key's tensor inside the model: its values and its shape. */
export interface Parameter {
  key: string;
  value: Float32Array;
  shape: number[];
}

/** The model's adapter state: LoRA factors of adapted layers, weights of fully trained ones. */
export function parameters(model: Mlp): Parameter[] {
  const out: Parameter[] = [];
  for (const layer of model.layers) {
    const prefix = KEY_PREFIX + layer.name;
    if (layer.mode === "lora") {
      out.push({ key: `${prefix}.lora_A.weight`, value: layer.a!, shape: [model.rank, layer.dIn] });
      out.push({ key: `${prefix}.lora_B.weight`, value: layer.b!, shape: [layer.dOut, model.rank] });
    } else if (layer.mode === "full") {
      out.push({ key: `${prefix}.weight`, value: layer.weight, shape: [layer.dOut, layer.dIn] });
      out.push({ key: `${prefix}.bias`, value: layer.bias, shape: [layer.dOut] });
    }
  }
  return out;
}

interface Cache {
  inputs: Float32Array[]; // each layer's input, n x dIn
  lowRank: (Float32Array | null)[]; // x A^T of LoRA layers, n x r
  preActivations: Float32Array[]; // z of each layer, n x dOut
}

/** out (n x m) = x (n x k) . w^T, w being (m x k); plus `bias` per column when given. */
function timesTransposed(x: Float32Array, n: number, k: number, w: Float32Array, m: number,
  bias: Float32Array | null, out: Float32Array = new Float32Array(n * m), scale = 1): Float32Array {
  for (let row = 0; row < n; row++) {
    const xo = row * k;
    for (let col = 0; col < m; col++) {
      const wo = col * k;
      let sum = 0;
      for (let i = 0; i < k; i++) sum += x[xo + i] * w[wo + i];
      out[row * m + col] += scale * sum + (bias === null ? 0 : bias[col]);
    }
  }
  return out;
}

/** acc (m x k) += scale * g^T (m x n) . x (n x k). */
function addTransposedTimes(g: Float32Array, n: number, m: number, x: Float32Array, k: number,
  acc: Float32Array, scale = 1): void {
  for (let row = 0; row < n; row++) {
    for (let col = 0; col < m; col++) {
      const gv = scale * g[row * m + col];
      if (gv === 0) continue;
      const ao = col * k;
      const xo = row * k;
      for (let i = 0; i < k; i++) acc[ao + i] += gv * x[xo + i];
    }
  }
}

/** out (n x k) += scale * g (n x m) . w (m x k). */
function addTimes(g: Float32Array, n: number, m: number, w: Float32Array, k: number,
  out: Float32Array, scale = 1): void {
  for (let row = 0; row < n; row++) {
    const oo = row * k;
    for (let col = 0; col < m; col++) {
      const gv = scale * g[row * m + col];
      if (gv === 0) continue;
      const wo = col * k;
      for (let i = 0; i < k; i++) out[oo + i] += gv * w[wo + i];
    }
  }
}

function forward(model: Mlp, x: Float32Array, n: number): { logits: Float32Array; cache: Cache } {
  const cache: Cache = { inputs: [], lowRank: [], preActivations: [] };
  let h: Float32Array = x;
  model.layers.forEach((layer, index) => {
    cache.inputs.push(h);
    const z = timesTransposed(h, n, layer.dIn, layer.weight, layer.dOut, layer.bias);
    let u: Float32Array | null = null;
    if (layer.mode === "lora") {
      u = timesTransposed(h, n, layer.dIn, layer.a!, model.rank, null);
      timesTransposed(u, n, model.rank, layer.b!, layer.dOut, null, z, model.scale);
    }
    cache.lowRank.push(u);
    cache.preActivations.push(z);
    h = index === model.layers.length - 1 ? z : z.map((v) => (v > 0 ? v : 0));
  });
  return { logits: h, cache };
}

/** Per-sample cross-entropy and whether the arg-max class is the label. */
function crossEntropy(logits: Float32Array, labels: Int32Array, classes: number): { losses: Float64Array; correct: Uint8Array } {
  const n = labels.length;
  const losses = new Float64Array(n);
  const correct = new Uint8Array(n);
  for (let row = 0; row < n; row++) {
    const at = row * classes;
    let best = 0;
    for (let c = 1; c < classes; c++) if (logits[at + c] > logits[at + best]) best = c;
    let sum = 0;
    for (let c = 0; c < classes; c++) sum += Math.exp(logits[at + c] - logits[at + best]);
    losses[row] = Math.log(sum) + logits[at + best] - logits[at + labels[row]];
    correct[row] = best === labels[row] ? 1 : 0;
  }
  return { losses, correct };
}

/** Losses and correctness of every sample, no gradients (the observation pass). */
export function observe(model: Mlp, x: Float32Array, labels: Int32Array): { losses: Float64Array; correct: Uint8Array } {
  const last = model.layers[model.layers.length - 1];
  return crossEntropy(forward(model, x, labels.length).logits, labels, last.dOut);
}

/**
 * Add the gradients of `sum(losses) / weight` over one batch to `grads`, for the parameters it
 * has a key of (`parameters`' keys: a frozen one has none); returns the batch's summed loss.
 */
export function accumulateGradients(model: Mlp, x: Float32Array, labels: Int32Array, weight: number,
  grads: Map<string, Float32Array>): number {
  const n = labels.length;
  const { logits, cache } = forward(model, x, n);
  const classes = model.layers[model.layers.length - 1].dOut;
  const { losses } = crossEntropy(logits, labels, classes);
  // d(loss)/d(logits) = softmax - one-hot, for each sample, divided by the step's weight.
  let grad = new Float32Array(n * classes);
  for (let row = 0; row < n; row++) {
    const at = row * classes;
    let max = -Infinity;
    for (let c = 0; c < classes; c++) max = Math.max(max, logits[at + c]);
    let sum = 0;
    for (let c = 0; c < classes; c++) sum += Math.exp(logits[at + c] - max);
    for (let c = 0; c < classes; c++) {
      grad[at + c] = (Math.exp(logits[at + c] - max) / sum - (c === labels[row] ? 1 : 0)) / weight;
    }
  }
  for (let index = model.layers.length - 1; index >= 0; index--) {
    const layer = model.layers[index];
    const input = cache.inputs[index];
    if (index < model.layers.length - 1) {
      const z = cache.preActivations[index];
      for (let i = 0; i < grad.length; i++) if (z[i] <= 0) grad[i] = 0;
    }
    const prefix = KEY_PREFIX + layer.name;
    let lowRankGrad: Float32Array | null = null;
    const gradOf = (suffix: string) => grads.get(`${prefix}.${suffix}`);
    if (layer.mode === "full") {
      const weightGrad = gradOf("weight");
      const biasGrad = gradOf("bias");
      if (weightGrad) addTransposedTimes(grad, n, layer.dOut, input, layer.dIn, weightGrad);
      if (biasGrad) {
        for (let row = 0; row < n; row++) for (let o = 0; o < layer.dOut; o++) biasGrad[o] += grad[row * layer.dOut + o];
      }
    } else if (layer.mode === "lora") {
      const r = model.rank;
      const bGrad = gradOf("lora_B.weight");
      if (bGrad) addTransposedTimes(grad, n, layer.dOut, cache.lowRank[index]!, r, bGrad, model.scale);
      lowRankGrad = new Float32Array(n * r);
      addTimes(grad, n, layer.dOut, layer.b!, r, lowRankGrad, model.scale);
      const aGrad = gradOf("lora_A.weight");
      if (aGrad) addTransposedTimes(lowRankGrad, n, r, input, layer.dIn, aGrad);
    }
    if (index === 0) break;
    const next = new Float32Array(n * layer.dIn);
    addTimes(grad, n, layer.dOut, layer.weight, layer.dIn, next);
    if (lowRankGrad !== null) addTimes(lowRankGrad, n, model.rank, layer.a!, layer.dIn, next);
    grad = next;
  }
  return losses.reduce((a, b) => a + b, 0);
}
