// PyTorch on the CPU as a peer (optional): the GPT step of ./torch_step.py in a Python subprocess,
// from our initial weights, on the same batches, with torch's own clip_grad_norm_ and AdamW (decay on
// 2-D+ parameters only), torch.set_num_threads(os.availableParallelism()).
//
// The Python is CHOTTA_TORCH_PYTHON, or /usr/bin/python3 (Debian's python3-torch lives there, not
// in a pyenv or venv python3 that PATH may find first). When it cannot import torch, or does not
// exist, creating the peer fails with SKIP_MESSAGE, which the bench shows as the row's note.
//
// Protocol (torch_step.py's docstring has it in full): one JSON line per request and per reply,
// each followed by raw little-endian bytes when its `nbytes` says so; one request at a time. The
// subprocess keeps Node's event loop alive only while a request is outstanding.

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkWeights, DEFAULT_ADAMW, type PeerOptions, type PeerStep } from './peer.ts';

export const SKIP_MESSAGE = 'skipped: no python3 with torch; apt-get install python3-torch libopenblas0-pthread';
const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'torch_step.py');

type Reply = { ok: boolean; error?: string; skip?: boolean; nbytes?: number; [k: string]: unknown };

/** The Python process and its reply stream: JSON lines, some followed by binary payloads. */
class TorchProcess {
  private buf = Buffer.alloc(0);
  private waiting: { resolve: (r: { reply: Reply; payload: Buffer }) => void; reject: (e: Error) => void } | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private stderr = '';
  private exited: string | undefined;

  constructor(private child: ChildProcessWithoutNullStreams) {
    child.stdout.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.drain();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString()).slice(-4000);
    });
    const fail = (why: string) => {
      this.exited ??= why;
      const w = this.waiting;
      this.waiting = undefined;
      w?.reject(new Error(`${why}${this.stderr.trim() ? `: ${this.stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`));
    };
    child.on('error', (err) => fail(err.message));
    child.on('exit', (code, signal) => fail(`python exited (${signal ?? `code ${code}`})`));
    child.stdin.on('error', () => {}); // a write after exit: 'exit' reports it
    this.idle();
  }

  private drain(): void {
    if (!this.waiting) return;
    const nl = this.buf.indexOf(10);
    if (nl < 0) return;
    const reply = JSON.parse(this.buf.subarray(0, nl).toString()) as Reply;
    const n = reply.nbytes ?? 0;
    if (this.buf.length < nl + 1 + n) return;
    const payload = Buffer.from(this.buf.subarray(nl + 1, nl + 1 + n));
    this.buf = this.buf.subarray(nl + 1 + n);
    const w = this.waiting;
    this.waiting = undefined;
    w.resolve({ reply, payload });
  }

  private busy(): void {
    this.child.ref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) (s as unknown as { ref?(): void }).ref?.();
  }

  private idle(): void {
    this.child.unref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) (s as unknown as { unref?(): void }).unref?.();
  }

  /** Sends one request (header + payload) and resolves with the reply once the previous ones are answered. */
  request(header: Record<string, unknown>, payload?: Uint8Array): Promise<{ reply: Reply; payload: Buffer }> {
    const run = () =>
      new Promise<{ reply: Reply; payload: Buffer }>((resolve, reject) => {
        if (this.exited) return reject(new Error(this.exited));
        this.busy();
        this.waiting = {
          resolve: (r) => {
            this.idle();
            resolve(r);
          },
          reject: (e) => {
            this.idle();
            reject(e);
          },
        };
        const body = payload ? Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength) : undefined;
        this.child.stdin.write(JSON.stringify({ ...header, nbytes: body?.length ?? 0 }) + '\n');
        if (body) this.child.stdin.write(body);
        this.drain();
      });
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => {});
    return next;
  }

  close(): void {
    if (this.exited) return;
    this.child.stdin.end(JSON.stringify({ cmd: 'quit' }) + '\n');
    this.idle();
    const timer = setTimeout(() => this.child.kill(), 2000);
    timer.unref();
  }
}

/** Concatenated float32 bytes of `arrays`. */
function concat(arrays: Float32Array[]): Uint8Array {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let offset = 0;
  for (const a of arrays) {
    out.set(a, offset);
    offset += a.length;
  }
  return new Uint8Array(out.buffer);
}

export async function createTorchPeer(opts: PeerOptions): Promise<PeerStep> {
  const shapes = checkWeights(opts.config, opts.weights);
  const names = [...shapes.keys()];
  const python = process.env.CHOTTA_TORCH_PYTHON || '/usr/bin/python3';
  const threads = availableParallelism();
  const child = spawn(python, [SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
  const proc = new TorchProcess(child);
  let init: Reply;
  try {
    ({ reply: init } = await proc.request(
      { cmd: 'init', config: opts.config, lr: opts.lr, adamw: { ...DEFAULT_ADAMW, ...opts.adamw }, threads, params: names.map((name) => ({ name, shape: shapes.get(name) })) },
      concat(names.map((n) => opts.weights.get(n)!)),
    ));
  } catch (err) {
    proc.close();
    const why = err instanceof Error ? err.message : String(err);
    // No such python (spawn ENOENT), or one that dies before answering.
    throw new Error(/ENOENT/.test(why) ? `${SKIP_MESSAGE} (${python} not found)` : `torch-cpu: ${why}`);
  }
  if (!init.ok) {
    proc.close();
    throw new Error(init.skip ? `${SKIP_MESSAGE} (${init.error})` : `torch-cpu could not start: ${init.error}`);
  }

  let disposed = false;
  const peer: PeerStep = {
    name: 'torch-cpu',
    version: `torch ${String(init.torch)} (${python})`,
    device: `PyTorch CPU, eager autograd, ${String(init.threads)} intra-op threads (torch.set_num_threads(${threads})); ${String(init.blas)}`,
    async step(idx, targets) {
      const started = performance.now();
      const ids = new Int32Array(idx.length + targets.length);
      ids.set(idx, 0);
      ids.set(targets, idx.length);
      const { reply } = await proc.request({ cmd: 'step' }, new Uint8Array(ids.buffer));
      if (!reply.ok) throw new Error(`torch-cpu step: ${reply.error}`);
      if (peer.warmupMs === undefined) peer.warmupMs = performance.now() - started;
      return reply.loss as number;
    },
    async params() {
      const { reply, payload } = await proc.request({ cmd: 'params' });
      if (!reply.ok) throw new Error(`torch-cpu params: ${reply.error}`);
      const all = new Float32Array(payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength));
      const out = new Map<string, Float32Array>();
      let offset = 0;
      for (const n of names) {
        const size = opts.weights.get(n)!.length;
        out.set(n, all.slice(offset, offset + size));
        offset += size;
      }
      return out;
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      proc.close();
    },
  };
  return peer;
}
