// GPT-2, as in nanoGPT's model.py: token + position embeddings, pre-norm transformer blocks of
// causal self-attention and an MLP, a final layer norm, and an LM head tied to the token embedding.

import {
  LayerNorm, Linear, Embedding, ParamScope, Tensor,
  causalMask, crossEntropy, defineModel, gelu, softmax, where,
} from '../compiler/frontend/nn.ts';

export interface GPTConfig {
  blockSize: number; // context length
  vocabSize: number;
  nLayer: number;
  nHead: number;
  nEmbd: number;
  bias: boolean; // biases in Linear and LayerNorm, like GPT-2
  // No batch size: the micro-batch belongs to the trace, not the model (microBatch below).
}

export const presets: Record<string, GPTConfig> = {
  gpt2: { nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50257, bias: true },
  tiny: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 4096, bias: true },
};

class CausalSelfAttention {
  cAttn: Linear; // q, k, v projections for all heads, in one matrix
  cProj: Linear;
  nHead: number;
  constructor(p: ParamScope, config: GPTConfig) {
    this.nHead = config.nHead;
    this.cAttn = new Linear(p.child('c_attn'), config.nEmbd, 3 * config.nEmbd, { bias: config.bias });
    // GPT-2 scales the init of residual projections by 1/sqrt(2 * nLayer).
    this.cProj = new Linear(p.child('c_proj'), config.nEmbd, config.nEmbd, { bias: config.bias, std: 0.02 / Math.sqrt(2 * config.nLayer) });
  }

  forward(x: Tensor): Tensor {
    const [B, T, C] = x.shape;
    const heads = (t: Tensor) => t.view(B, T, this.nHead, C / this.nHead).transpose(1, 2); // (B, nh, T, hs)
    const [q, k, v] = this.cAttn.forward(x).split(C, 2).map(heads);

    let att = q.matmul(k.transpose(-2, -1)).mul(1 / Math.sqrt(k.shape[3]));
    att = where(causalMask(att), att, -Infinity);
    att = softmax(att, -1);
    const y = att.matmul(v).transpose(1, 2).reshape(B, T, C); // re-assemble all head outputs side by side
    return this.cProj.forward(y);
  }
}

class MLP {
  cFc: Linear;
  cProj: Linear;
  constructor(p: ParamScope, config: GPTConfig) {
    this.cFc = new Linear(p.child('c_fc'), config.nEmbd, 4 * config.nEmbd, { bias: config.bias });
    this.cProj = new Linear(p.child('c_proj'), 4 * config.nEmbd, config.nEmbd, { bias: config.bias, std: 0.02 / Math.sqrt(2 * config.nLayer) });
  }

  forward(x: Tensor): Tensor {
    return this.cProj.forward(gelu(this.cFc.forward(x)));
  }
}

class Block {
  ln1: LayerNorm;
  attn: CausalSelfAttention;
  ln2: LayerNorm;
  mlp: MLP;
  constructor(p: ParamScope, config: GPTConfig) {
    this.ln1 = new LayerNorm(p.child('ln_1'), config.nEmbd, { bias: config.bias });
    this.attn = new CausalSelfAttention(p.child('attn'), config);
    this.ln2 = new LayerNorm(p.child('ln_2'), config.nEmbd, { bias: config.bias });
    this.mlp = new MLP(p.child('mlp'), config);
  }

  forward(x: Tensor): Tensor {
    x = x.add(this.attn.forward(this.ln1.forward(x)));
    x = x.add(this.mlp.forward(this.ln2.forward(x)));
    return x;
  }
}

export class GPT {
  wte: Embedding;
  wpe: Embedding;
  h: Block[];
  lnF: LayerNorm;
  lmHead: Linear;
  config: GPTConfig;
  constructor(p: ParamScope, config: GPTConfig) {
    this.config = config;
    this.wte = new Embedding(p.child('wte'), config.vocabSize, config.nEmbd);
    this.wpe = new Embedding(p.child('wpe'), config.blockSize, config.nEmbd);
    this.h = Array.from({ length: config.nLayer }, (_, i) => new Block(p.child('h').child(i), config));
    this.lnF = new LayerNorm(p.child('ln_f'), config.nEmbd, { bias: config.bias });
    // Weight tying: the LM head reuses the token embedding matrix.
    this.lmHead = new Linear(p.child('lm_head'), config.nEmbd, config.vocabSize, { bias: false, weight: this.wte.weight });
  }

  forward(idx: Tensor, targets?: Tensor): { logits: Tensor; loss?: Tensor } {
    const [B, T] = idx.shape;
    if (T > this.config.blockSize) throw new Error(`cannot forward a sequence of length ${T}, block size is ${this.config.blockSize}`);
    const tokEmb = this.wte.forward(idx); // (B, T, C)
    const posEmb = this.wpe.weight.slice(0, 0, T); // positions 0..T-1: the first T rows, (T, C)
    let x = tokEmb.add(posEmb);
    for (const block of this.h) x = block.forward(x);
    x = this.lnF.forward(x);
    const logits = this.lmHead.forward(x); // (B, T, vocab)
    if (!targets) return { logits };
    const loss = crossEntropy(logits.view(B * T, -1), targets.view(B * T));
    return { logits, loss };
  }
}

export const model = defineModel<GPTConfig>({
  name: 'gpt',
  presets,
  defaultPreset: 'gpt2',
  // Sequences per micro-batch, as nanoGPT's training configs set batch_size: the trace's, not the model's.
  microBatch: { gpt2: 4, tiny: 8 },
  create: (params, config) => new GPT(params, config),
});
