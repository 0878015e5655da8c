import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, it, expect } from 'vitest';
import fs from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lossChartSvg, lossCsv, niceTicks, writeLossCurve, type LossRow } from '../runtime/train/loss-curve.ts';
import { ProgressReporter, formatCount, formatDuration, type ProgressStream } from '../runtime/train/progress.ts';

const rows: LossRow[] = [
  { step: 0, trainLoss: 10.95, valLoss: 10.97, lr: 6e-5, tokensPerSecond: 1200 },
  { step: 1, trainLoss: 9.5, lr: 1.2e-4, tokensPerSecond: 15000 },
  { step: 2, trainLoss: NaN, lr: 1.8e-4 },
  { step: 3, trainLoss: 7.25, valLoss: 7.5, lr: 2.4e-4, tokensPerSecond: 15500.5 },
];

/**
 * Enough of an XML well-formedness check for generated SVG: one root, every tag closed in order,
 * attributes quoted, no stray `<` or `&`.
 */
function checkWellFormed(xml: string): void {
  const open: string[] = [];
  let roots = 0;
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let end = 0;
  for (let match; (match = tag.exec(xml)); ) {
    const text = xml.slice(end, match.index);
    expect(text, `text before ${match[0]}`).not.toMatch(/[<>]|&(?!#?\w+;)/);
    end = tag.lastIndex;
    const [, closing, name, , selfClosing] = match;
    if (closing) expect(open.pop(), `closing </${name}>`).toBe(name);
    else if (!selfClosing) {
      if (open.length === 0) roots++;
      open.push(name);
    } else if (open.length === 0) roots++;
  }
  expect(xml.slice(end).trim()).toBe('');
  expect(open).toEqual([]);
  expect(roots).toBe(1);
}

/** A chart's tick labels: along the step axis (below the plot) and along the loss axis (left of it). */
function tickLabels(svg: string): { x: string[]; y: string[] } {
  return {
    x: [...svg.matchAll(/<text x="[^"]*" y="434" text-anchor="middle">([^<]*)<\/text>/g)].map((m) => m[1]),
    y: [...svg.matchAll(/text-anchor="end" dominant-baseline="middle">([^<]*)<\/text>/g)].map((m) => m[1]),
  };
}

describe('loss curve', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('writes CSV with empty cells for absent or non-finite values', () => {
    expect(lossCsv(rows)).toBe(
      'step,train_loss,val_loss,lr,tokens_per_second\n' +
        '0,10.95,10.97,0.00006,1200\n' +
        '1,9.5,,0.00012,15000\n' +
        '2,,,0.00018,\n' +
        '3,7.25,7.5,0.00024,15500.5\n',
    );
  });

  it('draws a well-formed SVG chart with both series, axes and a legend', () => {
    const svg = lossChartSvg(rows, 'gpt <tiny> & co');
    checkWellFormed(svg);
    expect(svg).toContain('gpt &#60;tiny&#62; &#38; co');
    const polylines = [...svg.matchAll(/<polyline [^>]*points="([^"]*)"/g)].map((m) => m[1].split(' ').length);
    expect(polylines).toEqual([3, 2]); // train without the NaN, then validation
    expect(svg.match(/<circle /g)).toHaveLength(2);
    for (const label of ['>step<', '>loss<', '>train<', '>validation<']) expect(svg).toContain(label);
  });

  // The chart's every coordinate, label and style, as a file to review when it changes on purpose:
  // UPDATE_GOLDEN=1 rewrites it.
  it('draws the chart of test/golden/loss-curve/chart.svg, byte for byte', () => {
    const path = fileURLToPath(new URL('./golden/loss-curve/chart.svg', import.meta.url));
    const svg = lossChartSvg(rows, 'gpt/tiny: loss');
    if (process.env.UPDATE_GOLDEN === '1') {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, svg);
    }
    expect(existsSync(path), `${path} is missing: run UPDATE_GOLDEN=1 npx vitest run test/train-report.test.ts and review it`).toBe(true);
    expect(svg).toBe(readFileSync(path, 'utf8'));
  });

  it('draws an empty chart without failing: axes from step 0 to 1 and loss 0 to 1, no curve, a note in the middle', () => {
    const svg = lossChartSvg([]);
    checkWellFormed(svg);
    expect(svg).toContain('<text x="424" y="232" text-anchor="middle" fill="#888">no loss recorded yet</text>');
    expect(svg).not.toMatch(/<polyline|<circle/);
    expect(tickLabels(svg)).toEqual({ x: ['0', '1'], y: ['0.0', '0.2', '0.4', '0.6', '0.8', '1.0'] });
    expect(lossChartSvg(rows)).not.toContain('no loss recorded yet');
  });

  it('titles the chart "Loss" unless told otherwise', () => {
    expect(lossChartSvg(rows)).toContain('<text x="400" y="28" text-anchor="middle" font-size="16" font-weight="600">Loss</text>');
  });

  it("maps steps and losses linearly onto the plot, the data's extremes at its corners", () => {
    // Axes from step -10 to 10 and from loss 2 to 4; the plot spans x 72…776 and y 48…416.
    const svg = lossChartSvg([{ step: -10, trainLoss: 4, lr: 0 }, { step: 0, trainLoss: 3, lr: 0 }, { step: 10, trainLoss: 2, lr: 0 }]);
    expect(svg).toContain('points="72.0,48.0 424.0,232.0 776.0,416.0"');
  });

  it('labels ticks with the decimals their spacing needs, and steps 1000 or more apart in thousands (k)', () => {
    const chart = (steps: [number, number], losses: [number, number]) =>
      lossChartSvg(steps.map((step, i) => ({ step, trainLoss: losses[i], lr: 0 })));
    expect(tickLabels(chart([0, 2000], [3.4, 2.95]))).toEqual({ x: ['0', '500', '1000', '1500', '2000'], y: ['2.9', '3.0', '3.1', '3.2', '3.3', '3.4'] });
    expect(tickLabels(chart([0, 5000], [4, 2]))).toEqual({ x: ['0', '1k', '2k', '3k', '4k', '5k'], y: ['2.0', '2.5', '3.0', '3.5', '4.0'] });
  });

  it('chooses round ticks that enclose the data', () => {
    expect(niceTicks(0, 5000)).toEqual([0, 1000, 2000, 3000, 4000, 5000]);
    expect(niceTicks(3.21, 10.97)).toEqual([2, 4, 6, 8, 10, 12]);
    expect(niceTicks(2.95, 3.4)).toEqual([2.9, 3, 3.1, 3.2, 3.3, 3.4]);
    expect(niceTicks(4, 4)).toEqual([3.8, 3.9, 4, 4.1, 4.2]);
    expect(niceTicks(0, 1, { integer: true })).toEqual([0, 1]);
    expect(niceTicks(0, 7, { integer: true })).toEqual([0, 2, 4, 6, 8]);
    // Only a range under 1e-12 counts as a single value (and is widened); 1e-12 itself is a range.
    expect(niceTicks(0, 1e-12)).toEqual([0, 2e-13, 4e-13, 6e-13, 8e-13, 1e-12]);
  });

  it('writes loss.csv and loss.svg into the directory', async () => {
    dir = await fs.mkdtemp(join(tmpdir(), 'chotta-loss-'));
    await writeLossCurve(join(dir, 'run'), rows);
    expect((await fs.readdir(join(dir, 'run'))).sort()).toEqual(['loss.csv', 'loss.svg']);
    expect(await fs.readFile(join(dir, 'run', 'loss.csv'), 'utf8')).toBe(lossCsv(rows));
  });
});

/** Records what a reporter writes; `screen` replays carriage returns and line erases. */
class FakeTerminal implements ProgressStream {
  output = '';
  constructor(
    readonly isTTY: boolean,
    readonly columns = 80,
  ) {}
  write(text: string) {
    this.output += text;
  }
  screen(): string[] {
    const lines = [''];
    for (const part of this.output.replace(/\x1b\[\d*m/g, '').split(/(\r|\n|\x1b\[K)/)) {
      if (part === '\r' || part === '\x1b[K') lines[lines.length - 1] = part === '\r' ? '' : lines[lines.length - 1];
      else if (part === '\n') lines.push('');
      else lines[lines.length - 1] += part;
    }
    return lines;
  }
}

describe('progress reporter', () => {
  it('redraws one line on a terminal and logs above it', () => {
    const terminal = new FakeTerminal(true, 72);
    let now = 0;
    const progress = new ProgressReporter({ totalSteps: 100, stream: terminal, colour: false, now: () => now });
    progress.update({ step: 0, loss: 10.9876, lr: 6e-5, tokensPerSecond: 1500 });
    now = 1000;
    progress.update({ step: 10, loss: 8.5, lr: 6e-4, tokensPerSecond: 45_200 });
    expect(terminal.output).not.toContain('\n');
    progress.log('saved checkpoint at step 10');
    now = 2000;
    progress.update({ step: 20, loss: 7.25, lr: 6e-4, tokensPerSecond: 45_300 });
    const screen = terminal.screen();
    expect(screen).toHaveLength(2);
    expect(screen[0]).toBe('saved checkpoint at step 10');
    // 20 steps in 2 s since step 1, 79 to go: 7.9 s.
    expect(screen[1]).toMatch(/^\[█+░+\]  21\/100 │ loss 7\.2500 │ lr 6\.00e-4 │ 45\.3k tok\/s │ eta 8s$/);
    expect(screen[1].length).toBeLessThanOrEqual(71);
    progress.finish();
    expect(terminal.output.endsWith('\n')).toBe(true);
    // The bar redrawn as it stands, then a fresh line.
    expect(terminal.screen()).toEqual([screen[0], screen[1], '']);
  });

  it('redraws at most every redrawMs on a terminal, and always for the last step', () => {
    const terminal = new FakeTerminal(true);
    let now = 0;
    const progress = new ProgressReporter({ totalSteps: 10, stream: terminal, colour: false, redrawMs: 100, now: () => now });
    for (const [at, step] of [[0, 0], [99, 1], [100, 2], [150, 3], [160, 9]]) {
      now = at;
      progress.update({ step });
    }
    const drawn = terminal.output.split('\r').filter(Boolean).map((line) => line.match(/ (\d+)\/10 /)?.[1]);
    expect(drawn).toEqual(['1', '3', '10']);
  });

  it('cuts the line to the terminal width so it never wraps', () => {
    const terminal = new FakeTerminal(true, 40);
    const progress = new ProgressReporter({ totalSteps: 5000, stream: terminal, colour: false, now: () => 0 });
    progress.update({ step: 99, loss: 3.14159, lr: 3e-4, tokensPerSecond: 1e6 });
    expect(terminal.screen()[0].length).toBe(39);
  });

  it('colours the bar unless NO_COLOR is set', () => {
    const previous = process.env.NO_COLOR;
    /** What a reporter on a terminal draws with NO_COLOR as given. */
    const drawn = (noColor: string | undefined, options: { colour?: boolean } = {}) => {
      if (noColor === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = noColor;
      const terminal = new FakeTerminal(true);
      new ProgressReporter({ totalSteps: 10, stream: terminal, ...options }).update({ step: 3 });
      return terminal.output;
    };
    try {
      expect(drawn(undefined)).toMatch(/\x1b\[36m/);
      expect(drawn('1')).not.toMatch(/\x1b\[\d+m/);
      expect(drawn('1', { colour: true })).toMatch(/\x1b\[36m/);
    } finally {
      if (previous === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = previous;
    }
  });

  it('prints plain lines every N steps or every few seconds when not a terminal', () => {
    const log = new FakeTerminal(false);
    let now = 0;
    const progress = new ProgressReporter({ totalSteps: 40, stream: log, everySteps: 10, everyMs: 10_000, now: () => now });
    for (let step = 0; step < 25; step++, now += 100) progress.update({ step, loss: 5 });
    now += 30_000; // a slow step: printed for the time, not the count
    progress.update({ step: 25, loss: 4.5 });
    progress.log('evaluating');
    for (let step = 26; step < 40; step++, now += 100) progress.update({ step, loss: 4 });
    const lines = log.output.trimEnd().split('\n');
    expect(lines.map((l) => l.split(' |')[0])).toEqual([
      'step 1/40 (2.5%)',
      'step 11/40 (27.5%)',
      'step 21/40 (52.5%)',
      'step 26/40 (65.0%)',
      'evaluating',
      'step 36/40 (90.0%)',
      'step 40/40 (100.0%)',
    ]);
    expect(log.output).not.toMatch(/\r|\x1b/);
    expect(lines[0]).toBe('step 1/40 (2.5%) | loss 5.0000 | eta --');
  });

  it('prints a plain line once everyMs has passed, to the millisecond', () => {
    const log = new FakeTerminal(false);
    let now = 0;
    const progress = new ProgressReporter({ totalSteps: 10, stream: log, everySteps: 100, everyMs: 1000, now: () => now });
    for (const [at, step] of [[0, 0], [999, 1], [1000, 2], [1999, 3]]) {
      now = at;
      progress.update({ step });
    }
    expect(log.output.trimEnd().split('\n').map((l) => l.split(' |')[0])).toEqual(['step 1/10 (10.0%)', 'step 3/10 (30.0%)']);
  });

  it('when not a terminal, finish prints the last step reported if its line is not out yet, and only once', () => {
    const log = new FakeTerminal(false);
    const progress = new ProgressReporter({ totalSteps: 100, stream: log, everySteps: 10, now: () => 0 });
    progress.finish(); // nothing reported: nothing to show
    expect(log.output).toBe('');
    for (let step = 0; step < 15; step++) progress.update({ step });
    progress.finish();
    progress.finish();
    expect(log.output.trimEnd().split('\n').map((l) => l.split(' |')[0])).toEqual(['step 1/100 (1.0%)', 'step 11/100 (11.0%)', 'step 15/100 (15.0%)']);
  });

  it('estimates the time left from the first step reported, and says 0s at the last step even when it is the first', () => {
    const log = new FakeTerminal(false);
    let now = 5000; // the first step ends 5 s in (compiling, warming up): the estimate leaves that out
    const progress = new ProgressReporter({ totalSteps: 100, stream: log, everySteps: 10, now: () => now });
    progress.update({ step: 0 });
    for (let step = 1; step <= 10; step++) {
      now += 100;
      progress.update({ step });
    }
    // 10 steps in 1 s since the first, 89 to go.
    expect(log.output).toBe('step 1/100 (1.0%) | eta --\nstep 11/100 (11.0%) | eta 9s\n');

    const last = new FakeTerminal(false);
    new ProgressReporter({ totalSteps: 1, stream: last, now: () => 5000 }).update({ step: 0, loss: 2 });
    expect(last.output).toBe('step 1/1 (100.0%) | loss 2.0000 | eta 0s\n');
  });

  it('formats counts and durations', () => {
    expect([950, 45_230, 1_234_567].map(formatCount)).toEqual(['950', '45.2k', '1.23M']);
    expect([45_000, 725_000, 11_220_000].map(formatDuration)).toEqual(['45s', '12m05s', '3h07m']);
    // Each unit starts at its boundary.
    expect([999, 1000, 999_999, 1_000_000].map(formatCount)).toEqual(['999', '1.0k', '1000.0k', '1.00M']);
    expect([59_000, 60_000, 3_599_000, 3_600_000, -5].map(formatDuration)).toEqual(['59s', '1m00s', '59m59s', '1h00m', '0s']);
  });
});
