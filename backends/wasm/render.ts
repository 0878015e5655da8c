// The CPU backend's renderer: each kernel of a scheduled program becomes the source of a JavaScript
// function that a worker thread compiles once (`new Function`) and calls on its share of the
// kernel's work units. As in the WGSL renderer, every value a fused kernel needs is a function of a
// flat index: a value in memory loads from its binding, a pointwise op calls its inputs' functions
// at the same index, a layout op at a computed one, a reduction loops over its axis. V8 inlines the
// small functions into the kernel's loop.
//
// The FLOPs go to WebAssembly: a matmul kernel packs its operands into the GEMM module's panels
// (gemm.ts; a plain operand is packed by the module itself, a fused prologue by the value function)
// and calls its SIMD micro-kernel, then runs its fused epilogue over the result block. Attention
// kernels are FlashAttention-2 row loops (online softmax; the backward recomputes P from the
// log-sum-exp). A scatter_add splits its columns among workers, so no two workers ever add into
// the same element: no atomics.
//
// Work units: elements (elementwise), result blocks (matmul), columns (scatter), rows (attention).
// The executor (executor.ts) gives each worker a contiguous range of units.

import { isGraphInput, numel, type DType, type Graph, type Node } from '../../compiler/ir/graph.ts';
import { layoutRead } from '../../compiler/ir/layout.ts';
import { stridesOf, type Op } from '../../compiler/ir/ops.ts';
import type { AttentionLaunch, ScheduledKernel, ScheduledProgram } from '../../compiler/schedule.ts';
import type { RenderedKernel, RenderedProgram } from '../backend.ts';
import { attentionScratchBytes, attentionSupports } from './attention.ts';
import { fusedWasmKernel } from './fused-wasm.ts';
import { GEMM_KC, GEMM_MC, GEMM_MR, GEMM_NC, GEMM_NR } from './gemm.ts';

export interface WasmKernel extends RenderedKernel {
  /**
   * The body of `function (env)` returning `run(lo, hi)`: env holds the memory's views (`f32`,
   * `i32`), the element offset of every binding (`base`), the GEMM module's exports and this
   * worker's scratch (matmul kernels).
   */
  source: string;
  /** Work units the kernel is split into. */
  units: number;
  /** The bindings it writes. */
  written: number[];
  /** Bytes of per-worker attention scratch (env.scratch.attention) an attention kernel needs. */
  attentionScratch?: number;
  /**
   * An elementwise kernel rendered as WebAssembly SIMD (fused-wasm.ts): the module's bytes in
   * base64; the worker instantiates it on the shared memory as `env.kernel`, which `source` calls.
   */
  wasm?: string;
}

export type WasmProgram = RenderedProgram<WasmKernel>;

export function renderProgram(plan: ScheduledProgram): WasmProgram {
  const { graph, kernelOf, kernels, ...buffers } = plan;
  return { ...buffers, kernels: kernels.map((k) => renderKernel(plan, k)) };
}

function renderKernel(plan: ScheduledProgram, k: ScheduledKernel): WasmKernel {
  if (k.window || k.bindings.some((b) => b.piece !== undefined)) {
    throw new Error(`kernel ${k.name}: the wasm backend keeps every value in one piece; plan it without a storage-binding limit`);
  }
  const bindings = k.bindings.map((b) => ({ buffer: b.buffer, elements: b.elements }));
  const written = k.bindings.flatMap((b, i) => (b.access === 'read' ? [] : [i]));
  const common = { kind: k.kind, bindings, written, ...(k.clear ? { clear: k.clear } : {}), ops: k.members.length };
  if (k.kind === 'attention') {
    const a = k.attention!;
    return { name: `${k.name}_flash_${a.variant}_${a.heads}x${a.rows}x${a.headDim}${a.causal ? '_causal' : ''}`, ...common, ...attentionSource(a) };
  }
  return { name: k.name, ...common, ...fusedSource(plan.graph, plan.kernelOf, k) };
}

// --- fused kernels ------------------------------------------------------------------------------

/** A JS number literal for a constant of `dtype`: f32 constants are rounded to f32 as on the device. */
function literal(v: number, dtype: DType): string {
  if (dtype === 'bool') return v ? '1' : '0';
  if (dtype === 'i32') return String(Number.isFinite(v) ? Math.max(-2147483648, Math.min(2147483647, Math.trunc(v))) : v > 0 ? 2147483647 : -2147483648);
  const f = Math.fround(v);
  if (Number.isNaN(f)) return 'NaN';
  if (!Number.isFinite(f)) return f > 0 ? 'Infinity' : '-Infinity';
  return String(f);
}

/** The typed-array view a dtype is stored through: bool as i32 0/1, like the WGSL backend's u32. */
const view = (d: DType) => (d === 'f32' ? 'f32' : 'i32');

/** JS expression of a pointwise op on operands `a`, `b`, `c` (JS expressions) of dtype `dtype`, as the reference interpreter defines it. */
function pointwiseExpr(op: string, dtype: DType, [a, b, c]: string[]): string {
  const int = dtype !== 'f32';
  switch (op) {
    case 'neg': return int ? `(-${a}) | 0` : `-${a}`;
    case 'exp': return `Math.exp(${a})`;
    case 'log': return `Math.log(${a})`;
    case 'tanh': return `Math.tanh(${a})`;
    case 'sqrt': return `Math.sqrt(${a})`;
    case 'rsqrt': return `1 / Math.sqrt(${a})`;
    case 'add': return int ? `(${a} + ${b}) | 0` : `${a} + ${b}`;
    case 'sub': return int ? `(${a} - ${b}) | 0` : `${a} - ${b}`;
    case 'mul': return int ? `Math.imul(${a}, ${b})` : `${a} * ${b}`;
    // WGSL defines x / 0 as x for integers (the interpreter follows it).
    case 'div': return int ? `(${b} === 0 ? ${a} : (${a} / ${b}) | 0)` : `${a} / ${b}`;
    case 'max': return int ? `(${a} > ${b} ? ${a} : ${b})` : `Math.max(${a}, ${b})`;
    case 'eq': return `(${a} === ${b} ? 1 : 0)`;
    case 'lt': return `(${a} < ${b} ? 1 : 0)`;
    case 'le': return `(${a} <= ${b} ? 1 : 0)`;
    case 'gt': return `(${a} > ${b} ? 1 : 0)`;
    case 'ge': return `(${a} >= ${b} ? 1 : 0)`;
    case 'where': return `(${a} !== 0 ? ${b} : ${c})`;
    default: throw new Error(`wasm backend: no pointwise expression for '${op}'`);
  }
}

function castExpr(from: DType, to: DType, a: string): string {
  if (from === to) return a;
  if (to === 'bool') return `(${a} !== 0 ? 1 : 0)`;
  if (to === 'i32' && from === 'f32') return `toI32(${a})`;
  return a;
}

/**
 * Straight-line JavaScript for the values of a fused kernel. `value(id, index)` appends the
 * statements computing node `id` at flat index `index` (a JS expression) to the current block and
 * returns the variable (or literal) holding it; a value already computed at the same index in this
 * block or an enclosing one is reused. A reduction opens a loop whose body is a block of its own.
 */
class ValueEmitter {
  private blocks: { lines: string[]; memo: Map<string, string> }[] = [{ lines: [], memo: new Map() }];
  private count = 0;

  constructor(
    private readonly g: Graph,
    private readonly reads: Map<number, number>,
    private readonly check: (id: number) => void,
  ) {}

  private fresh(prefix = 't'): string {
    return `${prefix}${this.count++}`;
  }

  emit(line: string): void {
    this.blocks[this.blocks.length - 1].lines.push(line);
  }

  /** Runs `body` in a new block and returns its lines (for a loop's body). */
  block(body: () => void): string[] {
    this.blocks.push({ lines: [], memo: new Map() });
    body();
    return this.blocks.pop()!.lines;
  }

  /** What `key` holds in this block or an enclosing one, if it was computed there. */
  private lookup(key: string): string | undefined {
    for (let b = this.blocks.length - 1; b >= 0; b--) {
      const hit = this.blocks[b].memo.get(key);
      if (hit !== undefined) return hit;
    }
    return undefined;
  }

  private remember(key: string, v: string): string {
    this.blocks[this.blocks.length - 1].memo.set(key, v);
    return v;
  }

  /** An index as a variable, so that every use of it is one memo key. */
  private indexVar(index: string): string {
    if (/^[\w$]+$/.test(index)) return index;
    const key = `#${index}`;
    const known = this.lookup(key);
    if (known !== undefined) return known;
    const v = this.fresh('j');
    this.emit(`const ${v} = ${index};`);
    return this.remember(key, v);
  }

  value(id: number, index: string): string {
    const key = `${id}@${index}`;
    return this.lookup(key) ?? this.remember(key, this.compute(id, index));
  }

  private let(expr: string): string {
    const v = this.fresh();
    this.emit(`const ${v} = ${expr};`);
    return v;
  }

  private compute(id: number, index: string): string {
    const g = this.g;
    const node = g.nodes[id];
    const binding = this.reads.get(id);
    if (binding !== undefined) return this.let(`${view(node.dtype)}[B${binding} + ${/^[\w$]+$/.test(index) ? index : `(${index})`}]`);
    this.check(id);
    const ins = node.inputs.map((x) => g.nodes[x]);
    const op = node.op as Op;
    switch (op) {
      case 'const':
        return literal(node.attrs.value as number, node.dtype);
      case 'iota': {
        const axis = node.attrs.axis as number;
        const stride = stridesOf(node.shape)[axis];
        return this.let(`${stride === 1 ? `(${index})` : `(((${index}) / ${stride}) | 0)`} % ${node.shape[axis]}`);
      }
      case 'cast':
        return this.let(castExpr(ins[0].dtype, node.dtype, this.value(ins[0].id, index)));
      case 'reshape':
        return this.value(ins[0].id, index);
      case 'permute': case 'broadcast': case 'slice': case 'pad': {
        const i = this.indexVar(index);
        const { strides, base, shift, pad } = layoutRead(op, node.attrs, ins[0].shape, node.shape);
        const shape = node.shape;
        const terms: string[] = base ? [String(base)] : [];
        let rest = i;
        const coords: string[] = [];
        for (let d = shape.length - 1; d >= 0; d--) {
          const used = strides[d] !== 0 || (pad && d === pad.axis);
          const c = d > 0 ? `${rest} % ${shape[d]}` : rest;
          if (used) {
            coords[d] = this.fresh('c');
            this.emit(`const ${coords[d]} = ${c};`);
          }
          if (strides[d] !== 0) terms.push(shift[d] ? `(${coords[d]} - ${shift[d]}) * ${strides[d]}` : strides[d] === 1 ? coords[d] : `${coords[d]} * ${strides[d]}`);
          // The outer coordinates are needed only if an outer axis moves the read.
          if (d > 0) {
            if (!strides.slice(0, d).some((s, e) => s !== 0 || (pad && e === pad.axis))) break;
            const r = this.fresh('r');
            this.emit(`const ${r} = (${rest} / ${shape[d]}) | 0;`);
            rest = r;
          }
        }
        if (!pad) return this.value(ins[0].id, terms.join(' + ') || '0');
        // Padding is zero: the operand is computed only where it is not (a concatenation of
        // three pads computes each part once, not three times).
        let src = '';
        const inside = this.block(() => void (src = this.value(ins[0].id, terms.join(' + ') || '0')));
        const v = this.fresh();
        this.emit(`let ${v} = 0;`);
        this.emit(`if (${coords[pad.axis]} >= ${pad.before} && ${coords[pad.axis]} < ${pad.before + pad.size}) {\n  ${inside.join('\n  ')}\n  ${v} = ${src};\n}`);
        return v;
      }
      case 'sum': case 'max_reduce': {
        const x = ins[0];
        const axis = node.attrs.axis as number;
        const size = x.shape[axis];
        const inner = stridesOf(x.shape)[axis];
        const int = node.dtype !== 'f32';
        const base = this.let(inner === 1 ? `(${index}) * ${size}` : `(((${index}) / ${inner}) | 0) * ${size * inner} + (${index}) % ${inner}`);
        const acc = this.fresh('acc');
        const s = this.fresh('s');
        const init = op === 'sum' ? '0' : int ? '-2147483648' : '-Infinity';
        const body = this.block(() => {
          const v = this.value(x.id, inner === 1 ? `${base} + ${s}` : `${base} + ${s} * ${inner}`);
          this.emit(op === 'sum' ? (int ? `${acc} = (${acc} + ${v}) | 0;` : `${acc} += ${v};`) : int ? `if (${v} > ${acc}) ${acc} = ${v};` : `${acc} = Math.max(${acc}, ${v});`);
        });
        this.emit(`let ${acc} = ${init};`);
        this.emit(`for (let ${s} = 0; ${s} < ${size}; ${s}++) {\n  ${body.join('\n  ')}\n}`);
        return acc;
      }
      case 'matmul':
        // The matmul kernel's epilogue holds the result element in `mmAcc` (matmulSource).
        return 'mmAcc';
      case 'gather': {
        const [table, idx] = ins;
        const rows = table.shape[0];
        const rowSize = numel(table.shape.slice(1));
        const i = this.indexVar(index);
        const r = this.value(idx.id, `(${i} / ${rowSize}) | 0`);
        // An out-of-range index reads row 0, as on the WebGPU backend.
        const row = this.let(`${r} >= 0 && ${r} < ${rows} ? ${r} : 0`);
        return this.value(table.id, `${row} * ${rowSize} + ${i} % ${rowSize}`);
      }
      case 'input': case 'param':
        throw new Error(`%${id} ${op} is not computed in a fused kernel: graph inputs are loaded from their bindings`);
      case 'scatter_add':
        throw new Error(`%${id} scatter_add is not computed in a fused kernel: a scatter kernel writes it (its own kind)`);
      case 'flash_attention': case 'flash_attention_lse': case 'flash_attention_bwd':
        throw new Error(`%${id} ${op} is not computed in a fused kernel: attention composites have their own kernels`);
      default:
        return this.let(pointwiseExpr(op, ins[0]?.dtype ?? node.dtype, ins.map((x) => this.value(x.id, index))));
    }
  }
}

/** Helpers every kernel's source may call. */
const PRELUDE = `const { f32, i32, base } = env;
// f32 -> i32 as WGSL's i32(f32): toward zero, saturating, NaN to 0.
const toI32 = (x) => (x !== x ? 0 : x >= 2147483647 ? 2147483647 : x <= -2147483648 ? -2147483648 : Math.trunc(x));`;

const indent = (lines: string[], by: string) => lines.map((l) => by + l.replace(/\n/g, `\n${by}`)).join('\n');

function fusedSource(g: Graph, kernelOf: Int32Array, k: ScheduledKernel): { source: string; units: number; wasm?: string } {
  const reads = new Map(k.reads.map((r) => [r.node, r.binding]));
  const inKernel = new Set(k.members);
  const values = new ValueEmitter(g, reads, (id) => {
    const node = g.nodes[id];
    if (!inKernel.has(id) && (isGraphInput(node) || kernelOf[id] >= 0)) throw new Error(`kernel ${k.name}: value %${id} is neither computed here nor bound`);
  });
  const matmul = k.kind === 'matmul' ? k.members.find((m) => g.nodes[m].op === 'matmul') : undefined;
  // Every written value is computed before any is stored: an output may overwrite, in place, an
  // input another output still reads at this index (AdamW's m, v and p).
  const store = (index: string) =>
    values.block(() => {
      const out = k.writes.map((w) => values.value(w.node, index));
      const lines = k.writes.map((w, j) => `${view(g.nodes[w.node].dtype)}[B${w.binding} + ${index}] = ${out[j]};`);
      for (const l of lines) values.emit(l);
    });
  const head = [PRELUDE, ...k.bindings.map((_, b) => `const B${b} = base[${b}];`)].join('\n');
  if (k.kind === 'matmul') return matmulSource(g, k, matmul!, reads, values, head, store);
  if (k.kind === 'scatter') {
    const sc = g.nodes[k.members.find((m) => g.nodes[m].op === 'scatter_add')!];
    const [idx, src] = sc.inputs.map((x) => g.nodes[x]);
    const rows = sc.shape[0];
    const rowSize = numel(sc.shape.slice(1));
    const sources = idx.shape.length ? numel(idx.shape) : 1;
    const out = k.writes[0].binding;
    const o = view(sc.dtype);
    let r = '';
    const rowLines = values.block(() => void (r = values.value(idx.id, 's')));
    let v = '';
    const colLines = values.block(() => void (v = values.value(src.id, `s * ${rowSize} + c`)));
    // Worker w owns columns [lo, hi) of every row: it zeroes them, then adds each source row's.
    const run = `return function run(lo, hi) {
  for (let r = 0; r < ${rows}; r++) ${o}.fill(0, B${out} + r * ${rowSize} + lo, B${out} + r * ${rowSize} + hi);
  for (let s = 0; s < ${sources}; s++) {
${indent(rowLines, '    ')}
    if (${r} < 0 || ${r} >= ${rows}) continue;
    const dst = B${out} + ${r} * ${rowSize};
    for (let c = lo; c < hi; c++) {
${indent(colLines, '      ')}
      ${o}[dst + c] += ${v};
    }
  }
};`;
    return { source: `${head}\n${run}`, units: rowSize };
  }
  // Four elements an iteration in WebAssembly SIMD where every op of the kernel has a rendering there.
  const simd = fusedWasmKernel(g, kernelOf, k, { fma: false });
  if (simd) return simd;
  const n = numel(g.nodes[k.writes[0].node].shape);
  return { source: `${head}\nreturn function run(lo, hi) {\n  for (let i = lo; i < hi; i++) {\n${indent(store('i'), '    ')}\n  }\n};`, units: n };
}

/**
 * A matmul kernel: per result block (a batch, MC rows, NC columns), for each KC slice of K, pack A
 * and B into the GEMM module's panels and accumulate; then evaluate the fused epilogue on the
 * block's elements. An operand read straight from a binding (through reshapes) is packed by the
 * module from its strides; a computed one (a fused prologue) by its value function.
 */
function matmulSource(g: Graph, k: ScheduledKernel, matmul: number, reads: Map<number, number>, values: ValueEmitter, head: string, store: (index: string) => string[]): { source: string; units: number } {
  const mm = g.nodes[matmul];
  const [a, b] = mm.inputs.map((x) => g.nodes[x]);
  const r = a.shape.length;
  const transA = !!mm.attrs.transA;
  const transB = !!mm.attrs.transB;
  const batch = numel(mm.shape.slice(0, r - 2));
  const M = mm.shape[r - 2];
  const N = mm.shape[r - 1];
  const K = transA ? a.shape[r - 2] : a.shape[r - 1];
  /** The binding an operand is read from unchanged (through reshapes), if it is. */
  const plain = (x: Node): number | undefined => {
    for (let n = x; ; n = g.nodes[n.inputs[0]]) {
      const binding = reads.get(n.id);
      if (binding !== undefined) return binding;
      if (n.op !== 'reshape' || k.members.indexOf(n.id) < 0) return undefined;
    }
  };
  // Element (row, k) of A in batch bt, and (k, col) of B: strides of the stored operands.
  const [aRow, aCol] = transA ? [1, M] : [K, 1];
  const [bRow, bCol] = transB ? [1, K] : [N, 1];
  const pa = plain(a);
  const pb = plain(b);
  /**
   * Packing a computed operand (a fused prologue) into the module's panels, as packA and packB do
   * for one in memory: panel row i of `count` (zero past `valid`), k of kc, from element
   * base + (start + i)·stride + (k0 + k)·kStride of the operand's value function.
   */
  const packByValue = (x: Node, o: { dst: string; width: string; count: string; valid: string; base: string; start: string; stride: number; kStride: number }) => {
    let v = '';
    const lines = values.block(() => void (v = values.value(x.id, `src0 + kk * ${o.kStride}`)));
    return `for (let i = 0; i < ${o.count}; i++) {
        const dst = ${o.dst} + ((i / ${o.width}) | 0) * kc * ${o.width} + (i % ${o.width});
        if (i >= ${o.valid}) { for (let kk = 0; kk < kc; kk++) f32[dst + kk * ${o.width}] = 0; continue; }
        const src0 = ${o.base} + (${o.start} + i) * ${o.stride} + k0 * ${o.kStride};
        for (let kk = 0; kk < kc; kk++) {
${indent(lines, '          ')}
          f32[dst + kk * ${o.width}] = ${v};
        }
      }`;
  };
  const packA = pa !== undefined
    ? `gemm.packA((B${pa} + aBase + r0 * ${aRow} + k0 * ${aCol}) * 4, ${aRow}, ${aCol}, mc, kc, aP * 4);`
    : packByValue(a, { dst: 'aP', width: 'MR', count: 'mcp', valid: 'mc', base: 'aBase', start: 'r0', stride: aRow, kStride: aCol });
  const packB = pb !== undefined
    ? `gemm.packB((B${pb} + bBase + k0 * ${bRow} + j0 * ${bCol}) * 4, ${bRow}, ${bCol}, kc, nc, bP * 4);`
    : packByValue(b, { dst: 'bP', width: 'NR', count: 'ncp', valid: 'nc', base: 'bBase', start: 'j0', stride: bCol, kStride: bRow });
  // Without an epilogue the micro-kernel writes the result in place; with one, into this worker's
  // scratch block, from which the epilogue stores every written value.
  const direct = k.writes.length === 1 && k.writes[0].node === matmul;
  const target = direct ? `(B${k.writes[0].binding} + cBase + r0 * ${N} + j0) * 4, ${N}` : 'cP * 4, LDC';
  const epilogue = direct
    ? ''
    : `for (let rr = 0; rr < mc; rr++) {
      const row = cBase + (r0 + rr) * ${N} + j0;
      const c = cP + rr * LDC;
      for (let jj = 0; jj < nc; jj++) {
        const mmAcc = f32[c + jj];
        const e = row + jj;
${indent(store('e'), '        ')}
      }
    }`;
  // Blocks small enough that a small matmul (a weight gradient: 128 rows) still gives every worker
  // some: at least MIN_UNITS result blocks, narrowing the rows first (the row blocks of one column
  // block share their packed B), then the columns.
  let mcBlock = GEMM_MC;
  let ncBlock = GEMM_NC;
  const unitsOf = () => batch * Math.ceil(M / mcBlock) * Math.ceil(N / ncBlock);
  while (unitsOf() < MIN_MATMUL_UNITS && mcBlock / 2 >= 4 * GEMM_MR && Math.ceil(M / (mcBlock / 2)) > Math.ceil(M / mcBlock)) mcBlock /= 2;
  while (unitsOf() < MIN_MATMUL_UNITS && ncBlock / 2 >= 4 * GEMM_NR && Math.ceil(N / (ncBlock / 2)) > Math.ceil(N / ncBlock)) ncBlock /= 2;
  const rowBlocks = Math.ceil(M / mcBlock);
  const colBlocks = Math.ceil(N / ncBlock);
  // Units run column block by column block (a batch, then NC columns, then MC rows), so the units a
  // worker owns mostly share their B block: it is packed once per K slice for all of them (BLIS's
  // loop order). That needs the result to stay where the micro-kernel accumulates it across K
  // slices: in place (no epilogue), or one K slice only. Otherwise each unit runs alone.
  const shared = direct || K <= GEMM_KC;
  const unit = `const r0 = (v - group0) * MC, mc = Math.min(MC, ${M} - r0), mcp = Math.ceil(mc / MR) * MR;`;
  const body = shared
    ? `for (let k0 = 0; k0 < ${Math.max(K, 1)}; k0 += KC) {
        const kc = Math.min(KC, ${K} - k0);
        ${packB}
        for (let v = u; v < end; v++) {
          ${unit}
          ${packA}
          gemm.gemm(mc, nc, kc, aP * 4, bP * 4, ${target}, k0 > 0 ? 1 : 0);
          ${epilogue}
        }
      }`
    : `for (let v = u; v < end; v++) {
        ${unit}
        for (let k0 = 0; k0 < ${K}; k0 += KC) {
          const kc = Math.min(KC, ${K} - k0);
          ${packA}
          ${packB}
          gemm.gemm(mc, nc, kc, aP * 4, bP * 4, ${target}, k0 > 0 ? 1 : 0);
        }
        ${epilogue}
      }`;
  const run = `const { gemm, scratch } = env;
const MR = ${GEMM_MR}, NR = ${GEMM_NR}, MC = ${mcBlock}, NC = ${ncBlock}, KC = ${GEMM_KC};
const aP = scratch.a, bP = scratch.b, cP = scratch.c, LDC = scratch.ldc;
return function run(lo, hi) {
  for (let u = lo, end = lo; u < hi; u = end) {
    const bt = (u / ${rowBlocks * colBlocks}) | 0;
    const cb = ((u - bt * ${rowBlocks * colBlocks}) / ${rowBlocks}) | 0;
    const group0 = bt * ${rowBlocks * colBlocks} + cb * ${rowBlocks};
    end = Math.min(hi, group0 + ${rowBlocks});
    const j0 = cb * NC, nc = Math.min(NC, ${N} - j0), ncp = Math.ceil(nc / NR) * NR;
    const aBase = bt * ${M * K}, bBase = bt * ${K * N}, cBase = bt * ${M * N};
    ${body}
  }
};`;
  return { source: `${head}\n${run}`, units: batch * rowBlocks * colBlocks };
}

/** Result blocks a matmul is split into at least (where it is large enough): work for up to 8 threads. */
const MIN_MATMUL_UNITS = 8;

// --- attention ----------------------------------------------------------------------------------

/**
 * FlashAttention, one unit per (head, row): the forward and dQ own a query row, dK/dV a key row. The
 * kernel calls the attention module (attention.ts) through `env.attention` with byte pointers and
 * this worker's attention scratch (`env.scratch.attention`, a byte pointer to
 * attentionScratchBytes(T, D) bytes); a head dim the module does not take (not a multiple of 4, or
 * over 64) falls back to scalar JavaScript row loops with the same semantics.
 */
function attentionSource(a: AttentionLaunch): { source: string; units: number; attentionScratch?: number } {
  const { heads, rows: T, headDim: D, causal, scale } = a;
  if (attentionSupports(D)) {
    // Bindings: forward q, k, v; o, lse. Backward q, k, v, dO, lse, delta; then dq, or dk and dv.
    const fn = { forward: 'forward', 'backward-query': 'backwardQuery', 'backward-key-value': 'backwardKeyValue' }[a.variant];
    const count = { forward: 5, 'backward-query': 7, 'backward-key-value': 8 }[a.variant];
    const ptrs = Array.from({ length: count }, (_, i) => `base[${i}] * 4`).join(', ');
    return {
      units: heads * T,
      // Bytes of env.scratch.attention this kernel needs (the executor allocates the largest).
      attentionScratch: attentionScratchBytes(T, D),
      source: `const { base, attention } = env;
const scratch = env.scratch.attention;
return function run(lo, hi) {
  attention.${fn}(${ptrs}, ${T}, ${D}, ${scale}, ${causal ? 1 : 0}, lo, hi, scratch);
};`,
    };
  }
  const prelude = `const { f32, base } = env;
const T = ${T}, D = ${D}, scale = ${scale};
const acc = new Float64Array(D), acc2 = new Float64Array(D);`;
  if (a.variant === 'forward') {
    // Bindings: q, k, v; o, lse.
    return {
      units: heads * T,
      source: `${prelude}
const Q = base[0], K = base[1], V = base[2], O = base[3], LSE = base[4];
return function run(lo, hi) {
  for (let u = lo; u < hi; u++) {
    const h = (u / T) | 0, i = u - h * T, q = Q + u * D, hk = h * T * D;
    let m = -Infinity, l = 0;
    acc.fill(0);
    const end = ${causal ? 'i + 1' : 'T'};
    for (let j = 0; j < end; j++) {
      const kj = K + hk + j * D, vj = V + hk + j * D;
      let s = 0;
      for (let d = 0; d < D; d++) s += f32[q + d] * f32[kj + d];
      s *= scale;
      if (s > m) {
        const c = Math.exp(m - s);
        l *= c;
        for (let d = 0; d < D; d++) acc[d] *= c;
        m = s;
      }
      const p = Math.exp(s - m);
      l += p;
      for (let d = 0; d < D; d++) acc[d] += p * f32[vj + d];
    }
    const o = O + u * D;
    for (let d = 0; d < D; d++) f32[o + d] = acc[d] / l;
    f32[LSE + u] = m + Math.log(l);
  }
};`,
    };
  }
  // Bindings: q, k, v, dO, lse, delta; then dq, or dk and dv.
  const common = `const Q = base[0], K = base[1], V = base[2], DO = base[3], LSE = base[4], DELTA = base[5];`;
  if (a.variant === 'backward-query') {
    return {
      units: heads * T,
      source: `${prelude}
${common}
const DQ = base[6];
return function run(lo, hi) {
  for (let u = lo; u < hi; u++) {
    const h = (u / T) | 0, i = u - h * T, q = Q + u * D, dO = DO + u * D, hk = h * T * D;
    const lse = f32[LSE + u], delta = f32[DELTA + u];
    acc.fill(0);
    const end = ${causal ? 'i + 1' : 'T'};
    for (let j = 0; j < end; j++) {
      const kj = K + hk + j * D, vj = V + hk + j * D;
      let s = 0, dp = 0;
      for (let d = 0; d < D; d++) { s += f32[q + d] * f32[kj + d]; dp += f32[dO + d] * f32[vj + d]; }
      const p = Math.exp(s * scale - lse);
      const ds = p * (dp - delta) * scale;
      for (let d = 0; d < D; d++) acc[d] += ds * f32[kj + d];
    }
    const dq = DQ + u * D;
    for (let d = 0; d < D; d++) f32[dq + d] = acc[d];
  }
};`,
    };
  }
  return {
    units: heads * T,
    source: `${prelude}
${common}
const DK = base[6], DV = base[7];
return function run(lo, hi) {
  for (let u = lo; u < hi; u++) {
    const h = (u / T) | 0, j = u - h * T, kj = K + u * D, vj = V + u * D, hq = h * T;
    acc.fill(0);
    acc2.fill(0);
    for (let i = ${causal ? 'j' : '0'}; i < T; i++) {
      const q = Q + (hq + i) * D, dO = DO + (hq + i) * D;
      let s = 0, dp = 0;
      for (let d = 0; d < D; d++) { s += f32[q + d] * f32[kj + d]; dp += f32[dO + d] * f32[vj + d]; }
      const p = Math.exp(s * scale - f32[LSE + hq + i]);
      const ds = p * (dp - f32[DELTA + hq + i]) * scale;
      for (let d = 0; d < D; d++) { acc[d] += ds * f32[q + d]; acc2[d] += p * f32[dO + d]; }
    }
    const dk = DK + u * D, dv = DV + u * D;
    for (let d = 0; d < D; d++) { f32[dk + d] = acc[d]; f32[dv + d] = acc2[d]; }
  }
};`,
  };
}
