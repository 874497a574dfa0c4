/**
 * The device's data and the digits model's static files, next to the bundle in `digits/`
 * (written by frontend/client/scripts/export_digits.py from client_sdk): `manifest.json` (the
 * model's identity and shape), `base.safetensors` (the frozen pretrained base) and
 * `samples.safetensors` (the digits task's client pool, and which device of n holds each row:
 * the Dirichlet split `flaas simulate --clients n` cuts).
 */

import { sha256Hex } from "./encoding.js";
import { permutation } from "./random.js";
import { decode, type Tensors } from "./safetensors.js";
import { selectRows, type Samples } from "./training.js";

/** Pixels of a digits image are 0..16; the model reads them divided by 16. */
export const PIXEL_MAX = 16;
/** Share of the device's samples held out for its local validation metrics (the CLI's). */
export const VAL_FRACTION = 0.2;
/** Fewer samples than this keep no holdout (client_sdk.datafile.MIN_HOLDOUT_SAMPLES). */
export const MIN_HOLDOUT_SAMPLES = 10;

export interface Manifest {
  model: string;
  config_sha256: string;
  features: number;
  hidden: number;
  num_labels: number;
  max_devices: number;
  sha256: Record<string, string>;
}

export function defaultAssets(): URL {
  return new URL("./digits/", import.meta.url);
}

async function fetchBytes(url: URL, manifest?: Manifest): Promise<Uint8Array> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url} -> ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const name = url.pathname.split("/").pop()!;
  const expected = manifest?.sha256[name];
  if (expected !== undefined && (await sha256Hex(bytes)) !== expected) {
    throw new Error(`${url} is not the file manifest.json names (a stale cache?): reload the page`);
  }
  return bytes;
}

export async function loadManifest(assets: string | URL = defaultAssets()): Promise<Manifest> {
  const response = await fetch(new URL("manifest.json", assets));
  if (!response.ok) throw new Error(`GET ${new URL("manifest.json", assets)} -> ${response.status}`);
  return (await response.json()) as Manifest;
}

/** The frozen base's tensors (`fc1.weight` ... `fc3.bias`, float32). */
export async function loadBase(manifest: Manifest, assets: string | URL = defaultAssets()): Promise<Tensors> {
  return decode(await fetchBytes(new URL("base.safetensors", assets), manifest)).tensors;
}

/** The bundled digits sample of device `deviceIndex` of `numDevices` (0-based). */
export async function digitsSample(deviceIndex: number, numDevices: number,
  assets: string | URL = defaultAssets()): Promise<Samples> {
  const manifest = await loadManifest(assets);
  if (!Number.isInteger(numDevices) || numDevices < 1 || numDevices > manifest.max_devices) {
    throw new Error(`the bundled samples are cut for 1 to ${manifest.max_devices} devices, not ${numDevices}`);
  }
  if (!Number.isInteger(deviceIndex) || deviceIndex < 0 || deviceIndex >= numDevices) {
    throw new Error(`device index ${deviceIndex} is not in 0..${numDevices - 1}`);
  }
  const { tensors } = decode(await fetchBytes(new URL("samples.safetensors", assets), manifest));
  const owner = tensors[`owner.${numDevices}`].data;
  const pixels = tensors.x.data;
  const features = tensors.x.shape[1];
  const mine: number[] = [];
  owner.forEach((device, row) => device === deviceIndex && mine.push(row));
  const x = new Float32Array(mine.length * features);
  const y = new Int32Array(mine.length);
  mine.forEach((row, i) => {
    for (let f = 0; f < features; f++) x[i * features + f] = pixels[row * features + f] / PIXEL_MAX;
    y[i] = tensors.y.data[row];
  });
  return { x, y, features };
}

/**
 * A CSV file the user picks: one image per line, 64 pixel values (0..16, row by row) and then
 * its label (0..9), comma-separated: the UCI optdigits format (optdigits.tra). A first line
 * that is not numbers (a header) and blank lines are skipped.
 */
export function parseDataFile(text: string, features = 64, numLabels = 10): Samples {
  const x: number[] = [];
  const y: number[] = [];
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  lines.forEach((line, index) => {
    if (line.trim() === "") return;
    const cells = line.split(",").map((c) => c.trim());
    const values = cells.map(Number);
    if (index === 0 && values.some((v, i) => Number.isNaN(v) || cells[i] === "")) return; // a header
    const where = `line ${index + 1}`;
    if (cells.length !== features + 1) {
      throw new Error(`${where}: ${cells.length} values; a row holds ${features} pixels and a label`);
    }
    for (let i = 0; i < features; i++) {
      const v = values[i];
      if (cells[i] === "" || !Number.isFinite(v) || v < 0 || v > PIXEL_MAX) {
        throw new Error(`${where}: pixel ${i + 1} is ${JSON.stringify(cells[i])}; pixels are numbers in 0..${PIXEL_MAX}`);
      }
      x.push(v / PIXEL_MAX);
    }
    const label = values[features];
    if (!Number.isInteger(label) || label < 0 || label >= numLabels) {
      throw new Error(`${where}: label ${JSON.stringify(cells[features])} is not an integer in 0..${numLabels - 1}`);
    }
    y.push(label);
  });
  if (y.length === 0) throw new Error(`no samples: expected rows of ${features} pixels (0..${PIXEL_MAX}) and a label`);
  return { x: Float32Array.from(x), y: Int32Array.from(y), features };
}

/** (training, validation) parts: `VAL_FRACTION` of the rows (at least one) held out, shuffled
 * from a fixed seed; no validation part under `MIN_HOLDOUT_SAMPLES` rows. */
export function holdout(data: Samples, seed = 0): { train: Samples; val: Samples | null } {
  const n = data.y.length;
  if (n < MIN_HOLDOUT_SAMPLES) return { train: data, val: null };
  const order = permutation(n, seed);
  const nVal = Math.max(1, Math.round(n * VAL_FRACTION));
  return { train: selectRows(data, order.subarray(nVal)), val: selectRows(data, order.subarray(0, nVal)) };
}
