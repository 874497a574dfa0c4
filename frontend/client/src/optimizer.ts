/**
 * The optimisers a job may name (adam, adamw, sgd), with torch's update rules and defaults
 * (betas 0.9 / 0.999, eps 1e-8; the job sends no weight decay or momentum, so both are 0 and
 * adamw is adam). A new optimiser per round, as client_sdk.training_loop makes one per fit.
 */

export interface Optimizer {
  step(params: { value: Float32Array; grad: Float32Array }[]): void;
}

export function makeOptimizer(name: string, lr: number): Optimizer {
  if (name === "sgd") {
    return {
      step(params) {
        for (const { value, grad } of params) for (let i = 0; i < value.length; i++) value[i] -= lr * grad[i];
      },
    };
  }
  if (name !== "adam" && name !== "adamw") throw new Error(`unknown optimizer ${JSON.stringify(name)}`);
  return adam(lr);
}

function adam(lr: number, beta1 = 0.9, beta2 = 0.999, eps = 1e-8): Optimizer {
  const moments = new Map<Float32Array, { m: Float32Array; v: Float32Array }>();
  let t = 0;
  return {
    step(params) {
      t += 1;
      const stepSize = lr / (1 - beta1 ** t);
      const correction2 = Math.sqrt(1 - beta2 ** t);
      for (const { value, grad } of params) {
        let state = moments.get(value);
        if (state === undefined) {
          state = { m: new Float32Array(value.length), v: new Float32Array(value.length) };
          moments.set(value, state);
        }
        const { m, v } = state;
        for (let i = 0; i < value.length; i++) {
          m[i] += (grad[i] - m[i]) * (1 - beta1);
          v[i] = v[i] * beta2 + (1 - beta2) * grad[i] * grad[i];
          value[i] -= (stepSize * m[i]) / (Math.sqrt(v[i]) / correction2 + eps);
        }
      }
    },
  };
}
