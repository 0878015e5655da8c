// A browser-style global `Worker` for Node, on worker_threads, just enough for jax-js's Wasm
// worker pool: `new Worker(blobUrl, { type: 'module' })`, `postMessage`, `onmessage`, `onerror`,
// `terminate`. The worker's source is read from the blob URL (node:buffer resolveObjectURL) and run
// with `self`, `postMessage` and `self.onmessage` wired to the thread's parentPort. Shared Wasm
// memory and compiled WebAssembly.Module objects cross postMessage as they do in browsers.
//
// Threads keep Node's event loop alive only while a message is outstanding (jax-js's protocol is
// one reply per request), so a process can exit with the pool idle.

import { resolveObjectURL } from 'node:buffer';
import { Worker as ThreadWorker } from 'node:worker_threads';

const PRELUDE = `
const { parentPort } = require('node:worker_threads');
globalThis.self = globalThis;
globalThis.postMessage = (data) => parentPort.postMessage(data);
parentPort.on('message', (data) => { if (typeof self.onmessage === 'function') self.onmessage({ data }); });
`;

const live = new Set<ThreadWorker>();

export class NodeWebWorker {
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onerror: ((e: { message: string }) => void) | null = null;
  private thread?: ThreadWorker;
  private queue: unknown[] = [];
  private outstanding = 0;
  private terminated = false;

  constructor(url: string | URL, _options?: { type?: string }) {
    const blob = resolveObjectURL(String(url));
    if (!blob) throw new Error(`NodeWebWorker: only blob: URLs made by URL.createObjectURL are supported, got ${String(url)}`);
    // The source is read before jax-js revokes the URL (it does so once every worker said ready).
    void blob.text().then((source) => {
      if (this.terminated) return;
      const thread = new ThreadWorker(PRELUDE + source, { eval: true });
      this.thread = thread;
      live.add(thread);
      thread.unref();
      thread.on('message', (data) => {
        if (--this.outstanding === 0) thread.unref();
        this.onmessage?.({ data });
      });
      thread.on('error', (err) => this.onerror?.({ message: err.message }));
      for (const msg of this.queue) this.send(msg);
      this.queue = [];
    }, (err: unknown) => this.onerror?.({ message: String(err) }));
  }

  postMessage(data: unknown): void {
    if (this.thread) this.send(data);
    else this.queue.push(data);
  }

  private send(data: unknown): void {
    if (this.outstanding++ === 0) this.thread!.ref();
    this.thread!.postMessage(data);
  }

  terminate(): void {
    this.terminated = true;
    if (this.thread) {
      live.delete(this.thread);
      void this.thread.terminate();
    }
  }
}

/** Makes `globalThis.Worker` the shim (jax-js checks `typeof Worker` when its Wasm backend is created). */
export function installWorkerShim(): void {
  (globalThis as { Worker?: unknown }).Worker = NodeWebWorker;
}

/** Runs `fn` with no global Worker (restoring whatever was there), so a jax-js instance made in it stays single-threaded. */
export async function withoutWorker<T>(fn: () => Promise<T>): Promise<T> {
  const g = globalThis as { Worker?: unknown };
  const saved = g.Worker;
  delete g.Worker;
  try {
    return await fn();
  } finally {
    if (saved !== undefined) g.Worker = saved;
  }
}

/** Ends every shim thread (they are unreferenced when idle; this is for tidy shutdowns). */
export async function terminateShimWorkers(): Promise<void> {
  const threads = [...live];
  live.clear();
  await Promise.all(threads.map((t) => t.terminate()));
}
