// A temporary file of extracted documents. Preparing data needs the documents more than once
// (count them to split, count words to train a BPE, encode), and re-reading the source would
// mean decompressing and parsing a dump again; memory would not hold a large corpus. Records are
// a little-endian u32 byte length followed by that many bytes of UTF-8.

import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

const FLUSH_BYTES = 1 << 22;

export class DocumentSpool {
  documents = 0;
  characters = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  private constructor(
    readonly path: string,
    private file: FileHandle | undefined,
  ) {}

  static async create(path: string): Promise<DocumentSpool> {
    return new DocumentSpool(path, await open(path, 'w'));
  }

  async append(document: string): Promise<void> {
    if (!this.file) throw new Error(`document spool ${this.path} is already closed`);
    const bytes = Buffer.from(document, 'utf8');
    const header = Buffer.alloc(4);
    header.writeUInt32LE(bytes.length);
    this.pending.push(header, bytes);
    this.pendingBytes += 4 + bytes.length;
    this.documents++;
    this.characters += document.length;
    if (this.pendingBytes >= FLUSH_BYTES) await this.flush();
  }

  async close(): Promise<void> {
    if (!this.file) return;
    await this.flush();
    await this.file.close();
    this.file = undefined;
  }

  /** The documents in the order they were appended. */
  async *read(): AsyncGenerator<string> {
    let carry: Buffer = Buffer.alloc(0);
    for await (const chunk of createReadStream(this.path, { highWaterMark: FLUSH_BYTES })) {
      const buffer: Buffer = carry.length > 0 ? Buffer.concat([carry, chunk as Buffer]) : (chunk as Buffer);
      let offset = 0;
      while (buffer.length - offset >= 4) {
        const length = buffer.readUInt32LE(offset);
        if (buffer.length - offset - 4 < length) break;
        yield buffer.toString('utf8', offset + 4, offset + 4 + length);
        offset += 4 + length;
      }
      carry = buffer.subarray(offset);
    }
    if (carry.length > 0) throw new Error(`document spool ${this.path} ends inside a record`);
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0 || !this.file) return;
    await this.file.write(Buffer.concat(this.pending, this.pendingBytes));
    this.pending = [];
    this.pendingBytes = 0;
  }
}
