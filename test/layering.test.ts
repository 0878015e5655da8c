// The layers run one way (README, "Architecture"). Read from the import statements of every source
// file outside test/:
//   - passes/ is run by the pipeline alone: only compiler/pipeline.ts and the tools in
//     compiler/tools/ (the CLI and its pass report) import it;
//   - a pass imports the IR layer (compiler/ir/) and other passes, never a backend or any other
//     part of the compiler;
//   - the compiler below its tools imports no backend and no runtime: its plan is target-neutral;
//   - WGSL is the WebGPU backend's business: nothing outside backends/ imports its kernel code
//     (backends/webgpu/wgsl/, render.ts), except bench/, which times kernels by themselves;
//   - backends import neither passes/ nor runtime/;
//   - the compiled engine (runtime/engines/compiled-engine.ts) reaches a backend only through the
//     registry (backends/index.ts): it drives whatever Target it is given, so a second backend
//     needs no change there.
// test/ may import anything.

import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SOURCE_DIRS = ['compiler', 'passes', 'backends', 'runtime', 'models', 'bench', 'scripts', 'bin'];

/** Every source file (repository-relative) with the repository-relative files it imports. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  const walk = (dir: string) => {
    for (const e of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (/\.(ts|mts|js|mjs)$/.test(e.name) && !e.name.endsWith('.d.ts')) graph.set(rel, importsOf(rel, readFileSync(path.join(ROOT, rel), 'utf8')));
    }
  };
  for (const d of SOURCE_DIRS) walk(d);
  return graph;
}

/** The relative imports of `file` (static, dynamic, re-exports, type-only too), repository-relative. */
export function importsOf(file: string, source: string): string[] {
  const specs = [...source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)(['"])(\.{1,2}\/[^'"]+)\1/gm)].map((m) => m[2]);
  return specs.map((s) => path.posix.normalize(path.posix.join(path.posix.dirname(file), s)));
}

const under = (file: string, dir: string) => file.startsWith(`${dir}/`);

/** Each import that breaks a rule, as `file → imported: why`. */
export function layeringViolations(graph: Map<string, string[]>): string[] {
  const bad: string[] = [];
  for (const [file, imports] of graph) {
    for (const to of imports) {
      const why = (() => {
        if (under(to, 'passes') && !under(file, 'passes') && file !== 'compiler/pipeline.ts' && !under(file, 'compiler/tools')) return 'only compiler/pipeline.ts and compiler/tools/ run passes';
        if (under(file, 'passes') && !under(to, 'passes') && !under(to, 'compiler/ir')) return 'a pass imports only compiler/ir/ and other passes';
        if (under(file, 'compiler') && !under(file, 'compiler/tools') && (under(to, 'backends') || under(to, 'runtime'))) return 'the compiler below its tools imports no backend and no runtime';
        if ((under(to, 'backends/webgpu/wgsl') || to === 'backends/webgpu/render.ts') && !under(file, 'backends') && !under(file, 'bench')) return 'WGSL code is imported only inside backends/';
        if (under(file, 'backends') && (under(to, 'passes') || under(to, 'runtime'))) return 'a backend imports neither passes/ nor runtime/';
        if (file === 'runtime/engines/compiled-engine.ts' && under(to, 'backends') && to !== 'backends/index.ts') return 'the compiled engine reaches backends only through backends/index.ts';
        return undefined;
      })();
      if (why) bad.push(`${file} → ${to}: ${why}`);
    }
  }
  return bad;
}

describe('layering', () => {
  const graph = importGraph();

  it('finds the source files and their imports', () => {
    expect(graph.get('compiler/pipeline.ts')).toContain('passes/index.ts');
    expect(graph.get('passes/canonicalize.ts')).toContain('compiler/ir/ops.ts');
    expect(graph.size).toBeGreaterThan(80);
  });

  it('every import runs the layers one way', () => {
    expect(layeringViolations(graph)).toEqual([]);
  });

  it('would catch a pass importing a backend, a runtime module running a pass, WGSL outside the backends, and the compiled engine bypassing the registry', () => {
    const planted = new Map(graph);
    planted.set('passes/fuse-attention.ts', [...graph.get('passes/fuse-attention.ts')!, 'backends/webgpu/wgsl/flash-attention.ts']);
    planted.set('runtime/engines/compiled-engine.ts', [...graph.get('runtime/engines/compiled-engine.ts')!, 'passes/index.ts', 'backends/webgpu/wgsl/wgsl.ts', 'backends/webgpu/program.ts']);
    planted.set('compiler/schedule.ts', [...graph.get('compiler/schedule.ts')!, 'backends/index.ts']);
    expect(layeringViolations(planted).sort()).toEqual([
      'passes/fuse-attention.ts → backends/webgpu/wgsl/flash-attention.ts: a pass imports only compiler/ir/ and other passes',
      'runtime/engines/compiled-engine.ts → passes/index.ts: only compiler/pipeline.ts and compiler/tools/ run passes',
      'runtime/engines/compiled-engine.ts → backends/webgpu/wgsl/wgsl.ts: WGSL code is imported only inside backends/',
      'runtime/engines/compiled-engine.ts → backends/webgpu/program.ts: the compiled engine reaches backends only through backends/index.ts',
      'compiler/schedule.ts → backends/index.ts: the compiler below its tools imports no backend and no runtime',
    ].sort());
  });

  it('reads static, dynamic, re-export and type-only imports', () => {
    const src = "import { a } from './a.ts';\nimport type { B } from '../b.ts';\nexport { c } from './c/c.ts';\nconst d = await import('./d.ts');\nimport './side.ts';\n";
    expect(importsOf('runtime/x.ts', src)).toEqual(['runtime/a.ts', 'b.ts', 'runtime/c/c.ts', 'runtime/d.ts', 'runtime/side.ts']);
  });
});
