// The kernel of an attention composite (compiler/ops.ts COMPOSITES) that fuse-elementwise grouped:
// which FlashAttention kernel it is, and the graph value bound to each of its roles, in binding
// order. A role no member computes (the log-sum-exp of a forward that no backward follows, dk or dv
// alone) is returned as a size, for the scheduler to bind a scratch buffer.

import { numel, type Graph, type Node } from '../ir/graph.ts';
import { flashAttentionBackwardKeyValue, flashAttentionBackwardQuery, flashAttentionForward, type FlashKernelSpec } from './flash-attention.ts';

export interface AttentionKernel {
  name: string;
  wgsl: string;
  workgroups: [number, number, number];
  /** Graph values read, in binding order. */
  inputs: number[];
  /** Graph values written, in binding order after the inputs; `{elements}` for a scratch result. */
  outputs: (number | { elements: number })[];
}

export function attentionKernel(g: Graph, members: number[], prefix: string): AttentionKernel {
  const nodes = members.map((m) => g.nodes[m]);
  const first = nodes[0];
  const q = g.nodes[first.inputs[0]];
  const r = q.shape.length;
  const [T, D] = q.shape.slice(r - 2);
  const BH = numel(q.shape.slice(0, r - 2));
  const opts = { causal: first.attrs.causal === true, scale: first.attrs.scale as number };
  const one = (pick: (n: Node) => boolean, what: string): Node | undefined => {
    const found = nodes.filter(pick);
    if (found.length > 1) throw new Error(`attention kernel ${prefix}: two ${what} results`);
    return found[0];
  };
  const role = (n: Node | undefined, like: Node) => (n ? n.id : { elements: numel(like.shape) });
  let spec: FlashKernelSpec;
  let outputs: AttentionKernel['outputs'];
  let inputs: number[];
  const fwd = one((n) => n.op === 'flash_attention', 'o');
  if (fwd || nodes.some((n) => n.op === 'flash_attention_lse')) {
    if (!fwd) throw new Error(`attention kernel ${prefix}: a log-sum-exp without its flash_attention`);
    const lse = one((n) => n.op === 'flash_attention_lse', 'lse');
    spec = flashAttentionForward(BH, T, D, opts);
    inputs = fwd.inputs;
    outputs = [fwd.id, lse ? lse.id : { elements: BH * T }];
  } else {
    const grad = (wrt: number) => one((n) => n.op === 'flash_attention_bwd' && n.attrs.wrt === wrt, `d${'qkv'[wrt]}`);
    inputs = first.inputs;
    const dq = grad(0);
    if (dq) {
      if (nodes.length > 1) throw new Error(`attention kernel ${prefix}: dq shares a kernel`);
      spec = flashAttentionBackwardQuery(BH, T, D, opts);
      outputs = [dq.id];
    } else {
      spec = flashAttentionBackwardKeyValue(BH, T, D, opts);
      outputs = [role(grad(1), g.nodes[inputs[1]]), role(grad(2), g.nodes[inputs[2]])];
    }
  }
  if (nodes.some((n) => n.inputs.join() !== inputs.join() && n.op !== 'flash_attention_lse')) throw new Error(`attention kernel ${prefix}: members read different operands`);
  return { name: `${prefix}_${spec.name}`, wgsl: spec.wgsl, workgroups: spec.workgroups, inputs, outputs };
}
