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

  it('draws an empty chart without failing', () => {
    checkWellFormed(lossChartSvg([]));
  });

  it('chooses round ticks that enclose the data', () => {
    expect(niceTicks(0, 5000)).toEqual([0, 1000, 2000, 3000, 4000, 5000]);
    expect(niceTicks(3.21, 10.97)).toEqual([2, 4, 6, 8, 10, 12]);
    expect(niceTicks(2.95, 3.4)).toEqual([2.9, 3, 3.1, 3.2, 3.3, 3.4]);
    expect(niceTicks(4, 4)).toEqual([3.8, 3.9, 4, 4.1, 4.2]);
    expect(niceTicks(0, 1, { integer: true })).toEqual([0, 1]);
    expect(niceTicks(0, 7, { integer: true })).toEqual([0, 2, 4, 6, 8]);
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
  });

  it('cuts the line to the terminal width so it never wraps', () => {
    const terminal = new FakeTerminal(true, 40);
    const progress = new ProgressReporter({ totalSteps: 5000, stream: terminal, colour: false, now: () => 0 });
    progress.update({ step: 99, loss: 3.14159, lr: 3e-4, tokensPerSecond: 1e6 });
    expect(terminal.screen()[0].length).toBe(39);
  });

  it('colours the bar unless NO_COLOR is set', () => {
    const coloured = new FakeTerminal(true);
    new ProgressReporter({ totalSteps: 10, stream: coloured, colour: true }).update({ step: 3 });
    expect(coloured.output).toMatch(/\x1b\[36m/);

    const previous = process.env.NO_COLOR;
    process.env.NO_COLOR = '1';
    try {
      const plain = new FakeTerminal(true);
      new ProgressReporter({ totalSteps: 10, stream: plain }).update({ step: 3 });
      expect(plain.output).not.toMatch(/\x1b\[\d+m/);
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

  it('formats counts and durations', () => {
    expect([950, 45_230, 1_234_567].map(formatCount)).toEqual(['950', '45.2k', '1.23M']);
    expect([45_000, 725_000, 11_220_000].map(formatDuration)).toEqual(['45s', '12m05s', '3h07m']);
    // Each unit starts at its boundary.
    expect([999, 1000, 999_999, 1_000_000].map(formatCount)).toEqual(['999', '1.0k', '1000.0k', '1.00M']);
    expect([59_000, 60_000, 3_599_000, 3_600_000, -5].map(formatDuration)).toEqual(['59s', '1m00s', '59m59s', '1h00m', '0s']);
  });
});
