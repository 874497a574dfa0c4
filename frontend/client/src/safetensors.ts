/**
 * safetensors in the browser: `| N: u64 little-endian | N bytes of JSON header | data |`.
 *
 * `encode` writes what client_sdk.wire_format.encode_update writes, byte for byte (F32,
 * little-endian, keys sorted, `__metadata__` first with its keys sorted, compact JSON, the
 * header padded with spaces to 8 bytes), so the same tensors give the same SHA-256 in both
 * clients. `decode` reads the dtypes the coordinator accepts in an update (F32, F16, BF16) as
 * float32, and U8 for the bundled samples.
 */

export interface Tensor {
  shape: number[];
  data: Float32Array | Uint8Array;
}

export type Tensors = Record<string, Tensor>;

export interface Decoded {
  tensors: Tensors;
  metadata: Record<string, string>;
}

const ITEM_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, U8: 1 };

export function elements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Float32 tensors and string metadata as safetensors bytes. */
export function encode(tensors: Record<string, { shape: number[]; data: Float32Array }>,
  metadata: Record<string, string> = {}): Uint8Array {
  const header: Record<string, unknown> = {};
  const sortedMeta: Record<string, string> = {};
  for (const key of Object.keys(metadata).sort()) sortedMeta[key] = String(metadata[key]);
  header.__metadata__ = sortedMeta;
  const keys = Object.keys(tensors).sort();
  let offset = 0;
  for (const key of keys) {
    const { shape, data } = tensors[key];
    if (data.length !== elements(shape)) {
      throw new Error(`tensor ${key}: ${data.length} values for shape [${shape}]`);
    }
    header[key] = { dtype: "F32", shape, data_offsets: [offset, offset + data.length * 4] };
    offset += data.length * 4;
  }
  let text = asciiJson(header);
  text += " ".repeat((8 - (text.length % 8)) % 8);
  const out = new Uint8Array(8 + text.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(text.length), true);
  for (let i = 0; i < text.length; i++) out[8 + i] = text.charCodeAt(i);
  let at = 8 + text.length;
  for (const key of keys) {
    const data = tensors[key].data;
    for (let i = 0; i < data.length; i++, at += 4) view.setFloat32(at, data[i], true);
  }
  return out;
}

/** Parse safetensors bytes; F32/F16/BF16 become Float32Array, U8 stays Uint8Array. */
export function decode(bytes: Uint8Array): Decoded {
  if (bytes.length < 8) throw new Error("not safetensors: shorter than its 8-byte header length");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = Number(view.getBigUint64(0, true));
  if (8 + size > bytes.length) throw new Error("not safetensors: header runs past the end");
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + size))) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>
  >;
  const start = 8 + size;
  const tensors: Tensors = {};
  let metadata: Record<string, string> = {};
  for (const [key, entry] of Object.entries(header)) {
    if (key === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets: [begin, end] } = entry as {
      dtype: string; shape: number[]; data_offsets: [number, number];
    };
    const item = ITEM_BYTES[dtype];
    if (item === undefined) throw new Error(`tensor ${key}: dtype ${dtype} is not supported`);
    const count = elements(shape);
    if (end - begin !== count * item || start + end > bytes.length) {
      throw new Error(`tensor ${key}: offsets [${begin}, ${end}] do not fit shape [${shape}]`);
    }
    const at = start + begin;
    tensors[key] = { shape, data: read(view, at, count, dtype) };
  }
  return { tensors, metadata };
}

function read(view: DataView, at: number, count: number, dtype: string): Float32Array | Uint8Array {
  if (dtype === "U8") return new Uint8Array(view.buffer.slice(view.byteOffset + at, view.byteOffset + at + count));
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    if (dtype === "F32") out[i] = view.getFloat32(at + 4 * i, true);
    else if (dtype === "F16") out[i] = half(view.getUint16(at + 2 * i, true));
    else out[i] = bfloat(view.getUint16(at + 2 * i, true));
  }
  return out;
}

const scratch = new DataView(new ArrayBuffer(4));

function bfloat(bits: number): number {
  scratch.setUint32(0, bits << 16);
  return scratch.getFloat32(0);
}

function half(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** JSON as Python's json.dumps(separators=(",", ":")) writes it: non-ASCII escaped. */
function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[\u007f-\uffff]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"),
  );
}
