// The safetensors file format (huggingface/safetensors), float32 only, read and written without
// holding a second copy of the tensors: the header is encoded on its own and each tensor's bytes go
// straight between its Float32Array and the file.
//
// Layout: 8 bytes, little-endian u64 N; N bytes of UTF-8 JSON, padded with spaces so that the data
// starts 8-byte aligned; then the tensors' bytes, back to back. The JSON maps each tensor name to
// { dtype, shape, data_offsets: [begin, end] } (offsets relative to the start of the data) and the
// optional key "__metadata__" to a map of strings.

import fs, { type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';

export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

export type SafetensorsMetadata = Record<string, string>;

export interface SafetensorsFile {
  tensors: Map<string, HostTensor>;
  metadata: SafetensorsMetadata;
}

const METADATA_KEY = '__metadata__';
const HEADER_ALIGNMENT = 8;
/** The reference implementation refuses larger headers; a larger length means a corrupt file. */
const MAX_HEADER_BYTES = 100_000_000;
const F32_BYTES = 4;

interface TensorEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/**
 * The bytes before the tensor data: the length prefix and the padded JSON header. Tensors are laid
 * out in the map's order.
 */
export function encodeSafetensorsHeader(tensors: Map<string, HostTensor>, metadata: SafetensorsMetadata = {}): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header[METADATA_KEY] = metadata;
  let offset = 0;
  for (const [name, tensor] of tensors) {
    if (name === METADATA_KEY) throw new Error(`safetensors: "${METADATA_KEY}" cannot name a tensor`);
    const elements = tensor.shape.reduce((a, b) => a * b, 1);
    if (elements !== tensor.data.length) {
      throw new Error(`safetensors: tensor ${name} has shape [${tensor.shape}] (${elements} elements) but ${tensor.data.length} values`);
    }
    const entry: TensorEntry = { dtype: 'F32', shape: tensor.shape, data_offsets: [offset, offset + tensor.data.byteLength] };
    header[name] = entry;
    offset += tensor.data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padding = (HEADER_ALIGNMENT - (json.length % HEADER_ALIGNMENT)) % HEADER_ALIGNMENT;
  const out = Buffer.alloc(8 + json.length + padding, 0x20);
  out.writeBigUInt64LE(BigInt(json.length + padding), 0);
  json.copy(out, 8);
  return out;
}

/** Writes a safetensors file and fsyncs it, so that a later rename publishes complete bytes. */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, HostTensor>,
  metadata: SafetensorsMetadata = {},
): Promise<void> {
  requireLittleEndianHost();
  const header = encodeSafetensorsHeader(tensors, metadata);
  const handle = await fs.open(path, 'w');
  try {
    await writeAll(handle, header);
    for (const { data } of tensors.values()) {
      await writeAll(handle, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Reads and validates a safetensors file of F32 tensors; errors name the file and the problem. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  requireLittleEndianHost();
  const handle = await fs.open(path, 'r');
  try {
    const fileBytes = (await handle.stat()).size;
    if (fileBytes < 8) throw new Error(`${path}: ${fileBytes} bytes is too short for a safetensors file (no header length)`);
    const prefix = await readExactly(handle, path, 8, 0);
    const headerBytes = Number(Buffer.from(prefix).readBigUInt64LE(0));
    if (headerBytes > MAX_HEADER_BYTES) throw new Error(`${path}: header length ${headerBytes} is over the format's limit of ${MAX_HEADER_BYTES} bytes (not safetensors)`);
    if (8 + headerBytes > fileBytes) throw new Error(`${path}: header length ${headerBytes} does not fit in a file of ${fileBytes} bytes (truncated or not safetensors)`);
    const headerText = Buffer.from(await readExactly(handle, path, headerBytes, 8)).toString('utf8');
    const { entries, metadata } = parseHeader(headerText, fileBytes - 8 - headerBytes, path);
    const tensors = new Map<string, HostTensor>();
    for (const [name, entry] of entries) {
      const [begin, end] = entry.data_offsets;
      const data = new Float32Array((end - begin) / F32_BYTES);
      await readExactly(handle, path, end - begin, 8 + headerBytes + begin, new Uint8Array(data.buffer));
      tensors.set(name, { shape: entry.shape, data });
    }
    return { tensors, metadata };
  } finally {
    await handle.close();
  }
}

/** Checks the header as the reference implementation does: known dtype, sizes agree, no gaps. */
function parseHeader(
  text: string,
  dataBytes: number,
  path: string,
): { entries: Map<string, TensorEntry>; metadata: SafetensorsMetadata } {
  if (!text.startsWith('{')) throw new Error(`${path}: the header does not start with '{' (not a safetensors file)`);
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (error) {
    throw new Error(`${path}: the header is not valid JSON (${(error as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new Error(`${path}: the header is not a JSON object`);
  }
  const metadata: SafetensorsMetadata = {};
  const entries = new Map<string, TensorEntry>();
  for (const [name, value] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (typeof value !== 'object' || value === null) throw new Error(`${path}: "${METADATA_KEY}" is not a JSON object`);
      for (const [key, text] of Object.entries(value as object)) {
        if (typeof text !== 'string') throw new Error(`${path}: metadata "${key}" is not a string`);
        metadata[key] = text;
      }
      continue;
    }
    entries.set(name, checkEntry(name, value, path));
  }
  // Sorted by offset, the tensors must tile the data exactly: no overlap, no gap, no tail.
  const byOffset = [...entries].sort(([, a], [, b]) => a.data_offsets[0] - b.data_offsets[0]);
  let expectedBegin = 0;
  for (const [name, { data_offsets: [begin, end] }] of byOffset) {
    if (begin !== expectedBegin) {
      throw new Error(`${path}: tensor ${name} starts at data offset ${begin}, expected ${expectedBegin} (overlap or gap)`);
    }
    expectedBegin = end;
  }
  if (expectedBegin !== dataBytes) {
    throw new Error(`${path}: the tensors cover ${expectedBegin} bytes of data but the file holds ${dataBytes} (truncated or padded)`);
  }
  return { entries, metadata };
}

function checkEntry(name: string, value: unknown, path: string): TensorEntry {
  const entry = value as Partial<TensorEntry> | null;
  const shape = entry?.shape;
  const offsets = entry?.data_offsets;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`${path}: tensor ${name} has no valid shape`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isInteger(o) && o >= 0)) {
    throw new Error(`${path}: tensor ${name} has no valid data_offsets`);
  }
  if (entry?.dtype !== 'F32') {
    throw new Error(`${path}: tensor ${name} has dtype ${String(entry?.dtype)}; only F32 is supported`);
  }
  const expectedBytes = shape.reduce((a, b) => a * b, 1) * F32_BYTES;
  if (offsets[1] - offsets[0] !== expectedBytes) {
    throw new Error(
      `${path}: tensor ${name} of shape [${shape}] needs ${expectedBytes} bytes but data_offsets [${offsets}] give ${offsets[1] - offsets[0]}`,
    );
  }
  return { dtype: 'F32', shape, data_offsets: [offsets[0], offsets[1]] };
}

/** A single write may be partial; loop until every byte is out. */
async function writeAll(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, written, bytes.length - written);
    written += bytesWritten;
  }
}

/** A single read may be partial; loop until `length` bytes are in, failing at an early end of file. */
async function readExactly(handle: FileHandle, path: string, length: number, position: number, into = new Uint8Array(length)): Promise<Uint8Array> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(into, done, length - done, position + done);
    if (bytesRead === 0) throw new Error(`${path}: unexpected end of file at byte ${position + done} (truncated while being read)`);
    done += bytesRead;
  }
  return into;
}

/** The format is little-endian and Float32Array uses the host's byte order. */
function requireLittleEndianHost(): void {
  if (endianness() !== 'LE') throw new Error('safetensors: this reader and writer need a little-endian host');
}
