/**
 * AutoRank's data-complexity statistics, as client_sdk.profile computes them (docs/algorithms.md,
 * "AutoRank"): only these scalars leave the device at enrolment. The loss histogram places every
 * value in the bin numpy.histogram places it in (edges from numpy.linspace, a value on an edge
 * goes up, the maximum into the last bin), so the two clients agree to rounding.
 */

export const LOSS_BINS = 10;

export type ComplexityStats = Record<string, number | null>;

/** Shares of each distinct label (in ascending label order) and how many classes to count. */
function classShares(labels: ArrayLike<number>, numClasses?: number): { shares: number[]; classes: number } {
  const counts = new Map<number, number>();
  for (let i = 0; i < labels.length; i++) counts.set(labels[i], (counts.get(labels[i]) ?? 0) + 1);
  const observed = counts.size;
  if (numClasses !== undefined && numClasses < observed) {
    throw new Error(`numClasses=${numClasses} but ${observed} distinct labels occur`);
  }
  const shares = [...counts.keys()].sort((a, b) => a - b).map((k) => counts.get(k)! / labels.length);
  return { shares, classes: numClasses ?? observed };
}

/** Label entropy normalised by ln C, in [0, 1]. */
export function labelEntropy(labels: ArrayLike<number>, numClasses?: number): number {
  const { shares, classes } = classShares(labels, numClasses);
  if (classes < 2) return 0;
  return -shares.reduce((sum, q) => sum + q * Math.log(q), 0) / Math.log(classes);
}

/** 1 - sum_c q_c^2: the chance that two random samples have different labels. */
export function giniSimpson(labels: ArrayLike<number>): number {
  const { shares } = classShares(labels);
  return 1 - shares.reduce((sum, q) => sum + q * q, 0);
}

/** Entropy of per-sample losses in `bins` equal-width bins over [min, max], / ln bins. */
export function lossEntropy(losses: ArrayLike<number>, bins = LOSS_BINS): number {
  const n = losses.length;
  let low = Infinity;
  let high = -Infinity;
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(losses[i])) throw new Error("losses must be finite numbers");
    low = Math.min(low, losses[i]);
    high = Math.max(high, losses[i]);
  }
  if (n === 0) throw new Error("losses must be a non-empty array of finite numbers");
  if (high === low) return 0;
  // numpy.linspace(low, high, bins + 1): i * step + low, the last edge exactly `high`.
  const step = (high - low) / bins;
  const edges = Array.from({ length: bins + 1 }, (_, i) => (i === bins ? high : i * step + low));
  const counts = new Array<number>(bins).fill(0);
  for (let i = 0; i < n; i++) {
    const x = losses[i];
    let b = Math.min(Math.floor(((x - low) / (high - low)) * bins), bins - 1);
    if (x < edges[b]) b -= 1;
    else if (b !== bins - 1 && x >= edges[b + 1]) b += 1;
    counts[b] += 1;
  }
  let entropy = 0;
  for (const count of counts) if (count > 0) entropy -= (count / n) * Math.log(count / n);
  return entropy / Math.log(bins);
}

/**
 * The AutoRank criteria of a device's training data: `n_samples`, `label_entropy`,
 * `gini_simpson` and `loss_entropy` (null without losses). `losses` are the per-sample losses of
 * one pass of the initial global model (the base: every B is zero before round 1).
 */
export function complexityStats(
  labels: ArrayLike<number>,
  losses: ArrayLike<number> | null,
  numClasses?: number,
): ComplexityStats {
  if (labels.length < 1) throw new Error("no training samples");
  if (losses !== null && losses.length !== labels.length) {
    throw new Error(`${labels.length} labels but ${losses.length} losses`);
  }
  return {
    n_samples: labels.length,
    label_entropy: labelEntropy(labels, numClasses),
    gini_simpson: giniSimpson(labels),
    loss_entropy: losses === null ? null : lossEntropy(losses),
  };
}
