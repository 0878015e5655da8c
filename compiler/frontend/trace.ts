// Tracing: run the model's ordinary TypeScript with symbolic tensors whose ops append graph nodes.
// Each node remembers the model line that created it.

import { GraphBuilder, type Graph } from '../ir/graph.ts';
import { GraphOpBuilder } from '../ir/ops.ts';
import { maskedCrossEntropy, ParamScope, type ModelDefinition, type ModelShape, type ParamSpec } from './nn.ts';
import { callerLocation } from './source-loc.ts';
import { Tensor, TraceError } from './tensor.ts';

export interface TracedModel {
  graph: Graph;
  /** Parameters in graph-input order, with how each is initialised. */
  params: ParamSpec[];
}

export interface TraceOptions {
  /** The micro-batch: the graph's static batch dimension (a property of the trace, not of the model). */
  batchSize: number;
  /** Override the sequence length (defaults to the preset's context). */
  seqLen?: number;
  /**
   * Fine-tuning: a third input `loss_mask` (f32 [B, T]) and the loss Σ mask·nll / Σ mask over the
   * model's logits, so only the masked positions (an answer) are learned. Off, the graph is unchanged.
   */
  lossMask?: boolean;
}

/** Trace the training forward pass: inputs `idx` and `targets` (i32 [B, T]) and parameters; output `loss`. */
export function traceForward<C extends ModelShape>(def: ModelDefinition<C>, config: C, opts: TraceOptions): TracedModel {
  return traceModel(def, config, opts, 'loss');
}

/** Trace inference: input `idx` (i32 [B, T]) and parameters; output `logits` ([B, T, vocab]). */
export function traceLogits<C extends ModelShape>(def: ModelDefinition<C>, config: C, opts: TraceOptions): TracedModel {
  return traceModel(def, config, opts, 'logits');
}

function traceModel<C extends ModelShape>(def: ModelDefinition<C>, config: C, opts: TraceOptions, output: 'loss' | 'logits'): TracedModel {
  const B = opts.batchSize;
  const T = opts.seqLen ?? config.blockSize;
  const graph = new GraphBuilder(`${def.name}_${output === 'loss' ? 'forward' : 'logits'}`);
  const builder = new GraphOpBuilder(graph);
  builder.locate = callerLocation;

  const idx = new Tensor(builder, builder.input('idx', [B, T], 'i32', false));
  const targets = output === 'loss' ? new Tensor(builder, builder.input('targets', [B, T], 'i32', false)) : undefined;
  const params: ParamSpec[] = [];
  const scope = new ParamScope((spec) => {
    if (params.some((p) => p.name === spec.name)) throw new TraceError(`parameter ${spec.name} is declared twice`);
    params.push(spec);
    return new Tensor(builder, builder.input(spec.name, [...spec.shape], 'f32', true));
  });

  const lossMask = output === 'loss' && opts.lossMask ? new Tensor(builder, builder.input('loss_mask', [B, T], 'f32', false)) : undefined;
  const model = def.create(scope, config);
  const { loss, logits } = lossMask && targets ? maskedLoss(model.forward(idx).logits, targets, lossMask) : model.forward(idx, targets);
  if (output === 'logits') {
    graph.rename(logits.value as number, 'logits');
    return { graph: graph.build([logits.value as number]), params };
  }
  if (!loss) throw new TraceError(`${def.name}: forward(idx, targets) returned no loss`);
  if (loss.size !== 1) throw new TraceError(`${def.name}: the loss must be a scalar, got shape [${loss.shape}]`);
  graph.rename(loss.value as number, 'loss');
  return { graph: graph.build([loss.value as number]), params };
}

function maskedLoss(logits: Tensor, targets: Tensor, mask: Tensor): { loss: Tensor; logits: Tensor } {
  const [B, T, V] = logits.shape;
  return { logits, loss: maskedCrossEntropy(logits.reshape(B * T, V), targets.reshape(B * T), mask.reshape(B * T)) };
}
