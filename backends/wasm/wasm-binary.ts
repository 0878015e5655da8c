// A small WebAssembly binary emitter, so the Wasm backend builds its kernels synchronously at zero
// load time (no binaryen or wabt: both are large Emscripten builds with async start-up). It writes
// what the backend's modules use and nothing more: a type section (signatures deduplicated), one
// imported memory `env.memory` declared shared (limits 1..65536 pages, so any shared memory the
// executor creates with maximum ≤ 65536 pages can be imported), functions with locals (i32, f32,
// v128, …), exports, and a function-body builder over the MVP control/local/i32/f32/memory
// instructions, 128-bit SIMD (0xFD prefix), relaxed SIMD (f32x4.relaxed_madd) and the few atomics a
// barrier needs (0xFE prefix). Modules are checked with WebAssembly.validate in the tests.
//
// Usage:
//   const m = new ModuleBuilder().importSharedMemory();
//   m.func('add', [I32, I32], [I32], (f) => { f.localGet(0).localGet(1).i32Add(); });
//   const bytes = m.bytes();

/** Value types (their binary codes). */
export const I32 = 0x7f;
export const I64 = 0x7e;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof I64 | typeof F32 | typeof F64 | typeof V128;

/** Block types: empty, or a single result value type. */
export const VOID = 0x40;
export type BlockType = typeof VOID | ValType;

/** The largest memory a wasm32 module can address, in 64 KiB pages. */
export const MAX_PAGES = 65536;

// ---- encoding helpers ----

/** Unsigned LEB128 of a non-negative integer (up to 2^53). */
export function uleb(value: number, out: number[] = []): number[] {
  if (!Number.isInteger(value) || value < 0) throw new Error(`uleb: ${value} is not a non-negative integer`);
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

/** Signed LEB128 of a 32-bit (or safe) integer. */
export function sleb(value: number, out: number[] = []): number[] {
  if (!Number.isInteger(value)) throw new Error(`sleb: ${value} is not an integer`);
  for (;;) {
    const byte = ((value % 128) + 128) % 128; // low 7 bits, also for negatives
    value = Math.floor(value / 128); // arithmetic shift
    const signBit = byte & 0x40;
    if ((value === 0 && !signBit) || (value === -1 && signBit)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

function utf8Name(name: string, out: number[]): void {
  const b = new TextEncoder().encode(name);
  uleb(b.length, out);
  for (const x of b) out.push(x);
}

function section(id: number, body: number[], out: number[]): void {
  out.push(id);
  uleb(body.length, out);
  for (const x of body) out.push(x);
}

// ---- function bodies ----

/** Opcodes of the 0xFD (SIMD) prefix used by FunctionBuilder.simd; named for readability. */
export const SIMD = {
  v128Load: 0x00, v128Load32Splat: 0x09, v128Load64Splat: 0x0a, v128Store: 0x0b, v128Const: 0x0c,
  i32x4Splat: 0x11, f32x4Splat: 0x13, f32x4ExtractLane: 0x1f, f32x4ReplaceLane: 0x20,
  f32x4Eq: 0x41, f32x4Ne: 0x42, f32x4Lt: 0x43, f32x4Gt: 0x44, f32x4Le: 0x45, f32x4Ge: 0x46,
  v128Not: 0x4d, v128And: 0x4e, v128AndNot: 0x4f, v128Or: 0x50, v128Xor: 0x51, v128Bitselect: 0x52,
  v128Load32Lane: 0x56, v128Store32Lane: 0x5a, v128Load32Zero: 0x5c, v128Load64Zero: 0x5d,
  i32x4Add: 0xae, i32x4Sub: 0xb1, i32x4Mul: 0xb5,
  f32x4Abs: 0xe0, f32x4Neg: 0xe1, f32x4Sqrt: 0xe3, f32x4Add: 0xe4, f32x4Sub: 0xe5, f32x4Mul: 0xe6,
  f32x4Div: 0xe7, f32x4Min: 0xe8, f32x4Max: 0xe9, f32x4Pmin: 0xea, f32x4Pmax: 0xeb,
  i32x4TruncSatF32x4S: 0xf8, f32x4ConvertI32x4S: 0xfa,
  // relaxed SIMD
  f32x4RelaxedMadd: 0x105, f32x4RelaxedNmadd: 0x106,
} as const;

/** Natural alignment (log2 bytes) of each memory access width, the default memarg alignment. */
const ALIGN = { 1: 0, 2: 1, 4: 2, 8: 3, 16: 4 } as const;

/**
 * Builds one function body. Instructions are chainable methods; `offset` is the memarg's constant
 * byte offset (added to the i32 address on the stack), `align` its log2 alignment hint.
 */
export class FunctionBuilder {
  readonly code: number[] = [];
  private readonly localTypes: ValType[] = [];
  private depth = 0;

  constructor(readonly params: readonly ValType[], readonly results: readonly ValType[]) {}

  /** Declares a new local of `type` and returns its index (after the parameters). */
  local(type: ValType): number {
    this.localTypes.push(type);
    return this.params.length + this.localTypes.length - 1;
  }

  /** The body as the code section wants it: locals (run-length grouped), instructions, `end`. */
  encode(): number[] {
    if (this.depth !== 0) throw new Error(`function body has ${this.depth} unclosed block(s)`);
    const groups: [number, ValType][] = [];
    for (const t of this.localTypes) {
      const last = groups[groups.length - 1];
      if (last && last[1] === t) last[0]++;
      else groups.push([1, t]);
    }
    const body: number[] = [];
    uleb(groups.length, body);
    for (const [n, t] of groups) uleb(n, body).push(t);
    for (const x of this.code) body.push(x);
    body.push(0x0b);
    const out = uleb(body.length);
    for (const x of body) out.push(x);
    return out;
  }

  /** Raw bytes, for an instruction without a method. */
  op(...bytes: number[]): this {
    for (const b of bytes) this.code.push(b);
    return this;
  }

  private memarg(alignLog2: number, offset: number): this {
    uleb(alignLog2, this.code);
    uleb(offset, this.code);
    return this;
  }

  // control
  block(type: BlockType = VOID): this { this.depth++; return this.op(0x02, type); }
  loop(type: BlockType = VOID): this { this.depth++; return this.op(0x03, type); }
  if(type: BlockType = VOID): this { this.depth++; return this.op(0x04, type); }
  else(): this { return this.op(0x05); }
  end(): this {
    if (--this.depth < 0) throw new Error('end without an open block');
    return this.op(0x0b);
  }
  /** Branch to the `depth`-th enclosing label (0 = innermost; a loop's label is its start). */
  br(depth: number): this { this.op(0x0c); uleb(depth, this.code); return this; }
  brIf(depth: number): this { this.op(0x0d); uleb(depth, this.code); return this; }
  return(): this { return this.op(0x0f); }
  call(funcIndex: number): this { this.op(0x10); uleb(funcIndex, this.code); return this; }
  drop(): this { return this.op(0x1a); }
  select(): this { return this.op(0x1b); }
  unreachable(): this { return this.op(0x00); }

  // locals
  localGet(i: number): this { this.op(0x20); uleb(i, this.code); return this; }
  localSet(i: number): this { this.op(0x21); uleb(i, this.code); return this; }
  localTee(i: number): this { this.op(0x22); uleb(i, this.code); return this; }

  // constants
  i32Const(v: number): this { this.op(0x41); sleb(v | 0, this.code); return this; }
  f32Const(v: number): this {
    const b = new Uint8Array(new Float32Array([v]).buffer);
    return this.op(0x43, ...b);
  }

  // memory (MVP)
  i32Load(offset = 0, align: number = ALIGN[4]): this { return this.op(0x28).memarg(align, offset); }
  f32Load(offset = 0, align: number = ALIGN[4]): this { return this.op(0x2a).memarg(align, offset); }
  i32Store(offset = 0, align: number = ALIGN[4]): this { return this.op(0x36).memarg(align, offset); }
  f32Store(offset = 0, align: number = ALIGN[4]): this { return this.op(0x38).memarg(align, offset); }

  // i32 compare and arithmetic
  i32Eqz(): this { return this.op(0x45); }
  i32Eq(): this { return this.op(0x46); }
  i32Ne(): this { return this.op(0x47); }
  i32LtS(): this { return this.op(0x48); }
  i32LtU(): this { return this.op(0x49); }
  i32GtS(): this { return this.op(0x4a); }
  i32GtU(): this { return this.op(0x4b); }
  i32LeS(): this { return this.op(0x4c); }
  i32LeU(): this { return this.op(0x4d); }
  i32GeS(): this { return this.op(0x4e); }
  i32GeU(): this { return this.op(0x4f); }
  i32Add(): this { return this.op(0x6a); }
  i32Sub(): this { return this.op(0x6b); }
  i32Mul(): this { return this.op(0x6c); }
  i32DivS(): this { return this.op(0x6d); }
  i32DivU(): this { return this.op(0x6e); }
  i32RemS(): this { return this.op(0x6f); }
  i32RemU(): this { return this.op(0x70); }
  i32And(): this { return this.op(0x71); }
  i32Or(): this { return this.op(0x72); }
  i32Xor(): this { return this.op(0x73); }
  i32Shl(): this { return this.op(0x74); }
  i32ShrS(): this { return this.op(0x75); }
  i32ShrU(): this { return this.op(0x76); }

  // f32 compare and arithmetic
  f32Eq(): this { return this.op(0x5b); }
  f32Ne(): this { return this.op(0x5c); }
  f32Lt(): this { return this.op(0x5d); }
  f32Gt(): this { return this.op(0x5e); }
  f32Le(): this { return this.op(0x5f); }
  f32Ge(): this { return this.op(0x60); }
  f32Abs(): this { return this.op(0x8b); }
  f32Neg(): this { return this.op(0x8c); }
  f32Sqrt(): this { return this.op(0x91); }
  f32Add(): this { return this.op(0x92); }
  f32Sub(): this { return this.op(0x93); }
  f32Mul(): this { return this.op(0x94); }
  f32Div(): this { return this.op(0x95); }
  f32Min(): this { return this.op(0x96); }
  f32Max(): this { return this.op(0x97); }

  // conversions
  i32TruncF32S(): this { return this.op(0xa8); }
  f32ConvertI32S(): this { return this.op(0xb2); }
  f32ConvertI32U(): this { return this.op(0xb3); }
  i32ReinterpretF32(): this { return this.op(0xbc); }
  f32ReinterpretI32(): this { return this.op(0xbe); }

  // SIMD (0xFD prefix)
  /** Any 0xFD-prefixed instruction without immediates (see SIMD for the opcodes). */
  simd(opcode: number): this { this.op(0xfd); uleb(opcode, this.code); return this; }
  v128Load(offset = 0, align: number = ALIGN[16]): this { return this.simd(SIMD.v128Load).memarg(align, offset); }
  v128Store(offset = 0, align: number = ALIGN[16]): this { return this.simd(SIMD.v128Store).memarg(align, offset); }
  v128Load32Splat(offset = 0, align: number = ALIGN[4]): this { return this.simd(SIMD.v128Load32Splat).memarg(align, offset); }
  v128Load32Zero(offset = 0, align: number = ALIGN[4]): this { return this.simd(SIMD.v128Load32Zero).memarg(align, offset); }
  v128Load32Lane(lane: number, offset = 0, align: number = ALIGN[4]): this { return this.simd(SIMD.v128Load32Lane).memarg(align, offset).op(lane); }
  v128Store32Lane(lane: number, offset = 0, align: number = ALIGN[4]): this { return this.simd(SIMD.v128Store32Lane).memarg(align, offset).op(lane); }
  v128Const(bytes: ArrayLike<number>): this {
    if (bytes.length !== 16) throw new Error('v128.const needs 16 bytes');
    return this.simd(SIMD.v128Const).op(...Array.from(bytes));
  }
  f32x4Const(a: number, b = a, c = a, d = a): this { return this.v128Const(new Uint8Array(new Float32Array([a, b, c, d]).buffer)); }
  f32x4Splat(): this { return this.simd(SIMD.f32x4Splat); }
  f32x4ExtractLane(lane: number): this { return this.simd(SIMD.f32x4ExtractLane).op(lane); }
  f32x4ReplaceLane(lane: number): this { return this.simd(SIMD.f32x4ReplaceLane).op(lane); }
  f32x4Add(): this { return this.simd(SIMD.f32x4Add); }
  f32x4Sub(): this { return this.simd(SIMD.f32x4Sub); }
  f32x4Mul(): this { return this.simd(SIMD.f32x4Mul); }
  f32x4Div(): this { return this.simd(SIMD.f32x4Div); }
  f32x4Min(): this { return this.simd(SIMD.f32x4Min); }
  f32x4Max(): this { return this.simd(SIMD.f32x4Max); }
  /** Relaxed SIMD: a·b + c (fused or not, at the engine's choice); stack [a, b, c] → [r]. */
  f32x4RelaxedMadd(): this { return this.simd(SIMD.f32x4RelaxedMadd); }

  // atomics (0xFE prefix), for barriers between threads over the shared memory
  memoryAtomicNotify(offset = 0): this { return this.op(0xfe, 0x00).memarg(2, offset); }
  memoryAtomicWait32(offset = 0): this { return this.op(0xfe, 0x01).memarg(2, offset); }
  atomicFence(): this { return this.op(0xfe, 0x03, 0x00); }
  i32AtomicLoad(offset = 0): this { return this.op(0xfe, 0x10).memarg(2, offset); }
  i32AtomicStore(offset = 0): this { return this.op(0xfe, 0x17).memarg(2, offset); }
  i32AtomicRmwAdd(offset = 0): this { return this.op(0xfe, 0x1e).memarg(2, offset); }
}

// ---- modules ----

interface FuncEntry {
  typeIndex: number;
  body: FunctionBuilder;
  exportName?: string;
}

/** Builds a module: an optional shared memory import, functions, exports. */
export class ModuleBuilder {
  private readonly types: string[] = []; // signature keys, deduplicated
  private readonly typeBytes: number[][] = [];
  private readonly funcs: FuncEntry[] = [];
  private memory?: { module: string; name: string; min: number; max: number };

  /**
   * Imports a shared memory (limits flag 0x03). Declaring max = MAX_PAGES lets the module import any
   * shared memory whose own maximum is ≤ 65536 pages (an import's maximum must not exceed the
   * declared one).
   */
  importSharedMemory(module = 'env', name = 'memory', min = 1, max = MAX_PAGES): this {
    this.memory = { module, name, min, max };
    return this;
  }

  private typeIndex(params: readonly ValType[], results: readonly ValType[]): number {
    const key = `${params.join(',')}->${results.join(',')}`;
    const found = this.types.indexOf(key);
    if (found >= 0) return found;
    const b: number[] = [0x60];
    uleb(params.length, b).push(...params);
    uleb(results.length, b).push(...results);
    this.types.push(key);
    this.typeBytes.push(b);
    return this.types.length - 1;
  }

  /**
   * Adds a function (exported as `exportName` unless it is undefined) whose body `build` writes;
   * returns its function index, for `call`. Parameters are locals 0..params.length-1.
   */
  func(exportName: string | undefined, params: readonly ValType[], results: readonly ValType[], build: (f: FunctionBuilder) => void): number {
    const body = new FunctionBuilder(params, results);
    build(body);
    this.funcs.push({ typeIndex: this.typeIndex(params, results), body, exportName });
    return this.funcs.length - 1;
  }

  /** The module's binary. */
  bytes(): Uint8Array<ArrayBuffer> {
    const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    // type section
    const types: number[] = [];
    uleb(this.typeBytes.length, types);
    for (const t of this.typeBytes) types.push(...t);
    section(1, types, out);
    // import section
    if (this.memory) {
      const imp: number[] = [1];
      utf8Name(this.memory.module, imp);
      utf8Name(this.memory.name, imp);
      imp.push(0x02, 0x03); // memory, limits: shared with min and max
      uleb(this.memory.min, imp);
      uleb(this.memory.max, imp);
      section(2, imp, out);
    }
    // function section
    const fn: number[] = [];
    uleb(this.funcs.length, fn);
    for (const f of this.funcs) uleb(f.typeIndex, fn);
    section(3, fn, out);
    // export section
    const exported = this.funcs.map((f, i) => [f, i] as const).filter(([f]) => f.exportName !== undefined);
    const ex: number[] = [];
    uleb(exported.length, ex);
    for (const [f, i] of exported) {
      utf8Name(f.exportName!, ex);
      ex.push(0x00);
      uleb(i, ex);
    }
    section(7, ex, out);
    // code section
    const code: number[] = [];
    uleb(this.funcs.length, code);
    for (const f of this.funcs) for (const x of f.body.encode()) code.push(x);
    section(10, code, out);
    return Uint8Array.from(out);
  }
}
