/**
 * Seeds and shuffles. The round's training seed is the Python SDK's
 * (client_sdk.rounds.RoundContext.training_seed: CRC-32 of "<job seed>:<round>:<identity>"), so
 * a retrained round shuffles its batches the same way and gives the same bytes. The shuffles
 * themselves are this client's own (mulberry32): not torch's, so the batches differ from a
 * Python client's on the same data and seed.
 */

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** zlib.crc32 of the UTF-8 bytes of `text`. */
export function crc32(text: string): number {
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) {
    crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** The seed of one round's local training (client_sdk.rounds.RoundContext.training_seed). */
export function trainingSeed(jobSeed: number, round: number, clientId: string, name?: string | null): number {
  const identity = name == null ? clientId : `name:${name}`;
  return crc32(`${jobSeed}:${round}:${identity}`);
}

/** A uniform [0, 1) generator from a 32-bit seed (mulberry32). */
export function generator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A permutation of 0..n-1 drawn from `seed` (Fisher-Yates). */
export function permutation(n: number, seed: number): Int32Array {
  const next = generator(seed);
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}
