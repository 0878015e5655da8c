// Token files: the ids of a split, end to end, as little-endian unsigned integers (nanoGPT's
// `train.bin`). Two bytes an id while the vocabulary fits (GPT-2's 50257 does), four beyond.

import { open, readFile, type FileHandle } from 'node:fs/promises';

export type TokenDtype = 'uint16' | 'uint32';
export type TokenArray = Uint16Array | Uint32Array;

const FLUSH_TOKENS = 1 << 20;
const IS_LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

export function tokenDtypeFor(vocabSize: number): TokenDtype {
  return vocabSize <= 1 << 16 ? 'uint16' : 'uint32';
}

const bytesPerToken = (dtype: TokenDtype) => (dtype === 'uint16' ? 2 : 4);

export class TokenFileWriter {
  tokens = 0;
  private buffer: TokenArray;
  private used = 0;

  private constructor(
    readonly path: string,
    readonly dtype: TokenDtype,
    private readonly file: FileHandle,
  ) {
    this.buffer = dtype === 'uint16' ? new Uint16Array(FLUSH_TOKENS) : new Uint32Array(FLUSH_TOKENS);
  }

  static async create(path: string, dtype: TokenDtype): Promise<TokenFileWriter> {
    return new TokenFileWriter(path, dtype, await open(path, 'w'));
  }

  async append(ids: ArrayLike<number>): Promise<void> {
    for (let i = 0; i < ids.length; i++) {
      if (this.used === this.buffer.length) await this.flush();
      this.buffer[this.used++] = ids[i];
    }
    this.tokens += ids.length;
  }

  async close(): Promise<void> {
    await this.flush();
    await this.file.close();
  }

  private async flush(): Promise<void> {
    if (this.used === 0) return;
    const view = this.buffer.subarray(0, this.used);
    const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    await this.file.write(IS_LITTLE_ENDIAN ? bytes : swapByteOrder(bytes, bytesPerToken(this.dtype)));
    this.used = 0;
  }
}

/** A token file as a typed array; its length must be `expectedTokens` when given. */
export async function readTokenFile(path: string, dtype: TokenDtype, expectedTokens?: number): Promise<TokenArray> {
  const file = await readFile(path);
  const width = bytesPerToken(dtype);
  if (file.length % width !== 0 || (expectedTokens !== undefined && file.length !== expectedTokens * width)) {
    const expected = expectedTokens === undefined ? `a multiple of ${width}` : `${expectedTokens * width}`;
    throw new Error(`${path}: ${file.length} bytes, expected ${expected} (${dtype}); the prepared data is damaged, prepare it again`);
  }
  // A fresh, aligned buffer: Node may hand back a slice of a shared pool at any offset.
  const bytes = new Uint8Array(file.length);
  bytes.set(IS_LITTLE_ENDIAN ? file : swapByteOrder(file, width));
  return dtype === 'uint16' ? new Uint16Array(bytes.buffer) : new Uint32Array(bytes.buffer);
}

function swapByteOrder(bytes: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += width) for (let j = 0; j < width; j++) out[i + j] = bytes[i + width - 1 - j];
  return out;
}
