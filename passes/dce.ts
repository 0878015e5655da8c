// Dead code elimination: drop every node no output depends on. Autograd leaves plenty: the
// gradient rules run for every operand, including constants and masks that need no gradient.
// Graph inputs stay even when unused, since they are the program's signature.

import { isGraphInput, type Graph } from '../compiler/ir/graph.ts';
import { GraphRewriter, liveNodes, type Pass } from '../compiler/ir/pass.ts';

export const dce: Pass = {
  name: 'dce',
  run(g: Graph) {
    const live = liveNodes(g);
    const rw = new GraphRewriter(g);
    let removed = 0;
    for (const n of g.nodes) {
      if (isGraphInput(n) || live[n.id]) rw.copy(n);
      else removed++;
    }
    return { graph: rw.finish(), counters: { removed } };
  },
};
